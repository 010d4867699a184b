"""Triton versions of the engine's hot kernels, behind thin launchers with the references' signatures.

    quantized_linear(x, qw)                       kernels.quant.reference_quantized_linear
    mla_attention(q, cache, kv_lora, scale, start_pos)   kernels.mla.reference_mla_attention
    rms_norm(x, weight, eps)                      kernels.norm_rope.reference_rms_norm
    add_rms_norm(x, residual, weight, eps)        h = x + residual; (h, reference_rms_norm(h))
    apply_rope(x, cos, sin, interleaved=True)     kernels.norm_rope.reference_apply_rope
    moe_decode(x, weights, indices, ExpertTable)  kernels.moe.reference_moe, quantized SwiGLU experts
    fp8_block_dequant(w, scale_inv, dtype, out)   kernels.fp8.reference_fp8_block_dequant

Importing this module does not import triton (CPU-only installs never need it); the kernels
(``kernels.triton_kernels``) load on first use. ``available()`` tells whether triton imports,
``installed()`` whether it is there without importing it; whether CUDA tensors use these is
kernels.dispatch's plan (DUET_TRITON=0 turns them off), each op's module picks them from it.
Launchers take tensors on the device the kernels run on: CUDA, or CPU under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
from torch import Tensor

_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether triton can be imported here (checked once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import triton  # noqa: F401
            _AVAILABLE = True
        except Exception:   # ImportError, or a broken install raising anything at import
            _AVAILABLE = False
    return _AVAILABLE


def installed() -> bool:
    """Whether triton is there to import, without importing it (until ``available`` has)."""
    if _AVAILABLE is not None:
        return _AVAILABLE
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _k():
    from kernels import triton_kernels

    return triton_kernels


def _interpreted(t: Tensor) -> bool:
    # CPU tensors only reach the kernels through Triton's interpreter (TRITON_INTERPRET=1)
    return t.device.type == "cpu"


def _upcast(t: Tensor) -> bool:
    # the interpreter's dots are wrong for bf16/fp16 operands only (see triton_kernels._dot)
    return _interpreted(t) and t.dtype != torch.float32


_COMPILING: tuple[int, list] | None = None   # (arch, built kernels) inside compiling_for()


def _launch(name: str, grid: tuple, *args, **meta) -> None:
    """Start kernel ``name`` (constexprs and launch options by keyword): the one place kernels run."""
    kernel = getattr(_k(), name)
    if _COMPILING is None:
        kernel[grid](*args, **meta)
    else:
        _COMPILING[1].append((name, meta, _compile(kernel, args, meta, _COMPILING[0])))


@contextlib.contextmanager
def compiling_for(arch: int = 90):
    """Inside, the launchers compile their kernels for CUDA sm_<arch> instead of running them:
    no GPU needed. Call them with tensors on the "meta" device (shapes and dtypes only) and
    without TRITON_INTERPRET. Yields the list of (kernel name, constexprs, compiled kernel) built."""
    global _COMPILING
    built: list = []
    _COMPILING = (arch, built)
    try:
        yield built
    finally:
        _COMPILING = None


_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.uint8: "u8", torch.int8: "i8",
          torch.int32: "i32", torch.int64: "i64"}


def _compile(kernel, args: tuple, meta: dict, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    meta = dict(meta)
    options = {k: meta.pop(k) for k in ("num_warps", "num_stages") if k in meta}
    names = kernel.arg_names
    signature = {}
    for name, a in zip(names, args):
        if isinstance(a, Tensor):
            signature[name] = "*" + _TYPES[a.dtype]
        else:
            signature[name] = "fp32" if isinstance(a, float) else "i1" if isinstance(a, bool) else "i32"
    signature.update({name: "constexpr" for name in names[len(args):]})
    src = ASTSource(kernel, signature, {name: meta[name] for name in names[len(args):]})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def _pow2(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _prec(dtype: torch.dtype, split: bool = False) -> str:
    """tl.dot's input precision: bf16/fp16 ignore it; float32 operands must not be rounded to
    tf32's 10 bits: "ieee", or three tf32 products ("tf32x3", split=True: tensor cores, fewer
    registers, ~2^-21 relative; the quantization codes, small integers, are exact in tf32)."""
    if dtype != torch.float32:
        return "tf32"
    return "tf32x3" if split else "ieee"


@functools.lru_cache(maxsize=None)
def _programs_wanted(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8 if device.type == "cpu" else 264   # the interpreter: a few, so splits are tested; meta: an H100's


SPLIT_MIN_ROWS = 128   # MLA: fewer rows a split would write more partial results than it reads cache


# ---------------------------------------------------------------------------------------
# weight-only quantized linear

GEMV_MAX_M = 4   # up to this many rows each row streams the weight itself; above, tiles + tl.dot


def _gemv_block_k(group: int, int4: bool, x: Tensor) -> int:
    """Inputs per GEMV step: several whole groups, 256 bytes of each weight row on a GPU;
    fewer in the interpreter (its time grows with the tile), still more than one group."""
    if _interpreted(x):
        return max(group, 128)
    return max(group, 512 if int4 else 256)


def quantized_linear(x: Tensor, qw) -> Tensor:
    """x [..., in] (or [..., in'] padded with zeros to the weight's padded width) -> [..., out]
    in x's dtype, for a ``kernels.quant.QuantizedWeight`` in the portable layouts: int4
    "nibbles" (q [N', K'/2], scale_zero [K'/g, N', 2]) or int8 "codes" (q [N', K'], scale [K'/g, N'])."""
    if qw.layout not in ("nibbles", "codes"):
        raise ValueError(f"triton quantized_linear takes the nibbles/codes layouts, not {qw.layout!r}")
    n, k = qw.shape
    np_, kp = qw.padded_shape
    kx = x.shape[-1]
    if kx not in (k, kp):
        raise ValueError(f"input has {kx} features, the weight takes {k}")
    g = qw.group_size
    x2 = x.reshape(-1, kx)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.view(*x.shape[:-1], n)
    int4 = qw.mode == "int4"
    q = qw.tensors["q"].contiguous()   # no-ops for kernels.quant's own weights
    sc = qw.tensors["scale_zero" if int4 else "scale"].contiguous()
    width = kp // 2 if int4 else kp
    if m <= GEMV_MAX_M:   # enough programs to fill the GPU, each streaming up to 4 KiB of weight a step
        block_k = _gemv_block_k(g, int4, x)
        block_n = 16 if _cdiv(n, 16) >= 256 else 8 if _cdiv(n, 8) >= 128 else 4
        _launch("int4_gemv" if int4 else "int8_gemv", (_cdiv(n, block_n), m),
                x2, q, sc, y, n, kx, kp, np_, x2.stride(0), y.stride(0),
                GROUP=g, BLOCK_N=block_n, BLOCK_K=block_k)
    else:
        fp32 = x.dtype == torch.float32
        block_m = 16 if m <= 16 else 32 if m <= 32 or fp32 else 64
        block_n, block_k = 64, min(g, 64)
        # ptxas (sm_80, sm_90): 4 warps take 255 registers a thread for 64-row tiles; float32's
        # three tf32 products spill unless tiles have at most 32 rows, on 8 warps
        warps = 8 if block_m == 64 or fp32 else 4
        _launch("int4_mm" if int4 else "int8_mm", (_cdiv(m, block_m), _cdiv(n, block_n)),
                x2, q, sc, y, m, n, kx, width, np_, x2.stride(0), y.stride(0),
                GROUP=g, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                PREC=_prec(x.dtype, split=True), UPCAST=_upcast(x), num_warps=warps)
    return y.view(*x.shape[:-1], n)


# ---------------------------------------------------------------------------------------
# MoE decode: all selected quantized experts of one token in two launches


class ExpertTable:
    """One MoE layer's quantized experts for ``moe_decode``: expert e is the SwiGLU MLP
    w2(silu(g) · u) with [g; u] = w13(x) (as local_engine's MLP), w13 [2I, H], w2 [H, I],
    all in the same portable layout. Holds the weights and int64 tables of their addresses."""

    def __init__(self, w13: Sequence, w2: Sequence):
        if not w13 or len(w13) != len(w2):
            raise ValueError("ExpertTable needs one w2 per w13, at least one expert")
        first = w13[0]
        if first.layout not in ("nibbles", "codes"):
            raise ValueError(f"ExpertTable takes the nibbles/codes layouts, not {first.layout!r}")
        two_i, self.hidden = first.shape
        self.inter = two_i // 2
        for a, b in zip(w13, w2):
            if (a.shape, b.shape) != ((two_i, self.hidden), (self.hidden, self.inter)) or \
                    {a.mode, b.mode, a.layout, b.layout, a.group_size, b.group_size} != \
                    {first.mode, first.layout, first.group_size}:
                raise ValueError("ExpertTable: experts differ in shape, mode, layout or group size")
        self.mode, self.group = first.mode, first.group_size
        scale = "scale_zero" if self.mode == "int4" else "scale"
        dev = first.device

        def table(ws, name):
            if not all(w.tensors[name].is_contiguous() for w in ws):
                raise ValueError(f"ExpertTable: every expert's {name!r} must be contiguous")
            return torch.tensor([w.tensors[name].data_ptr() for w in ws], dtype=torch.int64, device=dev)

        self.weights = (list(w13), list(w2))   # the tables point into these: keep them alive
        self.q13, self.s13, self.q2, self.s2 = table(w13, "q"), table(w13, scale), table(w2, "q"), table(w2, scale)
        self.np13, self.hp = first.padded_shape
        self.np2, self.ip = w2[0].padded_shape


def moe_decode(x: Tensor, weights: Tensor, indices: Tensor, experts: ExpertTable) -> Tensor:
    """One token: x [1, H], weights [1, k] (float32), indices [1, k] -> Σ_j weights_j · expert_{indices_j}(x),
    [1, H] in x's dtype (``kernels.moe.moe`` with the table's experts)."""
    if x.shape[0] != 1:
        raise ValueError(f"moe_decode takes one token, got {x.shape[0]}")
    h, i, k = experts.hidden, experts.inter, indices.shape[-1]
    xr = x.reshape(h).contiguous()
    idx = indices.reshape(k).to(torch.int32)
    act = torch.empty(k, i, dtype=x.dtype, device=x.device)
    y = torch.empty(1, h, dtype=x.dtype, device=x.device)
    int4 = experts.mode == "int4"
    block_k = _gemv_block_k(experts.group, int4, x)
    block_up = 8 if _cdiv(i, 8) * k >= 256 else 4
    _launch("moe_up", (_cdiv(i, block_up), k), xr, idx, experts.q13, experts.s13, act, i, h, experts.hp, experts.np13,
            INT4=int4, GROUP=experts.group, BLOCK_N=block_up, BLOCK_K=block_k)
    block_down = 8 if _cdiv(h, 8) >= 128 else 4
    _launch("moe_down", (_cdiv(h, block_down),), act, idx, weights.reshape(k).contiguous(), experts.q2, experts.s2, y,
            h, i, experts.ip, experts.np2, k, INT4=int4, GROUP=experts.group, BLOCK_N=block_down, BLOCK_K=block_k)
    return y


# ---------------------------------------------------------------------------------------
# absorbed MLA attention


def mla_attention(q: Tensor, cache: Tensor, kv_lora: int, scale: float, start_pos: int) -> Tensor:
    """As ``kernels.mla.mla_attention``: q [B, T, H, kv_lora + rope], cache [B, S, kv_lora + rope]
    (rows past start_pos + T, if any, are ignored) -> latent output [B, T, H, kv_lora] in q's dtype."""
    B, T, H, D = q.shape
    S = cache.shape[1]
    R, P = kv_lora, D - kv_lora
    out = torch.empty(B, T, H, R, dtype=q.dtype, device=q.device)
    if B * T * H == 0:
        return out
    if q.stride(-1) != 1:
        q = q.contiguous()
    if cache.stride(-1) != 1:
        cache = cache.contiguous()
    if cache.dtype != q.dtype:
        cache = cache.to(q.dtype)
    valid = min(S, start_pos + T)
    block_r, block_p = _pow2(R, 16), _pow2(P, 16)
    block_h = 16 if block_r >= 512 else min(_pow2(H, 16), 64)   # the [heads, kv_lora] fp32 accumulator stays in registers
    block_s = 16 if block_r >= 512 else 32
    heads = _cdiv(H, block_h)
    min_rows = block_s if _interpreted(q) else SPLIT_MIN_ROWS
    splits = max(1, min(_programs_wanted(q.device) // (B * T * heads), _cdiv(valid, min_rows)))
    rows = _cdiv(_cdiv(valid, splits), block_s) * block_s
    splits = _cdiv(valid, rows)
    direct = splits == 1
    if direct:
        part = ml = out   # unused
    else:
        part = torch.empty(B * T * H * splits, R, dtype=torch.float32, device=q.device)
        ml = torch.empty(B * T * H * splits, 2, dtype=torch.float32, device=q.device)
    _launch("mla_partial", (B * T, heads, splits),
            q, cache, out, part, ml, T, H, R, P, valid, start_pos, float(scale), rows, splits,
            q.stride(0), q.stride(1), q.stride(2), cache.stride(0), cache.stride(1),
            BLOCK_H=block_h, BLOCK_S=block_s, BLOCK_R=block_r, BLOCK_P=block_p,
            PREC=_prec(q.dtype), UPCAST=_upcast(q), DIRECT=direct, num_warps=8 if block_r >= 256 else 4,
            num_stages=2 if q.dtype == torch.float32 else 3)   # float32, 3 stages: 111 KiB of shared memory
    if not direct:
        chunk = 2 if _interpreted(q) else 16   # the interpreter's tests are short: still loop
        _launch("mla_combine", (B * T * H, _cdiv(R, min(block_r, 128))), part, ml, out, R, splits,
                BLOCK_SPLIT=_pow2(splits), CHUNK=chunk, BLOCK_R=min(block_r, 128))
    return out


# ---------------------------------------------------------------------------------------
# RMSNorm, RoPE


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def _norm_warps(block_d: int) -> int:
    return 1 if block_d <= 256 else 4 if block_d <= 2048 else 8


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """weight * (x / rms(x)): the normalisation in float32, cast to x's dtype before the weight;
    the result has the dtype of ``weight * x`` (as the reference)."""
    d = x.shape[-1]
    xr = _rows(x)
    y = torch.empty(xr.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if xr.shape[0]:
        block = _pow2(d)
        _launch("rms_norm", (xr.shape[0],), xr, xr, weight.contiguous(), xr, y, d, float(eps),
                HAS_RES=False, BLOCK_D=block, num_warps=_norm_warps(block))
    return y.view(x.shape)


def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The decoder block's residual add fused with the next norm: h = x + residual (x's dtype),
    then (h, rms_norm(h, weight, eps)); one read of each input, one write of each output."""
    d = x.shape[-1]
    xr, rr = _rows(x), _rows(residual.to(x.dtype))
    h = torch.empty_like(xr)
    y = torch.empty(xr.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if xr.shape[0]:
        block = _pow2(d)
        _launch("rms_norm", (xr.shape[0],), xr, rr, weight.contiguous(), h, y, d, float(eps),
                HAS_RES=True, BLOCK_D=block, num_warps=_norm_warps(block))
    return h.view(x.shape), y.view(x.shape)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = True) -> Tensor:
    """Rotate x [..., T, heads, D] by cos/sin [T, D/2] in one pass (float32 math, x's dtype out)."""
    T, heads, d = x.shape[-3:]
    half = d // 2
    xr = x.reshape(-1, T, heads, d).contiguous()
    y = torch.empty_like(xr)
    if xr.numel():
        _launch("rope", (xr.shape[0] * T,), xr, cos.float().contiguous(), sin.float().contiguous(), y, T, heads, half,
                INTERLEAVED=interleaved, BLOCK_H=min(_pow2(heads), 16), BLOCK_HALF=_pow2(half))
    return y.view(x.shape)


# ---------------------------------------------------------------------------------------
# FP8 block dequant

FP8_BLOCK = 128


def fp8_block_dequant(w: Tensor, scale_inv: Tensor, dtype: torch.dtype = torch.float32,
                      out: Tensor | None = None) -> Tensor:
    """float8_e4m3fn w [out, in] × one scale per 128×128 block -> ``dtype`` (into ``out`` if given)."""
    out_f, in_f = w.shape
    if scale_inv.shape != (_cdiv(out_f, FP8_BLOCK), _cdiv(in_f, FP8_BLOCK)):
        raise ValueError(f"weight_scale_inv shape {tuple(scale_inv.shape)} does not fit weight {tuple(w.shape)}")
    if w.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_block_dequant takes float8_e4m3fn weights, not {w.dtype}")
    target = out if out is not None else torch.empty(out_f, in_f, dtype=dtype, device=w.device)
    dst = target if target.dtype == dtype and target.stride(-1) == 1 else \
        torch.empty(out_f, in_f, dtype=dtype, device=w.device)
    if w.numel():
        rows = 32
        s = scale_inv.to(w.device, torch.float32).contiguous()   # the loader reads scales to the CPU
        _launch("fp8_dequant", (_cdiv(out_f, rows), _cdiv(in_f, FP8_BLOCK)),
            w.contiguous().view(torch.uint8), s, dst, out_f, in_f, s.stride(0), dst.stride(0),
            BLOCK=FP8_BLOCK, ROWS=rows, num_warps=4)
    if dst is not target:
        target.copy_(dst)
    return target
