"""Read a few metadata values from a GGUF header without loading llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path

# GGUF value types -> struct format (scalars only; 8 = string, 9 = array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class NotGGUF(ValueError):
    pass


def read_metadata(path: Path, wanted: set[str] | None = None, max_keys: int = 10_000) -> dict:
    """Metadata key/values of a GGUF file (stopping early once ``wanted`` are all read)."""
    out: dict = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise NotGGUF(f"{path}: not a GGUF file (bad magic)")
        version, = struct.unpack("<I", f.read(4))
        if version < 2:
            raise NotGGUF(f"{path}: GGUF version {version} is too old")
        _tensors, n_kv = struct.unpack("<QQ", f.read(16))
        for _ in range(min(n_kv, max_keys)):
            key = _string(f)
            vtype, = struct.unpack("<I", f.read(4))
            value = _value(f, vtype)
            out[key] = value
            if wanted is not None and wanted.issubset(out):
                break
    return out


def context_length(path: Path) -> int | None:
    """The context length the model was trained for, from ``<arch>.context_length``."""
    meta = read_metadata(path, wanted={"general.architecture"})
    arch = meta.get("general.architecture")
    if not arch:
        return None
    meta = read_metadata(path, wanted={f"{arch}.context_length"})
    value = meta.get(f"{arch}.context_length")
    return int(value) if value is not None else None


def _string(f) -> str:
    n, = struct.unpack("<Q", f.read(8))
    if n > 1 << 24:
        raise NotGGUF("corrupt GGUF header (string too long)")
    return f.read(n).decode("utf-8", errors="replace")


def _value(f, vtype: int):
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if vtype == 8:
        return _string(f)
    if vtype == 9:
        item_type, = struct.unpack("<I", f.read(4))
        n, = struct.unpack("<Q", f.read(8))
        if item_type in _SCALARS:  # skip scalar arrays without decoding them
            f.seek(n * struct.calcsize(_SCALARS[item_type]), 1)
            return f"<array of {n}>"
        for _ in range(n):
            _value(f, item_type)
        return f"<array of {n}>"
    raise NotGGUF(f"corrupt GGUF header (unknown value type {vtype})")
