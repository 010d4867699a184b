"""Which kernel runs where: the one place that chooses between fast paths and references.

Set DUET_KERNELS=reference to run every reference instead (debugging)."""

from __future__ import annotations

import os

from kernels import fp8, mla, moe, norm_rope

_REFERENCE = os.environ.get("DUET_KERNELS") == "reference"

rms_norm = norm_rope.reference_rms_norm if _REFERENCE else norm_rope.rms_norm
apply_rope = norm_rope.reference_apply_rope if _REFERENCE else norm_rope.apply_rope
moe_combine = moe.reference_moe if _REFERENCE else moe.moe
mla_attention = mla.reference_mla_attention if _REFERENCE else mla.mla_attention
fp8_block_dequant = fp8.reference_fp8_block_dequant if _REFERENCE else fp8.fp8_block_dequant


# -- dense linear with a pre-packed weight (oneDNN's blocked layout, CPU bf16) -----------------
# For batch-1 decode the plain bf16 F.linear re-lays the weight out on every call; packing it
# once at load makes those matmuls 2-3x faster with bit-identical results.

def can_pack(w) -> bool:
    import torch

    return (not _REFERENCE and w.device.type == "cpu" and w.dtype == torch.bfloat16 and w.dim() == 2
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def pack_weight(w):
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)


def packed_linear(x, packed):
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def reference_packed_linear(x, packed):
    import torch.nn.functional as F

    return F.linear(x, packed.to_dense())
