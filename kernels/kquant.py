"""GGUF block-quantized weights kept in their file format, and the kernels that run them.

    GGUFWeight(type, shape, data)    a [out, in] matrix as ggml blocks (uint8 [out, row_bytes])
    linear(x, w) / dequantize(w, dtype) / get_rows(w, ids, dtype) / GGUFExperts
    reference_linear(x, w, act)      the plain-torch math of linear() at either precision
    act_bits() / activations(bits)   the activation precision the matmuls use (one place)
    TYPES                            ggml type id -> (name, weights per block, bytes per block)

Types run: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL (blocks of 32) and Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K, IQ4_XS (super-blocks of 256), read in place by kernels/csrc/kquant.c: the weights are
never converted, so what runs is bit for bit what the file holds (its dequantized values
equal ggml's / gguf-py's). The i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S:
kernels/iquant.py) are read in place too, by kernels/iquant.py's own library
(kernels/csrc/iquant_dot.h: their blocks unpacked to int8 codes, integer dot products against
the same Q8_K activations, at 8 and 16 bits); at 32 bits, or many rows, their tiles of rows are
dequantized (exactly, float32) and multiplied with torch. The fused MoE step (GGUFExperts,
kq_moe) takes them too, at 8 and 16 bits: kernels/iquant.py's row dot product passed in by
address (at 32 bits such experts go one by one through linear()). A decode step's one native
call per layer (kernels/decode_step.py) calls this library's kq_gemm and kq_moe by address
(``entry``) for a GGUF model's linears and experts.

Activations (``act_bits()``: kernels.dispatch's plan), rounded once per call and row to llama.cpp's 8-bit blocks --
Q8_0 (32 per scale) for the 32-blocks, Q8_K (256) for the super-blocks -- then integer block dot
products (kernels/csrc/kquant_dot.h: AVX2 maddubs / madd, VNNI's dpbusd where the target has
it; ARM64 NEON, sdot where the target has it; or plain C, all computing the same integers;
the i-quants' kernels/csrc/iquant_dot.h: AVX2, NEON or plain C, bit for bit the same results):
    8   exactly llama.cpp's activation codes (its speed and its rounding error);
    16  (the default) each code plus a second 8-bit code for the remainder x 128: 15 bits,
        one more maddubs per 32 weights (AVX2's blocks of 32: 128 q + r as int16 madds); at
        least as close to the exact model as llama.cpp is (tests/test_engine_gguf.py), where 8
        bits is only as close, a coin flip per file;
    32  float32 activations and dot products over the dequantized weights (the exact reference).
``DUET_GGUF_ACT_BITS=8|16|32`` sets it; ``dispatch.overridden(gguf_act_bits=)`` within a block.
Up to 8 activation rows go through the native matmul; more rows (prefill) either
  - run the tiled integer GEMM (kq_gemm_tiled: Q4_0, Q8_0, Q4_K, Q6_K, activations rounded once
    to llama.cpp's 8-bit blocks, each weight block unpacked once per 128 rows) where
    ``tiled_gemm_for`` says so: at ``act_bits()`` 8 (llama.cpp's precision, chosen), on x86
    builds where the tiles would be float32 (AVX2: 1.15-1.4x their speed at 512 rows, 1.3-3x
    up to 64); the default 16 bits keeps prefill at the float32 tiles' precision; or
  - dequantize the matrix in tiles of rows and run torch matmuls over all of them: float32, or,
    for bf16 activations on a CPU that multiplies bf16 natively (AVX512_BF16, AMX), bf16 tiles
    and matmuls (``dispatch.plan().gguf.prefill_dtype``; float32 at 32 bits), as the engine's
    other prefills.

The C file is built with kernels/cpu_native.py's target flags (``-march=native``,
``DUET_NATIVE_MARCH``, ``DUET_CPU=avx2|scalar``), -O3, torch's OpenMP runtime, cached by a
hash of sources and flags, plus ``-ffp-contract=off`` so no fused multiply-add changes a
dequantized weight; where the compiler has no OpenMP it is built without (one thread), as
kernels/cpu_native's library is. ``variant(march)`` swaps in another build for a block (tests
run the AVX2 and plain-C builds on any x86-64 CPU, and tests/arm64_emulator.py the ARM64 one). Where no compiler works, a vectorised torch
dequantizer (same formulas, float32) stands in.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import cpu_native, dispatch, iquant

SOURCE = Path(__file__).resolve().parent / "csrc" / "kquant.c"
HEADERS = (SOURCE.parent / "kquant_dot.h", SOURCE.parent / "q8_activations.h", SOURCE.parent / "bf16.h")
EXTRA_FLAGS = ("-ffp-contract=off",)
LAYOUT = "gguf"
TILE_BYTES = 8 << 20     # prefill: the bytes of weight rows dequantized per matmul
TILED_TYPES = (2, 8, 12, 14)   # Q4_0, Q8_0, Q4_K, Q6_K: the tiled integer GEMM (tiled_gemm_for) ...
TILED_ISAS = ("avx2", "avx-vnni", "avx512-vnni")   # ... on the builds where it was measured
TILED_ROWS = 64                # every such type, build and CPU: up to this many rows ...
TILED_MIN_N = 128              # ... beyond, AVX2-class CPUs, for a weight of at least this many rows

# ggml type id -> (name, weights per block, bytes per block): the types with native dot products ...
DOT_TYPES = {2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24),
         8: ("Q8_0", 32, 34), 20: ("IQ4_NL", 32, 18), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
         12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 23: ("IQ4_XS", 256, 136)}
# ... and the i-quants (kernels/iquant.py), run as dequantized tiles of rows
TYPES = {**DOT_TYPES, **iquant.IQ_TYPES}
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


def build(cache_dir: Path | None = None, cc: str | None = None, march: str | None = None,
          openmp: bool = True) -> Path:
    """Compile the library unless cached; its path. RuntimeError with the compiler's message.
    ``march`` as kernels.cpu_native.flags takes it (None: $DUET_NATIVE_MARCH, DUET_CPU, native)."""
    return cpu_native.build(cache_dir, cc, march, openmp, source=SOURCE, headers=HEADERS, extra=EXTRA_FLAGS)[0]


def load(march: str | None = None) -> ctypes.CDLL:
    """Build (or find cached) and load the library for a target; RuntimeError/OSError."""
    return _bind(ctypes.CDLL(str(cpu_native.build_any(march, source=SOURCE, headers=HEADERS, extra=EXTRA_FLAGS))))


def _bind(so):
    so.kq_isa.restype = ctypes.c_char_p
    so.kq_isa.argtypes = []
    so.kq_dequant.argtypes = [_c_int, _ptr, _c_long, _c_long, _c_int, _ptr, _c_int, _c_int]
    so.kq_get_rows.argtypes = [_c_int, _ptr, _c_long, _ptr, _c_long, _c_int, _ptr]
    so.kq_gemm.argtypes = [_c_int, _ptr, _c_int, _c_int, _ptr, _c_long, _c_long, _ptr, _c_long, _c_int, _c_int]
    so.kq_moe.argtypes = [_ptr, _ptr, _c_long, _c_long, _c_long, _c_int, _c_int, _ptr, _ptr, _c_int,
                          _c_int, _ptr, _ptr, _c_int, _c_int, _ptr, _ptr]
    so.kq_gemm_tiled.argtypes = [_c_int, _ptr, _c_int, _c_int, _ptr, _c_long, _c_long, _ptr, _c_long, _c_int]
    for f in (so.kq_dequant, so.kq_get_rows, so.kq_gemm, so.kq_moe, so.kq_gemm_tiled):
        f.restype = _c_int
    return so


def lib() -> ctypes.CDLL | None:
    """The library, built and loaded once per process; None where it cannot be (then the torch
    dequantizer runs). ``DUET_KERNELS=reference`` keeps it unloaded."""
    global _LIB, _TRIED
    if not _TRIED:
        _TRIED = True
        _LIB = cpu_native.try_load(load, "duet GGUF kernels", "the torch dequantizer")
    return _LIB


@contextmanager
def variant(march: str):
    """Within the block the library built for ``march`` ("haswell", "x86-64", ...) runs every
    call. Raises RuntimeError where that target does not build."""
    lib()
    with swapped(load(march)) as so:
        yield so


@contextmanager
def swapped(so):
    """Within the block ``so`` (a library with this one's entry points, bound by ``_bind``:
    another build, or one run elsewhere, e.g. an emulated CPU's) runs every call."""
    global _LIB, _TRIED
    lib()
    saved = (_LIB, _TRIED)
    _LIB, _TRIED = so, True
    dispatch.replan()
    try:
        yield so
    finally:
        _LIB, _TRIED = saved
        dispatch.replan()


def isa() -> str | None:
    """The SIMD path of the integer dot products: "avx512-vnni" or "avx-vnni" (AVX2 code with
    VNNI's dot instruction), "avx2", "neon-dotprod" or "neon" (ARM64 with / without sdot) or
    "scalar"; None when not loaded."""
    so = lib()
    return so.kq_isa().decode() if so is not None else None


def _native() -> bool:
    return dispatch.plan().gguf.impl == "native"


def act_bits() -> int:
    """The activation precision of the GGUF matmuls: 8 (llama.cpp's 8-bit blocks), 16 (two
    8-bit terms) or 32 (float32, the exact product of the dequantized weights); the plan's
    (kernels.dispatch: $DUET_GGUF_ACT_BITS, else 16; ``dispatch.overridden(gguf_act_bits=)``)."""
    return dispatch.plan().gguf.act_bits


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


# IQ4_NL / IQ4_XS: code c stands for d x KVALUES_IQ4[c]
KVALUES_IQ4 = torch.tensor([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113])
_SHIFT2 = torch.tensor([0, 2, 4, 6])


def _crumbs(qs: torch.Tensor) -> torch.Tensor:
    """Q2_K / Q3_K 2-bit codes: bytes [nb, 64] -> [nb, 8, 32], weight 128 n + 32 j + l from
    bits 2 j of byte 32 n + l."""
    return ((qs.long().view(-1, 2, 1, 32) >> _SHIFT2.view(1, 1, 4, 1)) & 3).view(-1, 8, 32)


def _q3_k_scales(s: torch.Tensor) -> torch.Tensor:
    """Q3_K packed 6-bit scales uint8 [nb, 12] -> signed int [nb, 16]."""
    s = s.long()
    lo = torch.cat([s[:, 0:8] & 15, s[:, 0:8] >> 4], dim=1)
    hi = ((s[:, 8:12].view(-1, 1, 4) >> _SHIFT2.view(1, 4, 1)) & 3).reshape(-1, 16)
    return (lo | (hi << 4)) - 32


def _iq4_xs_scales(b: torch.Tensor) -> torch.Tensor:
    """IQ4_XS blocks uint8 [nb, 136] -> signed scales int [nb, 8] (one per 32 weights)."""
    sh = b[:, 2].long() | (b[:, 3].long() << 8)
    sl = b[:, 4:8].long()
    lo = torch.stack([sl & 15, sl >> 4], dim=2).reshape(-1, 8)
    hi = (sh[:, None] >> (2 * torch.arange(8))) & 3
    return (lo | (hi << 4)) - 32


def _iq4_levels(qs: torch.Tensor) -> torch.Tensor:
    """bytes [..., 16] -> levels [..., 32]: low nibbles, then high."""
    qs = qs.long()
    return KVALUES_IQ4[torch.cat([qs & 15, qs >> 4], dim=-1)]


def _blocks_to_f32(type_id: int, b: torch.Tensor) -> torch.Tensor:
    """uint8 blocks [nb, bytes] -> float32 [nb, weights per block]."""
    nb = b.shape[0]
    if type_id in iquant.IQ_TYPES:
        return iquant.torch_dequantize_rows(type_id, b, TYPES[type_id][1])
    if type_id == 20:
        return _f16(b[:, 0:2])[:, None] * _iq4_levels(b[:, 2:18]).float()
    if type_id == 23:
        dl = (_f16(b[:, 0:2])[:, None] * _iq4_xs_scales(b).float()).view(nb, 8, 1)
        return (dl * _iq4_levels(b[:, 8:136].view(nb, 8, 16)).float()).reshape(nb, 256)
    if type_id == 10:
        sc = b[:, 0:16].long()
        d, dmin = _f16(b[:, 80:82])[:, None], _f16(b[:, 82:84])[:, None]
        dl = (d * (sc & 15).float()).view(nb, 16, 1)
        ml = (dmin * (sc >> 4).float()).view(nb, 16, 1)
        return (dl * _crumbs(b[:, 16:80]).view(nb, 16, 16).float() - ml).reshape(nb, 256)
    if type_id == 11:
        dl = (_f16(b[:, 108:110])[:, None] * _q3_k_scales(b[:, 96:108]).float()).view(nb, 16, 1)
        hm = (b[:, 0:32].long().view(nb, 1, 32) >> torch.arange(8).view(1, 8, 1)) & 1
        q = (_crumbs(b[:, 32:96]) - 4 * (1 - hm)).view(nb, 16, 16)   # a clear high bit: 4 less
        return (dl * q.float()).reshape(nb, 256)
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
    n, k = w.shape
    if not _native():
        return reference_dequantize(w).to(dtype)
    if w.type in iquant.IQ_TYPES:
        return iquant.dequantize_rows(w.type, w.data, k).to(dtype)
    so = _LIB
    bf16 = dtype == torch.bfloat16
    out = torch.empty(n, k, dtype=torch.bfloat16 if bf16 else torch.float32)
    so.kq_dequant(w.type, w.data.data_ptr(), w.stride, n, k, out.data_ptr(), int(bf16), torch.get_num_threads())
    return out if out.dtype == dtype else out.to(dtype)


def get_rows(w: GGUFWeight, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``ids`` (any shape) of the matrix: [*ids.shape, in] in dtype (an embedding lookup)."""
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    so = _LIB
    if not _native() or w.type in iquant.IQ_TYPES:
        rows = GGUFWeight(w.type, (flat.numel(), w.shape[1]), w.data.index_select(0, flat))
        return dequantize(rows, dtype).view(*ids.shape, w.shape[1])
    out = torch.empty(flat.numel(), w.shape[1], dtype=torch.float32)
    so.kq_get_rows(w.type, w.data.data_ptr(), w.stride, flat.data_ptr(), flat.numel(), w.shape[1], out.data_ptr())
    return out.to(dtype).view(*ids.shape, w.shape[1])


def linear(x: torch.Tensor, w: GGUFWeight) -> torch.Tensor:
    """x [..., in] -> [..., out] in x's dtype: the native matmul for up to 8 rows (activations
    at ``act_bits()``; the i-quants' in kernels/iquant.py's library, at 8 and 16 bits), else the
    tiled integer GEMM at 8-bit activations where ``tiled_gemm_for`` says so (`_tiled_gemm`),
    else tiles of dequantized rows and torch matmuls over all rows (`_tiled_linear`)."""
    n, k = w.shape
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    plan = dispatch.plan().gguf
    if plan.impl != "native" or x.device.type != "cpu":
        return F.linear(x, dequantize(w, x.dtype if x.dtype != torch.float16 else torch.float32).to(x.dtype))
    iq = w.type in iquant.IQ_TYPES
    if m > plan.native_rows and tiled_gemm_for(dispatch.plan(), w.type, m, n):
        return _tiled_gemm(x2, w).to(x.dtype).view(*x.shape[:-1], n)
    if m > plan.native_rows or (iq and not _iq_dot(plan.act_bits)):
        dtype = plan.prefill_dtype if x.dtype == torch.bfloat16 else torch.float32
        return _tiled_linear(x2, w, dtype).to(x.dtype).view(*x.shape[:-1], n)
    if iq:   # kernels/iquant.py's own library: the i-quants' integer block dot products
        return iquant.native_linear(w.type, x2, w.data, k, plan.act_bits).to(x.dtype).view(*x.shape[:-1], n)
    xf = x2.to(torch.float32).contiguous()
    y = torch.empty(m, n, dtype=torch.float32)
    rc = _LIB.kq_gemm(w.type, xf.data_ptr(), m, k, w.data.data_ptr(), w.stride, n, y.data_ptr(), n,
                      torch.get_num_threads(), plan.act_bits)
    if rc:
        raise MemoryError("kq_gemm: out of memory") if rc == 1 else ValueError(
            f"kq_gemm: a {w.mode} {w.shape} weight cannot take {m} rows of {k}")
    return y.to(x.dtype).view(*x.shape[:-1], n)


def tiled_gemm_for(plan: dispatch.Plan, type_id: int, rows: int, n: int) -> bool:
    """Whether ``rows`` (> native_rows) activation rows times an [n, k] weight of ``type_id`` run
    the tiled integer GEMM (kq_gemm_tiled: 8-bit activations, llama.cpp's codes) rather than
    float32 tiles. Only at 8-bit activations (``DUET_GGUF_ACT_BITS=8``: llama.cpp's codes, its
    precision, chosen; at the default 16 bits prefill keeps the float32 tiles, closer to the exact
    model than 8-bit codes, as decode's two terms are; 32 is the exact float reference), where the
    tiles would be float32 (``prefill_dtype``: bf16 CPUs keep their much faster bf16 tiles), on
    the builds it was measured on. One core, GFLOP/s, tiled vs float32 tiles (dequantize + MKL):
      AVX2 build, MKL held to AVX2, 512 rows of 1408x2048 / 2048x2048 / 5632x2048: Q4_0 125-135 vs
        105-109, Q4_K 138-144 vs 107-110, Q6_K 141-150 vs 105-107, Q8_0 94-97 vs 98-109 (its
        8-bit x 8-bit products need int16 madds: 0.9x); up to 64 rows every type wins (16 rows:
        82-128 vs 26-52, 48 rows: 95-133 vs 56-75; Q8_0 1.0x at 128 rows); at 512 rows an n = 64
        matrix loses (Q4_K 81-88 vs 90-92: rounding the activations outweighs its few products),
        n = 128 wins (105-114 vs 89-102);
      AVX-VNNI build (dpbusd: Q8_0 as Q4_0), MKL held to AVX2, 512 rows: Q8_0 137-139 vs 100-110,
        Q4_0 134-136 vs 109, Q4_K 146-147 vs 108-111, Q6_K 153-155 vs 108-110;
      AVX-512 VNNI build against MKL's AVX-512 float32 (a CPU without native bf16), 2048x2048:
        64 rows 136-179 vs 78-120, 128 rows 144-182 vs 122-151, 512 rows 143-174 vs 159-186.
    So: up to 64 rows always; beyond, only where MKL's float32 GEMM is 256-bit (the plan's CPU
    level not avx512), from n = 128, Q8_0 only with VNNI."""
    g = plan.gguf
    if g.prefill_dtype != torch.float32 or g.act_bits != 8 or g.isa not in TILED_ISAS \
            or type_id not in TILED_TYPES:
        return False
    if rows <= TILED_ROWS:
        return True
    return plan.capability.level != "avx512" and n >= TILED_MIN_N and (type_id != 8 or g.isa != "avx2")


def _tiled_gemm(x: torch.Tensor, w: GGUFWeight) -> torch.Tensor:
    """Many rows through kq_gemm_tiled: float32 [M, out], activations rounded to 8-bit blocks."""
    n, k = w.shape
    xf = x.to(torch.float32).contiguous()
    y = torch.empty(xf.shape[0], n, dtype=torch.float32)
    rc = _LIB.kq_gemm_tiled(w.type, xf.data_ptr(), xf.shape[0], k, w.data.data_ptr(), w.stride, n, y.data_ptr(), n,
                            torch.get_num_threads())
    if rc:
        raise MemoryError("kq_gemm_tiled: out of memory") if rc == 1 else ValueError(
            f"kq_gemm_tiled: a {w.mode} {w.shape} weight cannot take {xf.shape[0]} rows of {k}")
    return y


def entry(name: str) -> int | None:
    """The address of the library's entry point ``name`` (kq_gemm, kq_moe), for native code that
    calls it (kernels/decode_step.py's one-call decode layer: its GGUF linears and experts), or
    None (no library, or the plan does not run it)."""
    so = lib() if _native() else None
    if not isinstance(so, ctypes.CDLL) or not dispatch.native() or not cpu_native.in_process():
        return None   # (an emulated build, tests/arm64_emulator.py: no calls between it and this process)
    return ctypes.cast(getattr(so, name), ctypes.c_void_p).value


def _iq_dot(act: int) -> bool:
    """Whether an i-quant runs through kernels/iquant.py's native dot product at ``act`` bits
    (its library loaded; 8 or 16 bits), else through float32 tiles."""
    return act in iquant.DOT_ACT_BITS and iquant.lib() is not None


def _tiled_linear(x: torch.Tensor, w: GGUFWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Many rows (prefill): [M, out] in ``dtype``. The weight is dequantized a tile of rows at a
    time (TILE_BYTES) into one reused buffer of ``dtype``, each tile multiplied with all M rows
    in ``dtype``: float32, or bf16 (bf16 activations where the CPU multiplies bf16 natively,
    ``dispatch.plan().gguf.prefill_dtype``: the weights rounded to bf16 as they are unpacked,
    products summed in float32 by oneDNN, as the engine's other prefills there)."""
    n, k = w.shape
    xf = x.to(dtype).contiguous()
    y = torch.empty(x.shape[0], n, dtype=dtype)
    rows = max(16, min(n, TILE_BYTES // (dtype.itemsize * k)))
    buf = torch.empty(rows, k, dtype=dtype)
    iq = w.type in iquant.IQ_TYPES
    for j in range(0, n, rows):
        r = min(rows, n - j)
        tile = buf[:r]
        if iq:   # float32, or rounded to bf16 as it is written
            iquant.dequantize_rows(w.type, w.data[j:j + r], k, out=tile)
        else:
            _LIB.kq_dequant(w.type, w.data.data_ptr() + j * w.stride, w.stride, r, k, tile.data_ptr(),
                            int(dtype == torch.bfloat16), torch.get_num_threads())
        torch.mm(xf, tile.t(), out=y[:, j:j + r])   # straight into y's columns (a row stride BLAS takes)
    return y


def quantize_activations(x: torch.Tensor, block: int, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's activation rounding, in torch: x float32 [M, k] -> (codes [M, k], scales
    float32 [M, k / block]), x ~ codes x scale. block 32: Q8_0 (d = absmax / 127, codes round
    half away from zero); 256: Q8_K (d = -max / 127 with max the signed element of largest
    magnitude, codes round half to even, at most 127). bits 8: int8 codes; 16: int16 codes
    128 q + r, r the remainder x 128 rounded half away from zero, and scales d / 128."""
    m, k = x.shape
    v = x.to(torch.float32).reshape(m, k // block, block)
    if block == 32:
        d = v.abs().amax(-1, keepdim=True) / 127.0
        inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
        t = v * inv
        q = _round_away(t)
    else:
        mx = torch.gather(v, -1, v.abs().argmax(-1, keepdim=True))
        # a true division, as the C code's (torch's ``scalar / tensor`` multiplies by a rounded
        # reciprocal: one ulp off a quarter of the time, enough to move a 16-bit code)
        iscale = torch.where(mx != 0, torch.full_like(mx, -127.0) / mx, torch.zeros_like(mx))
        t = v * iscale
        q = torch.round(t).clamp(max=127)
        d = torch.where(mx != 0, 1.0 / iscale, torch.zeros_like(mx))
    if bits == 16:
        r = _round_away((t - q) * 128.0).clamp(-127, 127)
        return (q * 128 + r).to(torch.int16).reshape(m, k), (d / 128.0).reshape(m, k // block)
    return q.to(torch.int8).reshape(m, k), d.reshape(m, k // block)


def _round_away(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


def reference_linear(x: torch.Tensor, w: GGUFWeight, act: int | None = None) -> torch.Tensor:
    """The math linear() computes, in float64 torch (no native code): float32 [..., out].
    act 32: x times the dequantized weights; 8 / 16: x rounded as quantize_activations (the
    block size of the weight's family: 32, or 256 for the K-quants and i-quants), then the same
    product. An i-quant without its native dot product (no library) runs float32 tiles: act 32."""
    act = act_bits() if act is None else act
    if w.type in iquant.IQ_TYPES and not _iq_dot(act):
        act = 32
    n, k = w.shape
    x2 = x.reshape(-1, k).to(torch.float32)
    if act in (8, 16):
        block = 256 if w.group_size == 256 else 32
        q, d = quantize_activations(x2, block, act)
        x2 = (q.double().view(-1, k // block, block) * d.double().unsqueeze(-1)).view(-1, k)
    y = x2.double() @ reference_dequantize(w).double().t()
    return y.float().view(*x.shape[:-1], n)


class GGUFExperts:
    """Routed SwiGLU experts held as GGUF blocks (gate, up, down per expert), run for one token
    by one native call: ``__call__(x [1, H], weights [1, k], indices [1, k]) -> [1, H]``.
    Matrices of i-quants are read there by kernels/iquant.py's library (its row dot product,
    passed by address, and the type's grid) at 8 or 16 activation bits; at 32 bits, or without
    that library, such experts run one by one through ``linear``."""

    def __init__(self, gates, ups, downs):
        self._keep = (list(gates), list(ups), list(downs))
        g0, u0, d0 = gates[0], ups[0], downs[0]
        self.types = torch.tensor([g0.type, u0.type, d0.type], dtype=torch.int32)
        self.strides = (g0.stride, u0.stride, d0.stride)
        self.inter, self.hidden = g0.shape[0], g0.shape[1]
        self.table = torch.tensor([[g.data.data_ptr(), u.data.data_ptr(), d.data.data_ptr()]
                                   for g, u, d in zip(gates, ups, downs)], dtype=torch.int64)
        iq = [t.type in iquant.IQ_TYPES for t in (g0, u0, d0)]
        self.iq = any(iq)
        self._grids = [iquant.grid(iquant.IQ_TYPES[t.type][0]) if q else None for t, q in zip((g0, u0, d0), iq)]
        self.grids = torch.tensor([g.data_ptr() if g is not None else 0 for g in self._grids], dtype=torch.int64)

    def table_desc(self) -> list[int] | None:
        """The fields of kernels/csrc/quant_gemv.c's GGUF FFN descriptor for this table (its rows'
        addresses, types, row strides of gate / up / down, intermediate size, grids), or None where
        kq_moe cannot take them at ``act_bits()`` (i-quants at 32 bits or without their library)."""
        if self.iq and not _iq_dot(act_bits()):
            return None
        return [self.table.data_ptr(), self.types.data_ptr(), *self.strides, self.inter, self.grids.data_ptr()]

    @staticmethod
    def iq_dot_addr() -> int:
        """kernels/iquant.py's row dot product (its address), 0 without its library."""
        so = iquant.lib()
        return ctypes.cast(so.iq_row_dot, ctypes.c_void_p).value if so is not None else 0

    @staticmethod
    def fits(gates, ups, downs) -> bool:
        if not _native() or not gates:
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
        act = act_bits()
        iq_dot = 0
        if self.iq:
            if not _iq_dot(act):
                return self._one_by_one(x, weights, indices)
            iq_dot = self.iq_dot_addr()
        idx = indices.reshape(-1).to(torch.int64).contiguous()
        wts = weights.reshape(-1).to(torch.float32).contiguous()
        xf = x.reshape(-1).to(torch.float32).contiguous()
        y = torch.empty(self.hidden, dtype=torch.float32)
        rc = _LIB.kq_moe(self.table.data_ptr(), self.types.data_ptr(), *self.strides, self.inter, self.hidden,
                         idx.data_ptr(), wts.data_ptr(), idx.numel(), -1, xf.data_ptr(), y.data_ptr(),
                         torch.get_num_threads(), act, iq_dot, self.grids.data_ptr())
        if rc:
            raise MemoryError("kq_moe: out of memory") if rc == 1 else ValueError(f"kq_moe refused types {self.types.tolist()}")
        return y.view(1, -1).to(x.dtype)

    def _one_by_one(self, x, weights, indices):
        gates, ups, downs = self._keep
        y = torch.zeros(1, self.hidden, dtype=torch.float32)
        for e, wt in zip(indices.reshape(-1).tolist(), weights.reshape(-1).float().tolist()):
            h = F.silu(linear(x, gates[e]).float()) * linear(x, ups[e]).float()
            y += wt * linear(h, downs[e]).float()
        return y.view(1, -1).to(x.dtype)
