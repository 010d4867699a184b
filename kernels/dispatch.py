"""Which kernel runs where: the one place that chooses between fast paths and references.

Set DUET_KERNELS=reference to run every reference instead (debugging). On CUDA tensors, where
triton imports, rms_norm / mla_attention / fp8_block_dequant run their Triton kernels
(``kernels.triton_ops``; DUET_TRITON=0 keeps them off). On CPU, where kernels/csrc builds
(``kernels.cpu_native``), a decode row's rms_norm and MLA's one-token per-head products run
natively (the fused MLP/MoE and quantized matmuls choose it in kernels/moe.py and quant.py);
everywhere else the PyTorch fast paths run. Which CPU paths exist here (oneDNN's bf16 packing
needs AVX-512 or AVX-NE-CONVERT) is detected once in ``kernels.capability``."""

from __future__ import annotations

import os

import torch

from kernels import capability, fp8, indexer, mla, moe, norm_rope, triton_ops

_REFERENCE = os.environ.get("DUET_KERNELS") == "reference"

apply_rope = norm_rope.reference_apply_rope if _REFERENCE else norm_rope.apply_rope
moe_combine = moe.reference_moe if _REFERENCE else moe.moe
# V3.2's sparse attention (kernels/indexer.py): PyTorch fast paths on every device
indexer_topk = indexer.reference_indexer_topk if _REFERENCE else indexer.indexer_topk
sparse_mla_attention = indexer.reference_sparse_mla_attention if _REFERENCE else indexer.sparse_mla_attention

_FAST = {"rms_norm": norm_rope.rms_norm, "mla_attention": mla.mla_attention,
         "fp8_block_dequant": fp8.fp8_block_dequant}
_REFERENCES = {"rms_norm": norm_rope.reference_rms_norm, "mla_attention": mla.reference_mla_attention,
               "fp8_block_dequant": fp8.reference_fp8_block_dequant}
TRITON = tuple(_FAST)   # the kernels that have a Triton version


def uses_triton(device_type: str) -> bool:
    """Whether tensors on this kind of device run the Triton kernels (DUET_TRITON=0: never)."""
    return not _REFERENCE and device_type == "cuda" and triton_ops.enabled()


def choose(name: str, device_type: str):
    """The function that kernel ``name`` (one of TRITON) runs for tensors on ``device_type``."""
    if _REFERENCE:
        return _REFERENCES[name]
    if uses_triton(device_type):
        return getattr(triton_ops, name)
    return _FAST[name]


def rms_norm(x, weight, eps: float):
    if x.device.type == "cpu" and _native_norm(x, weight):
        from kernels import cpu_native

        return cpu_native.rms_norm(x, weight, eps)
    return choose("rms_norm", x.device.type)(x, weight, eps)


def _native_norm(x, weight) -> bool:
    """A decode row's CPU RMSNorm runs kernels/csrc's loop: torch's composite op costs ~10-20 us
    a row in calls; for a prefill's hundreds of rows torch's own kernel is faster."""
    if _REFERENCE or x.dtype not in _NORM_TYPES or weight.dtype not in _NORM_TYPES or not x.is_contiguous() \
            or not weight.is_contiguous() or x.numel() == 0 or x.numel() > NATIVE_NORM_ROWS * x.shape[-1]:
        return False
    from kernels import cpu_native

    return cpu_native.lib() is not None


_NORM_TYPES = (torch.bfloat16, torch.float32)
NATIVE_NORM_ROWS = 8


def mla_attention(q, cache, kv_lora: int, scale: float, start_pos: int):
    return choose("mla_attention", q.device.type)(q, cache, kv_lora, scale, start_pos)


def fp8_block_dequant(w, scale_inv, dtype: torch.dtype = torch.float32, out=None):
    return choose("fp8_block_dequant", w.device.type)(w, scale_inv, dtype, out)


# -- dense linear with a pre-packed weight (oneDNN's blocked layout, CPU bf16) -----------------
# For batch-1 decode the plain bf16 F.linear re-lays the weight out on every call; packing it
# once at load makes those matmuls 2-3x faster with bit-identical results.

def can_pack(w) -> bool:
    """Whether ``w`` gets oneDNN's packed layout: CPU bf16 matrices, where oneDNN has bf16
    (kernels.capability: AVX-512 or AVX-NE-CONVERT; elsewhere the plain F.linear runs)."""
    return (not _REFERENCE and w.device.type == "cpu" and w.dtype == torch.bfloat16 and w.dim() == 2
            and capability.detect().bf16_packing)


def pack_weight(w):
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 1)


def packed_linear(x, packed):
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


# -- MLA's absorbed decode: one token's per-head GEMVs against bf16 W_uk / W_uvᵀ ----------------
# torch's bf16 bmm of [H, 1, K] x [H, K, N] streams at a third of memory bandwidth (float32 copies
# run 1.5x faster but read twice the bytes); kernels/csrc's per-head GEMV reads bf16 at bandwidth.

def native_head_gemv(cache) -> bool:
    """Whether a bf16 CPU model's absorbed decode runs the native per-head GEMV."""
    if _REFERENCE or cache.device.type != "cpu" or cache.dtype != torch.bfloat16:
        return False
    from kernels import cpu_native

    return cpu_native.lib() is not None


def head_gemv(x, w):
    """x float32 [H, K], w bf16 [H, K, N] -> float32 [H, N] (needs native_head_gemv)."""
    from kernels import cpu_native

    return cpu_native.head_gemv(x, w)


def native_bf16_mlp(dtype, device) -> bool:
    """Whether one-token MLP/MoE of a bf16 CPU model runs kernels/csrc's fused call. Its MLP
    weights then stay dense (the call reads them) rather than packed for oneDNN."""
    if _REFERENCE or torch.device(device).type != "cpu" or dtype != torch.bfloat16:
        return False
    from kernels import cpu_native

    return cpu_native.lib() is not None
