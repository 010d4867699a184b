"""deepseek2 GGUF files built from the tiny HF checkpoints, for the GGUF engine tests.

    write_gguf(hf_dir, out, *, layout="split", quant=None, pre="gpt-2") -> Path
    llama_quantize(src, dst, ftype_name) -> Path            llama.cpp's own quantizer
    write_dequantized(src, out, hf_dir, layout) -> Path     every tensor as exact F32
    tensor_types(path) -> {name: type name}
    llama_logits(path, ids) / llama_greedy(path, ids, n)    llama.cpp on a file (f32 cache, no FA)
"""

from __future__ import annotations

import ctypes
import json
import platform
from pathlib import Path

import arm64_emulator   # tests/ is on the path, as for the test modules that import this one
import numpy as np

from bench.gguf_deepseek2 import gguf_tensors_from_hf, hf_tokenizer_fields, write_deepseek2_gguf

# llama_ftype values (llama.h)
FTYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ3_XXS": 23,
          "IQ4_NL": 25, "IQ3_S": 26, "IQ4_XS": 30, "TQ1_0": 36, "TQ2_0": 37}
_KEEP = ("_norm.weight", "ffn_gate_inp.weight", ".bias")
# where a block type keeps its fp16 scales (bytes): d, then m / dmin; types not listed: d at 0
FP16_SCALES = {3: (0, 2), 7: (0, 2), 12: (0, 2), 13: (0, 2), 14: (208,), 10: (80, 82), 11: (108,)}


def hf_config(hf_dir) -> dict:
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    cfg.setdefault("scoring_func", "sigmoid" if cfg.get("model_type") == "deepseek_v3" else "softmax")
    return cfg


def hf_state(hf_dir) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(Path(hf_dir).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def write_gguf(hf_dir, out, *, layout: str = "split", quant=None, pre: str = "gpt-2", shards: int = 1) -> Path:
    """The HF checkpoint as a deepseek2 GGUF; ``quant`` (a GGMLQuantizationType) quantizes every
    matrix whose rows are whole 32-blocks (embedding and head included) with gguf.quants;
    ``shards`` > 1 splits it into that many files (gguf-py's writer; returns the first's path)."""
    cfg = hf_config(hf_dir)
    tensors = gguf_tensors_from_hf(hf_state(hf_dir), cfg, layout)
    if quant is not None:
        for name, spec in list(tensors.items()):
            arr = spec[1]
            if arr.ndim >= 2 and not name.endswith(_KEEP) and arr.shape[-1] % 32 == 0:
                tensors[name] = ("quant", quant, arr)
    per = -(-len(tensors) // shards) if shards > 1 else 0
    write_deepseek2_gguf(out, cfg, tensors, tokenizer=hf_tokenizer_fields(hf_dir), pre=pre, layout=layout,
                         split_max_tensors=per)
    out = Path(out)
    return out if shards <= 1 else out.with_name(f"{out.stem}-00001-of-{shards:05d}.gguf")


def llama_quantize(src, dst, ftype: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize({ftype}) failed: {rc}"
    return Path(dst)


def tensor_types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def dequantized_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file dequantized exactly (gguf.quants), torch-order shapes."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    return out


def write_dequantized(src, out, hf_dir, layout: str = "split") -> Path:
    """The same model with every tensor of ``src`` stored as its exact F32 values."""
    cfg = hf_config(hf_dir)
    tensors = {n: ("f32", a) for n, a in dequantized_tensors(src).items()}
    write_deepseek2_gguf(out, cfg, tensors, tokenizer=hf_tokenizer_fields(hf_dir), layout=layout)
    return Path(out)


def llama(path, n_ctx: int = 128, *, repack: bool = False):
    """llama.cpp on a file: f32 KV cache, flash attention off. ``repack=False`` turns off
    llama.cpp's extra weight buffers (its AMX / repacked kernels): llama-cpp-python 0.3.36's
    AMX path crashes on these small matrices on AMX CPUs; the plain ggml CPU kernels run."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = repack
        return p

    low.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=2, n_batch=n_ctx, flash_attn=False, type_k=0,
                               type_v=0, logits_all=True, verbose=False)
    finally:
        low.llama_model_default_params = default


def llama_logits(path, ids: list[int]) -> np.ndarray:
    llm = llama(path)
    llm.eval(list(ids))
    return np.asarray(llm.scores[: len(ids)], dtype=np.float32)


def llama_greedy(path, ids: list[int], n: int) -> list[int]:
    llm = llama(path)
    llm.eval(list(ids))
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def agreement(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(lowest per-position cosine, top-1 agreement) of logits [T, V] against a reference."""
    cos = (ref * other).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(other, axis=-1))
    return float(cos.min()), float((ref.argmax(-1) == other.argmax(-1)).mean())


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ------------------------------------------------------------------ the kernel builds tests run under

X86 = platform.machine().lower() in ("x86_64", "amd64")
# built for aarch64 (NEON with sdot; ARMv8.0's without), run on an emulated CPU
ARM64 = {"arm64": (arm64_emulator.DOTPROD, "neon-dotprod"), "arm64-nodot": (arm64_emulator.NO_DOTPROD, "neon")}
BUILDS = {"native": (None, None), "avx2": ("haswell", "avx2"), "plain-c": ("x86-64", "scalar"),
          **{name: ("arm64", isa) for name, (_, isa) in ARM64.items()}}


def each_build(request):
    """A fixture body (``build = pytest.fixture(params=list(BUILDS))(each_build)``): the test runs
    under each kernels/kquant build -- this CPU's own, (on x86-64) AVX2 and plain C, and the
    emulated ARM64 ones -- and gets the build's ISA name."""
    import pytest

    from kernels import kquant

    march, isa = BUILDS[request.param]
    if kquant.lib() is None:
        pytest.skip("no native GGUF kernels here (no working C compiler?)")
    if march is None:
        yield kquant.isa()
        return
    if march == "arm64":
        with arm64_emulator.gguf(ARM64[request.param][0]):
            assert kquant.isa() == isa
            yield isa
        return
    if not X86:
        pytest.skip("x86-64 targets")
    with kquant.variant(march):
        assert kquant.isa() == isa
        yield isa


def linear_is_its_reference_at_extremes(w, k: int) -> None:
    """``kquant.linear`` of ``w`` (k columns) against activation codes +-127, the largest
    products, at 8- and 16-bit activations: its integer reference within 1e-6."""
    import torch

    from kernels import dispatch, kquant

    x = torch.full((2, k), 127.0)
    x[1, 1::2] = -127.0                  # activation codes +-127 against weights of either sign
    for act in (8, 16):
        with dispatch.overridden(gguf_act_bits=act):
            y = kquant.linear(x, w)
        ref = kquant.reference_linear(x, w, act)
        err = ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
        assert err < 1e-6, (act, err)
