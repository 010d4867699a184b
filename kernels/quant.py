"""Linear layers, y = x Wᵀ: weight-only int8 / int4 quantization (a packed weight, its fast
matmuls and the reference) and dense bf16 weights pre-packed for oneDNN.

    reference_quantized_linear   dequantize, then a float32 matmul (the math)
    reference_native_linear      what kernels/csrc computes: rounded activations x the weight
    cpu_native.gemm              kernels/csrc's GEMV (the "cpu_native" layout, up to 4 rows)
    cpu_native.gemm_tiled        its tiled GEMM for more rows (prefill), where the plan has it
    aten int4pack                PyTorch's packed int4 kernel ("cpu_int4pack" / "cuda_int4pack")
    triton_ops.quantized_linear  CUDA, the portable layout
    kquant.linear                GGUF blocks read in place (kernels/kquant.py)
    quantized_linear             the op: the weight's layout was chosen from kernels.dispatch's
                                 plan when it was built (``from_codes``); this runs its kernel
    pack_dense / dense_linear    oneDNN's packed bf16 layout where the plan has it

int8: one bf16 scale per group of 32 inputs (as llama.cpp's Q8_0), 256 symmetric levels
      w = (u - 127.5) * scale, u in 0..255; 1.0625 bytes/param. The fast path splits u into
      its high and low nibbles and runs PyTorch's packed int4 kernel twice, sharing one
      scale/zero table built per call: int4mm(16x, hi, [s, s/2]) + int4mm(x, lo, [s, s/2]).
      (aten's own int8 kernel takes only one scale per row: twice Q8_0's rounding error.)
int4: asymmetric, one (scale, zero) pair per group of 64 inputs (w = (q - 8) * scale + zero,
      q in 0..15), the layout of ``aten._weight_int4pack_mm_for_cpu``; 0.5625 bytes/param.
Both pick their scales per group by a small search minimising the squared error, so they
round at least as accurately as Q8_0 / Q4_0 (group 32) do.

Shapes the packed kernel cannot take are padded with zero rows/columns at quantization time
(N % 16 == 0, K % group == 0), so every CPU weight runs it. Devices without a packed kernel
use the vectorised fallback (dequantize, then one F.linear). The packed kernel takes bf16
activations and returns bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels import dispatch

__all__ = [
    "QuantizedWeight",
    "quantize_weight",
    "quantized_linear",
    "reference_quantized_linear",
    "reference_round_activations",
    "reference_native_linear",
    "dequantize",
    "can_pack",
    "pack_dense",
    "dense_linear",
    "from_codes",
    "to_codes",
]

MODES = ("int8", "int4")
INT4_GROUPS = (32, 64, 128, 256)   # what aten's int4 kernel accepts
CUDA_INNER_K_TILES = 8
DEFAULT_GROUP = 64                 # int4: 0.5 + 4/64 = 0.5625 bytes/param
INT8_GROUP = 32                    # int8: 1 + 2/32 = 1.0625 bytes/param


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass
class QuantizedWeight:
    """A packed [out, in] weight.

    int8: layout "codes": ``q`` uint8 [N', K'] (u), ``scale`` bf16 [K'/group, N'];
          packed layouts ("cpu_int4pack", "cuda_int4pack"): ``hi``, ``lo`` (u >> 4, u & 15
          in the kernel's packing) and ``scale``.
          layout "cpu_native" (kernels/csrc, CPU): ``q`` int8 [N', K'] (u - 128), ``scale`` bf16
          [N', K'/group] -- the same bytes as "codes", laid out for a row-by-row dot product.
    int4: ``q`` packed uint8 (plain nibbles [N', K'/2] -- low nibble = even column -- when
          layout is "nibbles", else the kernel's packing), ``scale_zero`` bf16 [K'/group, N', 2];
          layout "cpu_native": ``q`` uint8 [N', K'/2], each 64 inputs in 32 bytes (byte i: input
          i low, input 32 + i high), ``scale_zero`` bf16 [N', K'/group, 2].
    N' >= out and K' >= in are the padded sizes; ``shape`` is the logical (out, in).
    """

    mode: str
    shape: tuple[int, int]
    group_size: int
    tensors: dict[str, Tensor]
    layout: str = "plain"
    # its kernel's arguments, bound at the first matmul (the per-call Python cost is what decode pays)
    bound: "NativeMatmul | PackedMatmul | None" = field(default=None, repr=False, compare=False)

    @property
    def padded_shape(self) -> tuple[int, int]:
        sc = self.tensors["scale" if self.mode == "int8" else "scale_zero"]
        if self.layout == NATIVE:      # scales [N', K'/group(, 2)]
            return (sc.shape[0], sc.shape[1] * self.group_size)
        return (sc.shape[1], sc.shape[0] * self.group_size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed weight, scales and zeros included."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.tensors["scale" if self.mode == "int8" else "scale_zero"].device

    def to(self, device) -> "QuantizedWeight":
        codes = to_codes(self)
        return from_codes(self.mode, self.shape, self.group_size,
                          {k: v.to(device) for k, v in codes.items()})


# ---------------------------------------------------------------------------------------
# quantization (rounding)


def _bf16_around(s: Tensor) -> tuple[Tensor, Tensor]:
    """The bf16 values just below and just above positive s (float32 results)."""
    b = s.to(torch.bfloat16)
    bits = b.view(torch.int16)
    below = torch.where(b.float() > s, (bits - 1).view(torch.bfloat16), b)
    above = torch.where(b.float() < s, (bits + 1).view(torch.bfloat16), b)
    return below.float(), above.float()


def _quantize_int8(w: Tensor, group: int, steps: int = 6) -> tuple[Tensor, Tensor]:
    """w [N, K] (K % group == 0) -> u uint8 [N, K], scale bf16 [K/g, N] with w ~ (u - 127.5) * s."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)                    # [N, G, g]
    amax = wg.abs().amax(-1, keepdim=True)
    best_err = best_s = None
    for f in torch.linspace(1.0, 0.9, steps).tolist():
        s0 = (amax * f / 127.5).clamp_min(1e-30)                    # a normal bf16: s/2 is exact
        for s in _bf16_around(s0):
            j = torch.floor(wg / s).clamp_(-128, 127)
            err = ((j + 0.5) * s - wg).square_().sum(-1, keepdim=True)
            if best_err is None:
                best_err, best_s = err, s
            else:
                better = err < best_err
                best_err, best_s = torch.where(better, err, best_err), torch.where(better, s, best_s)
    u = (torch.floor(wg / best_s).clamp_(-128, 127) + 128).to(torch.uint8).reshape(n, k)
    return u, best_s[..., 0].t().contiguous().to(torch.bfloat16)


def _int4_round(wg: Tensor, s: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    # wg [..., g]; s, z [..., 1] (already bf16-representable) -> q (float 0..15), sq error [..., 1]
    q = torch.round((wg - z) / s + 8).clamp_(0, 15)
    err = ((q - 8) * s + z - wg).square_().sum(-1, keepdim=True)
    return q, err


def _quantize_int4(w: Tensor, group: int, steps: int = 12) -> tuple[Tensor, Tensor]:
    """w [N, K] (K % group == 0) -> q uint8 codes [N, K] in 0..15, scale_zero bf16 [K/g, N, 2]."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)                    # [N, G, g]
    lo = wg.amin(-1, keepdim=True)
    hi = wg.amax(-1, keepdim=True)
    best_err = best_s = best_z = None
    for f in torch.linspace(1.0, 0.70, steps).tolist():
        s = (hi - lo) * f / 15
        s = torch.where(s == 0, torch.ones_like(s), s)
        z = (lo + hi) / 2 + 0.5 * s                                 # centre of the 16 levels
        q, _ = _int4_round(wg, s, z)
        # least-squares refit of (s, z) for these codes: wg ~ s * (q - 8) + z
        c = q - 8
        cm, wm = c.mean(-1, keepdim=True), wg.mean(-1, keepdim=True)
        var = (c - cm).square().sum(-1, keepdim=True)
        s_fit = torch.where(var > 0, ((c - cm) * (wg - wm)).sum(-1, keepdim=True) / var.clamp_min(1e-30), s)
        s_fit = torch.where(s_fit.abs() < 1e-30, torch.ones_like(s_fit), s_fit)
        for s_c, z_c in ((s, z), (s_fit, wm - s_fit * cm)):
            s_b = s_c.to(torch.bfloat16).float()
            z_b = z_c.to(torch.bfloat16).float()
            _, err = _int4_round(wg, s_b, z_b)
            if best_err is None:
                best_err, best_s, best_z = err, s_b, z_b
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_s = torch.where(better, s_b, best_s)
                best_z = torch.where(better, z_b, best_z)
    q, _ = _int4_round(wg, best_s, best_z)
    scale_zero = torch.stack([best_s[..., 0], best_z[..., 0]], dim=-1)   # [N, G, 2]
    return q.reshape(n, k).to(torch.uint8), scale_zero.transpose(0, 1).contiguous().to(torch.bfloat16)


def quantize_weight(w: Tensor, mode: str, *, group_size: int | None = None) -> QuantizedWeight:
    """Quantize a [out, in] weight; ``group_size`` (32, 64, 128 or 256) defaults to 32 for
    int8 and 64 for int4."""
    if mode not in MODES:
        raise ValueError(f"quant mode must be one of {MODES}, got {mode!r}")
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    group = group_size or (INT8_GROUP if mode == "int8" else DEFAULT_GROUP)
    if group not in INT4_GROUPS:
        raise ValueError(f"{mode} group_size must be one of {INT4_GROUPS}, got {group}")
    n, k = w.shape
    np_, kp = _ceil_to(n, 16), _ceil_to(k, group)
    wp = F.pad(w.detach().float(), (0, kp - k, 0, np_ - n))
    # rows are independent: search a cache-sized strip at a time (~4x faster than at once)
    rows = max(16, (1 << 16) // kp)
    if mode == "int8":
        parts = [_quantize_int8(wp[i:i + rows], group) for i in range(0, np_, rows)]
        u, scale = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1)
        return from_codes("int8", (n, k), group, {"q": u, "scale": scale})
    parts = [_quantize_int4(wp[i:i + rows], group) for i in range(0, np_, rows)]
    q, scale_zero = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1)
    return from_codes("int4", (n, k), group, {"q": pack_nibbles(q), "scale_zero": scale_zero})


# ---------------------------------------------------------------------------------------
# layouts: "codes" (portable, what is saved) <-> the device's packed layout


def pack_nibbles(q: Tensor) -> Tensor:
    """uint8 codes [N, K] in 0..15 -> [N, K/2], low nibble = even column."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(p: Tensor) -> Tensor:
    """[N, K/2] -> uint8 codes [N, K]."""
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)


def _pack_cpu(nibbles: Tensor) -> Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_nibbles(nibbles).to(torch.int32), 2)


def _pack_cuda(nibbles: Tensor) -> Tensor:
    swapped = ((nibbles & 15) << 4) | (nibbles >> 4)      # the CUDA kernel wants the even column high
    return torch.ops.aten._convert_weight_to_int4pack(swapped.contiguous(), CUDA_INNER_K_TILES)


_PACKERS = {"cpu_int4pack": _pack_cpu, "cuda_int4pack": _pack_cuda}
_SOURCE: dict[tuple, Tensor] = {}


def _packed_source(layout: str, n: int, k: int, device) -> Tensor:
    """For a packed [n, k] int4 matrix: the index into codes.flatten() of each nibble of the
    packed tensor's bytes (low nibble first). Every packing is a permutation of nibbles, so
    packing the base-16 digits of arange(n*k) reveals it; once per shape."""
    key = (layout, n, k)
    if key not in _SOURCE:
        idx = torch.arange(n * k, dtype=torch.int64)
        src = torch.zeros(n * k, dtype=torch.int64)
        for d in range(max(1, ((n * k - 1).bit_length() + 3) // 4)):
            digits = ((idx >> (4 * d)) & 15).to(torch.uint8).reshape(n, k)
            packed = _PACKERS[layout](pack_nibbles(digits).to(device))
            src |= unpack_nibbles(packed.contiguous().view(torch.uint8).reshape(1, -1)).reshape(-1).cpu().long() << (4 * d)
        _SOURCE[key] = src
    return _SOURCE[key]


def _int4pack_cpu_ok(n: int, k: int, group: int) -> bool:
    return n % 16 == 0 and k % group == 0 and group in INT4_GROUPS


def _aligned(t: Tensor) -> Tensor:
    """The packed kernels segfault on unaligned data (safetensors hands out tensors at any
    offset of its buffer): copy those into a fresh allocation."""
    return t.contiguous().clone() if t.data_ptr() % 64 or not t.is_contiguous() else t


def _triton_cuda() -> bool:
    """CUDA weights keep the portable layout and run kernels/triton_ops where triton imports."""
    return dispatch.plan().triton


def _packed_layout(device: torch.device, n: int, k: int, group: int) -> str | None:
    if device.type == "cpu" and _int4pack_cpu_ok(n, k, group):
        return "cpu_int4pack"
    if device.type == "cuda" and n % 8 == 0 and k % (CUDA_INNER_K_TILES * 16) == 0 and not _triton_cuda():
        return "cuda_int4pack"
    return None


NATIVE = "cpu_native"


def native_ok(mode: str, group_size: int, device) -> bool:
    """Whether the native CPU kernel (kernels/csrc) takes this weight: the plan runs it, CPU,
    and a group of whole 32-input (int8) / 64-input (int4) blocks."""
    return (torch.device(device).type == "cpu" and not group_size % (32 if mode == "int8" else 64)
            and dispatch.plan().linear.quantized == "native")


def _to_native(mode: str, codes: dict[str, Tensor]) -> dict[str, Tensor]:
    if mode == "int8":
        return {"q": (codes["q"] ^ 128).view(torch.int8), "scale": codes["scale"].t().contiguous()}
    c = unpack_nibbles(codes["q"])                                   # [N', K']
    c = c.view(c.shape[0], -1, 2, 32)                                # 64-input blocks, two halves
    q = (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(c.shape[0], -1)     # [N', K'/2]
    return {"q": q.contiguous(), "scale_zero": codes["scale_zero"].transpose(0, 1).contiguous()}


def _from_native(qw: QuantizedWeight) -> dict[str, Tensor]:
    t = qw.tensors
    if qw.mode == "int8":
        return {"q": t["q"].view(torch.uint8) ^ 128, "scale": t["scale"].t().contiguous()}
    b = t["q"].view(t["q"].shape[0], -1, 1, 32)
    c = torch.cat([b & 15, b >> 4], dim=2).reshape(t["q"].shape[0], -1)   # codes [N', K']
    return {"q": pack_nibbles(c), "scale_zero": t["scale_zero"].transpose(0, 1).contiguous()}


def from_codes(mode: str, shape: tuple[int, int], group_size: int, codes: dict[str, Tensor], *,
               native: bool | None = None) -> QuantizedWeight:
    """Build the runtime weight from portable codes (int8: u [N', K'], scale; int4:
    plain-nibble q, scale_zero), in the layout of the device's kernel where there is one:
    the native CPU kernel when it is built (``native=False`` asks for aten's packed int4
    layout instead), aten's packed int4 kernel otherwise."""
    codes = {k: _aligned(v) for k, v in codes.items()}
    sc = codes["scale" if mode == "int8" else "scale_zero"]
    n, k = sc.shape[1], sc.shape[0] * group_size
    if native is not False and native_ok(mode, group_size, sc.device):
        return QuantizedWeight(mode, tuple(shape), group_size, _to_native(mode, codes), NATIVE)
    layout = _packed_layout(sc.device, n, k, group_size)
    if layout is not None:
        pack = _PACKERS[layout]
        try:
            if mode == "int8":
                u = codes["q"]
                return QuantizedWeight("int8", tuple(shape), group_size,
                                       {"hi": pack(pack_nibbles(u >> 4)), "lo": pack(pack_nibbles(u & 15)),
                                        "scale": sc}, layout)
            return QuantizedWeight("int4", tuple(shape), group_size, {"q": pack(codes["q"]), "scale_zero": sc},
                                   layout)
        except (RuntimeError, NotImplementedError):
            pass   # no packed int4 kernel for this device/torch: the vectorised fallback runs
    return QuantizedWeight(mode, tuple(shape), group_size, dict(codes), "codes" if mode == "int8" else "nibbles")


def _unpack(qw: QuantizedWeight, packed: Tensor) -> Tensor:
    """A packed [N', K'] nibble matrix back to uint8 codes [N', K']."""
    n, k = qw.padded_shape
    flat = packed.contiguous().view(torch.uint8).reshape(1, -1)
    codes = torch.empty(n * k, dtype=torch.uint8, device=flat.device)
    codes[_packed_source(qw.layout, n, k, flat.device).to(flat.device)] = unpack_nibbles(flat).reshape(-1)
    return codes.reshape(n, k)


def to_codes(qw: QuantizedWeight) -> dict[str, Tensor]:
    """The portable form of a weight (what ``save_quantized`` writes)."""
    if qw.layout in ("codes", "nibbles"):
        return dict(qw.tensors)
    if qw.layout == NATIVE:
        return _from_native(qw)
    if qw.mode == "int8":
        u = (_unpack(qw, qw.tensors["hi"]) << 4) | _unpack(qw, qw.tensors["lo"])
        return {"q": u, "scale": qw.tensors["scale"]}
    return {"q": pack_nibbles(_unpack(qw, qw.tensors["q"])), "scale_zero": qw.tensors["scale_zero"]}


# ---------------------------------------------------------------------------------------
# matmul


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """The weight the quantized one stands for: [out, in] in ``dtype``."""
    if qw.layout == "gguf":   # kernels.kquant.GGUFWeight: ggml blocks read in place
        from kernels import kquant

        return kquant.dequantize(qw, dtype)
    n, k = qw.shape
    portable = to_codes(qw)
    if qw.mode == "int8":
        u = portable["q"].float()                                                # [N', K']
        scale = portable["scale"].float().t().repeat_interleave(qw.group_size, dim=1)
        w = (u - 127.5) * scale
    else:
        codes = unpack_nibbles(portable["q"]).float()                            # [N', K']
        sz = portable["scale_zero"].float()                                      # [G, N', 2]
        scale = sz[..., 0].t().repeat_interleave(qw.group_size, dim=1)           # [N', K']
        zero = sz[..., 1].t().repeat_interleave(qw.group_size, dim=1)
        w = (codes - 8) * scale + zero
    return w[:n, :k].to(dtype)


def reference_quantized_linear(x: Tensor, qw: QuantizedWeight) -> Tensor:
    """x [..., in] -> [..., out]: dequantize, then a float32 matmul."""
    return (x.float() @ dequantize(qw).t()).to(x.dtype)


def reference_round_activations(x: Tensor, bits: int, block: int) -> Tensor:
    """What the native kernels multiply instead of x [..., K]: each block of ``block`` inputs
    rounded to ``bits``-bit integers (8: -127..127, 16: -32767..32767) times one float32 scale,
    |x| max -> the largest code; float32 result."""
    qmax = 127.0 if bits == 8 else 32767.0
    xf = x.float()
    k = xf.shape[-1]
    xb = F.pad(xf, (0, -k % block)).reshape(*xf.shape[:-1], -1, block)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, qmax / amax, torch.zeros_like(amax))
    r = (xb * inv).clamp_(-qmax, qmax)
    q = torch.trunc(r + torch.where(r >= 0, 0.5, -0.5))
    return (q * (amax / qmax)).reshape(*xf.shape[:-1], -1)[..., :k]


def act_block(mode: str, act_bits: int) -> int:
    """The native kernels' activation block, at either precision: one weight block (32 inputs
    for int8, 64 for int4)."""
    return 32 if mode == "int8" else 64


def reference_native_linear(x: Tensor, qw: QuantizedWeight, act_bits: int) -> Tensor:
    """The native kernels' product, as the math: rounded activations times the dequantized
    weight, in float32 (float32 result)."""
    return reference_round_activations(x, act_bits, act_block(qw.mode, act_bits)) @ dequantize(qw).t()


def _kernel(qw: QuantizedWeight):
    """The packed kernel for this weight's device and layout, as f(x_bf16 [M, K']) -> [M, N'];
    None where there is none (the vectorised fallback runs)."""
    t, g = qw.tensors, qw.group_size
    op = {"cpu_int4pack": torch.ops.aten._weight_int4pack_mm_for_cpu,
          "cuda_int4pack": torch.ops.aten._weight_int4pack_mm}.get(qw.layout)
    if op is None:
        return None
    if qw.mode == "int4":
        q, sz = t["q"], t["scale_zero"]
        return lambda xb: op(xb, q, g, sz)
    hi, lo, s_bits = t["hi"], t["lo"], t["scale"].view(torch.int16)
    shape = (*t["scale"].shape, 2)
    offset = torch.full((1,), -(128 << 16), dtype=torch.int32, device=s_bits.device)

    def int8_as_two_int4(xb):
        # w = (16 hi + lo - 127.5) s = 16 [(hi - 8) s + s/2] + [(lo - 8) s + s/2]
        # the kernel's [K'/g, N', 2] (scale, zero) table, built per call: each int32 word holds
        # bits(s) low and bits(s/2) = bits(s) - 128 high (s is a positive normal bf16)
        sz = torch.add(offset, s_bits, alpha=65537).view(torch.bfloat16).view(shape)   # one pass, int32
        return op(xb * 16, hi, g, sz).float() + op(xb, lo, g, sz)

    return int8_as_two_int4


@dataclass(frozen=True)
class NativeMatmul:
    """A "cpu_native" weight's arguments to kernels/csrc, bound once."""

    bits: int
    q: Tensor
    scale: Tensor
    kp: int
    group: int
    n: int
    k: int


@dataclass(frozen=True)
class PackedMatmul:
    """A packed weight's kernel (None: the vectorised fallback) and its padding, bound once."""

    kernel: object
    n: int
    k: int
    pad_k: int
    slice_n: bool


def _bind(qw: QuantizedWeight) -> NativeMatmul | PackedMatmul:
    np_, kp = qw.padded_shape
    n, k = qw.shape
    if qw.layout == NATIVE:
        qw.bound = NativeMatmul(8 if qw.mode == "int8" else 4, qw.tensors["q"],
                                qw.tensors["scale" if qw.mode == "int8" else "scale_zero"], kp, qw.group_size, n, k)
    else:
        qw.bound = PackedMatmul(_kernel(qw), n, k, kp - k, np_ != n)
    return qw.bound


def _native_linear(x: Tensor, b: NativeMatmul) -> Tensor:
    from kernels import cpu_native

    x2 = x.reshape(-1, b.k)
    if x2.dtype not in (torch.bfloat16, torch.float32):
        x2 = x2.float()
    m = x2.shape[0]
    if m == 0:
        return x.new_zeros(*x.shape[:-1], b.n)
    x2 = x2.contiguous()
    lin = dispatch.plan().linear
    if m <= lin.native_rows:
        y = cpu_native.gemm(b.bits, x2, b.q, b.scale, b.kp, b.group, b.n, lin.act_bits(b.bits))
    elif lin.tiled_for(b.bits, m, b.n, b.k):   # many rows, the same integer products in register tiles
        y = cpu_native.gemm_tiled(b.bits, x2, b.q, b.scale, b.kp, b.group, b.n, lin.act_bits(b.bits))
    else:   # many rows: the weight dequantized once, one matmul in the CPU's fast float type
        dt = x2.dtype if x2.dtype == torch.float32 else lin.prefill_dtype
        y = F.linear(x2.to(dt), cpu_native.dequant(b.bits, b.q, b.scale, b.kp, b.group, b.n, b.k, dt))
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.view(*x.shape[:-1], b.n)


def quantized_linear(x: Tensor, qw: QuantizedWeight) -> Tensor:
    """x [..., in] -> [..., out] with the kernel of the weight's layout: native (float
    activations, at most 4 rows per GEMV call; more rows run the tiled GEMM or dequantize and run
    one matmul, as the plan says),
    GGUF blocks, Triton on CUDA, or aten's packed int4 kernel (bf16 activations)."""
    if qw.layout == "gguf":   # kernels.kquant.GGUFWeight: ggml blocks read in place
        from kernels import kquant

        return kquant.linear(x, qw)
    b = qw.bound or _bind(qw)
    if qw.layout == NATIVE:
        return _native_linear(x, b)
    if x.is_cuda and qw.layout in ("codes", "nibbles") and _triton_cuda():
        from kernels import triton_ops

        return triton_ops.quantized_linear(x, qw)
    if b.kernel is None:   # vectorised fallback: one dequantize, one matmul
        return F.linear(x, dequantize(qw, x.dtype))
    x2 = x.reshape(-1, b.k)
    if b.pad_k:
        x2 = F.pad(x2, (0, b.pad_k))
    if x2.dtype != torch.bfloat16:
        x2 = x2.to(torch.bfloat16)
    y = b.kernel(x2.contiguous())
    if b.slice_n:
        y = y[:, :b.n]
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.view(*x.shape[:-1], b.n) if not b.slice_n else y.reshape(*x.shape[:-1], b.n)


# ---------------------------------------------------------------------------------------
# dense bf16 weights pre-packed in oneDNN's blocked layout (CPU)
# For batch-1 decode the plain bf16 F.linear re-lays the weight out on every call; packing it
# once at load makes those matmuls 2-3x faster with bit-identical results.


def can_pack(w: Tensor) -> bool:
    """Whether ``w`` gets oneDNN's packed layout: CPU bf16 matrices, where the plan has oneDNN
    bf16 (kernels.capability: AVX-512 or AVX-NE-CONVERT; elsewhere the plain F.linear runs)."""
    return (w.device.type == "cpu" and w.dtype == torch.bfloat16 and w.dim() == 2
            and dispatch.plan().linear.dense == "onednn-packed")


def pack_dense(w: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)


UNPACKED_ROWS = 8              # a bf16 weight without native bf16 matmuls: more rows run float32 tiles
UNPACKED_TILE_BYTES = 8 << 20  # ... of this many bytes of float32 weight rows at a time


def unpacked_linear(x: Tensor, w: Tensor) -> Tensor:
    """y = x wᵀ for a dense weight as loaded (local_engine's Linear). Where the CPU has no native
    bf16 matmuls (the plan's activations float32: AVX2, ARM64 without them), a bf16 weight times
    more than UNPACKED_ROWS rows runs in float32, a tile of its rows converted at a time (bounded
    memory), the result in x's dtype: torch's bf16 GEMM there is 4-6x slower than that (4096 x
    512, AVX2, one thread: 16 rows 3.7 ms against 1.9, 64 rows 14.6 against 3.5, 512 rows 121
    against 21) while few rows keep bf16 (1 row 0.3 ms against 0.85 with the copy)."""
    if w.dtype != torch.bfloat16 or w.device.type != "cpu" or x.numel() <= UNPACKED_ROWS * w.shape[1] \
            or dispatch.plan().act_dtype == torch.bfloat16:
        return F.linear(x, w)
    n, k = w.shape
    x2 = x.reshape(-1, k).float()
    y = torch.empty(x2.shape[0], n, dtype=torch.float32, device=x.device)
    rows = max(16, min(n, UNPACKED_TILE_BYTES // (4 * k)))
    for j in range(0, n, rows):
        tile = w[j:j + rows].float()
        torch.mm(x2, tile.t(), out=y[:, j:j + tile.shape[0]])
    return y.to(x.dtype).view(*x.shape[:-1], n)


def dense_linear(x: Tensor, packed: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
