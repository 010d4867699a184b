"""DeepSeek-V3.2's sparse attention (DSA): the lightning indexer's top-k, and absorbed MLA over
only the rows it chose.

The indexer keeps one small key per cached token, k [B, S, D] (rope on its first dims). For
query t at position start_pos + t, with its own Hi heads q [Hi, D] and per-head weights w [Hi]
(float32), every cached position s ≤ start_pos + t gets the index score

    I[t, s] = Σ_h w[h] · relu(scale · q[h] · k[s])

and the query attends to its top min(topk, start_pos + T) positions. Positions after a query
are never chosen for attention: where a query has fewer valid positions than that count, the
extra picks land on masked positions, and attention masks them again.

Rows of ``k_cache`` / ``cache`` past start_pos + T may be present (padding, stale rows from a
longer earlier context): they are masked, never read into a result.

    reference_indexer_topk / reference_sparse_mla_attention   the math, in plain PyTorch
    torch_indexer_topk / torch_sparse_mla_attention           the PyTorch fast paths
    indexer_topk / sparse_mla_attention                       the ops (kernels.dispatch's plan)
"""

from __future__ import annotations

import torch

from kernels import dispatch

# query rows per block in the T > 1 paths: bounds the [rows, heads, S] score tensors
_BLOCK_ELEMENTS = 1 << 24


def _causal_mask(T: int, S: int, start_pos: int, device) -> torch.Tensor:
    """[T, S] True where position s lies after query t (start_pos + t)."""
    pos = torch.arange(T, device=device)[:, None] + start_pos
    return torch.arange(S, device=device)[None, :] > pos


def reference_indexer_topk(q: torch.Tensor, weights: torch.Tensor, k_cache: torch.Tensor, scale: float,
                           start_pos: int, topk: int) -> torch.Tensor:
    """q [B, T, Hi, D], weights [B, T, Hi] (float32), k_cache [B, S ≥ start_pos + T, D]
    -> chosen positions [B, T, min(topk, start_pos + T)] (int64, in no particular order)."""
    T = q.shape[1]
    end = start_pos + T
    k = k_cache[:, :end].float()
    s = torch.einsum("bthd,bsd->bths", q.float(), k) * scale  # [B, T, Hi, S]
    score = torch.einsum("bth,bths->bts", weights.float(), s.relu())  # [B, T, S]
    score = score.masked_fill(_causal_mask(T, end, start_pos, q.device)[None], float("-inf"))
    return score.topk(min(topk, end), dim=-1).indices


def torch_indexer_topk(q: torch.Tensor, weights: torch.Tensor, k_cache: torch.Tensor, scale: float,
                       start_pos: int, topk: int) -> torch.Tensor:
    """As the reference, as matmuls over the whole (possibly padded) key cache, a block of
    queries at a time; the scale is folded into the (positive-scaled) weights. In float32, except
    one query (decode) over a bf16/fp16 cache where the CPU multiplies bf16 natively: its q·k
    products then run in the cache's dtype (float32 accumulation, rounded once to it; DeepSeek's
    own kernel scores in FP8), which spares converting the whole key cache every step (elsewhere
    torch's bf16 bmm is 8-15x slower than that conversion and a float32 one)."""
    B, T, Hi, D = q.shape
    S, end = k_cache.shape[1], start_pos + T
    K = min(topk, end)
    low = T == 1 and k_cache.dtype in (torch.bfloat16, torch.float16) and dispatch.plan().act_dtype == torch.bfloat16
    kf = k_cache if low else k_cache.float()  # [B, S, D]
    w = weights.float() * scale  # relu(scale·x) = scale·relu(x), scale > 0
    out = torch.empty(B, T, K, dtype=torch.long, device=q.device)
    step = max(1, _BLOCK_ELEMENTS // max(1, Hi * S))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        n = t1 - t0
        qb = q[:, t0:t1].reshape(B, n * Hi, D).to(kf.dtype)
        s = torch.bmm(kf, qb.transpose(1, 2)).float().relu_()  # [B, S, n*Hi]: the long cache read in place
        score = torch.bmm(s.view(B, S, n, Hi).transpose(1, 2).reshape(B * n, S, Hi),
                          w[:, t0:t1].reshape(B * n, Hi, 1)).view(B, n, S)
        score = score[..., :end]  # the padding rows never count
        if n > 1 or t1 < T:  # (one query at the last position sees every row up to end)
            score.masked_fill_(_causal_mask(n, end, start_pos + t0, q.device)[None], float("-inf"))
        # exact ties (keys whose every head's relu is 0 score exactly 0) go whichever way topk
        # breaks them: the same call as the reference's (and transformers') breaks them alike
        out[:, t0:t1] = score.topk(K, dim=-1).indices
    return out


def reference_sparse_mla_attention(q: torch.Tensor, cache: torch.Tensor, chosen: torch.Tensor, kv_lora: int,
                                   scale: float, start_pos: int) -> torch.Tensor:
    """kernels.mla's absorbed attention where query t sees only the positions in chosen[:, t]
    (and, as always, none after its own): q [B, T, H, kv_lora + rope], cache [B, S, kv_lora + rope],
    chosen [B, T, K] -> latent output [B, T, H, kv_lora]."""
    B, T, H, _ = q.shape
    S = cache.shape[1]
    scores = torch.einsum("bthd,bsd->bths", q.float(), cache.float()) * scale
    keep = torch.zeros(B, T, S, dtype=torch.bool, device=q.device).scatter_(2, chosen, True)
    keep &= ~_causal_mask(T, S, start_pos, q.device)[None]
    scores = scores.masked_fill(~keep[:, :, None, :], float("-inf"))
    p = scores.softmax(dim=-1)
    return torch.einsum("bths,bsc->bthc", p, cache[..., :kv_lora].float()).to(q.dtype)


def torch_sparse_mla_attention(q: torch.Tensor, cache: torch.Tensor, chosen: torch.Tensor, kv_lora: int,
                               scale: float, start_pos: int) -> torch.Tensor:
    """As the reference. One query (decode): its chosen rows are gathered and attended densely,
    a cost set by topk, not by the context length (a bf16 cache: kernels/csrc's attention where
    the plan says, float32 out). Several queries (prefill): dense scores over
    the cache with everything not chosen masked, a block of queries at a time."""
    B, T, H, D = q.shape
    S, K = cache.shape[1], chosen.shape[-1]
    if T == 1:
        if K > start_pos + 1:
            raise ValueError(f"{K} positions chosen for a query that sees {start_pos + 1}")
        rows = torch.empty(B, K, D, dtype=cache.dtype, device=cache.device)  # [B, K, kv_lora + rope]
        for b in range(B):  # index_select copies rows ~10x faster than gather (and stack costs a copy)
            torch.index_select(cache[b], 0, chosen[b, 0], out=rows[b])
        if dispatch.plan().attention.attention == "native-bf16" and rows.dtype == torch.bfloat16 \
                and rows.device.type == "cpu":
            from kernels import cpu_native   # every gathered row valid: one query at position K - 1

            return cpu_native.mla_attention(q, rows, kv_lora, scale, K - 1)
        scores = torch.bmm(q.reshape(B, H, D), rows.transpose(1, 2)).float().mul_(scale)  # [B, H, K]: all valid
        p = scores.softmax(dim=-1).to(cache.dtype)
        # p · the whole rows (contiguous operand: 5x faster than a kv_lora slice), then the latent part
        return torch.bmm(p, rows)[..., :kv_lora].reshape(B, 1, H, kv_lora)
    out = torch.empty(B, T, H, kv_lora, dtype=cache.dtype, device=q.device)
    step = max(1, _BLOCK_ELEMENTS // max(1, H * S))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        n = t1 - t0
        qt = q[:, t0:t1].reshape(B, n * H, D).transpose(1, 2)  # [B, D, n*H]
        scores = torch.empty(B, n * H, S, dtype=torch.float32, device=q.device)
        scores.copy_(torch.bmm(cache, qt.to(cache.dtype)).transpose(1, 2)).mul_(scale)
        drop = torch.ones(B, n, S, dtype=torch.bool, device=q.device).scatter_(2, chosen[:, t0:t1], False)
        drop |= _causal_mask(n, S, start_pos + t0, q.device)[None]
        scores.view(B, n, H, S).masked_fill_(drop[:, :, None, :], float("-inf"))
        p = scores.softmax(dim=-1).to(cache.dtype)
        out[:, t0:t1] = torch.bmm(p, cache[..., :kv_lora]).view(B, n, H, kv_lora)
    return out


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, k_cache: torch.Tensor, scale: float,
                 start_pos: int, topk: int) -> torch.Tensor:
    fn = reference_indexer_topk if dispatch.plan().attention.attention == "reference" else torch_indexer_topk
    return fn(q, weights, k_cache, scale, start_pos, topk)


def sparse_mla_attention(q: torch.Tensor, cache: torch.Tensor, chosen: torch.Tensor, kv_lora: int,
                         scale: float, start_pos: int) -> torch.Tensor:
    reference = dispatch.plan().attention.attention == "reference"
    fn = reference_sparse_mla_attention if reference else torch_sparse_mla_attention
    return fn(q, cache, chosen, kv_lora, scale, start_pos)
