"""Mixture-of-experts combine: route each token to its top-k experts, weight and sum.

``experts`` is a sequence of callables ([n, hidden] -> [n, hidden]), one per expert, so the
same code runs plain, quantized or on any device. The fast path groups tokens by expert and
calls each active expert once on its batch; no Python loop over tokens.

For one token on CPU with natively quantized experts (or dense bf16 ones), ``fuse_experts``
builds a single native call per MoE layer (kernels/csrc: every active expert's w13 GEMV, silu(gate) * up,
w2 GEMV, weighted sum, plus the shared expert), replacing ~30 torch ops; ``reference_moe``
stays its reference."""

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


class FusedExperts:
    """SwiGLU experts (w13 = [gate; up] rows, w2) as one native call for one token.

    Table rows 0..E-1 are the routed experts, row E the shared expert when there is one.
    ``__call__(x [1, H], weights [1, k] float32, indices [1, k]) -> [1, H]`` sums the k
    routed experts (weighted) and the shared one; ``dense(x)`` runs row 0 alone (a dense
    MLP built as a one-expert table)."""

    def __init__(self, w13s, w2s, shared=None):
        self._keep = (list(w13s), list(w2s), shared)          # the tables point into these
        pairs = list(zip(w13s, w2s)) + ([shared] if shared is not None else [])
        first = pairs[0][0]
        self.bits = 8 if first.mode == "int8" else 4
        self.group = first.group_size
        self.hidden = pairs[0][1].shape[0]
        self.hp = first.padded_shape[1]
        self.shared_row = len(w13s) if shared is not None else -1
        ptrs = [[w13.tensors["q"].data_ptr(), _scales(w13).data_ptr(), w2.tensors["q"].data_ptr(),
                 _scales(w2).data_ptr()] for w13, w2 in pairs]
        self.table = torch.tensor(ptrs, dtype=torch.int64)                                  # [E(+1), 4]
        self.inter = torch.tensor([w13.shape[0] // 2 for w13, _ in pairs], dtype=torch.int32)
        self.ip = torch.tensor([w2.padded_shape[1] for _, w2 in pairs], dtype=torch.int32)
        self._none = torch.zeros(1, dtype=torch.int64)

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        from kernels import cpu_native

        idx = indices.reshape(-1).contiguous()
        w = weights.reshape(-1).to(torch.float32).contiguous()
        return cpu_native.moe(self.bits, self.table, self.inter, self.ip, idx, w, self.shared_row, self.group,
                              _act(x), self.hidden, self.hp).to(x.dtype)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        from kernels import cpu_native

        return cpu_native.moe(self.bits, self.table, self.inter, self.ip, self._none[:0], self._none.float()[:0],
                              0, self.group, _act(x), self.hidden, self.hp).to(x.dtype)


def _act(x: torch.Tensor) -> torch.Tensor:
    x = x if x.dtype in (torch.bfloat16, torch.float32) else x.float()
    return x.contiguous()


def _scales(qw):
    return qw.tensors["scale" if qw.mode == "int8" else "scale_zero"]


class FusedBF16Experts:
    """Dense bf16 SwiGLU experts as one native call for one token (same call shapes as
    ``FusedExperts``): float32 activations inside, the bf16 weights read once each."""

    def __init__(self, w13s, w2s, shared=None):
        pairs = list(zip(w13s, w2s)) + ([tuple(shared)] if shared is not None else [])
        self._keep = pairs                                                   # the table points into these
        self.hidden = pairs[0][1].shape[0]
        self.shared_row = len(w13s) if shared is not None else -1
        self.table = torch.tensor([[a.data_ptr(), b.data_ptr()] for a, b in pairs], dtype=torch.int64)  # [E(+1), 2]
        self.inter = torch.tensor([a.shape[0] // 2 for a, _ in pairs], dtype=torch.int32)
        self._none = torch.zeros(0, dtype=torch.int64)

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        from kernels import cpu_native

        idx = indices.reshape(-1).to(torch.int64).contiguous()
        w = weights.reshape(-1).to(torch.float32).contiguous()
        y = cpu_native.moe_bf16(self.table, self.inter, idx, w, self.shared_row, x.reshape(-1).float().contiguous(),
                                self.hidden)
        return y.view(1, -1).to(x.dtype)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        from kernels import cpu_native

        y = cpu_native.moe_bf16(self.table, self.inter, self._none, self._none.float(), 0,
                                x.reshape(-1).float().contiguous(), self.hidden)
        return y.view(1, -1).to(x.dtype)


def _fuse_bf16(pairs, w13s, w2s, shared) -> FusedBF16Experts | None:
    hidden = pairs[0][0].shape[1]
    for w13, w2 in pairs:
        for w in (w13, w2):
            if not isinstance(w, torch.Tensor) or w.dtype != torch.bfloat16 or w.device.type != "cpu" \
                    or w.dim() != 2 or not w.is_contiguous():
                return None
        if w13.shape[1] != hidden or w13.shape[0] % 2 or w2.shape != (hidden, w13.shape[0] // 2):
            return None
    from kernels import cpu_native

    return FusedBF16Experts(w13s, w2s, shared) if cpu_native.lib() is not None else None


def fuse_experts(w13s, w2s, shared=None) -> FusedExperts | FusedBF16Experts | None:
    """A fused one-token call over these weights (``shared``: a (w13, w2) pair): quantized
    ones all in the native CPU layout with one mode, group and hidden size, or dense bf16
    CPU tensors; None otherwise."""
    from kernels.quant import NATIVE

    pairs = list(zip(w13s, w2s)) + ([tuple(shared)] if shared is not None else [])
    if not pairs:
        return None
    first = pairs[0][0]
    if isinstance(first, torch.Tensor):
        return _fuse_bf16(pairs, w13s, w2s, shared)
    if first is None or first.layout != NATIVE:
        return None
    hidden, hp = pairs[0][1] is not None and pairs[0][1].shape[0], first.padded_shape[1]
    for w13, w2 in pairs:
        for qw in (w13, w2):
            if qw is None or qw.layout != NATIVE or qw.mode != first.mode or qw.group_size != first.group_size:
                return None
        if (w13.shape[1] != hidden or w13.padded_shape[1] != hp or w2.shape[0] != hidden
                or w13.shape[0] % 2 or w2.shape[1] != w13.shape[0] // 2):
            return None
    return FusedExperts(w13s, w2s, shared)
