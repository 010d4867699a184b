"""Read a GGUF file's header: metadata and tensor directory (no dependency on the gguf package).

    GGUFFile(path)      .meta (key -> value; arrays as lists), .tensors (name -> TensorInfo),
                        .read_into(info, out) (os.pread straight into a tensor's memory)
    open_gguf(path)     the same for a model: one file, or every shard of a split one
                        (SplitGGUF: "<name>-00001-of-00003.gguf" ..., as llama.cpp and gguf-py
                        write them; any shard's path finds the others)

Importing this module does not import torch (``duet doctor`` and discovery read headers with it).
Each tensor's bytes are read with ``os.pread`` into memory the caller already allocated in
its final layout, so loading holds no second copy (and maps nothing: a mapped file's pages
would count against the process on top of the copy).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from local_engine.errors import ModelError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "u1", 1: "i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "u1", 10: "<u8", 11: "<i8", 12: "<f8"}

# ggml type id -> (name, weights per block, bytes per block), every type a GGUF file can hold
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


# what the local engine runs: dense types, and the ggml block types of kernels/kquant.py
RUNS_LOCALLY = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K",
                "Q5_K", "Q6_K", "IQ4_XS", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S")
LOCAL_ARCH = "deepseek2"
_MAX_DIMS = 4        # GGML_MAX_DIMS
_MAX_NESTING = 32    # arrays of arrays: gguf-py writes them; no file needs them this deep


def type_name(t: int) -> str:
    return GGML_TYPES.get(t, (f"type {t}",))[0]


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order: outermost first (ggml's ne reversed); last = row length
    type: int
    offset: int             # absolute file offset of the data
    nbytes: int
    shard: int = 0          # which file of a split model holds it (SplitGGUF.files)

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    def part(self, shape: tuple[int, ...], start: int, nbytes: int) -> "TensorInfo":
        """The ``nbytes`` from byte ``start`` of this tensor (an expert of a stacked tensor), as a
        tensor of ``shape`` in the same file."""
        return TensorInfo(self.name, shape, self.type, self.offset + start, nbytes, self.shard)


class GGUFFile:
    def __init__(self, path):
        self.path = Path(path)
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise ModelError(f"{self.path}: cannot open ({e.strerror or e})") from None
        try:
            self._size = os.fstat(self._f.fileno()).st_size
            self._parse()
        except (struct.error, UnicodeDecodeError, ValueError, MemoryError, OverflowError) as e:
            self._f.close()
            raise ModelError(f"{self.path}: corrupt GGUF header ({e})") from None
        except ModelError:
            self._f.close()
            raise

    def _read(self, n: int) -> bytes:
        if n > self._size - self._f.tell():   # never allocate what the file cannot hold
            raise ModelError(f"{self.path}: truncated GGUF header")
        b = self._f.read(n)
        if len(b) != n:
            raise ModelError(f"{self.path}: truncated GGUF header")
        return b

    def _u(self, fmt: str):
        return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]

    def _str(self) -> str:
        n = self._u("<Q")
        if n > 1 << 26:
            raise ValueError("string too long")
        return self._read(n).decode("utf-8")

    def _value(self, vtype: int, depth: int = 0):
        if vtype in _SCALARS:
            return self._u(_SCALARS[vtype])
        if vtype == 8:
            return self._str()
        if vtype == 9:
            if depth >= _MAX_NESTING:
                raise ValueError(f"arrays nested more than {_MAX_NESTING} deep")
            item, n = self._u("<I"), self._u("<Q")
            if item in _SCALARS:
                import numpy as np

                size = struct.calcsize(_SCALARS[item])
                arr = np.frombuffer(self._read(n * size), dtype=_NP[item])
                return [bool(v) for v in arr] if item == 7 else arr.tolist()
            return [self._value(item, depth + 1) for _ in range(n)]
        raise ValueError(f"unknown value type {vtype}")

    def _parse(self) -> None:
        if self._f.read(4) != b"GGUF":
            raise ModelError(f"{self.path}: not a GGUF file (bad magic)")
        self.version = self._u("<I")
        if self.version not in (2, 3) and self.version & 0xFFFF == 0 and self.version >> 24 in (2, 3):
            raise ModelError(f"{self.path}: big-endian GGUF (version {self.version >> 24}) is not supported "
                             f"(the local engine reads little-endian files)")
        if self.version not in (2, 3):
            raise ModelError(f"{self.path}: GGUF version {self.version} is not supported (2, 3)")
        n_tensors, n_kv = self._u("<Q"), self._u("<Q")
        self.meta: dict = {}
        for _ in range(n_kv):
            key = self._str()
            if key in self.meta:
                raise ModelError(f"{self.path}: metadata key {key!r} appears twice")
            self.meta[key] = self._value(self._u("<I"))
        raw = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u("<I")
            if n_dims > _MAX_DIMS:
                raise ModelError(f"{self.path}: tensor {name}: {n_dims} dimensions (ggml has at most {_MAX_DIMS})")
            dims = [self._u("<Q") for _ in range(n_dims)]
            raw.append((name, dims, self._u("<I"), self._u("<Q")))
        align = self.meta.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise ModelError(f"{self.path}: general.alignment {align!r} is not a power of two")
        start = -(-self._f.tell() // align) * align
        size = self._size
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, t, off in raw:
            if name in self.tensors:
                raise ModelError(f"{self.path}: tensor {name} appears twice")
            if t not in GGML_TYPES:
                raise ModelError(f"{self.path}: tensor {name}: unknown ggml type {t}")
            _, bs, bb = GGML_TYPES[t]
            count = 1
            for d in dims:
                count *= d
            row = dims[0] if dims else 1
            if row % bs:
                raise ModelError(f"{self.path}: tensor {name}: row of {row} is not whole {type_name(t)} blocks")
            if off % align:
                raise ModelError(f"{self.path}: tensor {name}: data offset {off} is not a multiple of "
                                 f"general.alignment {align}")
            info = TensorInfo(name, tuple(reversed(dims)), t, start + off, count // bs * bb)
            if info.offset + info.nbytes > size:
                raise ModelError(f"{self.path}: tensor {name} runs past the end of the file (truncated?)")
            self.tensors[name] = info

    @property
    def architecture(self) -> str | None:
        return self.meta.get("general.architecture")

    def read_into(self, info: TensorInfo, out):
        """The tensor's raw bytes into ``out`` (a contiguous CPU tensor of exactly that many bytes)."""
        if not out.is_contiguous() or out.numel() * out.element_size() != info.nbytes:
            raise ValueError(f"{info.name}: buffer of {out.numel() * out.element_size()} bytes for {info.nbytes}")
        import torch

        view = memoryview(out.view(torch.uint8).reshape(-1).numpy())
        fd, done = self._f.fileno(), 0
        while done < info.nbytes:
            n = os.preadv(fd, [view[done:]], info.offset + done)
            if n <= 0:
                raise ModelError(f"{self.path}: tensor {info.name}: short read (file truncated?)")
            done += n
        return out

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# a shard's name, as llama.cpp's llama_split_path and gguf-py's writer make it
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_count(meta: dict) -> int:
    n = meta.get("split.count", 1)
    return n if _is_int(n) and n > 1 else 1


def shard_paths(path) -> list[Path]:
    """The shards of the split model ``path`` names by its file name (``<name>-00002-of-00003.gguf``
    -> all three), or [path] for a name that is not a shard's."""
    path = Path(path)
    m = _SHARD_NAME.match(path.name)
    if m is None:
        return [path]
    n = int(m["count"])
    return [path.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


class SplitGGUF:
    """Every shard of a split GGUF as one file: the first shard's metadata (the others carry only
    the split keys), the union of their tensors (each TensorInfo's ``shard`` says which file),
    ``read_into`` from the shard that holds a tensor. Built by ``open_gguf``."""

    def __init__(self, path: Path, opened: GGUFFile):
        self.path = path
        n = shard_count(opened.meta)
        paths = shard_paths(path)
        if len(paths) != n:
            opened.close()
            raise ModelError(f"{path}: one shard of a {n}-file split GGUF, but its name is not "
                             f"<name>-NNNNN-of-{n:05d}.gguf, so the other shards cannot be found (rename it, "
                             f"or merge the shards with llama-gguf-split --merge)")
        self.files: list[GGUFFile] = []
        try:
            for i, p in enumerate(paths):
                if p == path:
                    f = opened
                elif not p.is_file():
                    raise ModelError(f"{p}: shard {i + 1} of {n} of the split GGUF {paths[0].name} is missing")
                else:
                    f = GGUFFile(p)
                self.files.append(f)
                no, count = f.meta.get("split.no"), f.meta.get("split.count")
                if no != i or count != n:
                    raise ModelError(f"{p}: its split keys say shard {no!r} of {count!r}, not {i} of {n} "
                                     f"(shards of different splits?)")
            self.meta = self.files[0].meta
            self.version = self.files[0].version
            self.tensors: dict[str, TensorInfo] = {}
            for i, f in enumerate(self.files):
                for name, info in f.tensors.items():
                    if name in self.tensors:
                        raise ModelError(f"{paths[i]}: tensor {name} is in shard {self.tensors[name].shard + 1} too")
                    info.shard = i
                    self.tensors[name] = info
            total = self.meta.get("split.tensors.count")
            if _is_int(total) and total != len(self.tensors):
                raise ModelError(f"{paths[0]}: split.tensors.count is {total}, but the {n} shards hold "
                                 f"{len(self.tensors)} tensors")
        except ModelError:
            opened.close()
            self.close()
            raise

    @property
    def architecture(self) -> str | None:
        return self.meta.get("general.architecture")

    def read_into(self, info: TensorInfo, out):
        return self.files[info.shard].read_into(info, out)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_gguf(path) -> GGUFFile | SplitGGUF:
    """A model's GGUF: the file itself, or, for one shard of a split model, all its shards."""
    path = Path(path)
    f = GGUFFile(path)
    return f if shard_count(f.meta) == 1 else SplitGGUF(path, f)


@dataclass
class Summary:
    architecture: str | None
    context_length: int | None
    types: dict[str, int]              # type name -> tensor count
    unsupported: list[tuple[str, str]]  # (tensor, type) the local engine does not run
    split: int                         # shards of a split file (1: a single file)

    @property
    def runs_locally(self) -> bool:
        return self.architecture == LOCAL_ARCH and not self.unsupported

    def why(self) -> str:
        """Which backends can serve the file, and why, in one line."""
        kinds = ", ".join(sorted(self.types))
        if self.split > 1:
            kinds += f"; {self.split} shards"
        if self.architecture != LOCAL_ARCH:
            return f"architecture {self.architecture!r}: llama.cpp only (the local engine runs deepseek2)"
        if self.unsupported:
            name, kind = self.unsupported[0]
            return (f"deepseek2 with {kind} tensors ({name}): llama.cpp only (the local engine runs "
                    f"{', '.join(RUNS_LOCALLY)})")
        return (f"deepseek2 ({kinds}): local (Duet's engine: latent MLA cache, fused MoE, the file's "
                f"blocks run as stored) or llama.cpp")


def summarize(path) -> Summary:
    """Architecture, tensor types and whether the local engine runs the file (headers only; a
    split model's every shard, found from any one of them)."""
    f = open_gguf(path)
    f.close()
    arch = f.architecture
    types: dict[str, int] = {}
    bad = []
    for info in f.tensors.values():
        types[info.type_name] = types.get(info.type_name, 0) + 1
        if info.type_name not in RUNS_LOCALLY:
            bad.append((info.name, info.type_name))
    ctx = f.meta.get(f"{arch}.context_length")
    return Summary(arch, ctx if _is_int(ctx) and ctx > 0 else None, types, bad, shard_count(f.meta))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
