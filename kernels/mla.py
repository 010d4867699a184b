"""Absorbed MLA attention over the latent cache.

The cache holds, per token, the normalised latent c_kv [kv_lora] and the rotated rope key
k_pe [rope], concatenated: cache [B, S, kv_lora + rope]. With the kv_b up-projection folded
into the query (q_nope · W_uk) the scores are  q_lat · c_kv + q_pe · k_pe  and the output
stays in latent space (p · c_kv), to be expanded by W_uv afterwards."""

from __future__ import annotations

import torch


def reference_mla_attention(q: torch.Tensor, cache: torch.Tensor, kv_lora: int, scale: float,
                            start_pos: int) -> torch.Tensor:
    """q [B, T, H, kv_lora + rope] (absorbed nope part, then rope part), cache [B, S, kv_lora + rope]
    with S = start_pos + T valid rows; query t sits at position start_pos + t (causal).
    Returns the latent output [B, T, H, kv_lora]."""
    B, T, H, _ = q.shape
    S = cache.shape[1]
    scores = torch.einsum("bthd,bsd->bths", q.float(), cache.float()) * scale
    pos = torch.arange(T, device=q.device)[:, None] + start_pos
    mask = torch.arange(S, device=q.device)[None, :] > pos  # [T, S]
    scores = scores.masked_fill(mask[None, :, None, :], float("-inf"))
    p = scores.softmax(dim=-1)
    return torch.einsum("bths,bsc->bthc", p, cache[..., :kv_lora].float()).to(q.dtype)


def padded_length(end: int, capacity: int, step: int = 64) -> int:
    """How many cache rows to hand ``mla_attention`` for ``end`` valid ones: rounded up to a multiple
    of ``step`` (within ``capacity``). oneDNN builds a new kernel for every new matmul shape
    (~400 us on CPU), so a length that grows by one each decode step would pay that every step;
    rows past ``end`` are masked out by causality and get probability exactly 0."""
    return min(-(-end // step) * step, capacity)


def mla_attention(q: torch.Tensor, cache: torch.Tensor, kv_lora: int, scale: float,
                  start_pos: int) -> torch.Tensor:
    """As the reference; ``cache`` may hold more rows than start_pos + T (see padded_length):
    those sit after every query's position and are masked."""
    B, T, H, D = q.shape
    S = cache.shape[1]
    # scores as cache @ qᵀ: the long cache is read in place (bmm would copy a transposed one);
    # the small result is then turned to [B, T*H, S] so softmax reduces over contiguous rows
    qt = q.reshape(B, T * H, D).transpose(1, 2)  # [B, D, T*H], small
    scores = torch.empty(B, T * H, S, dtype=torch.float32, device=q.device)
    scores.copy_(torch.bmm(cache, qt).transpose(1, 2)).mul_(scale)  # [B, T*H, S]
    if T > 1:
        pos = torch.arange(T, device=q.device).repeat_interleave(H)[:, None] + start_pos
        mask = torch.arange(S, device=q.device)[None, :] > pos  # [T*H, S]
        scores.masked_fill_(mask[None], float("-inf"))
    elif S > start_pos + 1:
        scores[:, :, start_pos + 1:] = float("-inf")  # padding rows after the one query
    p = scores.softmax(dim=-1).to(cache.dtype)  # [B, T*H, S]
    out = torch.bmm(p, cache[..., :kv_lora])  # [B, T*H, kv_lora]
    return out.view(B, T, H, kv_lora)
