"""Weight-only quantization of a loaded model, block by block, and its save/reload format.

What is quantized: every ``Linear`` of a block's feed-forward part (routed experts, shared
experts, dense MLPs); with ``attention=True`` also the attention projections except
``wkv_b`` (absorbed decode reads it as a matrix). The router gate, norms, embeddings, the
head and the latent cache keep their precision.

Saved form (a folder): ``duet_quant.json`` (the marker ``Engine.load`` looks for: mode,
group size, which Linears are quantized and their shapes), ``duet_quant.safetensors``
(the int8/int4 codes and scales in their portable layout, plus every other tensor of the
model under its module name), and the source checkpoint's config/tokenizer files.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from kernels.quant import MODES, from_codes, quantize_weight, to_codes
from local_engine.errors import ModelError
from local_engine.layers import Linear, QuantizedLinear, replace

MARKER = "duet_quant.json"
TENSORS = "duet_quant.safetensors"
FORMAT = "duet-quant"
VERSION = 1
_ATTN_SKIP = ("wkv_b",)
_KEEP_FP32 = re.compile(r"(^|\.)(gate\.(weight|bias)|indexer\.weights_proj)$")


def _targets(block: nn.Module, attention: bool):
    for name, m in block.named_modules():
        if not isinstance(m, Linear):
            continue
        part = name.split(".")
        if part[0] == "ffn" or (attention and part[0] == "attn" and part[-1] not in _ATTN_SKIP):
            yield name, m


def quantize_block_(block: nn.Module, mode: str, *, attention: bool = False,
                    group_size: int | None = None) -> None:
    """Quantize one block's Linears in place (call right after the block's weights load)."""
    if mode not in MODES:
        raise ModelError(f"quant must be one of {', '.join(MODES)}, got {mode!r}")
    from local_engine.model import forget_fused

    for name, m in list(_targets(block, attention)):
        replace(block, name, QuantizedLinear(quantize_weight(m.weight, mode, group_size=group_size)))
    forget_fused(block)


def quantized_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes, params) over the quantized Linears of a model, scales included."""
    nbytes = params = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            nbytes += m.qweight.nbytes
            params += m.qweight.numel
    return nbytes, params


# ---------------------------------------------------------------------------------------
# save / reload


def save_quantized(engine, out_dir, *, source=None) -> Path:
    """Write a quantized model (an ``Engine`` or its ``Transformer``) to ``out_dir``.

    ``source`` is the checkpoint folder whose config.json and tokenizer files are copied
    (default: ``engine.path``)."""
    from safetensors.torch import save_file

    model = getattr(engine, "model", engine)
    source = Path(source or getattr(engine, "path"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    linears, tensors = {}, {}
    modes = set()
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            qw = m.qweight
            modes.add(qw.mode)
            linears[name] = {"mode": qw.mode, "shape": list(qw.shape), "group_size": qw.group_size}
            for key, t in to_codes(qw).items():
                tensors[f"{name}.qweight.{key}"] = t.detach().cpu().contiguous()
    for name, t in model.state_dict().items():
        if name.endswith(".weight") and name[: -len(".weight")] in linears:
            continue
        tensors[name] = t.detach().cpu().contiguous()
    if not linears:
        raise ModelError("save_quantized: the model has no quantized Linear (load it with quant=...)")
    save_file(tensors, str(out / TENSORS), metadata={"format": FORMAT})
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json", ".bin")) \
                and f.name != MARKER and f.stat().st_size < 64 << 20:
            shutil.copy2(f, out / f.name)
    meta = {"format": FORMAT, "version": VERSION, "mode": "+".join(sorted(modes)),
            "linears": linears, "num_hidden_layers": len(model.layers),
            "mtp_layers": [m.layer_id for m in getattr(model, "mtp", ())]}
    (out / MARKER).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


def read_marker(path) -> dict:
    marker = Path(path) / MARKER
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{marker}: unreadable ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ModelError(f"{marker}: not a {FORMAT} v{VERSION} file "
                         f"(format={meta.get('format')!r}, version={meta.get('version')!r})")
    return meta


def load_quantized(path, model_args, *, dtype=torch.bfloat16, device="cpu", max_batch: int = 1,
                   max_seq_len: int = 4096):
    """Build the ``Transformer`` of a folder written by ``save_quantized``, block by block,
    without quantizing anything: caches allocated, rope tables set, ready to run."""
    from safetensors import safe_open

    from local_engine.model import MTP, Block, Transformer

    path = Path(path)
    meta = read_marker(path)
    linears = meta["linears"]
    file = path / TENSORS
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if not file.is_file():
        raise ModelError(f"{file}: missing (the folder has {MARKER} but no tensors)")
    try:
        f = safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise ModelError(f"{file}: unreadable safetensors ({e})") from None
    with f:
        keys = set(f.keys())

        def get(name: str) -> torch.Tensor:
            if name not in keys:
                raise ModelError(f"{file}: tensor {name!r} missing")
            # a private copy: safetensors hands out views of its file mapping, unaligned
            # (the packed kernels crash on those) and reclaimable (re-read from disk later)
            return f.get_tensor(name).clone()

        def fill(module: nn.Module, prefix: str) -> None:
            state = {}
            for local, p in list(module.named_parameters()) + list(module.named_buffers()):
                full = prefix + local
                lin = full[: -len(".weight")] if full.endswith(".weight") else None
                if lin in linears:
                    continue
                t = get(full)
                if tuple(t.shape) != tuple(p.shape):
                    raise ModelError(f"{file}: tensor {full!r} has shape {tuple(t.shape)}, "
                                     f"expected {tuple(p.shape)}")
                if t.is_floating_point() and not _KEEP_FP32.search(full):
                    t = t.to(dtype)
                state[local] = t.to(device)
            module.load_state_dict(state, strict=False, assign=True)
            for name, m in list(module.named_modules()):
                full = prefix + name
                if full in linears:
                    info = linears[full]
                    codes = {k[len(full) + len(".qweight."):]: get(k).to(device)
                             for k in keys if k.startswith(full + ".qweight.")}
                    qw = from_codes(info["mode"], tuple(info["shape"]), info["group_size"], codes)
                    if (m.out_features, m.in_features) != qw.shape:
                        raise ModelError(f"{file}: {full} is {qw.shape}, the config says "
                                         f"{(m.out_features, m.in_features)}")
                    replace(module, name, QuantizedLinear(qw))

        with torch.device("meta"):
            model = Transformer(model_args)
        fill(model, "")
        for i in range(model_args.num_hidden_layers):
            with torch.device("meta"):
                block = Block(model_args, i)
            fill(block, f"layers.{i}.")
            block.attn.alloc_cache(max_batch, max_seq_len, dtype, device)
            model.layers.append(block)
        for j, layer in enumerate(meta.get("mtp_layers") or []):  # saved MTP modules, as loaded
            with torch.device("meta"):
                mtp = MTP(model_args, int(layer), own_head=f"mtp.{j}.head.weight" in keys)
            fill(mtp, f"mtp.{j}.")
            mtp.block.attn.alloc_cache(max_batch, max_seq_len, dtype, device)
            model.mtp.append(mtp.eval())
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ModelError(f"{file}: tensor {name!r} missing")
    from local_engine.rope import rope_tables

    cos, sin = rope_tables(model_args, max_seq_len)
    model.cos, model.sin = cos.to(device), sin.to(device)
    return model.eval()
