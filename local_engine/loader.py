"""Read an HF DeepSeek folder into a Transformer, block by block, from memory-mapped safetensors.

Each block is built on the meta device, filled from the shards (FP8 dequantized, cast to the
target dtype), optionally quantized, then the next one: peak memory stays near the final
weights. Shards are opened per block and closed again so their mapped pages are released.
Tensors past ``num_hidden_layers`` (DeepSeek's MTP layer) are skipped."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from kernels import dispatch
from local_engine.config import ModelArgs
from local_engine.errors import ModelError
from local_engine.model import Block, Transformer

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# HF name (inside a layer) -> our name; gate/up pairs are fused into w13 separately
_ATTN = {
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.q_a_proj.weight": "attn.wq_a.weight",
    "self_attn.q_a_layernorm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn.wkv_a.weight",
    "self_attn.kv_a_layernorm.weight": "attn.kv_norm.weight",
    "self_attn.kv_b_proj.weight": "attn.wkv_b.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate.weight": "ffn.gate.weight",
    "mlp.gate.e_score_correction_bias": "ffn.gate.bias",
}
_MLP = re.compile(r"^mlp\.(?:(shared_experts)\.|experts\.(\d+)\.)?(gate_proj|up_proj|down_proj)\.weight$")


class Shards:
    """Which file holds which tensor; reads tensors (dequantizing FP8) with files opened briefly."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = folder / "model.safetensors.index.json"
        self.where: dict[str, str] = {}
        if index.is_file():
            try:
                self.where = dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelError(f"{index}: unreadable index ({e})") from None
            for fname in sorted(set(self.where.values())):
                if not (folder / fname).is_file():
                    raise ModelError(f"{folder / fname}: shard named in {index.name} is missing")
        else:
            files = sorted(folder.glob("*.safetensors"))
            if not files:
                raise ModelError(f"{folder}: no *.safetensors weights")
            for f in files:
                for key in self._open(f.name).keys():
                    self.where[key] = f.name

    def _open(self, fname: str):
        from safetensors import safe_open

        try:
            return safe_open(str(self.folder / fname), framework="pt")
        except Exception as e:  # SafetensorError, OSError: corrupt or truncated header
            raise ModelError(f"{self.folder / fname}: not a readable safetensors file ({e})") from None

    def read(self, names: list[str], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
        """Tensors by name, cast to dtype (FP8 weights dequantized with their weight_scale_inv)."""
        by_file = defaultdict(list)
        for n in names:
            by_file[self.where[n]].append(n)
        out = {}
        for fname, keys in by_file.items():
            f = self._open(fname)
            try:
                for k in keys:
                    t = self._get(f, fname, k)
                    if t.dtype == torch.float8_e4m3fn:
                        sk = k + "_scale_inv"
                        if sk not in self.where:
                            raise ModelError(f"{self.folder / fname}: FP8 tensor {k} has no {sk}")
                        s = self._get(f, fname, sk) if self.where[sk] == fname else self.read([sk], torch.float32, "cpu")[sk]
                        try:
                            t = dispatch.fp8_block_dequant(t, s, dtype)
                        except ValueError as e:
                            raise ModelError(f"{self.folder / fname}: {k}: {e}") from None
                    want = torch.float32 if _router(k) else dtype  # the router stays float32
                    out[k] = t.to(device=device, dtype=want if t.is_floating_point() else t.dtype)
            finally:
                del f
        return out

    def _get(self, f, fname, key):
        try:
            return f.get_tensor(key)
        except Exception as e:
            raise ModelError(f"{self.folder / fname}: cannot read tensor {key} ({e})") from None


def _router(name: str) -> bool:
    return name.endswith("mlp.gate.weight") or name.endswith("e_score_correction_bias")


def _layer_plan(args: ModelArgs, names) -> dict[int, list[str]]:
    plan = defaultdict(list)
    for n in names:
        m = _LAYER.match(n)
        if m and int(m.group(1)) < args.num_hidden_layers and not n.endswith("_scale_inv"):
            plan[int(m.group(1))].append(n)
    return plan


def _fill_block(block: Block, layer: int, tensors: dict[str, torch.Tensor], shards: "Shards") -> None:
    prefix = f"model.layers.{layer}."
    source = str(shards.folder)
    ours: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}  # our name -> checkpoint name, for error messages
    pairs = defaultdict(dict)  # our module path -> {"gate_proj": t, "up_proj": t}
    fused = {}
    for name, t in tensors.items():
        rest = name[len(prefix):]
        if rest in _ATTN:
            ours[_ATTN[rest]] = t
            origin[_ATTN[rest]] = name
            continue
        m = _MLP.match(rest)
        if m:
            shared, expert, proj = m.groups()
            mod = "ffn.shared" if shared else (f"ffn.experts.{expert}" if expert is not None else "ffn")
            if proj == "down_proj":
                ours[mod + ".w2.weight"] = t
                origin[mod + ".w2.weight"] = name
            else:
                origin[mod + ".w13.weight"] = name
                pairs[mod][proj] = t
            continue
        if rest in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):  # transformers' fused layout
            fused[rest] = t
            continue
        if rest.endswith(".bias"):
            raise ModelError(f"{source}: tensor {name}: biases in attention/MLP are not supported")
        # anything else inside a layer (e.g. rotary inv_freq) is not used
    for mod, gu in pairs.items():
        if set(gu) != {"gate_proj", "up_proj"}:
            raise ModelError(f"{source}: layer {layer}: {mod} has {sorted(gu)} but needs gate_proj and up_proj")
        if gu["gate_proj"].shape != gu["up_proj"].shape:
            raise ModelError(f"{source}: layer {layer}: {mod} gate_proj {tuple(gu['gate_proj'].shape)} and "
                             f"up_proj {tuple(gu['up_proj'].shape)} differ")
        ours[mod + ".w13.weight"] = torch.cat([gu["gate_proj"], gu["up_proj"]], dim=0)
    if fused:
        for e in range(len(block.ffn.experts)):
            if "mlp.experts.gate_up_proj" in fused:
                ours[f"ffn.experts.{e}.w13.weight"] = fused["mlp.experts.gate_up_proj"][e]
            if "mlp.experts.down_proj" in fused:
                ours[f"ffn.experts.{e}.w2.weight"] = fused["mlp.experts.down_proj"][e]
    _assign(block, ours, f"model.layers.{layer}", shards, origin)


def _assign(module: nn.Module, ours: dict[str, torch.Tensor], where: str, shards: "Shards",
            origin: dict[str, str]) -> None:
    source = str(shards.folder)
    params = dict(module.named_parameters())
    for name, t in sorted(ours.items()):
        if name not in params:
            continue  # e.g. q_proj in a q_lora model: not part of this architecture
        p = params[name]
        if tuple(t.shape) != tuple(p.shape):
            hf = origin.get(name, f"{where}.{name}")
            raise ModelError(f"{shards.folder / shards.where.get(hf, '')}: tensor {hf}: shape {tuple(t.shape)}, "
                             f"config.json expects {tuple(p.shape)}")
        mod_path, _, attr = name.rpartition(".")
        owner = module.get_submodule(mod_path) if mod_path else module
        setattr(owner, attr, nn.Parameter(t, requires_grad=False))
    missing = [n for n, p in module.named_parameters() if p.is_meta]
    if missing:
        raise ModelError(f"{source}: {where}: no tensor in the checkpoint for {', '.join(missing[:4])}")


def load_model(folder, args: ModelArgs, *, dtype: torch.dtype, device, max_batch: int, max_seq_len: int,
               quant: str | None = None) -> Transformer:
    folder = Path(folder)
    shards = Shards(folder)
    source = str(folder)
    with torch.device("meta"):
        model = Transformer(args)
    top = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
           "lm_head.weight": "head.weight"}
    present = [k for k in top if k in shards.where]
    tensors = shards.read(present, dtype, device)
    if "lm_head.weight" not in tensors and args.tie_word_embeddings and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    _assign(model, {top[k]: v for k, v in tensors.items()}, "model", shards,  # layers are empty yet
            {v: k for k, v in top.items()})
    del tensors
    plan = _layer_plan(args, shards.where)
    quantize_block_ = None
    if quant:
        from local_engine.quantize import quantize_block_
    for i in range(args.num_hidden_layers):
        if not plan.get(i):
            raise ModelError(f"{source}: no tensors for layer {i} (num_hidden_layers is {args.num_hidden_layers})")
        with torch.device("meta"):
            block = Block(args, i)
        _fill_block(block, i, shards.read(plan[i], dtype, device), shards)
        if quantize_block_ is not None:
            quantize_block_(block, quant)  # quantize while loading: never the whole model in full precision
        block.attn.alloc_cache(max_batch, max_seq_len, dtype, device)
        model.layers.append(block)
    from local_engine.rope import rope_tables

    cos, sin = rope_tables(args, max_seq_len)
    model.cos, model.sin = cos.to(device), sin.to(device)
    return model.eval()
