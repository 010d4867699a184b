"""Tiny random DeepSeek-V3.2 (``deepseek_v32``) checkpoints written with transformers.

    write_tiny_v32(dir, *, dtype="float32", seed=0, style="transformers", mtp=False, shards=1,
                   tokenizer=True, **config_overrides) -> Path
    write_fp8_copy_v32(src, dst, *, dequantized_dst=None) -> Path

Beside tests/tiny_checkpoints.py (whose helpers it uses): the same perturbation of what random
init leaves trivial, plus the indexer's LayerNorm bias. ``style="deepseek"`` rewrites config.json
as DeepSeek ships V3.2 (rope_theta + rope_scaling, scoring_func/topk_method, no layer_types or
mlp_layer_types). The FP8 copy follows DeepSeek's release: MLA, MLP and the indexer's wq_b/wk in
block FP8; the indexer's weights_proj, norms, router, embeddings and head not."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from tests.tiny_checkpoints import _add_mtp_layer, _index, _perturb_, fp8_dequantize, fp8_quantize, write_tokenizer


def tiny_v32_config(**overrides):
    from transformers import DeepseekV32Config

    args = dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=40, kv_lora_rank=48, qk_nope_head_dim=20,
        qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=16, num_experts_per_tok=4,
        n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        norm_topk_prob=True, max_position_embeddings=256,
        initializer_range=0.08, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
        rope_scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
                      "mscale": 1.0, "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1},
        index_topk=16, index_n_heads=8, index_head_dim=24,
    )
    args.update(overrides)
    return DeepseekV32Config(**args)


def write_tiny_v32(folder, *, dtype="float32", seed: int = 0, style: str = "transformers", mtp: bool = False,
                   shards: int = 1, tokenizer: bool = True, r1: bool = True, **overrides) -> Path:
    from transformers import AutoModelForCausalLM

    config = tiny_v32_config(**overrides)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        assert write_tokenizer(folder, r1=r1) <= config.vocab_size
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _perturb_(model, seed)
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("indexer.k_norm.bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model = model.to(getattr(torch, dtype))
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    shard = f"{max(1, math.ceil(total / shards / 1024) + 1)}KB" if shards > 1 else "10GB"
    model.save_pretrained(folder, max_shard_size=shard)
    if mtp:
        _add_mtp_layer(folder, config, seed, mtp)
    if style == "deepseek":
        _deepseek_style(folder)
    return folder


def _deepseek_style(folder: Path) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    for key in ("head_dim", "qk_head_dim", "layer_types", "mlp_layer_types"):
        cfg.pop(key, None)
    cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    kind = rope.get("rope_type", "default")
    cfg["rope_scaling"] = ({**{k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type")}, "type": kind}
                           if kind != "default" else None)
    cfg.update(scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1, num_nextn_predict_layers=1)
    path.write_text(json.dumps(cfg, indent=1))


def _fp8_target(name: str, t: torch.Tensor) -> bool:
    if t.dim() != 2 or "embed" in name or ".mlp.gate." in name or "weights_proj" in name:
        return False
    return name.endswith("proj.weight") or name.endswith("indexer.wq_b.weight") or name.endswith("indexer.wk.weight")


def write_fp8_copy_v32(src, dst, *, dequantized_dst=None) -> Path:
    """DeepSeek's FP8 release layout of ``src`` in ``dst``; with ``dequantized_dst`` also the
    dequantized float32 weights as an ordinary checkpoint (the reference for the FP8 load)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    index = _index(src)
    new_map, deq = {}, {}
    for fname in sorted(set(index["weight_map"].values())):
        out = {}
        with safe_open(str(src / fname), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                if _fp8_target(k, t):
                    q, s = fp8_quantize(t)
                    out[k], out[k + "_scale_inv"] = q, s
                    deq[k] = fp8_dequantize(q, s)
                    new_map[k + "_scale_inv"] = fname
                else:
                    out[k] = deq[k] = t
                new_map[k] = fname
        save_file(out, str(dst / fname), metadata={"format": "pt"})
    index["weight_map"] = new_map
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    cfg = json.loads((src / "config.json").read_text())
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    fp8_cfg = dict(cfg, quantization_config={"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]})
    (dst / "config.json").write_text(json.dumps(fp8_cfg, indent=1))
    if dequantized_dst is not None:
        d = Path(dequantized_dst)
        d.mkdir(parents=True, exist_ok=True)
        mtp = f"model.layers.{cfg['num_hidden_layers']}."
        save_file({k: v.contiguous() for k, v in deq.items() if not k.startswith(mtp)},
                  str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        for extra in ("tokenizer.json", "tokenizer_config.json"):
            if (src / extra).exists():
                shutil.copy(src / extra, d / extra)
    return dst
