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
