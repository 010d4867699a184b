"""A minimal safetensors reader: header parsed once per shard, each tensor read with pread
straight into its own buffer. No mapping stays resident, so the process holds only the
weights it has built plus the one tensor being read (the bound Engine.load promises)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from local_engine.errors import ModelError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class ShardFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ModelError(f"{path}: cannot open ({e.strerror})") from None
        size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, 8, 0)
        if len(head) < 8:
            raise ModelError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 1 << 30):
            raise ModelError(f"{path}: not a safetensors file (header length {n} past the end)")
        try:
            header = json.loads(os.pread(self.fd, n, 8))
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelError(f"{path}: corrupt safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self.start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, list[int], int, int]] = {}
        for name, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                shape = [int(s) for s in info["shape"]]
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"{path}: tensor {name}: unsupported or malformed entry {info!r:.80}") from None
            numel = 1
            for s in shape:
                numel *= s
            if end - begin != numel * dtype.itemsize:
                raise ModelError(f"{path}: tensor {name}: {end - begin} bytes for shape {shape} {info['dtype']}")
            if self.start + end > size:
                raise ModelError(f"{path}: truncated: tensor {name} ends at byte {self.start + end}, "
                                 f"file has {size}")
            self.entries[name] = (dtype, shape, begin, end)

    def keys(self):
        return self.entries.keys()

    def offset(self, name: str) -> int:
        return self.entries[name][2]

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor, read into ``out`` (contiguous, same dtype and shape, on CPU) when given."""
        dtype, shape, begin, end = self.entries[name]
        if out is not None and out.dtype == dtype and list(out.shape) == shape and out.is_contiguous():
            buf = out.view(-1).view(torch.uint8)
        else:
            out = None
            buf = torch.empty(end - begin, dtype=torch.uint8)
        view, done = memoryview(buf.numpy()), 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], self.start + begin + done)
            if got <= 0:
                raise ModelError(f"{self.path}: tensor {name}: read failed at byte {self.start + begin + done}")
            done += got
        if out is not None:
            return out
        return buf.view(dtype).view(shape) if buf.numel() else torch.empty(shape, dtype=dtype)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
