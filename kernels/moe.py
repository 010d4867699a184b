"""Mixture-of-experts: route each token to its top-k SwiGLU experts, weight and sum; and the
SwiGLU MLP itself (a dense MLP is a one-expert table).

    reference_moe                the math, token by token
    grouped_moe                  the PyTorch fast path: tokens grouped by expert, one call each
    FusedExperts                 kernels/csrc, natively quantized experts: one call per layer and token
                                 (``many``: one call per layer for a prefill's tokens)
    FusedBF16Experts             kernels/csrc, dense bf16 experts: the same
    GGUFFused                    kernels/kquant.c, GGUF experts read in place: the same
    TritonFused                  CUDA: the routed experts in two Triton launches
    fuse_experts / fuse_mlp      which fused decode kernel a layer's weights get (from the plan)
    moe / swiglu                 the ops: the fused kernel for a decode step's few tokens, else
                                 the grouped (or, under DUET_KERNELS=reference, the reference) path

``experts`` is a sequence of callables ([n, hidden] -> [n, hidden]), one per expert, so the
same code runs plain, quantized or on any device."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from kernels import dispatch

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


def grouped_moe(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
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

    max_rows = None   # tokens per call: one (a decode step's few run one by one)

    def __init__(self, w13s, w2s, shared=None):
        self._keep = (list(w13s), list(w2s), shared)          # the tables point into these
        pairs = list(zip(w13s, w2s)) + ([shared] if shared is not None else [])
        first = pairs[0][0]
        self.bits = 8 if first.mode == "int8" else 4
        self.group = first.group_size
        self.hidden = pairs[0][1].shape[0]
        self.hp = first.padded_shape[1]
        self.shared_row = len(w13s) if shared is not None else -1
        self.routed = len(w13s)
        ptrs = [[w13.tensors["q"].data_ptr(), _scales(w13).data_ptr(), w2.tensors["q"].data_ptr(),
                 _scales(w2).data_ptr()] for w13, w2 in pairs]
        self.table = torch.tensor(ptrs, dtype=torch.int64)                                  # [E(+1), 4]
        self.inter = torch.tensor([w13.shape[0] // 2 for w13, _ in pairs], dtype=torch.int32)
        self.ip = torch.tensor([w2.padded_shape[1] for _, w2 in pairs], dtype=torch.int32)
        self._idx0, self._w0 = torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        from kernels import cpu_native

        idx = _flat(indices, torch.int64)
        w = _flat(weights, torch.float32)
        y = cpu_native.moe(self.bits, self.table, self.inter, self.ip, idx, w, self.shared_row, self.group,
                           _act(x), self.hidden, self.hp, _act_bits(self.bits))
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def many(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Many tokens (x [N, H], weights/indices [N, k]) through their routed experts, one call
        (the tiled integer matmuls); the shared expert is not included."""
        from kernels import cpu_native

        k = indices.shape[1]
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)                       # slots sorted by expert
        off = torch.zeros(self.routed + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(flat, minlength=self.routed), 0, out=off[1:])
        tok = order // k
        at = torch.empty_like(order)
        at[order] = torch.arange(order.numel())                 # where each token's choice sits in that order
        wt = _flat(weights.reshape(-1).index_select(0, order), torch.float32)
        y = cpu_native.moe_many(self.bits, self.table, self.inter, self.ip, self.routed, tok, wt, off, at,
                                self.group, _act(x), self.hp, _act_bits(self.bits))
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        from kernels import cpu_native

        y = cpu_native.moe(self.bits, self.table, self.inter, self.ip, self._idx0, self._w0, 0, self.group, _act(x),
                           self.hidden, self.hp, _act_bits(self.bits))
        return y if y.dtype == x.dtype else y.to(x.dtype)


def _act_bits(bits: int) -> int:
    return dispatch.plan().linear.act_bits(bits)


def _act(x: torch.Tensor) -> torch.Tensor:
    x = x if x.dtype in (torch.bfloat16, torch.float32) else x.float()
    return x if x.is_contiguous() else x.contiguous()


def _flat(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t as a contiguous vector of ``dtype``; no call at all when it is one (decode makes few)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def _scales(qw):
    return qw.tensors["scale" if qw.mode == "int8" else "scale_zero"]


class FusedBF16Experts:
    """Dense bf16 SwiGLU experts as one native call for one token (same call shapes as
    ``FusedExperts``): float32 activations inside, the bf16 weights read once each."""

    max_rows = None

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


class GGUFFused:
    """One token through a MoE layer whose routed experts are GGUF blocks: the routed experts in
    one native call (kernels.kquant.GGUFExperts), plus the shared expert (``shared``, any callable).
    ``shared_table``: the shared expert's own one-row GGUFExperts where its weights are GGUF
    blocks too (kernels/decode_step.py's one-call layer reads it), else None."""

    max_rows = None

    def __init__(self, experts, shared: Expert | None, shared_table=None):
        self.experts, self.shared, self.shared_table = experts, shared, shared_table

    def __call__(self, x, weights, indices):
        y = self.experts(x, weights, indices)
        return y if self.shared is None else y + self.shared(x)


class GGUFDense:
    """A dense SwiGLU MLP of GGUF blocks for one token: a one-expert kernels.kquant.GGUFExperts
    (gate, up and down in one native call; ``swiglu`` calls ``dense`` for a single row only:
    a few rows go through the linears, which read each weight row once for all of them)."""

    max_rows = 1

    def __init__(self, table):
        self.table = table
        self._w, self._i = torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.int64)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x, self._w, self._i)


def _gguf_table(w13, w2):
    """One-expert-per-row GGUFExperts over SwiGLU weights (w13 = gate rows, then up rows), or None."""
    from kernels import kquant

    ws = list(w13) + list(w2)
    if not ws or not all(isinstance(w, kquant.GGUFWeight) for w in ws):
        return None
    half = [(kquant.GGUFWeight(q.type, (q.shape[0] // 2, q.shape[1]), q.data[: q.shape[0] // 2]),
             kquant.GGUFWeight(q.type, (q.shape[0] // 2, q.shape[1]), q.data[q.shape[0] // 2:])) for q in w13]
    gates, ups = [h[0] for h in half], [h[1] for h in half]
    if not kquant.GGUFExperts.fits(gates, ups, list(w2)):
        return None
    return kquant.GGUFExperts(gates, ups, list(w2))


class TritonFused:
    """CUDA, one token: the routed (portable-layout quantized) experts in two Triton launches,
    plus the shared expert."""

    max_rows = 1

    def __init__(self, table, shared: Expert | None):
        self.table, self.shared = table, shared

    def __call__(self, x, weights, indices):
        from kernels import triton_ops

        y = triton_ops.moe_decode(x, weights, indices, self.table)
        return y if self.shared is None else y + self.shared(x)


def _fuse_bf16(pairs, w13s, w2s, shared) -> FusedBF16Experts | None:
    hidden = pairs[0][0].shape[1]
    for w13, w2 in pairs:
        for w in (w13, w2):
            if not isinstance(w, torch.Tensor) or w.dtype != torch.bfloat16 or w.device.type != "cpu" \
                    or w.dim() != 2 or not w.is_contiguous():
                return None
        if w13.shape[1] != hidden or w13.shape[0] % 2 or w2.shape != (hidden, w13.shape[0] // 2):
            return None
    return FusedBF16Experts(w13s, w2s, shared)


def _fuse_gguf(w13s, w2s, shared, shared_fn) -> GGUFFused | None:
    experts = _gguf_table(w13s, w2s)
    if experts is None:
        return None
    shared_table = _gguf_table([shared[0]], [shared[1]]) if shared is not None else None
    return GGUFFused(experts, shared_fn, shared_table)


def _fuse_triton(w13s, w2s, shared_fn) -> TritonFused | None:
    from kernels import triton_ops

    if not all(getattr(w, "layout", None) in ("nibbles", "codes") and w.device.type == "cuda"
               for w in list(w13s) + list(w2s)):
        return None
    return TritonFused(triton_ops.ExpertTable(w13s, w2s), shared_fn)


def fuse_experts(w13s, w2s, shared=None, shared_fn: Expert | None = None):
    """The fused decode kernel over these weights, or None: routed experts ``w13s`` / ``w2s``
    (quantized weights, or dense tensors) and the shared expert's (w13, w2) pair ``shared``
    (or, for the GGUF and Triton kernels, which take only routed experts, its callable
    ``shared_fn``). Natively quantized weights need one mode, group and hidden size; dense ones
    bf16 CPU tensors; GGUF ones one type per matrix; Triton ones the portable layout on CUDA."""
    w13s, w2s = list(w13s), list(w2s)
    if not w13s or any(w is None for w in w13s + w2s):
        return None
    p = dispatch.plan()
    first = w13s[0]
    if getattr(first, "layout", None) == "gguf":
        return _fuse_gguf(w13s, w2s, shared, shared_fn)
    if getattr(first, "device", torch.device("cpu")).type == "cuda":
        return _fuse_triton(w13s, w2s, shared_fn) if p.triton else None
    if p.moe.decode != "native-fused":
        return None
    pairs = list(zip(w13s, w2s)) + ([tuple(shared)] if shared is not None else [])
    if isinstance(first, torch.Tensor):
        return _fuse_bf16(pairs, w13s, w2s, shared)
    from kernels.quant import NATIVE

    if first.layout != NATIVE:
        return None
    hidden, hp = pairs[0][1].shape[0], first.padded_shape[1]
    for w13, w2 in pairs:
        for qw in (w13, w2):
            if qw is None or getattr(qw, "layout", None) != NATIVE or qw.mode != first.mode \
                    or qw.group_size != first.group_size:
                return None
        if (w13.shape[1] != hidden or w13.padded_shape[1] != hp or w2.shape[0] != hidden
                or w13.shape[0] % 2 or w2.shape[1] != w13.shape[0] // 2):
            return None
    return FusedExperts(w13s, w2s, shared)


def fuse_mlp(w13, w2) -> FusedExperts | FusedBF16Experts | GGUFDense | None:
    """A dense SwiGLU MLP's fused one-token kernel (a one-expert table; ``swiglu`` calls its
    ``dense``): natively quantized, dense bf16 or GGUF CPU weights only."""
    if w13 is None or w2 is None or getattr(w13, "device", torch.device("cpu")).type != "cpu":
        return None
    if getattr(w13, "layout", None) == "gguf":
        from kernels import kquant

        table = _gguf_table([w13], [w2]) if kquant.entry("kq_moe") is not None else None
        return GGUFDense(table) if table is not None else None
    return fuse_experts([w13], [w2])


def _rows_fused(fused, n: int) -> bool:
    limit = fused.max_rows or dispatch.plan().moe.fused_rows
    return n <= limit


def moe(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts: Sequence[Expert],
        shared: Expert | None = None, fused=None) -> torch.Tensor:
    """x [N, H], weights [N, K] float32, indices [N, K] -> [N, H]: Σ weights · experts (+ the
    shared expert). A decode step's few tokens run ``fused`` (``fuse_experts``) one token each;
    more tokens natively quantized experts' one many-token call where the plan says so, else the
    grouped path."""
    n = x.shape[0]
    if fused is not None and _rows_fused(fused, n):
        if n == 1:
            return fused(x, weights, indices)
        return torch.cat([fused(x[i:i + 1], weights[i:i + 1], indices[i:i + 1]) for i in range(n)])
    how = dispatch.plan().moe.combine
    if how == "native-grouped" and isinstance(fused, FusedExperts):
        y = fused.many(x, weights, indices)
    else:
        y = (reference_moe if how == "reference" else grouped_moe)(x, weights, indices, experts)
    return y if shared is None else y + shared(x)


def swiglu(x: torch.Tensor, w13: Expert, w2: Expert, inter: int, fused=None) -> torch.Tensor:
    """The reference's result; a decode step's few rows run ``fused.dense`` (a one-expert
    ``fuse_experts`` table) one row each where there is one."""
    rows = x.numel() // x.shape[-1]
    if fused is not None and rows == 1:
        return fused.dense(x.reshape(1, -1)).view(x.shape)
    if fused is not None and rows <= (getattr(fused, "max_rows", None) or dispatch.plan().moe.fused_rows):
        flat = x.reshape(rows, -1)
        return torch.cat([fused.dense(flat[i:i + 1]) for i in range(rows)]).view(x.shape)
    g, u = w13(x).split(inter, dim=-1)
    return w2(F.silu(g).mul_(u))
