"""Read an HF DeepSeek folder into a Transformer, block by block, tensor by tensor.

Each block is built on the meta device and its parameters are filled one checkpoint tensor at
a time (FP8 dequantized, cast to the target dtype, gate/up written straight into the fused
w13), then it is optionally quantized and the next block follows. So the process holds the
weights built so far plus one tensor in flight. The layers past ``num_hidden_layers`` (DeepSeek's
MTP modules) load into ``model.mtp`` the same way unless ``mtp=False``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kernels import dispatch, fp8
from local_engine.config import ModelArgs
from local_engine.errors import ModelError
from local_engine.layers import Linear, pack, replace
from local_engine.model import MTP, Block, Transformer
from local_engine.safetensors_io import ShardFile

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# checkpoint name inside a layer -> our parameter name
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
    # V3.2's indexer (DeepSeek's FP8 release: wq_b and wk in FP8, weights_proj and k_norm not)
    "self_attn.indexer.wq_b.weight": "attn.indexer.wq_b.weight",
    "self_attn.indexer.wk.weight": "attn.indexer.wk.weight",
    "self_attn.indexer.k_norm.weight": "attn.indexer.k_norm.weight",
    "self_attn.indexer.k_norm.bias": "attn.indexer.k_norm.bias",
    "self_attn.indexer.weights_proj.weight": "attn.indexer.weights_proj",
}
_MLP = re.compile(r"^mlp\.(?:(shared_experts)\.|experts\.(\d+)\.)?(gate_proj|up_proj|down_proj)\.weight$")
# an MTP layer's own tensors (the rest of model.layers.{L}.* is its Block, named as any layer)
_MTP_OWN = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
            "shared_head.norm.weight": "norm.weight", "shared_head.head.weight": "head.weight"}
_MTP_SHARED = ("embed_tokens.weight",)  # DeepSeek stores a copy of the main embedding there: not read
_TOP = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
        "lm_head.weight": "head.weight"}


class Shards:
    """Which file holds which tensor, and reading one tensor (FP8 dequantized, cast)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[str, ShardFile] = {}
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                self.where: dict[str, str] = dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ModelError(f"{index}: unreadable index ({e})") from None
            for fname in sorted(set(self.where.values())):
                if not (folder / fname).is_file():
                    raise ModelError(f"{folder / fname}: shard named in {index.name} is missing")
                self.file(fname)  # parse every header now: a truncated shard fails before any work
        else:
            paths = sorted(folder.glob("*.safetensors"))
            if not paths:
                raise ModelError(f"{folder}: no *.safetensors weights")
            self.where = {k: p.name for p in paths for k in self.file(p.name).keys()}

    def file(self, fname: str) -> ShardFile:
        if fname not in self.files:
            self.files[fname] = ShardFile(self.folder / fname)
        return self.files[fname]

    def path(self, name: str) -> Path:
        return self.folder / self.where.get(name, "?")

    def read(self, name: str, dtype: torch.dtype, device, out: torch.Tensor | None = None) -> torch.Tensor:
        """One tensor; read straight into ``out`` when it fits (same dtype and shape, CPU)."""
        f = self.file(self.where[name])
        if name not in f.entries:
            raise ModelError(f"{f.path}: tensor {name} is listed in the index but not in the file")
        direct = out is not None and out.device.type == "cpu" and f.entries[name][0] == dtype
        t = f.get(name, out if direct else None)
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            sk = name + "_scale_inv"
            if sk not in self.where:
                raise ModelError(f"{f.path}: FP8 tensor {name} has no {sk}")
            fits = out is not None and out.dtype == dtype and out.shape == t.shape and out.device == t.device
            try:
                t = fp8.fp8_block_dequant(t, self.read(sk, torch.float32, "cpu"), dtype,
                                           out=out if fits else None)
            except ValueError as e:
                raise ModelError(f"{f.path}: tensor {name}: {e}") from None
        if t.is_floating_point():
            t = t.to(torch.float32 if _router(name) else dtype)  # the router (and indexer weights) stay float32
        return t.to(device)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def release_free_memory() -> None:
    """glibc keeps freed small blocks in its heap; malloc_trim hands them back (Linux only)."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None


def _router(name: str) -> bool:
    return (name.endswith("mlp.gate.weight") or name.endswith("e_score_correction_bias")
            or name.endswith("indexer.weights_proj.weight"))


def _target(rest: str) -> tuple[str, int | None] | None:
    """Our parameter for a checkpoint tensor of a layer, and which half of w13 (0 gate, 1 up)."""
    if rest in _ATTN:
        return _ATTN[rest], None
    m = _MLP.match(rest)
    if m:
        shared, expert, proj = m.groups()
        mod = "ffn.shared" if shared else (f"ffn.experts.{expert}" if expert is not None else "ffn")
        if proj == "down_proj":
            return mod + ".w2.weight", None
        return mod + ".w13.weight", 0 if proj == "gate_proj" else 1
    return None


class _Filler:
    """Puts checkpoint tensors into a module built on the meta device, checking shapes."""

    def __init__(self, module: nn.Module, shards: Shards, where: str, dtype=None, device=None, pack=False,
                 dense_mlp=False):
        self.module, self.shards, self.where = module, shards, where
        self.dtype, self.device, self.pack = dtype, device, pack
        self.dense_mlp = dense_mlp  # MLP/expert weights stay dense: the fused one-token call reads them
        self.params = dict(module.named_parameters())
        self.halves: dict[str, set[int]] = {}

    def slot(self, ours: str, half: int | None) -> torch.Tensor | None:
        """Where a half of a fused w13 goes, allocated on first use: read straight into it."""
        p = self.params.get(ours)
        if half is None or p is None:
            return None
        mod_path, _, attr = ours.rpartition(".")
        owner = self.module.get_submodule(mod_path)
        if p.is_meta:
            p = nn.Parameter(torch.empty(p.shape, dtype=self.dtype, device=self.device), requires_grad=False)
            setattr(owner, attr, p)
            self.params[ours] = p
        rows = p.shape[0] // 2
        return p.data[half * rows:(half + 1) * rows]

    def put(self, ours: str, half: int | None, t: torch.Tensor, ckpt_name: str) -> None:
        p = self.params.get(ours)
        if p is None:
            return  # not part of this architecture (e.g. q_proj beside q_lora)
        want = tuple(p.shape)
        if half is not None:
            want = (want[0] // 2,) + want[1:]
        if tuple(t.shape) != want:
            raise ModelError(f"{self.shards.path(ckpt_name)}: tensor {ckpt_name}: shape {tuple(t.shape)}, "
                             f"config.json expects {want}")
        mod_path, _, attr = ours.rpartition(".")
        owner = self.module.get_submodule(mod_path) if mod_path else self.module
        if half is None:
            new = t
        else:
            new = getattr(owner, attr)
            if new.is_meta:
                new = torch.empty(p.shape, dtype=t.dtype, device=t.device)
            dst = new.data[half * want[0]:(half + 1) * want[0]]
            if dst.data_ptr() != t.data_ptr():  # not already read in place
                dst.copy_(t)
            self.halves.setdefault(ours, set()).add(half)
        setattr(owner, attr, nn.Parameter(new, requires_grad=False))
        self.params[ours] = new
        done = half is None or self.halves[ours] == {0, 1}
        if (self.pack and done and isinstance(owner, Linear) and not mod_path.endswith("wkv_b")
                and not (self.dense_mlp and mod_path.startswith("ffn."))):
            packed = pack(owner)  # right away: the dense buffer is freed before the next tensor is read
            if packed is not None:
                replace(self.module, mod_path, packed)
                self.params[ours] = packed.packed  # (holding the dense one here would keep it alive)

    def finish(self) -> None:
        missing = [n for n, p in self.module.named_parameters() if p.is_meta]
        missing += [n for n, h in self.halves.items() if h != {0, 1}]
        if missing:
            raise ModelError(f"{self.shards.folder}: {self.where}: no tensor in the checkpoint for "
                             f"{', '.join(missing[:4])}")


def _fill_block(block: Block, layer: int, names: list[str], shards: Shards, dtype, device,
                pack: bool = False, dense_mlp: bool = False) -> None:
    prefix = f"model.layers.{layer}."
    fill = _Filler(block, shards, f"model.layers.{layer}", dtype, device, pack, dense_mlp)
    # read in file order: sequential I/O
    for name in sorted(names, key=lambda n: (shards.where[n], shards.file(shards.where[n]).offset(n))):
        rest = name[len(prefix):]
        target = _target(rest)
        if target is not None:
            fill.put(*target, shards.read(name, dtype, device, out=fill.slot(*target)), name)
            release_free_memory()  # glibc would keep each freed dense copy (a packed weight's source,
            # an FP8 strip) in its heap until the layer ends: a transient worth half a layer
        elif rest in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):  # transformers' in-memory layout
            t = shards.read(name, dtype, device)
            for e in range(t.shape[0]):
                ours = f"ffn.experts.{e}." + ("w13.weight" if rest.endswith("gate_up_proj") else "w2.weight")
                fill.put(ours, None, t[e].clone(), name)
        elif rest.endswith(".bias"):
            raise ModelError(f"{shards.path(name)}: tensor {name}: biases in attention/MLP are not supported")
        # anything else inside a layer (e.g. rotary inv_freq) is not used
    fill.finish()


def load_model(folder, args: ModelArgs, *, dtype: torch.dtype, device, max_batch: int, max_seq_len: int,
               quant: str | None = None, pack: bool = False,
               progress: Callable[[float], None] | None = None, mtp: bool = True) -> Transformer:
    """``progress(fraction)`` is called after each layer. ``mtp``: load the checkpoint's MTP
    modules (if it has any) into ``model.mtp``."""
    folder = Path(folder)
    shards = Shards(folder)
    try:
        model = _load(shards, args, dtype, device, max_batch, max_seq_len, quant, pack, progress)
        if mtp:
            dense_mlp = pack and not quant and dispatch.plan().fused_bf16_mlp(dtype, device)
            for layer in mtp_layers(shards, args)[:1]:  # drafting chains the first (V3/R1 ship one)
                model.mtp.append(_load_mtp(model, layer, shards, args, dtype, device, max_batch, max_seq_len,
                                           quant, pack and not quant, dense_mlp))
        return model
    finally:
        shards.close()


def mtp_layers(shards: Shards, args: ModelArgs) -> list[int]:
    """The checkpoint's MTP layers: model.layers.{num_hidden_layers}, {+1}, … as far as present."""
    present = {int(m.group(1)) for m in map(_LAYER.match, shards.where) if m}
    layers, i = [], args.num_hidden_layers
    while i in present:
        layers.append(i)
        i += 1
    return layers


def _load_mtp(model: Transformer, layer: int, shards: Shards, args, dtype, device, max_batch, max_seq_len,
              quant, pack, dense_mlp) -> MTP:
    prefix = f"model.layers.{layer}."
    names = [n for n in shards.where if n.startswith(prefix) and not n.endswith("_scale_inv")]
    rests = {n[len(prefix):] for n in names}
    head = None
    if "shared_head.head.weight" in rests:
        head = shards.read(prefix + "shared_head.head.weight", dtype, device)
        if head.shape == model.head.weight.shape and torch.equal(head, model.head.weight):
            head = None  # DeepSeek's copy of the main head: share the main one
    with torch.device("meta"):
        mod = MTP(args, layer, own_head=head is not None)
    own = _Filler(mod, shards, f"model.layers.{layer} (MTP)", dtype, device, pack)
    for rest, ours in _MTP_OWN.items():
        if rest == "shared_head.head.weight":
            if head is not None:
                own.put(ours, None, head, prefix + rest)
        elif rest in rests:
            own.put(ours, None, shards.read(prefix + rest, dtype, device), prefix + rest)
    del head
    block = [n for n in names if n[len(prefix):] not in _MTP_OWN and n[len(prefix):] not in _MTP_SHARED]
    _fill_block(mod.block, layer, block, shards, dtype, device, pack=pack, dense_mlp=dense_mlp)
    own.finish()
    if quant:
        from local_engine.quantize import quantize_block_

        quantize_block_(mod.block, quant)
    mod.block.attn.alloc_cache(max_batch, max_seq_len, dtype, device)
    release_free_memory()
    return mod.eval()


def _load(shards: Shards, args, dtype, device, max_batch, max_seq_len, quant, pack, progress) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    top = _Filler(model, shards, "model", pack=pack and not quant)  # layers are still empty
    for name, ours in _TOP.items():
        if name in shards.where:
            top.put(ours, None, shards.read(name, dtype, device), name)
    if model.head.weight.is_meta and args.tie_word_embeddings and not model.embed.weight.is_meta:
        model.head.weight = model.embed.weight
    top.finish()
    plan: dict[int, list[str]] = {}
    for n in shards.where:
        m = _LAYER.match(n)
        if m and int(m.group(1)) < args.num_hidden_layers and not n.endswith("_scale_inv"):
            plan.setdefault(int(m.group(1)), []).append(n)
    dense_mlp = pack and not quant and dispatch.plan().fused_bf16_mlp(dtype, device)
    quantize_block_ = None
    if quant:
        from local_engine.quantize import quantize_block_
    for i in range(args.num_hidden_layers):
        if not plan.get(i):
            raise ModelError(f"{shards.folder}: no tensors for layer {i} (num_hidden_layers is {args.num_hidden_layers})")
        with torch.device("meta"):
            block = Block(args, i)
        _fill_block(block, i, plan[i], shards, dtype, device, pack=pack and not quant, dense_mlp=dense_mlp)
        if quantize_block_ is not None:
            quantize_block_(block, quant)  # quantize while loading: never the whole model in full precision
        block.attn.alloc_cache(max_batch, max_seq_len, dtype, device)
        model.layers.append(block)
        if progress is not None:
            progress((i + 1) / args.num_hidden_layers)
        release_free_memory()  # the layer's temporaries (dtype casts, FP8 strips) go back to the OS
    from local_engine.rope import rope_tables

    cos, sin = rope_tables(args, max_seq_len)
    model.cos, model.sin = cos.to(device), sin.to(device)
    return model.eval()
