"""Every rule about which files the coder may touch, in one place.

Model output is untrusted: a path it names is checked here before anything is
read for an edit or written. The rules:

- the path is relative and stays inside the root: no absolute paths, no ``~``,
  no drive letters or UNC prefixes, no ``..`` components, no NUL or control
  characters (and, on Windows, no reserved device names);
- nothing under ``.git/`` (any case), before or after resolving symlinks;
- symlinks may be followed only while they stay inside the root;
- the target is a regular file (or does not exist yet), not a folder or device;
- its content is UTF-8 text (no NUL bytes) no larger than ``max_bytes``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_MAX_BYTES = 1_000_000
MAX_PATH_CHARS = 400
BOM = b"\xef\xbb\xbf"

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                     *(f"lpt{i}" for i in range(10))}


class Unsafe(Exception):
    """A path or content the rules refuse; ``str(exc)`` is the reason, for the coder."""


@dataclass(frozen=True)
class Target:
    """A checked path: ``rel`` (POSIX, relative to root) and ``real`` (absolute, resolved)."""

    rel: str
    real: Path

    @property
    def exists(self) -> bool:
        return self.real.exists()


def clean_relative(path: str) -> str:
    """The coder's ``path`` as a normalized relative POSIX path, or raise Unsafe."""
    if not path or not path.strip():
        raise Unsafe("empty path")
    if len(path) > MAX_PATH_CHARS:
        raise Unsafe(f"path longer than {MAX_PATH_CHARS} characters")
    if _CONTROL.search(path):
        raise Unsafe("path contains control characters")
    text = path.replace("\\", "/")
    if text.startswith("/"):
        raise Unsafe("absolute paths are not allowed; give the path relative to the project root")
    if text.startswith("~"):
        raise Unsafe("paths starting with ~ are not allowed; give the path relative to the project root")
    if _DRIVE.match(text):
        raise Unsafe("drive letters are not allowed; give the path relative to the project root")
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts:
        raise Unsafe("path names no file")
    for part in parts:
        if part == "..":
            raise Unsafe("'..' is not allowed; the file must be inside the project root")
        if part.lower() == ".git":
            raise Unsafe("files under .git/ are never edited")
        if os.name == "nt" and part.split(".")[0].lower() in _WINDOWS_RESERVED:
            raise Unsafe(f"{part!r} is a reserved device name")
        if part != part.strip() or part.endswith("."):
            raise Unsafe(f"path component {part!r} has leading/trailing spaces or a trailing dot")
    return "/".join(parts)


def resolve(root: Path, path: str) -> Target:
    """Check ``path`` against every path rule and return where it really points.

    Symlinks inside the root are followed (the edit lands on their target);
    any that leads outside the root, or into ``.git/``, is refused.
    """
    rel = clean_relative(path)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / rel))
    if not _inside(real, real_root):
        raise Unsafe("path leads outside the project root through a symlink")
    real_rel = real.relative_to(real_root).as_posix()
    if any(p.lower() == ".git" for p in PurePosixPath(real_rel).parts):
        raise Unsafe("path leads into .git/ through a symlink")
    if real.exists() and not real.is_file():
        kind = "a folder" if real.is_dir() else "not a regular file"
        raise Unsafe(f"{rel} is {kind}")
    if os.path.lexists(real) and not real.exists():
        raise Unsafe(f"{rel} is a symlink loop or a broken symlink")
    parent = real.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise Unsafe(f"{parent.relative_to(real_root).as_posix()} is a file, not a folder")
    return Target(rel=real_rel, real=real)


def check_size(size: int, max_bytes: int, what: str = "file") -> None:
    if size > max_bytes:
        raise Unsafe(f"{what} is {size:,} bytes; the limit is {max_bytes:,}")


def decode_text(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, bool]:
    """``(text, has_bom)`` for UTF-8 text within the size limit, or raise Unsafe."""
    check_size(len(data), max_bytes)
    if b"\x00" in data:
        raise Unsafe("binary file (contains NUL bytes)")
    bom = data.startswith(BOM)
    try:
        text = data[len(BOM):].decode("utf-8") if bom else data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unsafe(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    return text, bom


def encode_text(text: str, bom: bool, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes to write for ``text``; refuses NUL bytes and oversized results."""
    if "\x00" in text:
        raise Unsafe("replacement contains NUL bytes")
    try:
        data = (BOM if bom else b"") + text.encode("utf-8", errors="strict")
    except UnicodeEncodeError:
        raise Unsafe("replacement is not valid Unicode text (lone surrogates)") from None
    check_size(len(data), max_bytes, "result")
    return data


def read_existing(target: Target, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes | None:
    """The file's bytes (None if absent), refusing files too large to read."""
    try:
        size = target.real.stat().st_size
    except FileNotFoundError:
        return None
    check_size(size, max_bytes)
    with open(target.real, "rb") as f:
        return f.read(max_bytes + 1)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
