"""The building blocks every module uses: RMSNorm and the linear layers.

A linear layer y = x Wᵀ comes in three module types, swapped in by the loaders (as gpt-fast
does), so the model's code never asks which one it holds:

    Linear            a dense weight [out, in] (what a module is built with)
    PackedLinear      the same weight pre-packed for oneDNN (kernels.quant.pack_dense: CPU bf16)
    QuantizedLinear   a quantized weight: kernels.quant.QuantizedWeight (int8/int4) or
                      kernels.kquant.GGUFWeight (GGUF blocks read in place)

``replace(root, name, module)`` puts one in place of another; ``pack(lin)`` packs a dense one."""

from __future__ import annotations

import torch
from torch import nn

from kernels import norm_rope, quant


class Linear(nn.Module):
    """y = x Wᵀ with a dense weight [out, in]."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant.unpacked_linear(x, self.weight)  # F.linear, but where bf16 matmuls are slow

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.weight.dtype}"


class PackedLinear(nn.Module):
    """A dense bf16 weight in oneDNN's blocked layout (``packed``): for batch-1 decode the plain
    F.linear re-lays the weight out on every call; packed once it runs 2-3x faster, bit for bit
    the same. ``weight`` reads back the dense matrix (rare readers only: saving, tests)."""

    def __init__(self, packed: torch.Tensor, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.packed = packed

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant.dense_linear(x, self.packed)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, oneDNN packed"


class QuantizedLinear(nn.Module):
    """A quantized weight ``qweight`` (int8/int4 or GGUF blocks), run by kernels.quant."""

    def __init__(self, qweight):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.qweight = qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant.quantized_linear(x, self.qweight)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.qweight.mode}"


LINEARS = (Linear, PackedLinear, QuantizedLinear)


def replace(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``name`` (a dotted path below ``root``) in place of what is there."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)
    return module


def pack(lin: Linear) -> PackedLinear | None:
    """``lin``'s weight packed for oneDNN, where the plan has it for this device and dtype."""
    w = lin.weight
    if not quant.can_pack(w):
        return None
    return PackedLinear(quant.pack_dense(w.data), lin.in_features, lin.out_features)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_rope.rms_norm(x, self.weight, self.eps)
