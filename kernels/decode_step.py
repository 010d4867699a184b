"""One token's decode step through a layer as native calls: the whole layer in one, or its
attention block and its MoE router in one each.

On a small model a decode step is dominated by dispatch: the PyTorch path of one layer makes
~185 small framework calls (norms, three or four projections, RoPE, cache writes, the absorbed
products, softmax, residual, the router's dozen ops), each costing microseconds around a few of
work. Here they are calls into kernels/csrc:

    MLAStep(x) -> (h, normed)    h = x + wo(attention(attn_norm(x))), normed = ffn_norm(h);
                                 the latent cache row of this position is written
    gate(x)    -> (weights, indices)   V3's / V2's router for one token
    LayerStep(x) -> h + ffn(normed)    the whole layer: the two above, then the experts (or the
                                 dense MLP) and the residual, one call (``fuse_layer``)
    LayerStack(x)                consecutive whole layers, one call: a small model's decode step
                                 makes one call between its embedding and its head

They compute what the modules they replace compute (the reference is the model's own PyTorch
path; tests compare them): in a float32 model they agree up to the order of the sums; they are
float32 inside, so for a bf16 model they round once where the PyTorch path rounds after every
op. A GGUF file's blocks are read inside the call by kernels/kquant.py's library, its kq_gemm
(linears) and kq_moe (routed experts, shared expert, dense MLP) passed in by address, at the
plan's GGUF activation bits (the step is rebuilt under another plan). ``fuse_mla`` /
``gate_plan`` / ``fuse_layer`` return None where the plan has no native kernels or a weight is
of a kind these calls do not read (oneDNN-packed, i-quant projections, CUDA; for the whole layer,
experts that are not native int8/int4, dense bf16 or GGUF blocks kq_moe takes); the model then
keeps its PyTorch path for that part.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from kernels import dispatch
from kernels.moe import FusedBF16Experts, FusedExperts, GGUFDense, GGUFFused

_KIND = {torch.float32: 32, torch.bfloat16: 16}
LIN_GGUF = 64   # kernels/csrc/quant_gemv.c's kind for GGUF blocks (linears and FFNs)


def _desc(w) -> list[int] | None:
    """A linear's descriptor for kernels/csrc (kind, weight, scales, kp, group, n, k), or None."""
    from kernels import kquant
    from kernels.quant import NATIVE, QuantizedWeight

    if isinstance(w, kquant.GGUFWeight):   # run by kquant's kq_gemm (its address), at its activation bits
        addr = kquant.entry("kq_gemm")
        if addr is None or w.type not in kquant.DOT_TYPES or w.data.device.type != "cpu" or w.data.stride(1) != 1:
            return None   # (i-quants: their own library)
        return [LIN_GGUF, w.data.data_ptr(), addr, w.stride, w.type | kquant.act_bits() << 8, w.shape[0], w.shape[1]]
    if isinstance(w, QuantizedWeight):
        if w.layout != NATIVE:
            return None
        sc = w.tensors["scale" if w.mode == "int8" else "scale_zero"]
        n, k = w.shape
        return [8 if w.mode == "int8" else 4, w.tensors["q"].data_ptr(), sc.data_ptr(), w.padded_shape[1],
                w.group_size, n, k]
    if isinstance(w, torch.Tensor) and w.dim() == 2 and w.dtype in _KIND and w.device.type == "cpu" \
            and w.is_contiguous():
        return [_KIND[w.dtype], w.data_ptr(), 0, w.shape[1], 0, w.shape[0], w.shape[1]]
    return None


@dataclass(frozen=True)
class MLAShape:
    hidden: int
    heads: int
    nope: int
    rope: int
    v: int
    q_lora: int
    kv_lora: int
    interleaved: bool
    scale: float


class MLAStep:
    """The native decode step of one MLA block (see the module docstring). Built by ``fuse_mla``;
    keeps references to every tensor its descriptors point into."""

    def __init__(self, shape: MLAShape, descs: list[list[int]], norms: list[torch.Tensor], eps: list[float],
                 cache: torch.Tensor, w_uk: torch.Tensor, w_uv_t: torch.Tensor, keep: list):
        self.shape, self.cache, self._keep = shape, cache, (keep, norms, w_uk, w_uv_t)
        self.plan = dispatch.plan()   # what its descriptors' activation bits come from (rebuilt with it)
        self.lin = torch.tensor(descs, dtype=torch.int64)
        self.norms = torch.tensor([n.data_ptr() if n is not None else 0 for n in norms], dtype=torch.int64)
        self.norm_bf16 = torch.tensor([int(n is not None and n.dtype == torch.bfloat16) for n in norms],
                                      dtype=torch.int32)
        self.eps = torch.tensor(eps, dtype=torch.float32)
        lin = dispatch.plan().linear
        s = shape
        self.dims = torch.tensor([s.hidden, s.heads, s.nope, s.rope, s.v, s.q_lora, s.kv_lora, int(s.interleaved),
                                  cache.shape[-1], int(cache.dtype == torch.bfloat16),
                                  int(w_uk.dtype == torch.bfloat16), lin.act_bits(8), lin.act_bits(4)],
                                 dtype=torch.int32)
        self.uk, self.uv_t = w_uk.data_ptr(), w_uv_t.data_ptr()

    def __call__(self, x: torch.Tensor, start_pos: int, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [1, 1, hidden] (bf16 or float32) at position start_pos; cos/sin [1, rope/2] float32."""
        from kernels import cpu_native

        if start_pos >= self.cache.shape[1]:
            raise IndexError(f"position {start_pos} is past the cache ({self.cache.shape[1]} rows)")
        # (each call below that is skipped is a framework call saved: a step makes few)
        x, cos, sin = _plain(x), _plain(cos, torch.float32), _plain(sin, torch.float32)
        h, normed = torch.empty_like(x), torch.empty_like(x)
        cpu_native.mla_step(self, x, start_pos, cos, sin, h, normed)
        return h, normed


def _plain(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """t contiguous (and in ``dtype``), converted only when it is not already."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def fuse_mla(shape: MLAShape, weights: list, norms: list[torch.Tensor | None], eps: list[float],
             cache: torch.Tensor, absorbed: tuple[torch.Tensor, torch.Tensor]) -> MLAStep | None:
    """The native step over an MLA block's weights, or None where it cannot run.

    ``weights``: [wq_a or wq, wq_b or None, wkv_a, wo], each a native quantized weight or a dense
    CPU tensor (float32 / bf16); ``norms``: the attn_norm, q_norm (None without q_lora), kv_norm
    and ffn_norm weights, ``eps`` theirs; ``cache``: the layer's latent cache [B, S, kv_lora + rope]
    (batch row 0 is the one written); ``absorbed``: (W_uk [H, nope, kv_lora], W_uvᵀ [H, kv_lora, v])."""
    if dispatch.plan().attention.step != "native" or cache is None or cache.device.type != "cpu":
        return None
    if cache.dtype not in _KIND or not cache.is_contiguous():
        return None
    w_uk, w_uv_t = absorbed
    if any(t.dtype not in _KIND or t.dtype != w_uk.dtype or not t.is_contiguous() for t in absorbed):
        return None
    descs = []
    for w in weights:
        if w is None:
            descs.append([0] * 7)
            continue
        d = _desc(w)
        if d is None:
            return None
        descs.append(d)
    for n in norms:
        if n is not None and (n.dtype not in _KIND or not n.is_contiguous() or n.device.type != "cpu"):
            return None
    return MLAStep(shape, descs, list(norms), list(eps), cache, w_uk, w_uv_t, list(weights))


@dataclass(frozen=True)
class GatePlan:
    """A router's constants for the native call."""

    weight: torch.Tensor      # float32 [E, hidden]
    bias: torch.Tensor | None  # float32 [E] (V3's selection bias)
    sigmoid: bool
    n_group: int
    topk_group: int
    method: int               # 0 greedy, 1 group max (V2), 2 sum of the group's best two (V3)
    topk: int
    norm: bool
    route_scale: float


_METHODS = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}


def gate_plan(weight: torch.Tensor, bias: torch.Tensor | None, scoring: str, method: str, n_group: int,
              topk_group: int, topk: int, norm: bool, route_scale: float) -> GatePlan | None:
    """The native router's plan, or None (no native kernels, CUDA, an unknown method, > 1024 experts)."""
    if dispatch.plan().attention.step != "native" or weight.device.type != "cpu" \
            or weight.dtype != torch.float32 or method not in _METHODS or scoring not in ("sigmoid", "softmax") \
            or weight.shape[0] > 1024 or not weight.is_contiguous():
        return None
    return GatePlan(weight, bias, scoring == "sigmoid", n_group, topk_group, _METHODS[method], topk,
                    norm, route_scale)


def gate(p: GatePlan, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token's routing: x [1, hidden] -> weights float32 [1, k], indices int64 [1, k]."""
    from kernels import cpu_native

    return cpu_native.gate(p, _plain(x, torch.float32))


class LayerStep:
    """A whole decode layer for the native call: the MLA block of ``attn``, then the FFN: the
    router (``gate``; None for a dense MLP) and the fused experts' table
    (kernels.moe.FusedExperts / FusedBF16Experts), then the residual. Built by ``fuse_layer``;
    ``row`` is its line of the call's layer table (``LayerStack`` runs several; called, it runs
    alone)."""

    def __init__(self, attn: MLAStep, experts, gate: GatePlan | None, gguf: list[int] | None = None):
        self.attn, self._keep = attn, (experts, gate)
        native = isinstance(experts, FusedExperts)
        if gguf is not None:   # GGUF experts: their tables follow the router's fields (_gguf_ffn)
            ffn = [LIN_GGUF, gguf[0], 0, 0, -1, 0, attn.shape.hidden, 0, gguf[1]]
        else:
            ffn = [experts.bits if native else 16, experts.table.data_ptr(), experts.inter.data_ptr(),
                   experts.ip.data_ptr() if native else 0, experts.shared_row, experts.group if native else 0,
                   experts.hidden, experts.hp if native else 0,
                   dispatch.plan().linear.act_bits(experts.bits) if native else 0]
        if gate is None:
            ffn += [0] * 10
        else:
            ffn += [gate.weight.data_ptr(), gate.bias.data_ptr() if gate.bias is not None else 0, gate.weight.shape[0],
                    int(gate.sigmoid), gate.n_group, gate.topk_group, gate.method, gate.topk, int(gate.norm),
                    _f32_bits(gate.route_scale)]
        if gguf is not None:
            ffn += gguf[2:]
        self.ffn = torch.tensor(ffn, dtype=torch.int64)
        # duet_layers_step's L_* columns
        self.row = [attn.lin.data_ptr(), attn.norms.data_ptr(), attn.norm_bf16.data_ptr(), attn.eps.data_ptr(),
                    _f32_bits(attn.shape.scale), attn.dims.data_ptr(), attn.cache.data_ptr(), attn.uk, attn.uv_t,
                    self.ffn.data_ptr()]
        self._rows = torch.tensor([self.row], dtype=torch.int64)

    def __call__(self, x: torch.Tensor, start_pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [1, 1, hidden] (bf16 or float32) at position start_pos -> the layer's output."""
        return _run_layers(self._rows, self.attn.cache.shape[1], x, start_pos, cos, sin)


class LayerStack:
    """Consecutive decode layers (``LayerStep``s), one native call for all of them
    (``duet_layers_step``): a small model's whole decode step between the embedding and the final
    norm, with no framework call between its layers."""

    def __init__(self, steps: list[LayerStep]):
        self.steps = list(steps)
        self.rows = torch.tensor([s.row for s in self.steps], dtype=torch.int64)
        self.positions = min(s.attn.cache.shape[1] for s in self.steps)

    def __call__(self, x: torch.Tensor, start_pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [1, 1, hidden] (bf16 or float32) at position start_pos -> the last layer's output."""
        return _run_layers(self.rows, self.positions, x, start_pos, cos, sin)


def _run_layers(rows: torch.Tensor, positions: int, x: torch.Tensor, start_pos: int, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
    from kernels import cpu_native

    if start_pos >= positions:
        raise IndexError(f"position {start_pos} is past the cache ({positions} rows)")
    x, cos, sin = _plain(x), _plain(cos, torch.float32), _plain(sin, torch.float32)
    out = torch.empty_like(x)
    cpu_native.layers_step(rows, x, start_pos, cos, sin, out)
    return out


def _f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


def _gguf_ffn(experts, routed: bool, hidden: int) -> list[int] | None:
    """The GGUF FFN's fields for the one-call layer (kernels/csrc/quant_gemv.c's F_TABLE, F_ABITS,
    then G_MOE .. G_S_GRIDS): the routed experts' table and the shared expert's (a MoE layer,
    kernels.moe.GGUFFused) or the dense MLP's alone (GGUFDense); None where kq_moe cannot run it
    (no library, i-quants it cannot take, a shared expert that is not GGUF blocks)."""
    from kernels import kquant

    moe_fn = kquant.entry("kq_moe")
    if moe_fn is None:
        return None
    if routed:
        if not isinstance(experts, GGUFFused) or (experts.shared is not None and experts.shared_table is None):
            return None
        tables = [experts.experts, experts.shared_table]
    else:
        if not isinstance(experts, GGUFDense):
            return None
        tables = [None, experts.table]
    descs = [t.table_desc() if t is not None else [0] * 7 for t in tables]
    if None in descs or any(t is not None and t.hidden != hidden for t in tables):
        return None
    iq = any(t is not None and t.iq for t in tables)
    return [descs[0][0], kquant.act_bits(), moe_fn, kquant.GGUFExperts.iq_dot_addr() if iq else 0,
            *descs[0][1:], *descs[1]]


def fuse_layer(attn: MLAStep | None, experts, gate: GatePlan | None, *, routed: bool) -> LayerStep | None:
    """The one-call decode layer, or None where its FFN is not one the call reads: ``experts`` a
    CPU-native FusedExperts or a FusedBF16Experts (kernels.moe.fuse_experts / fuse_mlp), or GGUF
    blocks (kernels.moe.GGUFFused / GGUFDense, run by kernels/kquant.py's kq_moe), and for a MoE
    layer (``routed``) a native router plan with at most 64 experts per token."""
    if attn is None or (routed and gate is None):
        return None
    if isinstance(experts, (GGUFFused, GGUFDense)):
        gguf = _gguf_ffn(experts, routed, attn.shape.hidden)
        if gguf is None or (routed and gate.topk > 64):
            return None
        return LayerStep(attn, experts, gate if routed else None, gguf)
    if not isinstance(experts, (FusedExperts, FusedBF16Experts)):
        return None
    if routed and gate.topk + (experts.shared_row >= 0) > 64:
        return None
    if experts.hidden != attn.shape.hidden:
        return None
    return LayerStep(attn, experts, gate if routed else None)
