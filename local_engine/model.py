"""DeepSeek-V3/V2/V3.2 transformer: MLA (+ V3.2's Indexer), Gate, MLP (dense or expert), MoE, Block,
Transformer.

Names follow DeepSeek's inference code (wq_a, kv_norm, wkv_b, …). Each attention module owns
its cache: only the latent c_kv and the rotated rope key, [batch, seq, kv_lora + rope]; V3.2's
indexer keeps its small key cache beside it, [batch, seq, index_head_dim]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import decode_step, dispatch, indexer, mla, moe, norm_rope
from local_engine.config import ModelArgs
from local_engine.layers import Linear, PackedLinear, QuantizedLinear, RMSNorm, pack


class Indexer(nn.Module):
    """V3.2's lightning indexer (DSA): a few small heads score every cached token for each query;
    the query then attends to its top ``index_topk``. Its query comes from MLA's q_lora latent, its
    key from the layer input (LayerNorm'd, rope on the first qk_rope_head_dim dims in rotate-half
    order, unlike MLA's interleaved pairs), written to its cache at start_pos like the latent's.

    DeepSeek's kernel scores in FP8 after a Hadamard rotation; the rotation keeps dot products and
    transformers scores in full precision, as this does (the cache is in the model's dtype)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        a = args
        self.n_heads, self.head_dim, self.rope, self.topk = (a.index_n_heads, a.index_head_dim,
                                                             a.qk_rope_head_dim, a.index_topk)
        self.wq_b = Linear(a.q_lora_rank, a.index_n_heads * a.index_head_dim)
        self.wk = Linear(a.hidden_size, a.index_head_dim)
        self.k_norm = nn.LayerNorm(a.index_head_dim, eps=1e-6)
        # per-head weights of the scores, kept in float32 (as transformers keeps this projection)
        self.weights_proj = nn.Parameter(torch.empty(a.index_n_heads, a.hidden_size, dtype=torch.float32),
                                         requires_grad=False)
        self.scale = a.index_head_dim ** -0.5
        self.cache: torch.Tensor | None = None  # [max_batch, max_seq, index_head_dim]

    def alloc_cache(self, max_batch: int, max_seq_len: int, dtype: torch.dtype, device) -> None:
        self.cache = torch.zeros(max_batch, max_seq_len, self.head_dim, dtype=dtype, device=device)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, heads, D]: rotate-half rope on the first ``rope`` dims."""
        return torch.cat([norm_rope.apply_rope(x[..., : self.rope], cos, sin, False), x[..., self.rope:]], dim=-1)

    def forward(self, x: torch.Tensor, q_lat: torch.Tensor, start_pos: int, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor | None:
        """x [B, T, hidden] (the attention input), q_lat [B, T, q_lora] (normed) -> each query's
        chosen cache positions [B, T, index_topk], or None while the context holds no more than
        index_topk tokens: then every position is chosen and attention is exactly dense."""
        B, T, _ = x.shape
        end = start_pos + T
        k = F.layer_norm(self.wk(x), (self.head_dim,), self.k_norm.weight, self.k_norm.bias, self.k_norm.eps)
        if end <= self.topk:
            self.cache[:B, start_pos:end] = self._rope(k.unsqueeze(2), cos, sin).squeeze(2)
            return None
        q = self.wq_b(q_lat).view(B, T, self.n_heads, self.head_dim)
        qk = self._rope(torch.cat([q, k.unsqueeze(2)], dim=2), cos, sin)  # one rotation: [B, T, Hi + 1, D]
        q = qk[:, :, : self.n_heads]  # [B, T, Hi, D]
        self.cache[:B, start_pos:end] = qk[:, :, self.n_heads]
        w = F.linear(x.float(), self.weights_proj) * self.n_heads ** -0.5  # [B, T, Hi]
        rows = mla.padded_length(end, self.cache.shape[1])
        return indexer.indexer_topk(q, w, self.cache[:B, :rows], self.scale, start_pos, self.topk)


class MLA(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        a = args
        self.n_heads, self.nope, self.rope, self.v = (a.num_attention_heads, a.qk_nope_head_dim,
                                                      a.qk_rope_head_dim, a.v_head_dim)
        self.kv_lora = a.kv_lora_rank
        self.interleaved = a.rope_interleave
        self.scale = a.softmax_scale
        H, qk = a.num_attention_heads, a.qk_head_dim
        if a.q_lora_rank:
            self.wq_a = Linear(a.hidden_size, a.q_lora_rank)
            self.q_norm = RMSNorm(a.q_lora_rank, a.rms_norm_eps)
            self.wq_b = Linear(a.q_lora_rank, H * qk)
        else:
            self.wq = Linear(a.hidden_size, H * qk)
        self.wkv_a = Linear(a.hidden_size, a.kv_lora_rank + a.qk_rope_head_dim)
        self.kv_norm = RMSNorm(a.kv_lora_rank, a.rms_norm_eps)
        self.wkv_b = Linear(a.kv_lora_rank, H * (a.qk_nope_head_dim + a.v_head_dim))
        self.wo = Linear(H * a.v_head_dim, a.hidden_size)
        self.indexer = Indexer(a) if a.sparse_attention else None  # V3.2
        self.wqkv_a: PackedLinear | None = None  # fuse_qkv_a_(): [wq_a or wq; wkv_a] as one matmul
        self.cache: torch.Tensor | None = None  # [max_batch, max_seq, kv_lora + rope]
        self._absorbed: tuple[torch.Tensor, torch.Tensor] | None = None  # W_uk, W_uvᵀ (kernels.mla.absorb)

    def alloc_cache(self, max_batch: int, max_seq_len: int, dtype: torch.dtype, device) -> None:
        self.cache = torch.zeros(max_batch, max_seq_len, self.kv_lora + self.rope, dtype=dtype, device=device)
        if self.indexer is not None:
            self.indexer.alloc_cache(max_batch, max_seq_len, dtype, device)

    def absorbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b split per head for the absorbed form: W_uk [H, nope, kv_lora], W_uvᵀ [H, kv_lora, v],
        made once (kernels.mla.absorb picks their dtype). Costs one more copy of kv_b (<1% of a model)."""
        if self._absorbed is None:
            if isinstance(self.wkv_b, QuantizedLinear):  # quantized anyway: absorb its dequantized values
                from kernels.quant import dequantize

                w = dequantize(self.wkv_b.qweight, self.cache.dtype)
            else:
                w = self.wkv_b.weight
            self._absorbed = mla.absorb(w, self.n_heads, self.nope, self.v, self.kv_lora, self.cache)
        return self._absorbed

    def fuse_qkv_a_(self) -> bool:
        """Replace the two projections of x (wq_a or wq, and wkv_a) by one matmul over their stacked
        rows: one call instead of two per layer and step. Only for packed weights (quantized ones
        keep their own layout); each output row is the same dot product as before."""
        q_lin = self.wq_a if hasattr(self, "wq_a") else self.wq
        if self.wqkv_a is not None or not isinstance(q_lin, PackedLinear) or not isinstance(self.wkv_a, PackedLinear):
            return False
        w = torch.cat([q_lin.weight, self.wkv_a.weight])  # dense copies of the packed weights
        dense = Linear(w.shape[1], w.shape[0])
        dense.weight = nn.Parameter(w, requires_grad=False)
        fused = pack(dense)
        if fused is None:
            return False
        self.q_in = q_lin.out_features
        self.wqkv_a = fused
        del self.wkv_a
        if hasattr(self, "wq_a"):
            del self.wq_a
        else:
            del self.wq
        return True

    def fuse_step(self, attn_norm: RMSNorm, ffn_norm: RMSNorm) -> decode_step.MLAStep | None:
        """This block's one-token decode step as one native call (kernels.decode_step), or None:
        V3.2's indexer, oneDNN-packed weights, i-quant projections and CUDA keep the PyTorch path."""
        if self.indexer is not None or self.wqkv_a is not None or self.cache is None:
            return None
        names = ["wq_a", "wq_b", "wkv_a", "wo"] if hasattr(self, "wq_a") else ["wq", None, "wkv_a", "wo"]
        lins = [getattr(self, n) if n else None for n in names]
        if not all(lin is None or isinstance(lin, (Linear, QuantizedLinear)) for lin in lins):
            return None
        q_norm = self.q_norm if hasattr(self, "q_norm") else None
        shape = decode_step.MLAShape(attn_norm.weight.shape[0], self.n_heads, self.nope, self.rope, self.v,
                                     self.wq_a.out_features if hasattr(self, "wq_a") else 0, self.kv_lora,
                                     self.interleaved, self.scale)
        norms = [attn_norm, q_norm, self.kv_norm, ffn_norm]
        return decode_step.fuse_mla(shape, [decode_weight(lin) if lin is not None else None for lin in lins],
                                    [n.weight if n is not None else None for n in norms],
                                    [n.eps if n is not None else 0.0 for n in norms], self.cache, self.absorbed())

    def forward(self, x: torch.Tensor, start_pos: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape  # x [batch, seq, hidden]; cos/sin [seq, rope/2]
        H, end = self.n_heads, start_pos + T
        q_lat = None  # the normed q_lora latent (V3.2's indexer reads it too)
        if self.wqkv_a is not None:
            q_in, kv = self.wqkv_a(x).split([self.q_in, self.kv_lora + self.rope], dim=-1)
            if hasattr(self, "q_norm"):
                q_lat = self.q_norm(q_in)
            q = q_in if q_lat is None else self.wq_b(q_lat)
        else:
            if hasattr(self, "wq_a"):
                q_lat = self.q_norm(self.wq_a(x))
            q = self.wq(x) if q_lat is None else self.wq_b(q_lat)
            kv = self.wkv_a(x)
        q = q.view(B, T, H, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        c_kv, k_pe = kv.split([self.kv_lora, self.rope], dim=-1)
        c_kv = self.kv_norm(c_kv)  # [B, T, kv_lora]
        # one rotation for the query heads and the shared key: [B, T, H + 1, rope]
        pe = norm_rope.apply_rope(torch.cat([q_pe, k_pe.unsqueeze(2)], dim=2), cos, sin, self.interleaved)
        q_pe, k_pe = pe[:, :, :H], pe[:, :, H]  # [B, T, H, rope], [B, T, rope]
        self.cache[:B, start_pos:end, : self.kv_lora] = c_kv
        self.cache[:B, start_pos:end, self.kv_lora:] = k_pe
        chosen = self.indexer(x, q_lat, start_pos, cos, sin) if self.indexer is not None else None
        if chosen is None and T > 1 and (start_pos == 0 or mla.expand_pays(T, start_pos, self.nope, self.rope,
                                                                             self.v, self.kv_lora)):
            # a prefill chunk: keys/values expanded per head (fewer FLOPs than absorbed for long
            # chunks); after the first chunk, for every cached row, the chunk's queries masked causally
            c_all, pe_all = (c_kv, k_pe) if start_pos == 0 else \
                (self.cache[:B, :end, : self.kv_lora].to(x.dtype), self.cache[:B, :end, self.kv_lora:].to(x.dtype))
            kv = self.wkv_b(c_all).view(B, end, H, self.nope + self.v)
            k_nope, v = kv.split([self.nope, self.v], dim=-1)
            k = torch.cat([k_nope, pe_all[:, :, None, :].expand(B, end, H, self.rope)], dim=-1)
            qf = torch.cat([q_nope, q_pe], dim=-1)
            pad = self.nope + self.rope - self.v  # equal head dims take SDPA's fused (flash) path: 2x faster
            vp = F.pad(v, (0, pad)) if pad > 0 else v
            mask = None if start_pos == 0 else mla.chunk_mask(T, start_pos, x.device)
            out = F.scaled_dot_product_attention(qf.transpose(1, 2), k.transpose(1, 2), vp.transpose(1, 2),
                                                 attn_mask=mask, is_causal=mask is None, scale=self.scale)
            out = out.transpose(1, 2)[..., : self.v]  # [B, T, H, v]
        else:
            # absorbed: q_nope · W_uk into latent space, attend over the latent cache, W_uv out
            w_uk, w_uv_t = self.absorbed()
            q_lat = mla.per_head(q_nope.reshape(B * T, H, self.nope), w_uk)  # [B*T, H, kv_lora]
            q_abs = torch.cat([q_lat.view(B, T, H, self.kv_lora).to(x.dtype), q_pe], dim=-1)
            rows = mla.padded_length(end, self.cache.shape[1])  # few distinct shapes: oneDNN reuses its kernels
            if chosen is None:
                lat = mla.mla_attention(q_abs, self.cache[:B, :rows], self.kv_lora, self.scale, start_pos)
            else:  # V3.2 past index_topk tokens: only the rows the indexer chose
                lat = indexer.sparse_mla_attention(q_abs, self.cache[:B, :rows], chosen, self.kv_lora,
                                                   self.scale, start_pos)
            out = mla.per_head(lat.reshape(B * T, H, self.kv_lora), w_uv_t)  # [B*T, H, v]
            out = out.reshape(B, T, H, self.v).to(x.dtype)
        return self.wo(out.flatten(2))


_UNBUILT = object()


class MLP(nn.Module):
    """SwiGLU with gate and up fused: w13 [2I, H] (gate rows, then up rows), w2 [H, I]."""

    def __init__(self, dim: int, inter: int):
        super().__init__()
        self.inter = inter
        self.w13 = Linear(dim, 2 * inter)
        self.w2 = Linear(inter, dim)
        self.fused = _UNBUILT  # kernels.moe.fuse_mlp's one-token kernel, made at the first call

    def fused_kernel(self):
        """kernels.moe.fuse_mlp's one-token kernel (built at the first call), or None."""
        if self.fused is _UNBUILT:
            self.fused = moe.fuse_mlp(decode_weight(self.w13), decode_weight(self.w2))
        return self.fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return moe.swiglu(x, self.w13, self.w2, self.inter, self.fused_kernel())


def decode_weight(lin: nn.Module):
    """What a fused one-token call can read of a linear layer: its quantized weight, its dense
    weight, or None (packed for oneDNN)."""
    if isinstance(lin, QuantizedLinear):
        return lin.qweight
    return lin.weight if isinstance(lin, Linear) else None


def forget_fused(module: nn.Module) -> None:
    """Drop the fused kernels built over a module's weights (after they change: quantization)."""
    for m in module.modules():
        if isinstance(m, (MLP, MoE)):
            m.fused = _UNBUILT
        elif isinstance(m, Block):
            m.step = m.whole = _UNBUILT
        elif isinstance(m, Gate):
            m.native = _UNBUILT


class Gate(nn.Module):
    """Router in float32: V3 sigmoid + selection bias + group-limited top-k; V2 softmax."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        a = args
        self.topk, self.n_group, self.topk_group = a.num_experts_per_tok, a.n_group, a.topk_group
        self.scoring, self.method = a.scoring_func, a.topk_method
        self.norm, self.route_scale = a.norm_topk_prob, a.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(a.n_routed_experts, a.hidden_size, dtype=torch.float32),
                                   requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(a.n_routed_experts, dtype=torch.float32), requires_grad=False)
                     if a.topk_method == "noaux_tc" else None)
        self.native = _UNBUILT  # kernels.decode_step's one-token router, made at the first call

    def plan(self) -> decode_step.GatePlan | None:
        """The native one-token router (built at the first call), or None."""
        if self.native is _UNBUILT:
            self.native = decode_step.gate_plan(self.weight, self.bias, self.scoring, self.method, self.n_group,
                                                self.topk_group, self.topk, self.norm, self.route_scale)
        return self.native

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] -> weights [N, K] float32, indices [N, K]."""
        if x.shape[0] == 1 and self.plan() is not None:
            return decode_step.gate(self.native, x)
        logits = F.linear(x.float(), self.weight)
        scores = logits.sigmoid() if self.scoring == "sigmoid" else logits.softmax(dim=-1)
        choice = scores if self.bias is None else scores + self.bias
        if self.n_group > 1 and self.method != "greedy":
            N = x.shape[0]
            grouped = choice.view(N, self.n_group, -1)
            if self.method == "noaux_tc":
                group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            else:
                group_scores = grouped.amax(dim=-1)
            keep = group_scores.topk(self.topk_group, dim=-1)[1]
            drop = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
            choice = grouped.masked_fill(drop[..., None], float("-inf")).flatten(1)
        indices = choice.topk(self.topk, dim=-1)[1]
        weights = scores.gather(1, indices)
        if self.norm and self.topk > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, indices


class MoE(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate = Gate(args)
        self.experts = nn.ModuleList(MLP(args.hidden_size, args.moe_intermediate_size)
                                     for _ in range(args.n_routed_experts))
        n_shared = args.n_shared_experts or 0
        self.shared = MLP(args.hidden_size, n_shared * args.moe_intermediate_size) if n_shared else None
        self.fused = _UNBUILT  # kernels.moe.fuse_experts' decode kernel, made at the first call

    def fused_kernel(self):
        """kernels.moe.fuse_experts' one-token kernel (built at the first call), or None."""
        if self.fused is _UNBUILT:
            shared = (decode_weight(self.shared.w13), decode_weight(self.shared.w2)) if self.shared is not None else None
            self.fused = moe.fuse_experts([decode_weight(e.w13) for e in self.experts],
                                          [decode_weight(e.w2) for e in self.experts], shared, self.shared)
        return self.fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, H]
        weights, indices = self.gate(flat)
        return moe.moe(flat, weights, indices, self.experts, self.shared, self.fused_kernel()).view(shape)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.attn = MLA(args)
        self.ffn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.ffn = MoE(args) if args.is_moe_layer(layer_id) else MLP(args.hidden_size, args.intermediate_size)
        self.step = _UNBUILT  # kernels.decode_step's one-token call for attention, made at the first decode step
        self.whole = _UNBUILT  # ... and for the whole layer, where its FFN is one the call reads

    def forward(self, x, start_pos, cos, sin):
        if x.shape[0] * x.shape[1] == 1 and self._step() is not None:
            if self.whole is not None:
                return self.whole(x, start_pos, cos, sin)  # the whole layer: one call
            x, normed = self.step(x, start_pos, cos, sin)  # attention, residual and both norms: one call
        else:
            x = x + self.attn(self.attn_norm(x), start_pos, cos, sin)
            normed = self.ffn_norm(x)
        return x + self.ffn(normed)

    def whole_step(self) -> decode_step.LayerStep | None:
        """The one-call step of this whole layer for one token, or None (built at the first use)."""
        return self.whole if self._step() is not None else None

    def _step(self) -> decode_step.MLAStep | None:
        if self.step is _UNBUILT or (self.step is not None and (self.step.cache is not self.attn.cache
                                                                or self.step.plan is not dispatch.plan())):
            # (again after a new cache, or under another kernel plan: the activation bits it holds)
            self.step = self.attn.fuse_step(self.attn_norm, self.ffn_norm)
            routed = isinstance(self.ffn, MoE)
            self.whole = decode_step.fuse_layer(self.step, self.ffn.fused_kernel(),
                                                self.ffn.gate.plan() if routed else None, routed=routed)
        return self.step


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList()  # filled block by block by the loader
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.head = Linear(args.hidden_size, args.vocab_size)
        self.cos: torch.Tensor | None = None  # [max_seq, rope/2]
        self.sin: torch.Tensor | None = None
        self.mtp = nn.ModuleList()  # the checkpoint's MTP modules, when loaded (see MTP)
        self.last_hidden: torch.Tensor | None = None  # [B, T, hidden] after the final norm: what MTP reads
        self.stack: decode_step.LayerStack | None = None  # every layer's one-token step as one call

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, last_only: bool = False) -> torch.Tensor:
        """logits [B, T, vocab], or [B, 1, vocab] for the last position alone (a prefill that
        only samples the next token: the vocabulary head is one of the largest matmuls)."""
        T = tokens.shape[1]
        cos, sin = self.cos[start_pos:start_pos + T], self.sin[start_pos:start_pos + T]
        h = self.embed(tokens)
        stack = self._stack() if tokens.shape[0] * T == 1 else None
        if stack is not None:
            h = stack(h, start_pos, cos, sin)  # one token through every layer: one call
        else:
            for layer in self.layers:
                h = layer(h, start_pos, cos, sin)
        self.last_hidden = h = self.norm(h)
        return self.head(h[:, -1:] if last_only else h).float()

    def _stack(self) -> decode_step.LayerStack | None:
        """The layers' one-token steps as one call, where every layer has one (rebuilt when a
        layer's step is: a new cache)."""
        steps = [layer.whole_step() for layer in self.layers]
        if not steps or None in steps:
            return None
        if self.stack is None or any(a is not b for a, b in zip(self.stack.steps, steps)):
            self.stack = decode_step.LayerStack(steps)
        return self.stack


class MTP(nn.Module):
    """DeepSeek-V3's multi-token prediction module (checkpoint: ``model.layers.{num_hidden_layers}``).

    At position p it reads the main model's final hidden state h_p and the embedding of the
    token at p+1, and predicts the token at p+2:
        x = eh_proj([enorm(emb(t_{p+1})); hnorm(h_p)]);  x = block(x);  logits = head(norm(x))
    Its block is an ordinary Block with its own latent cache, at the same rope positions as
    the main model. The embedding (and, when the checkpoint's copy equals it, the head) is
    the main model's: ``head`` is None then."""

    def __init__(self, args: ModelArgs, layer_id: int, own_head: bool = True):
        super().__init__()
        self.layer_id = layer_id
        self.enorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.hnorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.eh_proj = Linear(2 * args.hidden_size, args.hidden_size)
        self.block = Block(args, layer_id)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)  # shared_head.norm
        self.head = Linear(args.hidden_size, args.vocab_size) if own_head else None  # shared_head.head

    def forward(self, emb: torch.Tensor, hidden: torch.Tensor, start_pos: int, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        """emb [B, T, hidden] (tokens at p+1), hidden [B, T, hidden] (h_p) -> this module's hidden
        state [B, T, hidden]: what ``logits`` reads, and what a further draft step reads as h."""
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(hidden)], dim=-1))
        return self.block(x, start_pos, cos, sin)

    def logits(self, x: torch.Tensor, main_head: nn.Module) -> torch.Tensor:
        """x [..., hidden] -> float32 logits for the token at p+2 (``main_head`` when shared)."""
        return (main_head if self.head is None else self.head)(self.norm(x)).float()
