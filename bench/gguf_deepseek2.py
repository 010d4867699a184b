"""Write a deepseek2 GGUF for llama.cpp from arrays already in their target precision.

Tensors are given with llama.cpp's names and torch's [out, in] orientation (3-D for stacked
experts); Q8_0 / Q4_0 tensors are given as their codes and block scales, which this module
lays out in ggml's block format, so the same quantized weights can be handed to Duet and
to llama.cpp. Every deepseek2 hyper-parameter is set explicitly -- in particular
``expert_gating_func``: without it llama.cpp silently uses softmax gating.
"""

from __future__ import annotations

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType, TokenType


def q8_0_blocks(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """q int8 [..., K], d [..., K/32] (block scales) -> uint8 [..., K/32 * 34] (fp16 d, 32 int8)."""
    nb = q.shape[-1] // 32
    out = np.empty(q.shape[:-1] + (nb, 34), dtype=np.uint8)
    out[..., :2] = d.astype(np.float16).reshape(q.shape[:-1] + (nb, 1)).view(np.uint8)
    out[..., 2:] = q.reshape(q.shape[:-1] + (nb, 32)).view(np.uint8)
    return out.reshape(q.shape[:-1] + (nb * 34,))


def q4_0_blocks(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """codes uint8 [..., K] in 0..15 (w = (code - 8) * d), d [..., K/32] -> uint8 [..., K/32 * 18]:
    fp16 d, then 16 bytes holding element j in the low nibble and j + 16 in the high one."""
    nb = codes.shape[-1] // 32
    c = codes.reshape(codes.shape[:-1] + (nb, 32))
    out = np.empty(codes.shape[:-1] + (nb, 18), dtype=np.uint8)
    out[..., :2] = d.astype(np.float16).reshape(codes.shape[:-1] + (nb, 1)).view(np.uint8)
    out[..., 2:] = c[..., :16] | (c[..., 16:] << 4)
    return out.reshape(codes.shape[:-1] + (nb * 18,))


def _byte_vocab(vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """A valid GPT-2 style byte-level vocabulary padded to vocab_size (the bench feeds ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tokens = [chr(c) for c in cs]
    tokens.append("Ġt")
    merges = ["Ġ t"]
    tokens += [f"<|x{i}|>" for i in range(vocab_size - len(tokens))]
    types = [TokenType.NORMAL] * len(tokens)
    return tokens[:vocab_size], types[:vocab_size], merges


def hf_tokenizer_fields(folder) -> dict:
    """tokens, token types, merges, bos/eos ids and chat template of an HF tokenizer folder, as
    llama.cpp's converter writes them (padded with [PADi] UNUSED tokens to the vocab size)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")) \
        if (folder / "tokenizer_config.json").is_file() else {}
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    kinds = {}
    for a in tj.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
        kinds[a["id"]] = TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    ids = {t: i for i, t in by_id.items()}

    def tid(key):
        v = cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return ids.get(v)

    template = cfg.get("chat_template")
    if (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return {"tokens": [by_id[i] for i in range(len(by_id))], "kinds": kinds, "merges": merges,
            "bos": tid("bos_token"), "eos": tid("eos_token"), "template": template,
            "add_bos": bool(cfg.get("add_bos_token", False))}


def write_deepseek2_gguf(path, cfg: dict, tensors: dict, *, tokenizer: dict | None = None, pre: str = "gpt-2",
                         layout: str = "split", split_max_tensors: int = 0) -> None:
    """cfg: HF config.json fields of a DeepseekV2/V3 model. tensors: gguf name ->
    ("f32" | "f16" | "bf16", array), ("q8_0" | "q4_0", codes, block_scales) or
    ("quant", GGMLQuantizationType, float array) (quantized with gguf.quants) or ("blocks",
    GGMLQuantizationType, uint8 array [..., row bytes]) (its blocks written as they are).
    ``tokenizer``: ``hf_tokenizer_fields(folder)`` (default: a byte vocabulary); ``pre``: its
    tokenizer.ggml.pre. ``layout``: "split" (attn_k_b/attn_v_b, head_count_kv = 1, as llama.cpp
    converts today) or "legacy" (attn_kv_b, per-head key/value lengths). ``split_max_tensors``:
    shards of at most that many tensors (gguf-py's split writer: ``<stem>-00001-of-0000N.gguf``
    ..., the metadata in the first)."""
    w = GGUFWriter(str(path), "deepseek2", split_max_tensors=split_max_tensors)
    L = cfg["num_hidden_layers"]
    w.add_name("duet-bench")
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    H = cfg["num_attention_heads"]
    w.add_head_count_kv(1 if layout == "split" else H)
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(cfg["vocab_size"])
    if cfg.get("q_lora_rank"):
        w.add_q_lora_rank(cfg["q_lora_rank"])
    w.add_kv_lora_rank(cfg["kv_lora_rank"])
    if layout == "split":
        w.add_key_length(cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"])
        w.add_value_length(cfg["kv_lora_rank"])
        w.add_key_length_mla(cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"])
        w.add_value_length_mla(cfg["v_head_dim"])
    else:
        w.add_key_length(cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"])
        w.add_value_length(cfg["v_head_dim"])
    rs = cfg.get("rope_scaling") or (cfg.get("rope_parameters") if (cfg.get("rope_parameters") or {}).get(
        "rope_type") == "yarn" else None)
    if rs and (rs.get("type") or rs.get("rope_type")) == "yarn":
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])
    w.add_rope_dimension_count(cfg["qk_rope_head_dim"])
    w.add_leading_dense_block_count(cfg["first_k_dense_replace"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_count(cfg["n_routed_experts"])
    w.add_expert_shared_count(cfg["n_shared_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_weights_scale(float(cfg.get("routed_scaling_factor", 1.0)))
    w.add_expert_weights_norm(bool(cfg.get("norm_topk_prob", False)))
    sigmoid = cfg.get("scoring_func", "softmax") == "sigmoid"
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID if sigmoid else ExpertGatingFuncType.SOFTMAX)
    w.add_expert_group_count(cfg.get("n_group") or 1)
    w.add_expert_group_used_count(cfg.get("topk_group") or 1)
    if tokenizer is None:
        tokens, types, merges = _byte_vocab(cfg["vocab_size"])
        bos, eos = cfg.get("bos_token_id") or 0, cfg.get("eos_token_id") or 1
    else:
        tokens = list(tokenizer["tokens"])
        types = [tokenizer["kinds"].get(i, TokenType.NORMAL) for i in range(len(tokens))]
        for i in range(len(tokens), cfg["vocab_size"]):
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        merges, bos, eos = tokenizer["merges"], tokenizer["bos"], tokenizer["eos"]
        if tokenizer.get("template"):
            w.add_chat_template(tokenizer["template"])
        w.add_add_bos_token(tokenizer.get("add_bos", False))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    for name, spec in tensors.items():
        kind = spec[0]
        if kind == "f32":
            w.add_tensor(name, np.ascontiguousarray(spec[1], dtype=np.float32))
        elif kind == "f16":
            w.add_tensor(name, np.ascontiguousarray(spec[1], dtype=np.float16))
        elif kind == "bf16":   # uint16 bit patterns
            w.add_tensor(name, np.ascontiguousarray(spec[1]), raw_dtype=GGMLQuantizationType.BF16)
        elif kind == "q8_0":
            w.add_tensor(name, q8_0_blocks(spec[1], spec[2]), raw_dtype=GGMLQuantizationType.Q8_0)
        elif kind == "q4_0":
            w.add_tensor(name, q4_0_blocks(spec[1], spec[2]), raw_dtype=GGMLQuantizationType.Q4_0)
        elif kind == "blocks":   # ggml blocks as they are: uint8 [..., row bytes] of type spec[1]
            w.add_tensor(name, np.ascontiguousarray(spec[2], dtype=np.uint8), raw_dtype=spec[1])
        elif kind == "quant":
            from gguf import quants

            w.add_tensor(name, quants.quantize(np.ascontiguousarray(spec[2], dtype=np.float32), spec[1]),
                         raw_dtype=spec[1])
        else:
            raise ValueError(f"{name}: unknown tensor kind {kind!r}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_tensors_from_hf(state: dict, cfg: dict, layout: str = "split") -> dict:
    """HF DeepseekV2/V3 tensors (name -> float tensor/array) -> gguf name -> ("f32", array),
    as llama.cpp's converter lays them out (kv_b split into attn_k_b / attn_v_b; with
    layout="legacy" kept whole as attn_kv_b)."""
    def f32(name):
        t = state[name]
        return ("f32", np.ascontiguousarray(t.float().numpy() if hasattr(t, "float") else t, dtype=np.float32))

    H, nope, v, R = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    out = {"token_embd.weight": f32("model.embed_tokens.weight"), "output_norm.weight": f32("model.norm.weight"),
           "output.weight": f32("lm_head.weight")}
    simple = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.q_a_proj": "attn_q_a",
              "self_attn.q_a_layernorm": "attn_q_a_norm", "self_attn.q_b_proj": "attn_q_b",
              "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa", "self_attn.kv_a_layernorm": "attn_kv_a_norm",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "mlp.gate": "ffn_gate_inp",
              "mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
              "mlp.shared_experts.down_proj": "ffn_down_shexp"}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for hf, gg in simple.items():
            if p + hf + ".weight" in state:
                out[f"blk.{i}.{gg}.weight"] = f32(p + hf + ".weight")
        if p + "mlp.gate.e_score_correction_bias" in state:
            out[f"blk.{i}.exp_probs_b.bias"] = f32(p + "mlp.gate.e_score_correction_bias")
        if layout == "legacy":
            out[f"blk.{i}.attn_kv_b.weight"] = f32(p + "self_attn.kv_b_proj.weight")
            kv = None
        else:
            kv = np.asarray(state[p + "self_attn.kv_b_proj.weight"].float().numpy()).reshape(H, nope + v, R)
        if kv is not None:
            out[f"blk.{i}.attn_k_b.weight"] = ("f32", np.ascontiguousarray(kv[:, :nope].transpose(0, 2, 1)))
            out[f"blk.{i}.attn_v_b.weight"] = ("f32", np.ascontiguousarray(kv[:, nope:]))
        if p + "mlp.experts.0.gate_proj.weight" in state:
            for part, gg in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
                out[f"blk.{i}.{gg}.weight"] = ("f32", np.stack([
                    state[f"{p}mlp.experts.{e}.{part}.weight"].float().numpy() for e in range(cfg["n_routed_experts"])]))
    return out
