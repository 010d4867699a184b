"""Mixture-of-experts combine: route each token to its top-k experts, weight and sum.

``experts`` is a sequence of callables ([n, hidden] -> [n, hidden]), one per expert, so the
same code runs plain, quantized or on any device. The fast path groups tokens by expert and
calls each active expert once on its batch; no Python loop over tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Expert = Callable[[torch.Tensor], torch.Tensor]


def reference_moe(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                  experts: Sequence[Expert]) -> torch.Tensor:
    """x [N, H], weights [N, K] (float32), indices [N, K] -> [N, H]: token by token."""
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for k in range(indices.shape[1]):
            y = experts[int(indices[n, k])](x[n:n + 1])
            out[n] += (y[0].float() * weights[n, k]).to(x.dtype)
    return out


def moe(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
        experts: Sequence[Expert]) -> torch.Tensor:
    n_tok, k = indices.shape
    flat = indices.reshape(-1)
    if n_tok == 1:  # decode: k experts, one row each; no sorting, weights as plain numbers
        ids, ws = flat.tolist(), weights.reshape(-1).tolist()
        out = experts[ids[0]](x).mul_(ws[0])
        for j in range(1, k):
            out.add_(experts[ids[j]](x), alpha=ws[j])
        return out
    order = flat.argsort(stable=True)  # slots sorted by expert
    counts = torch.bincount(flat, minlength=len(experts)).tolist()
    token_of = order // k  # token index of each sorted slot
    xs = x.index_select(0, token_of)  # [N*K, H] grouped by expert
    ws = weights.reshape(-1).index_select(0, order)
    ys = torch.empty_like(xs)
    start = 0
    for e, c in enumerate(counts):
        if c:
            ys[start:start + c] = experts[e](xs[start:start + c])
            start += c
    ys = (ys.float() * ws[:, None]).to(x.dtype)
    return torch.zeros_like(x).index_add_(0, token_of, ys)
