"""Load a deepseek2 GGUF file (llama.cpp's format) into our Transformer.

Hyper-parameters come from the file's metadata only (``deepseek2.*`` keys): q-LoRA from
``attention.q_lora_rank``, gating from ``expert_gating_func``, groups from
``expert_group_count`` / ``expert_group_used_count``, dense layers from
``leading_dense_block_count`` -- never guessed from the layer count (llama.cpp itself takes
27 layers to mean "Lite"). Both attention layouts llama.cpp writes load: the legacy
``attn_kv_b`` and the split ``attn_k_b`` / ``attn_v_b`` with ``head_count_kv = 1``.

Tensors: F32 / F16 / BF16 run dense (in the engine's dtype; the router stays float32);
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS stay in their
ggml blocks and run on kernels/kquant (never requantized); the i-quants IQ1_S, IQ1_M, IQ2_XXS,
IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S too (kernels/iquant: integer dot products in decode, dequantized
tiles in prefill). Each is read with ``pread`` into its final buffer, layer by layer, from
whichever shard holds it for a model split into several files (gguf_file.open_gguf: any shard's
path finds the others). The small MLA up-projection (kv_b, or k_b and v_b) is turned into a
dense matrix, as the absorbed attention reads it per head. Any other type is refused before
anything loads, naming the tensor, its type and the types we run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kernels import kquant
from local_engine.config import ModelArgs
from local_engine.errors import ModelError
from local_engine.gguf_file import RUNS_LOCALLY, GGUFFile, SplitGGUF, TensorInfo, open_gguf
from local_engine.layers import QuantizedLinear, replace
from local_engine.model import Block, Transformer

DENSE = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}
RUNS = RUNS_LOCALLY
assert set(RUNS) == {"F32", "F16", "BF16"} | {v[0] for v in kquant.TYPES.values()}
ARCH = "deepseek2"

EXPERT_GATING = {1: "softmax", 2: "sigmoid"}   # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE


def is_gguf(path) -> bool:
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# metadata -> ModelArgs


def model_args(f: GGUFFile | SplitGGUF) -> ModelArgs:
    meta, src = f.meta, str(f.path)
    arch = f.architecture
    split = meta.get("split.count", 1)
    if not isinstance(split, int) or isinstance(split, bool) or split < 1:
        raise ModelError(f"{src}: metadata key 'split.count' is {split!r:.60}, not a shard count")
    if arch != ARCH:
        raise ModelError(f"{src}: architecture {arch!r} is not supported by the local engine "
                         f"(it runs {ARCH!r}; use backend = \"llama.cpp\" for this file)")

    def key(name):
        return f"{ARCH}.{name}"

    def number(name, v):
        if v is not None and not isinstance(v, (int, float)):   # a string, an array: not a number
            raise ModelError(f"{src}: metadata key {key(name)!r} is {v!r:.60}, not a number")
        return v

    def need(name):
        if key(name) not in meta:
            raise ModelError(f"{src}: metadata key {key(name)!r} is missing")
        return number(name, meta[key(name)])

    def get(name, default=None):
        v = meta.get(key(name), default)
        return v if name == "rope.scaling.type" else number(name, v)

    heads = int(need("attention.head_count"))
    rope = int(need("rope.dimension_count"))
    kv_lora = int(need("attention.kv_lora_rank"))
    if key("attention.key_length_mla") in meta:    # MLA layout: head_count_kv = 1, latent key/value
        qk = int(meta[key("attention.key_length_mla")])
        v = int(need("attention.value_length_mla"))
    else:                                          # legacy layout: per-head key/value lengths
        qk = int(need("attention.key_length"))
        v = int(need("attention.value_length"))
    if qk <= rope:
        raise ModelError(f"{src}: key length {qk} is not larger than rope.dimension_count {rope}")
    n_experts = int(get("expert_count", 0) or 0)
    gating = get("expert_gating_func")
    if gating is None:
        gating = 1   # what llama.cpp does for deepseek2 files written before the key existed
    if int(gating) not in EXPERT_GATING:
        raise ModelError(f"{src}: {key('expert_gating_func')} = {gating} is not supported "
                         f"(1 softmax, 2 sigmoid)")
    scoring = EXPERT_GATING[int(gating)]
    groups = int(get("expert_group_count", 1) or 1)
    groups_used = int(get("expert_group_used_count", groups) or groups)
    if scoring == "sigmoid":
        method = "noaux_tc"
    else:
        method = "group_limited_greedy" if groups > 1 and groups_used < groups else "greedy"
    q_lora = int(get("attention.q_lora_rank", 0) or 0)
    cfg = {
        "model_type": "deepseek_v3" if scoring == "sigmoid" else "deepseek_v2",
        "vocab_size": int(f.tensors["token_embd.weight"].shape[0]) if "token_embd.weight" in f.tensors
        else int(need("vocab_size")),
        "hidden_size": int(need("embedding_length")),
        "intermediate_size": int(need("feed_forward_length")),
        "moe_intermediate_size": int(get("expert_feed_forward_length", 0) or 0),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "q_lora_rank": q_lora or None,
        "kv_lora_rank": kv_lora,
        "qk_nope_head_dim": qk - rope,
        "qk_rope_head_dim": rope,
        "v_head_dim": v,
        "n_routed_experts": n_experts or None,
        "n_shared_experts": int(need("expert_shared_count")) if n_experts else None,
        "num_experts_per_tok": int(need("expert_used_count")) if n_experts else 0,
        "first_k_dense_replace": int(need("leading_dense_block_count")) if n_experts else 0,
        "n_group": groups,
        "topk_group": groups_used,
        "routed_scaling_factor": float(need("expert_weights_scale")) if n_experts else 1.0,
        "norm_topk_prob": bool(get("expert_weights_norm", False)),
        "scoring_func": scoring,
        "topk_method": method,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_interleave": True,   # ggml's "normal" rope (deepseek2) rotates adjacent pairs
        "max_position_embeddings": int(get("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    kind = get("rope.scaling.type")
    if kind not in (None, "none", "linear") and kind != "yarn":
        raise ModelError(f"{src}: {key('rope.scaling.type')} {kind!r} is not supported (yarn)")
    factor = float(get("rope.scaling.factor", 0) or 0)
    if kind == "linear" and factor not in (0.0, 1.0):
        raise ModelError(f"{src}: linear rope scaling is not supported")
    if kind == "yarn" and factor > 1:
        # llama.cpp's deepseek2: rope attention factor 1, softmax scale times
        # (1 + log_mul * ln(factor))^2, i.e. DeepSeek's mscale_all_dim = log_mul / 0.1
        m_all = float(get("rope.scaling.yarn_log_multiplier", 0.0) or 0.0) / 0.1
        cfg["rope_scaling"] = {
            "type": "yarn", "factor": factor,
            "original_max_position_embeddings": int(need("rope.scaling.original_context_length")),
            "mscale": m_all, "mscale_all_dim": m_all, "attention_factor": 1.0,
            "beta_fast": float(get("rope.scaling.yarn_beta_fast", 32.0)),
            "beta_slow": float(get("rope.scaling.yarn_beta_slow", 1.0)),
        }
    return ModelArgs.from_dict(cfg, source=src)


def check_types(f: GGUFFile | SplitGGUF) -> None:
    """Refuse the file before loading anything when a tensor has a type we do not run."""
    for info in f.tensors.values():
        if info.type not in DENSE and info.type not in kquant.TYPES:
            raise ModelError(f"{f.path}: tensor {info.name} is {info.type_name}, which the local engine "
                             f"does not run (it runs {', '.join(RUNS)}); use backend = \"llama.cpp\" "
                             f"for this file")


# ---------------------------------------------------------------------------------------
# reading tensors


class _Reader:
    def __init__(self, f: GGUFFile | SplitGGUF, dtype: torch.dtype, device):
        self.f, self.dtype, self.device = f, dtype, device

    def info(self, name: str, required: bool = True) -> TensorInfo | None:
        info = self.f.tensors.get(name)
        if info is None and required:
            raise ModelError(f"{self.f.path}: tensor {name} is missing")
        return info

    def check(self, info: TensorInfo, shape: tuple) -> None:
        if tuple(info.shape) != tuple(shape):
            raise ModelError(f"{self.f.path}: tensor {info.name} has shape {list(info.shape)}, "
                             f"the metadata implies {list(shape)}")

    def raw(self, info: TensorInfo) -> torch.Tensor:
        """Quantized: uint8 [rows..., row_bytes] read into its final buffer."""
        out = torch.empty(*info.shape[:-1], kquant.row_bytes(info.type, info.shape[-1]), dtype=torch.uint8)
        return self.f.read_into(info, out)

    def dense(self, info: TensorInfo, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Any supported tensor as a float tensor of ``dtype`` (default: the engine's)."""
        dtype = dtype or self.dtype
        if info.type in DENSE:
            t = self.f.read_into(info, torch.empty(info.shape, dtype=DENSE[info.type]))
            return t if t.dtype == dtype else t.to(dtype)
        rows = math.prod(info.shape[:-1])
        w = kquant.GGUFWeight(info.type, (rows, info.shape[-1]), self.raw(info).view(rows, -1))
        return kquant.dequantize(w, dtype).view(info.shape)

    def weight(self, info: TensorInfo):
        """A Linear's weight: dense tensor, or GGUFWeight kept in blocks."""
        if info.type in DENSE:
            return self.dense(info).to(self.device)
        rows = math.prod(info.shape[:-1])
        return kquant.GGUFWeight(info.type, (rows, info.shape[-1]), self.raw(info).view(rows, -1))


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


def _set_linear(root: nn.Module, path: str, w) -> None:
    """The Linear at ``path`` below ``root`` gets dense weight ``w``, or becomes a
    QuantizedLinear holding GGUF blocks."""
    lin = root.get_submodule(path)
    if isinstance(w, kquant.GGUFWeight):
        if w.shape != (lin.out_features, lin.in_features):
            raise ValueError(f"{w.shape} != {(lin.out_features, lin.in_features)}")
        replace(root, path, QuantizedLinear(w))
    else:
        lin.weight = _param(w)


def _fill_linear(r: _Reader, root: nn.Module, path: str, name: str) -> None:
    lin = root.get_submodule(path)
    info = r.info(name)
    r.check(info, (lin.out_features, lin.in_features))
    _set_linear(root, path, r.weight(info))


def _fill_norm(r: _Reader, norm, name: str) -> None:
    info = r.info(name)
    r.check(info, tuple(norm.weight.shape))
    norm.weight = _param(r.dense(info).to(r.device))


def _fill_w13(r: _Reader, root: nn.Module, path: str, gate: TensorInfo, up: TensorInfo,
              expert: int | None = None) -> None:
    """gate rows then up rows; for stacked experts, expert ``expert`` of [E, I, H] tensors."""
    lin = root.get_submodule(path)
    inter = lin.out_features // 2
    if gate.type == up.type and gate.type in kquant.TYPES:
        rb = kquant.row_bytes(gate.type, lin.in_features)
        buf = torch.empty(2 * inter, rb, dtype=torch.uint8)
        for half, info in enumerate((gate, up)):
            off = 0 if expert is None else expert * inter * rb
            part = info.part((inter, lin.in_features), off, inter * rb)
            r.f.read_into(part, buf[half * inter:(half + 1) * inter])
        _set_linear(root, path, kquant.GGUFWeight(gate.type, (2 * inter, lin.in_features), buf))
        return
    halves = []
    for info in (gate, up):
        t = r.dense(info) if expert is None else None
        if t is None:
            t = _expert_dense(r, info, expert, inter, lin.in_features)
        halves.append(t)
    _set_linear(root, path, torch.cat(halves).to(r.device))


def _expert_dense(r: _Reader, info: TensorInfo, e: int, rows: int, cols: int) -> torch.Tensor:
    if info.type in DENSE:
        size = torch.empty(0, dtype=DENSE[info.type]).element_size()
        part = info.part((rows, cols), e * rows * cols * size, rows * cols * size)
    else:
        rb = kquant.row_bytes(info.type, cols)
        part = info.part((rows, cols), e * rows * rb, rows * rb)
    return r.dense(part)


def _expert_weight(r: _Reader, info: TensorInfo, e: int, rows: int, cols: int):
    if info.type in DENSE:
        return _expert_dense(r, info, e, rows, cols).to(r.device)
    rb = kquant.row_bytes(info.type, cols)
    part = info.part((rows, cols), e * rows * rb, rows * rb)
    return kquant.GGUFWeight(info.type, (rows, cols), r.raw(part))


def _fill_block(r: _Reader, block: Block, i: int, args: ModelArgs) -> None:
    p = f"blk.{i}."
    a = block.attn
    _fill_norm(r, block.attn_norm, p + "attn_norm.weight")
    _fill_norm(r, block.ffn_norm, p + "ffn_norm.weight")
    if args.q_lora_rank:
        _fill_linear(r, block, "attn.wq_a", p + "attn_q_a.weight")
        _fill_norm(r, a.q_norm, p + "attn_q_a_norm.weight")
        _fill_linear(r, block, "attn.wq_b", p + "attn_q_b.weight")
    else:
        _fill_linear(r, block, "attn.wq", p + "attn_q.weight")
    _fill_linear(r, block, "attn.wkv_a", p + "attn_kv_a_mqa.weight")
    _fill_norm(r, a.kv_norm, p + "attn_kv_a_norm.weight")
    _fill_linear(r, block, "attn.wo", p + "attn_output.weight")
    H, nope, v, R = args.num_attention_heads, args.qk_nope_head_dim, args.v_head_dim, args.kv_lora_rank
    kv_b = r.info(p + "attn_kv_b.weight", required=False)
    if kv_b is not None:   # legacy: [H * (nope + v), R]
        r.check(kv_b, (H * (nope + v), R))
        w = r.dense(kv_b)
    else:                  # split: k_b [H, R, nope] (rows of nope), v_b [H, v, R]
        k_b, v_b = r.info(p + "attn_k_b.weight"), r.info(p + "attn_v_b.weight")
        r.check(k_b, (H, R, nope))
        r.check(v_b, (H, v, R))
        w = torch.cat([r.dense(k_b).transpose(1, 2), r.dense(v_b)], dim=1).reshape(H * (nope + v), R)
    a.wkv_b.weight = _param(w.contiguous().to(r.device))
    ffn = block.ffn
    if args.is_moe_layer(i):
        gate = ffn.gate
        info = r.info(p + "ffn_gate_inp.weight")
        r.check(info, tuple(gate.weight.shape))
        gate.weight = _param(r.dense(info, torch.float32).to(r.device))
        if gate.bias is not None:
            b = r.info(p + "exp_probs_b.bias", required=False)
            if b is None:   # llama.cpp runs such files without a selection bias
                gate.bias = _param(torch.zeros(args.n_routed_experts, dtype=torch.float32, device=r.device))
            else:
                r.check(b, (args.n_routed_experts,))
                gate.bias = _param(r.dense(b, torch.float32).to(r.device))
        E, I, Hd = args.n_routed_experts, args.moe_intermediate_size, args.hidden_size
        g, u, d = (r.info(p + n) for n in ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"))
        for t, shape in ((g, (E, I, Hd)), (u, (E, I, Hd)), (d, (E, Hd, I))):
            r.check(t, shape)
        for e in range(len(ffn.experts)):
            _fill_w13(r, block, f"ffn.experts.{e}.w13", g, u, e)
            _set_linear(block, f"ffn.experts.{e}.w2", _expert_weight(r, d, e, Hd, I))
        if ffn.shared is not None:
            sh = ffn.shared
            gi, ui = r.info(p + "ffn_gate_shexp.weight"), r.info(p + "ffn_up_shexp.weight")
            r.check(gi, (sh.inter, Hd))
            r.check(ui, (sh.inter, Hd))
            _fill_w13(r, block, "ffn.shared.w13", gi, ui)
            _fill_linear(r, block, "ffn.shared.w2", p + "ffn_down_shexp.weight")
    else:
        gi, ui = r.info(p + "ffn_gate.weight"), r.info(p + "ffn_up.weight")
        r.check(gi, (ffn.inter, args.hidden_size))
        r.check(ui, (ffn.inter, args.hidden_size))
        _fill_w13(r, block, "ffn.w13", gi, ui)
        _fill_linear(r, block, "ffn.w2", p + "ffn_down.weight")
    for name, prm in block.named_parameters():
        if prm.is_meta:
            raise ModelError(f"{r.f.path}: layer {i}: nothing in the file for {name}")


class QuantEmbedding(nn.Module):
    """An embedding table kept in ggml blocks: each lookup dequantizes the rows it needs."""

    def __init__(self, w: kquant.GGUFWeight, dtype: torch.dtype):
        super().__init__()
        self.qweight, self.dtype = w, dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return kquant.get_rows(self.qweight, tokens.cpu(), self.dtype).to(tokens.device)


def load_gguf_model(path, *, dtype: torch.dtype, device, max_batch: int, max_seq_len: int,
                    progress: Callable[[float], None] | None = None) -> tuple[Transformer, ModelArgs, GGUFFile | SplitGGUF]:
    """(model, args, the open file's header) -- the header's metadata holds the tokenizer."""
    from local_engine.loader import release_free_memory
    from local_engine.rope import rope_tables

    f = open_gguf(path)   # one file, or each shard of a split one
    try:
        args = model_args(f)
        check_types(f)
        r = _Reader(f, dtype, torch.device(device))
        with torch.device("meta"):
            model = Transformer(args)
        emb = r.info("token_embd.weight")
        r.check(emb, (args.vocab_size, args.hidden_size))
        if emb.type in DENSE:
            model.embed.weight = _param(r.dense(emb).to(device))
        else:
            model.embed = QuantEmbedding(r.weight(emb), dtype)
        _fill_norm(r, model.norm, "output_norm.weight")
        out = r.info("output.weight", required=False)
        if out is None:   # tied: the head reads the embedding table
            out = emb
        r.check(out, (args.vocab_size, args.hidden_size))
        _set_linear(model, "head", r.weight(out) if out is not emb or emb.type not in DENSE else model.embed.weight)
        for i in range(args.num_hidden_layers):
            with torch.device("meta"):
                block = Block(args, i)
            try:
                _fill_block(r, block, i, args)
            except ValueError as e:
                raise ModelError(f"{f.path}: layer {i}: {e}") from None
            block.attn.alloc_cache(max_batch, max_seq_len, dtype, device)
            model.layers.append(block)
            release_free_memory()
            if progress is not None:
                progress((i + 1) / args.num_hidden_layers)
        cos, sin = rope_tables(args, max_seq_len)
        model.cos, model.sin = cos.to(device), sin.to(device)
        return model.eval(), args, f
    finally:
        f.close()


def load_engine(cls, path: Path, *, device, dtype: torch.dtype, quant, max_seq_len: int, max_batch: int,
                progress=None):
    """``Engine.load`` for a GGUF file."""
    from local_engine.tokenizer import Tokenizer

    if not is_gguf(path):
        raise ModelError(f"{path}: not a GGUF file (expected a deepseek2 .gguf or an HF model folder)")
    if quant is not None:
        raise ModelError(f"{path}: quant {quant!r} applies to HF folders; a GGUF file runs its own "
                         f"quantized types (leave quant unset)")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"device {device!r} is not a torch device") from None
    if dev.type != "cpu":
        raise ModelError(f"{path}: GGUF files run on the CPU in the local engine (device {device!r}); "
                         f"use backend = \"llama.cpp\" to offload one")
    torch.set_flush_denormal(True)
    with torch.no_grad():
        model, args, f = load_gguf_model(path, dtype=dtype, device=dev, max_batch=max_batch,
                                         max_seq_len=max_seq_len, progress=progress)
    tokenizer = Tokenizer.from_gguf(f.meta, path) if f.meta.get("tokenizer.ggml.tokens") else None
    return cls(model, args, tokenizer, device=dev, dtype=dtype, max_seq_len=max_seq_len,
               max_batch=max_batch, path=path)
