"""The two building blocks every module uses: Linear (quantizable) and RMSNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import norm_rope, quant


class Linear(nn.Module):
    """y = x Wᵀ with weight [out, in]; ``qweight`` replaces ``weight`` once quantized.

    ``pack_()`` swaps the weight for a pre-packed copy (kernels.quant.can_pack: where the plan
    has one for this device and dtype); ``weight`` then reads back as a dense tensor on demand."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        self.qweight = None
        self.packed = None

    def __getattr__(self, name):
        if name == "weight" and self.__dict__.get("packed") is not None:
            return self.packed.to_dense()  # rare readers only (saving, tests): the hot path uses packed
        return super().__getattr__(name)

    def pack_(self) -> bool:
        w = self._parameters.get("weight")
        if self.qweight is not None or w is None or not quant.can_pack(w):
            return False
        self.packed = quant.pack_dense(w.data)
        del self._parameters["weight"]
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qweight is not None:
            return quant.quantized_linear(x, self.qweight)
        if self.packed is not None:
            return quant.dense_linear(x, self.packed)
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        kind = "quantized" if self.qweight is not None else "packed" if self.packed is not None else str(self.weight.dtype)
        return f"in={self.in_features}, out={self.out_features}, {kind}"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_rope.rms_norm(x, self.weight, self.eps)
