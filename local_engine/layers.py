"""The two building blocks every module uses: Linear (quantizable) and RMSNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import dispatch


class Linear(nn.Module):
    """y = x Wᵀ with weight [out, in]; ``qweight`` replaces ``weight`` once quantized."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        self.qweight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qweight is not None:
            from kernels.quant import quantized_linear

            return quantized_linear(x, self.qweight)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        kind = "quantized" if self.qweight is not None else str(self.weight.dtype)
        return f"in={self.in_features}, out={self.out_features}, {kind}"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dispatch.rms_norm(x, self.weight, self.eps)
