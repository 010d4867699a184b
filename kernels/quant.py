"""Weight-only int8 / int4 quantization: a packed weight, its fast matmul, and the reference.

int8: symmetric, one scale per output channel (w = q * scale, q in -127..127), the layout
      of PyTorch's ``aten._weight_int8pack_mm`` (CPU). 1 byte/param + 2 bytes per row.
int4: asymmetric, one (scale, zero) pair per group of ``group_size`` inputs
      (w = (q - 8) * scale + zero, q in 0..15), the layout of
      ``aten._weight_int4pack_mm_for_cpu``. Scale and zero are chosen per group by a small
      search that minimises the squared error (min/max shrink + least-squares refit), so
      group 64 rounds as accurately as llama.cpp's Q4_0 does with group 32 (0.5625 B/param).

Shapes the packed ops cannot take are padded with zero rows/columns at quantization time
(int8 needs K % 16 == 0 -- other K crash or give wrong sums in torch 2.13; int4 needs
N % 16 == 0 and K % group == 0), so every CPU weight runs the packed kernel. Devices
without the packed kernels use the vectorised fallback (dequantize, then one F.linear).
Dispatch lives in ``quantized_linear`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "QuantizedWeight",
    "quantize_weight",
    "quantized_linear",
    "reference_quantized_linear",
    "dequantize",
    "from_codes",
    "to_codes",
]

MODES = ("int8", "int4")
INT4_GROUPS = (32, 64, 128, 256)   # what aten's int4 kernel accepts
CUDA_INNER_K_TILES = 8
DEFAULT_GROUP = 64                 # 0.5 + 4/64 = 0.5625 bytes/param


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass
class QuantizedWeight:
    """A packed [out, in] weight.

    tensors (int8): ``q`` int8 [N', K'], ``scale`` bf16 [N']
    tensors (int4): ``q`` packed uint8 [N', K'/2] (aten CPU layout when ``layout ==
    "cpu_int4pack"``, plain nibbles -- low nibble = even column -- when ``"nibbles"``),
    ``scale_zero`` bf16 [K'/group, N', 2].
    N' >= out and K' >= in are the padded sizes; ``shape`` is the logical (out, in).
    """

    mode: str
    shape: tuple[int, int]
    group_size: int
    tensors: dict[str, Tensor]
    layout: str = "plain"

    @property
    def padded_shape(self) -> tuple[int, int]:
        if self.mode == "int8":
            return tuple(self.tensors["q"].shape)
        return (self.tensors["scale_zero"].shape[1], self.tensors["scale_zero"].shape[0] * self.group_size)

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed weight, scales and zeros included."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.tensors["q"].device

    def to(self, device) -> "QuantizedWeight":
        codes = to_codes(self)
        return from_codes(self.mode, self.shape, self.group_size,
                          {k: v.to(device) for k, v in codes.items()})


# ---------------------------------------------------------------------------------------
# quantization (rounding)


def _quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    # w: [N, K] float -> q int8 [N, K], scale bf16 [N]; rounding uses the stored bf16 scale
    amax = w.abs().amax(dim=1)
    scale = (amax / 127).to(torch.bfloat16)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


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


def quantize_weight(w: Tensor, mode: str, *, group_size: int = DEFAULT_GROUP) -> QuantizedWeight:
    """Quantize a [out, in] weight. ``group_size`` applies to int4 (32, 64, 128 or 256)."""
    if mode not in MODES:
        raise ValueError(f"quant mode must be one of {MODES}, got {mode!r}")
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] weight, got shape {tuple(w.shape)}")
    n, k = w.shape
    w = w.detach().float()
    if mode == "int8":
        kp = _ceil_to(k, 16)
        q, scale = _quantize_int8(F.pad(w, (0, kp - k)))
        return from_codes("int8", (n, k), kp, {"q": q, "scale": scale})
    if group_size not in INT4_GROUPS:
        raise ValueError(f"int4 group_size must be one of {INT4_GROUPS}, got {group_size}")
    np_, kp = _ceil_to(n, 16), _ceil_to(k, group_size)
    q, scale_zero = _quantize_int4(F.pad(w, (0, kp - k, 0, np_ - n)), group_size)
    return from_codes("int4", (n, k), group_size, {"q": pack_nibbles(q), "scale_zero": scale_zero})


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


def from_codes(mode: str, shape: tuple[int, int], group_size: int, codes: dict[str, Tensor]) -> QuantizedWeight:
    """Build the runtime weight from portable codes (int8: q, scale; int4: plain-nibble q,
    scale_zero), packing for the device's fast kernel where there is one."""
    codes = {k: _aligned(v) for k, v in codes.items()}
    if mode == "int8":
        return QuantizedWeight("int8", tuple(shape), group_size, dict(codes), layout="plain")
    q, sz = codes["q"], codes["scale_zero"]
    n, k = sz.shape[1], sz.shape[0] * group_size
    if q.device.type == "cpu" and _int4pack_cpu_ok(n, k, group_size):
        return QuantizedWeight("int4", tuple(shape), group_size, {"q": _pack_cpu(q), "scale_zero": sz}, "cpu_int4pack")
    if q.device.type == "cuda" and n % 8 == 0 and k % (CUDA_INNER_K_TILES * 16) == 0:
        try:
            return QuantizedWeight("int4", tuple(shape), group_size, {"q": _pack_cuda(q), "scale_zero": sz},
                                   "cuda_int4pack")
        except (RuntimeError, NotImplementedError):
            pass   # no packed int4 kernel for this GPU/torch: the vectorised fallback runs
    return QuantizedWeight("int4", tuple(shape), group_size, {"q": q, "scale_zero": sz}, "nibbles")


def to_codes(qw: QuantizedWeight) -> dict[str, Tensor]:
    """The portable form of a weight (what ``save_quantized`` writes)."""
    if qw.mode == "int8" or qw.layout == "nibbles":
        return dict(qw.tensors)
    n, k = qw.padded_shape
    packed = qw.tensors["q"].contiguous().view(torch.uint8).reshape(1, -1)
    codes = torch.empty(n * k, dtype=torch.uint8, device=packed.device)
    codes[_packed_source(qw.layout, n, k, packed.device).to(packed.device)] = unpack_nibbles(packed).reshape(-1)
    return {"q": pack_nibbles(codes.reshape(n, k)), "scale_zero": qw.tensors["scale_zero"]}


# ---------------------------------------------------------------------------------------
# matmul


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """The weight the quantized one stands for: [out, in] in ``dtype``."""
    n, k = qw.shape
    if qw.mode == "int8":
        w = qw.tensors["q"].float() * qw.tensors["scale"].float()[:, None]
    else:
        codes = unpack_nibbles(to_codes(qw)["q"]).float()                        # [N', K']
        sz = qw.tensors["scale_zero"].float()                                    # [G, N', 2]
        scale = sz[..., 0].t().repeat_interleave(qw.group_size, dim=1)           # [N', K']
        zero = sz[..., 1].t().repeat_interleave(qw.group_size, dim=1)
        w = (codes - 8) * scale + zero
    return w[:n, :k].to(dtype)


def reference_quantized_linear(x: Tensor, qw: QuantizedWeight) -> Tensor:
    """x [..., in] -> [..., out]: dequantize, then a float32 matmul."""
    return (x.float() @ dequantize(qw).t()).to(x.dtype)


def _kernel(qw: QuantizedWeight):
    """The packed kernel for this weight's device and layout, as f(x_bf16 [M, K']) -> [M, N'];
    None where there is none (the vectorised fallback runs)."""
    t = qw.tensors
    if qw.mode == "int8" and qw.device.type == "cpu":
        op, q, scale = torch.ops.aten._weight_int8pack_mm, t["q"], t["scale"]
        return lambda xb: op(xb, q, scale)
    if qw.layout == "cpu_int4pack":
        op, q, g, sz = torch.ops.aten._weight_int4pack_mm_for_cpu, t["q"], qw.group_size, t["scale_zero"]
        return lambda xb: op(xb, q, g, sz)
    if qw.layout == "cuda_int4pack":
        op, q, g, sz = torch.ops.aten._weight_int4pack_mm, t["q"], qw.group_size, t["scale_zero"]
        return lambda xb: op(xb, q, g, sz)
    return None


def quantized_linear(x: Tensor, qw: QuantizedWeight) -> Tensor:
    """x [..., in] -> [..., out] with the packed kernel of the device (bf16 activations)."""
    plan = qw.__dict__.get("_plan")
    if plan is None:   # decided once per weight: the per-call Python cost is what decode pays
        n, k = qw.shape
        np_, kp = qw.padded_shape
        plan = qw.__dict__["_plan"] = (_kernel(qw), n, k, kp - k, np_ != n)
    kernel, n, k, pad_k, slice_n = plan
    if kernel is None:   # vectorised fallback: one dequantize, one matmul
        return F.linear(x, dequantize(qw, x.dtype))
    x2 = x.reshape(-1, k)
    if pad_k:
        x2 = F.pad(x2, (0, pad_k))
    if x2.dtype != torch.bfloat16:
        x2 = x2.to(torch.bfloat16)
    y = kernel(x2.contiguous())
    if slice_n:
        y = y[:, :n]
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.view(*x.shape[:-1], n) if not slice_n else y.reshape(*x.shape[:-1], n)
