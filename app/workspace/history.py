"""Atomic multi-file writes and the undo history that survives restarts.

``write_all`` writes every file or none: each new content goes to a temp file
in the same folder (fsynced, mode copied from the file it replaces), and only
when all temp files exist are they renamed into place; a failure part-way
puts back the files already renamed. Before any rename, the exact previous
bytes are saved as one history entry under ``data_dir()/undo/<root key>/``,
so ``undo`` restores them even after a crash or restart.

An entry is a folder ``000042/`` holding ``entry.json`` (paths, whether each
file was created, the folders created) and ``<n>.before`` / ``<n>.after``
blobs. ``entry.json`` carries ``state``: ``applying`` until every rename is
done, then ``applied``. An entry left ``applying`` is rolled back by
``recover``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from app.errors import DuetError
from app.paths import data_dir

KEEP_ENTRIES = 50
TEMP_PREFIX = ".duet-tmp-"


class HistoryError(DuetError):
    """Undo is impossible or would lose work; the message says which file and why."""


@dataclass(frozen=True)
class Write:
    """One file to write: ``rel`` under root, ``real`` its absolute path,
    ``before`` (None: it does not exist yet) and ``after`` bytes."""

    rel: str
    real: Path
    before: bytes | None
    after: bytes | None  # None: remove the file (used by undo of a creation)


def history_dir(root: Path) -> Path:
    real = os.path.realpath(root)
    key = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return data_dir() / "undo" / key


class History:
    """The undo stack of one workspace root."""

    def __init__(self, root: Path):
        self.root = Path(os.path.realpath(root))
        self.dir = history_dir(self.root)

    # ---- the stack --------------------------------------------------------
    def entries(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.name.isdigit() and (p / "entry.json").is_file())

    def depth(self) -> int:
        return len(self.entries())

    def record(self, writes: list[Write], created_dirs: list[str], message: str, *,
               group: str | None = None) -> Path:
        """Save an ``applying`` entry with every file's exact before/after bytes."""
        entries = self.entries()
        number = int(entries[-1].name) + 1 if entries else 1
        folder = self.dir / f"{number:06d}"
        folder.mkdir(parents=True, exist_ok=False)
        files = []
        for i, w in enumerate(writes):
            if w.before is not None:
                _write_durable(folder / f"{i}.before", w.before)
            if w.after is not None:
                _write_durable(folder / f"{i}.after", w.after)
            files.append({"path": w.rel, "created": w.before is None})
        info = {"root": str(self.root), "time": time.time(), "message": message,
                "files": files, "created_dirs": created_dirs, "state": "applying"}
        if group is not None:
            info["group"] = group
        _write_json(folder / "entry.json", info)
        for old in entries[:max(0, len(entries) + 1 - KEEP_ENTRIES)]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def mark_applied(self, folder: Path) -> None:
        info = _read_json(folder / "entry.json")
        info["state"] = "applied"
        _write_json(folder / "entry.json", info)

    def drop(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def last(self) -> tuple[Path, dict] | None:
        entries = self.entries()
        if not entries:
            return None
        return entries[-1], _read_json(entries[-1] / "entry.json")

    def undo_writes(self, folder: Path, info: dict, *, conflicts: str = "raise") -> tuple[list[Write], list[str]]:
        """The writes that put back an entry's files.

        A file already as it was before is left alone; one that is neither as
        it was before nor as the entry left it (changed since) makes this raise
        HistoryError (``conflicts="raise"``), is left alone (``"skip"``) or is
        put back anyway (``"overwrite"``).
        """
        from app.workspace import safety

        writes = []
        for i, f in enumerate(info["files"]):
            target = safety.resolve(self.root, f["path"])
            before = None if f["created"] else (folder / f"{i}.before").read_bytes()
            after_file = folder / f"{i}.after"
            after = after_file.read_bytes() if after_file.exists() else None
            current = target.real.read_bytes() if target.real.is_file() else None
            if current == before:
                continue  # already as it was (e.g. an apply cut short before this file)
            if current != after and conflicts != "overwrite":
                if conflicts == "skip":
                    continue
                raise HistoryError(f"{f['path']} changed since the edit was applied; "
                                   "undo would lose those changes")
            writes.append(Write(f["path"], target.real, current, before))
        return writes, list(info.get("created_dirs", []))

    def recover(self) -> bool:
        """Roll back an entry left ``applying`` by a crash; True if one was."""
        last = self.last()
        if last is None or last[1].get("state") != "applying":
            return False
        folder, info = last
        writes, dirs = self.undo_writes(folder, info, conflicts="skip")
        write_all(writes)
        remove_empty_dirs(self.root, dirs)
        self.drop(folder)
        return True


# ---- writing files ---------------------------------------------------------

def write_all(writes: list[Write]) -> None:
    """Write (or remove, when ``after`` is None) every file, or none of them."""
    temps: list[tuple[Write, str | None]] = []
    try:
        for w in writes:
            temps.append((w, None if w.after is None else _temp_beside(w.real, w.after)))
    except BaseException:
        for _, tmp in temps:
            if tmp:
                _unlink(tmp)
        raise
    done: list[Write] = []
    try:
        for w, tmp in temps:
            if tmp is None:
                _unlink(str(w.real))
            else:
                os.replace(tmp, w.real)
            _fsync_dir(w.real.parent)
            done.append(w)
    except BaseException:
        for w, tmp in temps[len(done):]:
            if tmp:
                _unlink(tmp)
        for w in reversed(done):  # put back what was already renamed
            try:
                if w.before is None:
                    _unlink(str(w.real))
                else:
                    os.replace(_temp_beside(w.real, w.before), w.real)
            except OSError:
                pass
        raise


def _temp_beside(real: Path, data: bytes) -> str:
    """A fsynced temp file holding ``data`` in ``real``'s folder, with its mode."""
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        mode = None
    name = str(real.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}-{real.name[:60]}")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.chmod(name, mode)
            os.fsync(f.fileno())
    except BaseException:
        _unlink(name)
        raise
    return name


def make_parents(root: Path, real: Path) -> list[str]:
    """Create ``real``'s missing parent folders; their paths relative to root, outermost first."""
    missing = []
    parent = real.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
    return [m.relative_to(root).as_posix() for m in reversed(missing)]


def remove_empty_dirs(root: Path, dirs: list[str]) -> None:
    for rel in reversed(dirs):
        try:
            (root / rel).rmdir()
        except OSError:
            pass


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, info: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_durable(tmp, json.dumps(info, indent=1).encode("utf-8"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HistoryError(f"{path}: unreadable undo entry ({exc})") from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
