"""Absorbed MLA attention over the latent cache.

The cache holds, per token, the normalised latent c_kv [kv_lora] and the rotated rope key
k_pe [rope], concatenated: cache [B, S, kv_lora + rope]. With the kv_b up-projection folded
into the query (q_nope · W_uk) the scores are  q_lat · c_kv + q_pe · k_pe  and the output
stays in latent space (p · c_kv), to be expanded by W_uv afterwards.

    reference_mla_attention      the math, in plain PyTorch
    torch_mla_attention          the PyTorch fast path (the cache read in place, padded lengths)
    cpu_native.mla_attention     kernels/csrc's (float32 sums; each query as the native decode step
                                 computes it): a bf16 cache where bf16 matmuls are not native
    triton_ops.mla_attention     CUDA (split-K over the cache)
    mla_attention                the op: picks one from kernels.dispatch's plan
    expand_pays / chunk_mask     when a prefill chunk after cached tokens runs expanded per-head
                                 keys (SDPA) instead, and its causal mask
    absorb / per_head            W_uk and W_uvᵀ per head, and one token's products with them:
                                 kernels/csrc's bf16 GEMV (cpu_native.head_gemv) or a batched matmul
"""

from __future__ import annotations

import torch

from kernels import dispatch


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


def expand_pays(T: int, start_pos: int, nope: int, rope: int, v: int, kv_lora: int) -> bool:
    """Whether a chunk of T queries after start_pos cached tokens costs fewer multiply-adds with
    keys and values expanded per head from the latent cache (W_kv_b over all start_pos + T rows,
    then nope + rope wide scores and v (padded to that) wide outputs) than absorbed (kv_lora + rope
    wide scores, kv_lora wide outputs, W_uk / W_uv per query). Long prefill chunks: yes (2-3x
    faster on CPU, measured); a few tokens after a long context: no."""
    S = start_pos + T
    per_pair = 2 * kv_lora + rope - 2 * (nope + rope)   # absorbed minus expanded, per (query, key) and head
    return T * S * per_pair > start_pos * (nope + v) * kv_lora


def chunk_mask(T: int, start_pos: int, device=None) -> torch.Tensor:
    """The causal mask [T, start_pos + T] of a chunk of T queries after start_pos cached tokens
    (True: attend): query t sees keys 0 .. start_pos + t."""
    return torch.ones(T, start_pos + T, dtype=torch.bool, device=device).tril(start_pos)


def padded_length(end: int, capacity: int, step: int = 64) -> int:
    """How many cache rows to hand ``mla_attention`` for ``end`` valid ones: rounded up to a multiple
    of ``step`` (within ``capacity``). oneDNN builds a new kernel for every new matmul shape
    (~400 us on CPU), so a length that grows by one each decode step would pay that every step;
    rows past ``end`` are masked out by causality and get probability exactly 0."""
    return min(-(-end // step) * step, capacity)


def torch_mla_attention(q: torch.Tensor, cache: torch.Tensor, kv_lora: int, scale: float,
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


def mla_attention(q: torch.Tensor, cache: torch.Tensor, kv_lora: int, scale: float,
                  start_pos: int) -> torch.Tensor:
    p = dispatch.plan()
    if q.device.type == "cuda" and p.triton:
        from kernels import triton_ops

        return triton_ops.mla_attention(q, cache, kv_lora, scale, start_pos)
    if p.attention.attention == "reference":
        return reference_mla_attention(q, cache, kv_lora, scale, start_pos)
    if p.attention.attention == "native-bf16" and cache.dtype == torch.bfloat16 and cache.device.type == "cpu" \
            and cache.stride(-1) == 1:
        from kernels import cpu_native

        return cpu_native.mla_attention(q, cache, kv_lora, scale, start_pos)
    return torch_mla_attention(q, cache, kv_lora, scale, start_pos)


# -- the absorbed form's per-head products ----------------------------------------------------
# torch's bf16 bmm of [H, 1, K] x [H, K, N] streams at a third of memory bandwidth (float32
# copies run 1.5x faster but read twice the bytes); kernels/csrc's per-head GEMV reads bf16 at
# bandwidth. So a bf16 CPU model keeps W_uk / W_uvᵀ in bf16 where that GEMV runs, else float32.

def absorb(wkv_b: torch.Tensor, n_heads: int, nope: int, v: int, kv_lora: int,
           cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_b [H * (nope + v), kv_lora] split per head: W_uk [H, nope, kv_lora], W_uvᵀ [H, kv_lora, v],
    contiguous (strided batched matmuls are 2x slower), in the dtype ``per_head`` runs fastest."""
    native = (dispatch.plan().attention.head_gemv == "native-bf16" and cache.device.type == "cpu"
              and cache.dtype == torch.bfloat16)
    w = wkv_b.to(torch.bfloat16 if native else torch.float32).view(n_heads, nope + v, kv_lora)
    return w[:, :nope].contiguous(), w[:, nope:].transpose(1, 2).contiguous()


def reference_per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [R, H, K], w [H, K, N] -> [R, H, N] float32: y[r, h] = x[r, h] · w[h]."""
    return torch.einsum("rhk,hkn->rhn", x.float(), w.float())


def per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """As the reference, in w's dtype (float32 from the native GEMV): one row of bf16 CPU
    weights runs kernels/csrc's per-head GEMV, anything else one batched matmul."""
    R, H, K = x.shape
    if R == 1 and w.dtype == torch.bfloat16 and w.device.type == "cpu" \
            and dispatch.plan().attention.head_gemv == "native-bf16":
        from kernels import cpu_native

        return cpu_native.head_gemv(x.reshape(H, K).float(), w).unsqueeze(0)
    return torch.bmm(x.transpose(0, 1).to(w.dtype), w).transpose(0, 1)
