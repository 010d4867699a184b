"""DeepSeek's block FP8: weight float8_e4m3fn [out, in] × weight_scale_inv float32
[ceil(out/128), ceil(in/128)], one scale per 128×128 block. Dequantized = block × scale_inv.

    reference_fp8_block_dequant   the math; torch_fp8_block_dequant  row strips, bounded memory;
    triton_ops.fp8_block_dequant  CUDA;   fp8_block_dequant  the op (kernels.dispatch's plan)
"""

from __future__ import annotations

import torch

from kernels import dispatch

BLOCK = 128


def reference_fp8_block_dequant(w: torch.Tensor, scale_inv: torch.Tensor,
                                dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    s = scale_inv.float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    result = (w.float() * s[: w.shape[0], : w.shape[1]]).to(dtype)
    return result if out is None else out.copy_(result)


def torch_fp8_block_dequant(w: torch.Tensor, scale_inv: torch.Tensor,
                            dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row block by row block into ``out`` (allocated if not given): peak extra memory is one
    128-row float32 strip."""
    out_f, in_f = w.shape
    if scale_inv.shape != ((out_f + BLOCK - 1) // BLOCK, (in_f + BLOCK - 1) // BLOCK):
        raise ValueError(f"weight_scale_inv shape {tuple(scale_inv.shape)} does not fit weight {tuple(w.shape)}")
    if out is None:
        out = torch.empty(out_f, in_f, dtype=dtype, device=w.device)
    cols = scale_inv.float().repeat_interleave(BLOCK, 1)[:, :in_f]  # [ceil(out/128), in]
    for i in range(0, out_f, BLOCK):
        strip = w[i:i + BLOCK].float()
        strip.mul_(cols[i // BLOCK])
        out[i:i + BLOCK].copy_(strip)
    return out


def fp8_block_dequant(w: torch.Tensor, scale_inv: torch.Tensor,
                      dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    p = dispatch.plan()
    if w.device.type == "cuda" and p.triton:
        from kernels import triton_ops

        return triton_ops.fp8_block_dequant(w, scale_inv, dtype, out)
    if p.reference:
        return reference_fp8_block_dequant(w, scale_inv, dtype, out)
    return torch_fp8_block_dequant(w, scale_inv, dtype, out)
