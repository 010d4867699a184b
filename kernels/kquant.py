"""GGUF block-quantized weights kept in their file format, and the kernels that run them.

    GGUFWeight(type, shape, data)    a [out, in] matrix as ggml blocks (uint8 [out, row_bytes])
    linear(x, w) / dequantize(w, dtype) / get_rows(w, ids, dtype) / fuse_moe(...)
    TYPES                            ggml type id -> (name, weights per block, bytes per block)

Types run: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32) and Q4_K, Q5_K, Q6_K (super-blocks of
256), read in place by kernels/csrc/kquant.c: the weights are never converted, so what runs
is bit for bit what the file holds (its dequantized values equal ggml's / gguf-py's). Up to 8
activation rows go through the native matmul (float32 dot products over dequantized 256-weight
chunks); more rows dequantize the matrix once, then one torch matmul.

The C file is built like kernels/cpu_native.py builds its own (system ``cc``, -O3
-march=native, torch's OpenMP runtime, cached by a hash of source and flags), plus
``-ffp-contract=off`` so no fused multiply-add changes a dequantized weight. Where no compiler
works, a vectorised torch dequantizer (same formulas, float32) stands in.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "kquant.c"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared", "-fopenmp")
LAYOUT = "gguf"
MAX_ROWS = 8

# ggml type id -> (name, weights per block, bytes per block)
TYPES = {2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24),
         8: ("Q8_0", 32, 34), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210)}
NAMES = {v[0]: k for k, v in TYPES.items()}

_LIB: ctypes.CDLL | None = None
_TRIED = False
_c_int, _c_long, _ptr = ctypes.c_int, ctypes.c_long, ctypes.c_void_p


def row_bytes(type_id: int, k: int) -> int:
    _, bs, bb = TYPES[type_id]
    return k // bs * bb


@dataclass
class GGUFWeight:
    """A [out, in] weight in ggml blocks. ``data`` uint8 [out, row_bytes(type, in)], rows in
    the file's order (a view into a larger buffer is fine: rows need only be contiguous)."""

    type: int
    shape: tuple[int, int]
    data: torch.Tensor
    layout: str = LAYOUT
    mode: str = field(init=False)
    group_size: int = field(init=False)

    def __post_init__(self):
        name, bs, _ = TYPES[self.type]
        self.mode, self.group_size = name, bs
        if self.data.dim() != 2 or self.data.shape[1] != row_bytes(self.type, self.shape[1]) \
                or self.data.shape[0] != self.shape[0] or self.shape[1] % bs:
            raise ValueError(f"{name} data {tuple(self.data.shape)} does not hold a {self.shape} matrix")

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"data": self.data}

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def stride(self) -> int:
        return self.data.stride(0)


# ---------------------------------------------------------------------------------------
# the library


def build(cache_dir: Path | None = None, cc: str | None = None) -> Path:
    """Compile the library unless cached; its path. RuntimeError with the compiler's message."""
    from kernels.cpu_native import _cache_dir, _cpu_flags, _torch_gomp

    cc = cc or os.environ.get("CC") or "cc"
    if not cc.split() or shutil.which(cc.split()[0]) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found)")
    ver = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30)
    gomp = _torch_gomp()
    link = [str(gomp), f"-Wl,-rpath,{gomp.parent}"] if gomp else []
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), ver.stdout.encode(), str(gomp).encode(),
                 platform.machine().encode(), _cpu_flags()):
        key.update(part + b"\0")
    out_dir = cache_dir or _cache_dir()
    target = out_dir / f"duet_kquant_{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        r = subprocess.run([*cc.split(), *FLAGS, str(SOURCE), "-o", tmp, *link, "-lm"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def lib() -> ctypes.CDLL | None:
    """The library, built and loaded once per process; None where it cannot be (then the torch
    dequantizer runs). ``DUET_KERNELS=reference`` keeps it unloaded."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("DUET_KERNELS") in ("reference", "aten") or not sys.platform.startswith(("linux", "darwin")):
        return None
    try:
        so = ctypes.CDLL(str(build()))
        so.kq_dequant.argtypes = [_c_int, _ptr, _c_long, _c_long, _c_int, _ptr, _c_int, _c_int]
        so.kq_get_rows.argtypes = [_c_int, _ptr, _c_long, _ptr, _c_long, _c_int, _ptr]
        so.kq_gemm.argtypes = [_c_int, _ptr, _c_int, _c_int, _ptr, _c_long, _c_long, _ptr, _c_long, _c_int]
        so.kq_moe.argtypes = [_ptr, _ptr, _c_long, _c_long, _c_long, _c_int, _c_int, _ptr, _ptr, _c_int,
                              _c_int, _ptr, _ptr, _c_int]
        for f in (so.kq_dequant, so.kq_get_rows, so.kq_gemm, so.kq_moe):
            f.restype = _c_int
        _LIB = so
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log.warning("duet GGUF kernels unavailable, using the torch dequantizer: %s",
                    str(e).splitlines()[0] if str(e) else e)
        _LIB = None
    return _LIB


# ---------------------------------------------------------------------------------------
# torch reference (and fallback): ggml's formulas on whole tensors, float32


def _f16(b: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 2] -> float32 [...] (little-endian IEEE half)."""
    return b.contiguous().view(torch.float16).float()[..., 0] if b.shape[-1] == 2 else None


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K packed 6-bit scales uint8 [nb, 12] -> sc, m int [nb, 8]."""
    s = s.long()
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 63, (md & 15) | ((d >> 6) << 4)], dim=1)
    mn = torch.cat([m & 63, (md >> 4) | ((m >> 6) << 4)], dim=1)
    return sc, mn


def _blocks_to_f32(type_id: int, b: torch.Tensor) -> torch.Tensor:
    """uint8 blocks [nb, bytes] -> float32 [nb, weights per block]."""
    nb = b.shape[0]
    if type_id in (2, 3, 6, 7, 8):
        d = _f16(b[:, 0:2])[:, None]
        if type_id == 8:
            return b[:, 2:].contiguous().view(torch.int8).float() * d
        off = 4 if type_id in (3, 7) else 2
        m = _f16(b[:, 2:4])[:, None] if off == 4 else None
        if type_id in (6, 7):
            qh = b[:, off:off + 4].long()
            qh = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
            hi = ((qh[:, None] >> torch.arange(32)) & 1) << 4
            off += 4
        else:
            hi = 0
        qs = b[:, off:off + 16].long()
        q = torch.cat([qs & 15, qs >> 4], dim=1) | hi
        if type_id == 2:
            return d * (q - 8).float()
        if type_id == 6:
            return d * (q - 16).float()
        return d * q.float() + m
    if type_id in (12, 13):
        d, dmin = _f16(b[:, 0:2])[:, None], _f16(b[:, 2:4])[:, None]
        sc, mn = _scale_min_k4(b[:, 4:16])
        d1 = (d * sc.float())[:, :, None]
        m1 = (dmin * mn.float())[:, :, None]
        ql = b[:, 16:144] if type_id == 12 else b[:, 48:176]
        ql = ql.long().view(nb, 4, 1, 32)
        q = torch.cat([ql & 15, ql >> 4], dim=2).view(nb, 8, 32)
        if type_id == 13:
            qh = b[:, 16:48].long().view(nb, 1, 32)
            q = q | (((qh >> torch.arange(8).view(1, 8, 1)) & 1) << 4)
        return (d1 * q.float() - m1).reshape(nb, 256)
    if type_id == 14:
        ql, qh = b[:, 0:128].long(), b[:, 128:192].long()
        sc = b[:, 192:208].contiguous().view(torch.int8).float()
        d = _f16(b[:, 208:210])[:, None]
        ds = (d * sc).view(nb, 16, 1)
        ql = ql.view(nb, 2, 1, 64)
        ql = torch.cat([ql & 15, ql >> 4], dim=2).view(nb, 8, 32)
        qh = qh.view(nb, 2, 1, 32) >> torch.tensor([0, 2, 4, 6]).view(1, 1, 4, 1)
        qh = (qh & 3).view(nb, 8, 32)
        q = ((ql | (qh << 4)) - 32).view(nb, 16, 16).float()
        return (ds * q).reshape(nb, 256)
    raise ValueError(f"ggml type {type_id} is not supported")


def reference_dequantize(w: GGUFWeight) -> torch.Tensor:
    """float32 [out, in] by the torch formulas (no native code)."""
    _, bs, bb = TYPES[w.type]
    n, k = w.shape
    blocks = w.data.contiguous().view(-1, bb)
    return _blocks_to_f32(w.type, blocks).view(n, k)


# ---------------------------------------------------------------------------------------
# running


def dequantize(w: GGUFWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight the blocks stand for: [out, in] in ``dtype`` (exact in float32)."""
    so = lib()
    n, k = w.shape
    if so is None:
        return reference_dequantize(w).to(dtype)
    bf16 = dtype == torch.bfloat16
    out = torch.empty(n, k, dtype=torch.bfloat16 if bf16 else torch.float32)
    so.kq_dequant(w.type, w.data.data_ptr(), w.stride, n, k, out.data_ptr(), int(bf16), torch.get_num_threads())
    return out if out.dtype == dtype else out.to(dtype)


def get_rows(w: GGUFWeight, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``ids`` (any shape) of the matrix: [*ids.shape, in] in dtype (an embedding lookup)."""
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    so = lib()
    if so is None:
        rows = GGUFWeight(w.type, (flat.numel(), w.shape[1]), w.data.index_select(0, flat))
        return reference_dequantize(rows).to(dtype).view(*ids.shape, w.shape[1])
    out = torch.empty(flat.numel(), w.shape[1], dtype=torch.float32)
    so.kq_get_rows(w.type, w.data.data_ptr(), w.stride, flat.data_ptr(), flat.numel(), w.shape[1], out.data_ptr())
    return out.to(dtype).view(*ids.shape, w.shape[1])


def linear(x: torch.Tensor, w: GGUFWeight) -> torch.Tensor:
    """x [..., in] -> [..., out] in x's dtype: the native matmul for up to 8 rows, else one
    dequantization and a torch matmul."""
    n, k = w.shape
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    so = lib()
    if so is None or m > MAX_ROWS or x.device.type != "cpu":
        return F.linear(x, dequantize(w, x.dtype if x.dtype != torch.float16 else torch.float32).to(x.dtype))
    xf = x2.to(torch.float32).contiguous()
    y = torch.empty(m, n, dtype=torch.float32)
    so.kq_gemm(w.type, xf.data_ptr(), m, k, w.data.data_ptr(), w.stride, n, y.data_ptr(), n, torch.get_num_threads())
    return y.to(x.dtype).view(*x.shape[:-1], n)


class GGUFExperts:
    """Routed SwiGLU experts held as GGUF blocks (gate, up, down per expert), run for one token
    by one native call: ``__call__(x [1, H], weights [1, k], indices [1, k]) -> [1, H]``."""

    def __init__(self, gates, ups, downs):
        self._keep = (list(gates), list(ups), list(downs))
        g0, u0, d0 = gates[0], ups[0], downs[0]
        self.types = torch.tensor([g0.type, u0.type, d0.type], dtype=torch.int32)
        self.strides = (g0.stride, u0.stride, d0.stride)
        self.inter, self.hidden = g0.shape[0], g0.shape[1]
        self.table = torch.tensor([[g.data.data_ptr(), u.data.data_ptr(), d.data.data_ptr()]
                                   for g, u, d in zip(gates, ups, downs)], dtype=torch.int64)

    @staticmethod
    def fits(gates, ups, downs) -> bool:
        if lib() is None or not gates:
            return False
        g0, u0, d0 = gates[0], ups[0], downs[0]
        for g, u, d in zip(gates, ups, downs):
            if not all(isinstance(t, GGUFWeight) and t.device.type == "cpu" for t in (g, u, d)):
                return False
            if (g.type, u.type, d.type) != (g0.type, u0.type, d0.type) or g.shape != g0.shape \
                    or u.shape != g0.shape or d.shape != (g0.shape[1], g0.shape[0]) \
                    or (g.stride, u.stride, d.stride) != (g0.stride, u0.stride, d0.stride):
                return False
        return True

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        idx = indices.reshape(-1).to(torch.int64).contiguous()
        wts = weights.reshape(-1).to(torch.float32).contiguous()
        xf = x.reshape(-1).to(torch.float32).contiguous()
        y = torch.empty(self.hidden, dtype=torch.float32)
        rc = _LIB.kq_moe(self.table.data_ptr(), self.types.data_ptr(), *self.strides, self.inter, self.hidden,
                         idx.data_ptr(), wts.data_ptr(), idx.numel(), -1, xf.data_ptr(), y.data_ptr(),
                         torch.get_num_threads())
        if rc:
            raise MemoryError("kq_moe: out of memory")
        return y.view(1, -1).to(x.dtype)
