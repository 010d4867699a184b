"""Write the coder (an HF Llama folder) as a GGUF llama.cpp loads: arch ``llama``, the shared
byte-level BPE tokenizer as ``gpt2`` tokens + merges, and the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPECIAL_CONTROL = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half q/k rows → llama.cpp's interleaved pairs (as convert_hf_to_gguf does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_folder, out_path) -> Path:
    import gguf
    from safetensors.numpy import load_file

    hf_folder, out_path = Path(hf_folder), Path(out_path)
    cfg = json.loads((hf_folder / "config.json").read_text())
    tcfg = json.loads((hf_folder / "tokenizer_config.json").read_text())
    tj = json.loads((hf_folder / "tokenizer.json").read_text(encoding="utf-8"))
    tensors = load_file(str(hf_folder / "model.safetensors"))
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = H // nh

    tmp = out_path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name("duet-demo-coder")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    vocab = tj["model"]["vocab"]
    added = {a["content"]: a["id"] for a in tj.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()}
    by_id.update({i: t for t, i in added.items()})
    n = cfg["vocab_size"]
    tokens, types = [], []
    for i in range(n):
        t = by_id.get(i, f"[PAD{i}]")
        tokens.append(t)
        if t in SPECIAL_CONTROL:
            types.append(gguf.TokenType.CONTROL)
        elif t in added:
            types.append(gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            types.append(gguf.TokenType.NORMAL)
        else:
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(added[tcfg["bos_token"]])
    w.add_eos_token_id(added[tcfg["eos_token"]])
    w.add_pad_token_id(added[tcfg["eos_token"]])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(tcfg["chat_template"])

    def put(name, arr, *, f16=True):
        arr = np.ascontiguousarray(arr.astype(np.float16 if f16 and arr.ndim == 2 else np.float32))
        w.add_tensor(name, arr)

    put("token_embd.weight", tensors["model.embed_tokens.weight"])
    put("output_norm.weight", tensors["model.norm.weight"])
    put("output.weight", tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"]))
    for i in range(L):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", tensors[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", _permute(tensors[p + "self_attn.q_proj.weight"], nh))
        put(f"blk.{i}.attn_k.weight", _permute(tensors[p + "self_attn.k_proj.weight"], nkv))
        put(f"blk.{i}.attn_v.weight", tensors[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", tensors[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", tensors[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", tensors[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", tensors[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", tensors[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out_path)
    return out_path
