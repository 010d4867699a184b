"""RMSNorm and decoupled RoPE (DeepSeek's interleaved pairs, or rotate-half).

    reference_rms_norm / reference_apply_rope    the math, in plain PyTorch
    torch_rms_norm / torch_apply_rope            the PyTorch fast paths (one fused op each)
    cpu_native.rms_norm                          kernels/csrc's loop (a decode step's few rows)
    triton_ops.rms_norm / triton_ops.apply_rope  CUDA
    rms_norm / apply_rope                        the op: picks one from kernels.dispatch's plan
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import dispatch


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)), the normalisation in float32, cast back before the weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """One fused op (it accumulates in float32 for half types); for bf16 it may differ from the
    reference by one rounding of the product, which the reference does in bf16."""
    return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps)


_NATIVE_TYPES = (torch.bfloat16, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """A decode row's CPU RMSNorm runs kernels/csrc's loop (torch's composite op costs ~10-20 us
    a row in calls; for a prefill's hundreds of rows torch's own kernel is faster)."""
    p = dispatch.plan()
    if x.device.type == "cpu":
        if (x.numel() <= p.norm.native_rows * x.shape[-1] and x.numel() and x.dtype in _NATIVE_TYPES
                and weight.dtype in _NATIVE_TYPES and x.is_contiguous() and weight.is_contiguous()):
            from kernels import cpu_native

            return cpu_native.rms_norm(x, weight, eps)
    elif x.device.type == "cuda" and p.triton:
        from kernels import triton_ops

        return triton_ops.rms_norm(x, weight, eps)
    return reference_rms_norm(x, weight, eps) if p.norm.norm == "reference" else torch_rms_norm(x, weight, eps)


def reference_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         interleaved: bool = True) -> torch.Tensor:
    """Rotate x [..., T, heads, D] by angles given as cos/sin [T, D/2] (float32).

    interleaved: pairs (x0, x1), (x2, x3)… as DeepSeek's checkpoints lay them out; the result
    keeps that layout. Otherwise pairs (x_i, x_{i+D/2}) (rotate-half)."""
    d = x.shape[-1]
    c = cos[:, None, :].float()  # [T, 1, D/2]
    s = sin[:, None, :].float()
    xf = x.float()
    if interleaved:
        a, b = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((a * c - b * s, b * c + a * s), dim=-1).flatten(-2)
    else:
        a, b = xf[..., : d // 2], xf[..., d // 2:]
        out = torch.cat((a * c - b * s, b * c + a * s), dim=-1)
    return out.to(x.dtype)


def torch_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     interleaved: bool = True) -> torch.Tensor:
    if not interleaved:
        return reference_apply_rope(x, cos, sin, False)
    # complex multiply on the (even, odd) pairs: one kernel instead of four
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    freqs = torch.complex(cos.float(), sin.float())[:, None, :]  # [T, 1, D/2]
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = True) -> torch.Tensor:
    if dispatch.plan().norm.rope == "reference":
        return reference_apply_rope(x, cos, sin, interleaved)
    return torch_apply_rope(x, cos, sin, interleaved)
