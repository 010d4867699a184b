"""Tiny random DeepSeek-V3/V2 checkpoints written with transformers, for tests and benches.

Stable API (other helpers import it):
    write_tiny_v3(dir, *, shards=1, dtype="float32", seed=0, style="transformers", mtp=False,  # mtp: True | "copy"
                  tokenizer=True, r1=True, **config_overrides) -> Path
    write_tiny_v2(dir, *, ...same...) -> Path
    write_fp8_copy(src, dst, *, dequantized_dst=None) -> Path
    write_tokenizer(dir, *, r1=True) -> int          # number of tokens in the tokenizer
    load_reference(dir, dtype=torch.float32)          # the transformers model on those weights

The writers perturb what random init leaves trivial (gate `e_score_correction_bias` is zero,
norms are one), so those paths are exercised. ``style="deepseek"`` rewrites config.json the
way DeepSeek ships it (`rope_theta` + `rope_scaling` with "type", `scoring_func`,
`topk_method`, no `head_dim`/`qk_head_dim`), so both spellings get read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
SPECIALS = [BOS, EOS, USER, ASSISTANT, "<think>", "</think>"]

# R1-style: previous turns lose their reasoning; the prompt ends at the Assistant tag and
# the engine opens the "<think>\n" block itself.
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set c = m['content'] %}"
    "{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + c + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

CORPUS = [  # what the tiny tokenizers learn from
    "The quick brown fox jumps over the lazy dog. def main(): return 42",
    "Reasoning models think before they answer: first a plan, then the code.",
    "import torch\nfor i in range(10):\n    print(i * i)\n",
    "深度求索发布了推理模型，中文能力更强。我们在本地运行它。",
    "混合专家模型只激活一部分参数，潜在注意力压缩了缓存。",
    "Hello, world! How are you today? 你好，世界！",
]


def write_tokenizer(folder, *, r1: bool = True, vocab_size: int = 400) -> int:
    """Byte-level BPE (DeepSeek's kind) with DeepSeek's special tokens at ids 0..5."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": False,
        "tokenizer_class": "LlamaTokenizerFast",
        "model_max_length": 4096,
        "chat_template": R1_TEMPLATE if r1 else PLAIN_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1))
    return tok.get_vocab_size()


def tiny_v3_config(**overrides):
    from transformers import DeepseekV3Config

    args = dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=40, kv_lora_rank=48, qk_nope_head_dim=20,
        qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=16, num_experts_per_tok=4,
        n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        norm_topk_prob=True, rope_interleave=True, max_position_embeddings=256,
        initializer_range=0.08, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
        rope_scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
                      "mscale": 1.0, "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1},
    )
    args.update(overrides)
    return DeepseekV3Config(**args)


def tiny_v2_config(**overrides):
    from transformers import DeepseekV2Config

    args = dict(
        vocab_size=512, hidden_size=64, intermediate_size=96, moe_intermediate_size=24,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=48, qk_nope_head_dim=20,
        qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=12, num_experts_per_tok=3,
        n_shared_experts=2, n_group=1, topk_group=1, topk_method="greedy",
        routed_scaling_factor=1.0, norm_topk_prob=False, max_position_embeddings=256,
        initializer_range=0.08, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )
    args.update(overrides)
    return DeepseekV2Config(**args)


def _perturb_(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


def _write(folder, config, *, shards, dtype, seed, style, mtp, tokenizer, r1):
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        n = write_tokenizer(folder, r1=r1)
        assert n <= config.vocab_size, (n, config.vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _perturb_(model, seed)
    model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    shard = f"{max(1, math.ceil(total / shards / 1024) + 1)}KB" if shards > 1 else "10GB"
    model.save_pretrained(folder, max_shard_size=shard)
    if mtp:
        _add_mtp_layer(folder, config, seed, mtp)
    if style == "deepseek":
        _deepseek_style_config(folder)
    return folder


def write_tiny_v3(folder, *, shards: int = 1, dtype="float32", seed: int = 0,
                  style: str = "transformers", mtp: bool = False, tokenizer: bool = True,
                  r1: bool = True, **overrides) -> Path:
    return _write(folder, tiny_v3_config(**overrides), shards=shards, dtype=dtype, seed=seed,
                  style=style, mtp=mtp, tokenizer=tokenizer, r1=r1)


def write_tiny_v2(folder, *, shards: int = 1, dtype="float32", seed: int = 0,
                  style: str = "transformers", mtp: bool = False, tokenizer: bool = True,
                  r1: bool = False, **overrides) -> Path:
    return _write(folder, tiny_v2_config(**overrides), shards=shards, dtype=dtype, seed=seed,
                  style=style, mtp=mtp, tokenizer=tokenizer, r1=r1)


def _index(folder: Path) -> dict:
    idx = folder / "model.safetensors.index.json"
    if idx.exists():
        return json.loads(idx.read_text())
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {"metadata": {}, "weight_map": {k: "model.safetensors" for k in f.keys()}}


def _read_all(folder: Path) -> dict:
    from safetensors import safe_open

    out = {}
    for fname in sorted(set(_index(folder)["weight_map"].values())):
        with safe_open(str(folder / fname), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _add_mtp_layer(folder: Path, config, seed: int, mode) -> None:
    """DeepSeek's multi-token-prediction module at model.layers.{num_hidden_layers} (transformers
    ignores it): enorm, hnorm, eh_proj, shared_head.{norm,head}, a copy of embed_tokens, and a
    full block named as any layer.

    ``mode=True``: random weights (its own random head), so drafts are ~never right.
    ``mode="copy"``: a module that drafts like the main model would one step later: the block
    is a copy of the last layer, eh_proj passes the embedding through (scaled back to the
    embedding's size) and ignores h, the head and norm are the main model's. On a one-layer
    model that is the main model minus its first position: drafts are often but not always right."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    h, L = config.hidden_size, config.num_hidden_layers
    main = _read_all(folder)
    p = f"model.layers.{L}."
    g = torch.Generator().manual_seed(seed + 7)
    embed = main["model.embed_tokens.weight"]
    if mode == "copy":
        src = f"model.layers.{L - 1}."
        block = {p + k[len(src):]: v.clone() for k, v in main.items() if k.startswith(src)}
        scale = embed.float().pow(2).mean(-1).sqrt().mean()
        eh = torch.cat([torch.eye(h) * scale, torch.zeros(h, h)], dim=1)
        extra = {p + "enorm.weight": torch.ones(h), p + "hnorm.weight": torch.ones(h),
                 p + "shared_head.norm.weight": main["model.norm.weight"].clone(),
                 p + "shared_head.head.weight": main["lm_head.weight"].clone()}
    else:
        cfg = {**config.to_dict(), "num_hidden_layers": L + 1}
        for key in ("layer_types", "mlp_layer_types"):  # V3.2's per-layer lists grow with it
            if cfg.get(key):
                cfg[key] = [*cfg[key], cfg[key][-1]]
        deeper = type(config).from_dict(cfg)
        torch.manual_seed(seed + 7)
        model = AutoModelForCausalLM.from_config(deeper, dtype=torch.float32)
        _perturb_(model, seed + 7)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            block = {k: v for k, v in _read_all(Path(tmp)).items() if k.startswith(p)}
        eh = 0.08 * torch.randn(h, 2 * h, generator=g)
        extra = {p + "enorm.weight": 1 + 0.3 * torch.randn(h, generator=g),
                 p + "hnorm.weight": 1 + 0.3 * torch.randn(h, generator=g),
                 p + "shared_head.norm.weight": 1 + 0.3 * torch.randn(h, generator=g),
                 p + "shared_head.head.weight": 0.08 * torch.randn(config.vocab_size, h, generator=g)}
    extra.update(block)
    extra[p + "eh_proj.weight"] = eh
    extra[p + "embed_tokens.weight"] = embed.clone()
    dtype = embed.dtype
    extra = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in extra.items()}
    save_file(extra, str(folder / "model-mtp.safetensors"), metadata={"format": "pt"})
    index = _index(folder)
    index["weight_map"].update({k: "model-mtp.safetensors" for k in extra})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _deepseek_style_config(folder: Path) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    cfg.pop("head_dim", None)
    cfg.pop("qk_head_dim", None)
    cfg["rope_theta"] = rope.get("rope_theta", 10000.0)
    if rope.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type")}
        scaling["type"] = rope["rope_type"]
        cfg["rope_scaling"] = scaling
    else:
        cfg["rope_scaling"] = None
    if cfg["model_type"] == "deepseek_v3":
        cfg.update(scoring_func="sigmoid", topk_method="noaux_tc")
    else:
        cfg.setdefault("scoring_func", "softmax")
    path.write_text(json.dumps(cfg, indent=1))


# -- FP8 --------------------------------------------------------------------------------------

BLOCK = 128


def fp8_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's block FP8: e4m3 weight and float32 scale_inv [ceil(out/128), ceil(in/128)]."""
    out_f, in_f = w.shape
    so, si = math.ceil(out_f / BLOCK), math.ceil(in_f / BLOCK)
    pad = torch.zeros(so * BLOCK, si * BLOCK, dtype=torch.float32)
    pad[:out_f, :in_f] = w.float()
    blocks = pad.view(so, BLOCK, si, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale_inv = amax / 448.0  # [so, si]
    q = (blocks / scale_inv[:, None, :, None]).to(torch.float8_e4m3fn)
    q = q.view(so * BLOCK, si * BLOCK)[:out_f, :in_f].contiguous()
    return q, scale_inv.contiguous()


def fp8_dequantize(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    s = scale_inv.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return q.float() * s[: q.shape[0], : q.shape[1]]


def _fp8_target(name: str, t: torch.Tensor) -> bool:
    # as DeepSeek ships: linear weights in FP8; embeddings, head, norms, router gate not
    return (t.dim() == 2 and name.endswith("proj.weight") and "embed" not in name
            and ".mlp.gate." not in name)


def write_fp8_copy(src, dst, *, dequantized_dst=None) -> Path:
    """Block-quantize ``src``'s linear weights to FP8 (DeepSeek layout) into ``dst``.

    With ``dequantized_dst``, also write the dequantized float32 weights there as an
    ordinary checkpoint: the reference the FP8 load must match."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    index = _index(src)
    files = sorted(set(index["weight_map"].values()))
    new_map = {}
    deq_all = {}
    for fname in files:
        out = {}
        with safe_open(str(src / fname), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                if _fp8_target(k, t):
                    q, s = fp8_quantize(t)
                    out[k], out[k + "_scale_inv"] = q, s
                    deq_all[k] = fp8_dequantize(q, s)
                    new_map[k + "_scale_inv"] = fname
                else:
                    out[k] = t
                    deq_all[k] = t.float() if t.is_floating_point() else t
                new_map[k] = fname
        save_file(out, str(dst / fname), metadata={"format": "pt"})
    index["weight_map"] = new_map
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    if (dst / "model.safetensors").exists() and len(files) == 1:
        pass  # keep the index beside the single file: both layouts are legal
    for extra in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic", "weight_block_size": [BLOCK, BLOCK]}
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    if dequantized_dst is not None:
        d = Path(dequantized_dst)
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in deq_all.items()
                   if not k.startswith(f"model.layers.{cfg['num_hidden_layers']}.")},
                  str(d / "model.safetensors"), metadata={"format": "pt"})
        cfg.pop("quantization_config")
        cfg["dtype"] = "float32"
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        for extra in ("tokenizer.json", "tokenizer_config.json"):
            if (src / extra).exists():
                shutil.copy(src / extra, d / extra)
    return dst


def load_reference(folder, dtype=torch.float32):
    """The transformers model on a folder's weights (eager attention, eval mode)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
    return model.eval()
