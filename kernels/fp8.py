"""DeepSeek's block FP8: weight float8_e4m3fn [out, in] × weight_scale_inv float32
[ceil(out/128), ceil(in/128)], one scale per 128×128 block. Dequantized = block × scale_inv."""

from __future__ import annotations

import torch

BLOCK = 128


def reference_fp8_block_dequant(w: torch.Tensor, scale_inv: torch.Tensor,
                                dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    s = scale_inv.float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    result = (w.float() * s[: w.shape[0], : w.shape[1]]).to(dtype)
    return result if out is None else out.copy_(result)


def fp8_block_dequant(w: torch.Tensor, scale_inv: torch.Tensor,
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
