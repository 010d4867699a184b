"""Duet int8/int4 vs llama.cpp Q8_0/Q4_0 on the same weights, DeepSeek-V2-Lite layer shapes.

    python -m bench.quant_bench [--layers 4] [--threads 2] [--modes int8,int4] [--dtype auto]
    python -m bench.quant_bench --shape v3-small     # a whole small V3-shaped model (below)

Emulating an AVX2-only CPU on an AVX-512 one (torch, oneDNN and the native build):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 DUET_NATIVE_MARCH=haswell python -m bench.quant_bench
The table is headed by the CPU's capability level (torch's, the native build's SIMD path and
activation precision) and the activation dtype; ``--dtype auto`` runs bfloat16 where bf16
matmuls are native (AVX-512) and float32 elsewhere.

Random weights are generated straight into their quantized form (int8: codes + one scale
per group of 32; int4: codes + one scale per group of 64, zero 0) and written twice: as a
Duet quantized folder (loaded by ``Engine.load``) and as a deepseek2 GGUF with the same
weights as Q8_0 (same codes and block scales; Duet's int8 levels sit half a step off
Q8_0's) / Q4_0 (identical weights). Attention projections,
dense MLP, experts and head are quantized in both; ``wkv_b`` (attn_k_b/attn_v_b) is bf16 in
both. llama.cpp runs in a subprocess (llama-cpp-python) with the same thread count.

Reports decode tok/s at batch 1 at context 0 and 2048 (``--context N``: N), prefill tok/s (that many tokens,
best of two passes; one pass from 4096 tokens), and the
physical limit: active weight bytes per token / memory bandwidth (timed large copy). Duet runs
twice: with the native CPU kernels (kernels/csrc: int16-activation GEMV, one fused call per
MoE layer, for prefill the tiled integer GEMM or dequantize + matmul, as the plan says) and
with aten's packed int4 kernel ("(aten)" rows, the path before them). Also printed: the per-call cost at a tiny size, the GB/s of one
M=1 matmul streaming its weights from memory, and a profile of one decode step.
``--shape v3-small`` runs instead the whole ~200M-parameter DeepSeek-V3-shaped model of the
engine bench (bench/engine_bench.py's MID: 8 layers, hidden 512, 64 experts of 256, sigmoid
routing with a selection bias and 2 groups, q-LoRA, 8192 tokens), every layer, quantized the
same way for both engines: the "whole small model" comparison.
Two departures from V2-Lite: the vocabulary is 16384 (not 102400) so the head does not
dominate a 4-layer model, and q goes through a 1536-rank q_lora (as in V2/V3): llama.cpp
treats a deepseek2 model as "lite" (plain q projection) only when it has 26 or 27 layers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.engine_bench import MID  # noqa: E402  (after the sys.path line above)

V2_LITE = dict(
    architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
    vocab_size=16384, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
    num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
    moe_layer_freq=1, n_group=1, topk_group=1, topk_method="greedy", scoring_func="softmax",
    norm_topk_prob=False, routed_scaling_factor=1.0, rms_norm_eps=1e-6, rope_theta=10000.0,
    max_position_embeddings=4096, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    torch_dtype="bfloat16",
)
# bench/engine_bench.py's mid-size V3 model, as a whole (its layer count is kept: --layers is ignored)
V3_SMALL = dict(V2_LITE, **MID, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                topk_method="noaux_tc", scoring_func="sigmoid")
SHAPES = {"v2-lite": V2_LITE, "v3-small": V3_SMALL}
PREFILL, DECODE, WINDOWS = 2048, 48, 6   # decode: best of 6 window medians (bursts of other load)
PREFILL_PASSES = 2                         # prefill: the best of two passes, for the same reason
GROUP = 64


# ---------------------------------------------------------------------------------------
# weights


class Weights:
    """Generates each weight once in its quantized form; emits Duet and GGUF tensors."""

    def __init__(self, mode: str, seed: int = 0):
        self.mode = mode
        self.g = torch.Generator().manual_seed(seed)
        self.duet: dict[str, torch.Tensor] = {}
        self.linears: dict[str, dict] = {}
        self.gguf: dict[str, tuple] = {}

    def codes(self, n: int, k: int):
        """One [n, k] weight: Duet codes dict + (gguf codes, gguf block scales) as numpy."""
        if self.mode == "int8":
            # Duet: w = (u - 127.5) * s per group of 32; Q8_0: w = (u - 128) * s (the same
            # weights up to half a step: Q8_0 has no half-integer levels)
            u = torch.randint(1, 256, (n, k), dtype=torch.uint8, generator=self.g)
            s = (torch.rand(k // 32, n, generator=self.g) * 0.2 + 0.9) / (math.sqrt(k) * 73)
            s = s.to(torch.bfloat16)
            q8 = (u.to(torch.int16) - 128).to(torch.int8)
            return {"q": u, "scale": s}, (q8.numpy(), s.float().t().numpy())
        c = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=self.g)
        s = (torch.rand(k // GROUP, n, generator=self.g) * 0.2 + 0.9) / (math.sqrt(k) * 4.6)
        s = s.to(torch.bfloat16)
        sz = torch.stack([s, torch.zeros_like(s)], dim=-1)          # [K/g, N, 2], zero 0
        from kernels.quant import pack_nibbles
        d = s.float().t().numpy().repeat(GROUP // 32, 1)              # [N, K/32]
        return {"q": pack_nibbles(c), "scale_zero": sz}, (c.numpy(), d)

    def linear(self, duet_name: str, gguf_names: list[str], n_rows: list[int], k: int, experts: int = 0):
        """A Duet Linear whose rows are the concatenation of gguf tensors (w13 = gate ++ up);
        with ``experts`` the gguf side stacks that many [n, k] matrices into one 3-D tensor."""
        kind = "q8_0" if self.mode == "int8" else "q4_0"
        stacks = {g: ([], []) for g in gguf_names}
        for e in range(max(experts, 1)):
            parts = [self.codes(n, k) for n in n_rows]
            name = duet_name.format(e=e)
            scale_key = "scale" if self.mode == "int8" else "scale_zero"
            codes = {"q": torch.cat([p[0]["q"] for p in parts]),
                     scale_key: torch.cat([p[0][scale_key] for p in parts], dim=1)}
            for key, t in codes.items():
                self.duet[f"{name}.qweight.{key}"] = t
            self.linears[name] = {"mode": self.mode, "shape": [sum(n_rows), k],
                                  "group_size": 32 if self.mode == "int8" else GROUP}
            for g, p in zip(gguf_names, parts):
                stacks[g][0].append(p[1][0])
                stacks[g][1].append(p[1][1])
        for g, (qs, ds) in stacks.items():
            if experts:
                self.gguf[g] = (kind, np.stack(qs), np.stack(ds))
            else:
                self.gguf[g] = (kind, qs[0], ds[0])

    def plain(self, duet_name: str, gguf_name: str, t: torch.Tensor, gguf_kind: str):
        self.duet[duet_name] = t
        if gguf_kind == "bf16":
            self.gguf[gguf_name] = ("bf16", t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
        else:
            self.gguf[gguf_name] = (gguf_kind, t.float().numpy())


def build(cfg: dict, mode: str) -> Weights:
    c = cfg
    H, V, nh = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    nope, rope, vd, R = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
    I, Im, E = c["intermediate_size"], c["moe_intermediate_size"], c["n_routed_experts"]
    Is = Im * c["n_shared_experts"]
    W = Weights(mode)
    g = W.g
    W.plain("embed.weight", "token_embd.weight", torch.randn(V, H, generator=g).to(torch.bfloat16), "f16")
    W.plain("norm.weight", "output_norm.weight", torch.ones(H), "f32")
    W.linear("head", ["output.weight"], [V], H)
    for i in range(c["num_hidden_layers"]):
        p, b = f"layers.{i}.", f"blk.{i}."
        W.plain(p + "attn_norm.weight", b + "attn_norm.weight", torch.ones(H), "f32")
        W.plain(p + "ffn_norm.weight", b + "ffn_norm.weight", torch.ones(H), "f32")
        W.plain(p + "attn.kv_norm.weight", b + "attn_kv_a_norm.weight", torch.ones(R), "f32")
        Q = c["q_lora_rank"]
        W.linear(p + "attn.wq_a", [b + "attn_q_a.weight"], [Q], H)
        W.plain(p + "attn.q_norm.weight", b + "attn_q_a_norm.weight", torch.ones(Q), "f32")
        W.linear(p + "attn.wq_b", [b + "attn_q_b.weight"], [nh * (nope + rope)], Q)
        W.linear(p + "attn.wkv_a", [b + "attn_kv_a_mqa.weight"], [R + rope], H)
        W.linear(p + "attn.wo", [b + "attn_output.weight"], [H], nh * vd)
        wkv_b = (torch.randn(nh * (nope + vd), R, generator=g) / math.sqrt(R)).to(torch.bfloat16)
        W.duet[p + "attn.wkv_b.weight"] = wkv_b
        kv = wkv_b.view(nh, nope + vd, R)
        k_b = kv[:, :nope].transpose(1, 2).contiguous()              # [nh, R, nope]
        v_b = kv[:, nope:].contiguous()                              # [nh, v, R]
        for name, t in ((b + "attn_k_b.weight", k_b), (b + "attn_v_b.weight", v_b)):
            W.gguf[name] = ("bf16", t.view(torch.int16).numpy().view(np.uint16))
        if i < c["first_k_dense_replace"]:
            W.linear(p + "ffn.w13", [b + "ffn_gate.weight", b + "ffn_up.weight"], [I, I], H)
            W.linear(p + "ffn.w2", [b + "ffn_down.weight"], [H], I)
            continue
        W.plain(p + "ffn.gate.weight", b + "ffn_gate_inp.weight",
                torch.randn(E, H, generator=g) / math.sqrt(H), "f32")
        if c.get("scoring_func") == "sigmoid":  # V3: the selection bias (routing only)
            W.plain(p + "ffn.gate.bias", b + "exp_probs_b.bias", torch.randn(E, generator=g) * 0.01, "f32")
        W.linear(p + "ffn.experts.{e}.w13", [b + "ffn_gate_exps.weight", b + "ffn_up_exps.weight"],
                 [Im, Im], H, experts=E)
        W.linear(p + "ffn.experts.{e}.w2", [b + "ffn_down_exps.weight"], [H], Im, experts=E)
        W.linear(p + "ffn.shared.w13", [b + "ffn_gate_shexp.weight", b + "ffn_up_shexp.weight"], [Is, Is], H)
        W.linear(p + "ffn.shared.w2", [b + "ffn_down_shexp.weight"], [H], Is)
    return W


def write_duet(folder: Path, cfg: dict, W: Weights) -> None:
    from safetensors.torch import save_file

    from local_engine.quantize import FORMAT, MARKER, TENSORS, VERSION

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file({k: v.contiguous() for k, v in W.duet.items()}, str(folder / TENSORS), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, "mode": W.mode, "linears": W.linears,
            "num_hidden_layers": cfg["num_hidden_layers"]}
    (folder / MARKER).write_text(json.dumps(meta))


def active_bytes(cfg: dict, W: Weights) -> int:
    """Weight bytes one decode token reads: everything but the embedding table and the
    experts not chosen (top-k of E per MoE layer)."""
    E, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    total = 0
    for name, t in W.duet.items():
        if name == "embed.weight":
            continue
        b = t.numel() * t.element_size()
        if ".experts." in name:
            b = b * k / E
        total += b
    return int(total)


# ---------------------------------------------------------------------------------------
# timing


def bandwidth_gbs() -> dict:
    """Memory bandwidth from a large copy (read + write) and a large reduction (read)."""
    a = torch.ones(1 << 28, dtype=torch.float32)                   # 1 GiB
    b = torch.empty_like(a)
    best_copy = best_read = float("inf")
    for _ in range(4):
        t = time.perf_counter()
        b.copy_(a)
        best_copy = min(best_copy, time.perf_counter() - t)
        t = time.perf_counter()
        a.sum()
        best_read = min(best_read, time.perf_counter() - t)
    n = a.numel() * 4
    return {"copy_gbs": 2 * n / best_copy / 1e9, "read_gbs": n / best_read / 1e9}


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


DTYPE = "bfloat16"   # the activation dtype of the Duet runs (main sets it from --dtype)


def capability() -> dict:
    """What this CPU / build gives: torch's capability level, oneDNN's bf16 support, the native
    library's SIMD path and activation precision, whether bf16 matmuls run natively, and the
    kernel each op runs (kernels.dispatch's plan)."""
    from kernels import dispatch

    plan = dispatch.plan()
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    return {"torch": torch.backends.cpu.get_cpu_capability(), "onednn_bf16": onednn_bf16, "level": plan.capability.level,
            "native_isa": plan.native_isa, "act_bits": {"int8": plan.linear.act_bits(8), "int4": plan.linear.act_bits(4)},
            "bf16_matmul_native": plan.capability.bf16_native, "plan": dict(plan.describe()), "machine": platform.machine(),
            "cpu": _cpu_name(), "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                                   "DUET_NATIVE_MARCH", "DUET_ACT_BITS") if k in os.environ}}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def capability_line(c: dict) -> str:
    acts = ", ".join(f"{m} x {b}-bit" for m, b in c["act_bits"].items())
    return (f"CPU: {c['cpu']} ({c['machine']}), level {c['level']}; torch capability {c['torch']}, oneDNN bf16 "
            f"{'yes' if c['onednn_bf16'] else 'no'}, bf16 matmuls {'native' if c['bf16_matmul_native'] else 'emulated'}; "
            f"native kernels: {c['native_isa'] or 'not built'} (activations {acts})"
            + (f"; env {c['env']}" if c["env"] else ""))


def _load(folder: Path, native: bool, max_seq_len: int):
    """Engine.load; with native=False the plan has the native kernels off, so every quantized
    weight takes aten's packed int4 layout (the path before the native kernels)."""
    from kernels import dispatch
    from local_engine import Engine

    if native:
        return Engine.load(folder, dtype=DTYPE, max_seq_len=max_seq_len)
    with dispatch.overridden(native=False):
        return Engine.load(folder, dtype=DTYPE, max_seq_len=max_seq_len)


def run_duet(folder: Path, threads: int, native: bool = True) -> dict:
    torch.set_num_threads(threads)
    t = time.perf_counter()
    eng = _load(folder, native, PREFILL + DECODE + 8)
    load_s = time.perf_counter() - t
    V = eng.args.vocab_size
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(2, V, (1, PREFILL), generator=gen)

    def decode(start: int) -> float:
        # a fixed pseudo-random token stream (the same for llama.cpp): varying tokens route
        # to varying experts, as real decoding does. Best of WINDOWS medians: other
        # processes on these cores stall multi-threaded PyTorch in bursts.
        toks = torch.randint(2, V, (DECODE + 1,), generator=torch.Generator().manual_seed(2)).tolist()
        eng.forward(torch.tensor([[toks[0]]]), start)             # warm-up step
        times = []
        for j in range(DECODE):
            t0 = time.perf_counter()
            eng.forward(torch.tensor([[toks[j + 1]]]), start + 1 + j)
            times.append(time.perf_counter() - t0)
        w = DECODE // WINDOWS
        return max(1 / _median(times[i * w:(i + 1) * w]) for i in range(WINDOWS))

    eng.forward(prompt[:, :256], 0)                               # warm-up: touch every expert once
    eng.reset()
    d0 = decode(0)
    prefill = 0.0
    for _ in range(PREFILL_PASSES):
        eng.reset()
        t = time.perf_counter()
        for s in range(0, PREFILL, 512):   # chunks, as llama.cpp's n_batch; the last position's logits, as it
            eng.forward(prompt[:, s:s + 512], s, last_only=True)
        prefill = max(prefill, PREFILL / (time.perf_counter() - t))
    d_long = decode(PREFILL)
    return {"load_s": load_s, "decode_ctx0": d0, "decode_ctx": d_long, "prefill": prefill,
            "weight_bytes": eng.weight_bytes()}


LLAMA_SCRIPT = r"""
import json, sys, time
import numpy as np
import llama_cpp
from llama_cpp import Llama
path, threads, prefill, decode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
windows, flash = int(sys.argv[5]), sys.argv[7] == "1"
t = time.perf_counter()
llm = Llama(path, n_ctx=prefill + decode + 16, n_threads=threads, n_threads_batch=threads, n_batch=512,
            n_ubatch=512, flash_attn=flash, type_k=1, type_v=1, verbose=False, logits_all=False)
load_s = time.perf_counter() - t
rng = np.random.default_rng(1)
V = llm.n_vocab()
prompt = rng.integers(2, V, prefill).tolist()
def dec():
    toks = np.random.default_rng(2).integers(2, V, decode + 1).tolist()
    llm.eval([toks[0]])
    ts = []
    for tok in toks[1:]:
        t0 = time.perf_counter(); llm.eval([tok]); ts.append(time.perf_counter() - t0)
    w = decode // windows
    return max(1 / sorted(ts[i * w:(i + 1) * w])[w // 2] for i in range(windows))
llm.eval(prompt[:256]); llm.reset()   # warm-up: touch every expert once
d0 = dec()
pf = 0.0
for _ in range(int(sys.argv[6])):   # best of these passes, as Duet's
    llm.reset()
    t = time.perf_counter(); llm.eval(prompt); pf = max(pf, prefill / (time.perf_counter() - t))
d_long = dec()
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"load_s": load_s, "decode_ctx0": d0, "decode_ctx": d_long, "prefill": pf, "system_info": info}))
"""


def llama_build(info: str | None) -> str:
    """The CPU features a llama.cpp build uses, from its system info ("CPU : SSE3 = 1 | AVX2 = 1
    | ..."): the x86 SIMD levels and ARM extensions it was compiled with, for the tables."""
    names = ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AVX_VNNI", "AMX_INT8", "NEON", "SVE", "DOTPROD")
    on = [k for k, v in re.findall(r"(\w+) = (\d)", info or "") if v == "1" and k in names]
    return "+".join(dict.fromkeys(on)) or "unknown"


def run_llama(path: Path, threads: int, prefix: str = "") -> dict:
    """llama.cpp's figures, each column the better of flash attention off and on (which one is
    recorded per column: flash attention makes long-context decode faster and prefill slower
    here). ``prefix``: code run before the timing script (gguf_bench's build switches)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    runs = {}
    for flash in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", prefix + LLAMA_SCRIPT, str(path), str(threads), str(PREFILL), str(DECODE),
                            str(WINDOWS), str(PREFILL_PASSES), flash],
                           capture_output=True, text=True, env=env, timeout=1800)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"]}
        runs[flash == "1"] = json.loads(r.stdout.strip().splitlines()[-1])
    best = {"load_s": runs[False]["load_s"], "flash_attn": {}, "build": llama_build(runs[False].get("system_info"))}
    for key in ("decode_ctx0", "decode_ctx", "prefill"):
        flash = runs[True][key] > runs[False][key]
        best[key] = runs[flash][key]
        best["flash_attn"][key] = flash
    best["runs"] = {"flash_attn_off": runs[False], "flash_attn_on": runs[True]}
    return best


def call_overhead_us(threads: int) -> dict:
    """Cost of one quantized_linear call at a tiny size (64x256, M=1) where the kernel itself
    is ~1-2 us: the whole call vs the bare kernel, native and aten (decode makes ~20 such
    calls per layer without the fused MoE)."""
    from kernels import cpu_native, dispatch
    from kernels.quant import _kernel, from_codes, quantize_weight, quantized_linear, to_codes

    torch.set_num_threads(threads)
    out = {}
    for mode in ("int8", "int4"):
        qw = quantize_weight(torch.randn(64, 256), mode)
        qa = from_codes(mode, qw.shape, qw.group_size, to_codes(qw), native=False)
        x = torch.randn(1, 1, 256, dtype=torch.bfloat16)
        x2 = x.view(1, 256)
        raw_aten = _kernel(qa)
        fns = {"aten_call": lambda: quantized_linear(x, qa), "aten_kernel": lambda: raw_aten(x2)}
        if qw.layout == "cpu_native":
            bits, q = (8 if mode == "int8" else 4), qw.tensors["q"]
            s = qw.tensors["scale" if mode == "int8" else "scale_zero"]
            kp = qw.padded_shape[1]
            fns["native_call"] = lambda: quantized_linear(x, qw)
            abits = dispatch.plan().linear.act_bits(bits)
            fns["native_kernel"] = lambda: cpu_native.gemm(bits, x2, q, s, kp, qw.group_size, 64, abits)
        times = {}
        for name, fn in fns.items():
            for _ in range(100):
                fn()
            t = time.perf_counter()
            for _ in range(2000):
                fn()
            times[name] = round((time.perf_counter() - t) / 2000 * 1e6, 2)
        out[mode] = times
    return out


def kernel_gbs(threads: int, n: int = 2816, k: int = 2048, total: float = 400e6) -> dict:
    """GB/s of one M=1 quantized matmul streaming its weight from memory (a rotating set of
    ``total`` bytes of [n, k] matrices, so no cache holds them), native vs aten, next to the
    read bandwidth timed right before."""
    from kernels.quant import from_codes, quantized_linear

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(3)
    out = {"read_gbs": bandwidth_gbs()["read_gbs"]}
    for mode in ("int8", "int4"):
        if mode == "int8":
            codes = {"q": torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g),
                     "scale": (torch.rand(k // 32, n, generator=g) * 1e-3).to(torch.bfloat16)}
        else:
            codes = {"q": torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g),
                     "scale_zero": (torch.rand(k // GROUP, n, 2, generator=g) * 1e-3).to(torch.bfloat16)}
        group = 32 if mode == "int8" else GROUP
        for native in (True, False):
            ws = [from_codes(mode, (n, k), group, {key: t.clone() for key, t in codes.items()}, native=native)]
            count = max(4, int(total // ws[0].nbytes))
            ws += [from_codes(mode, (n, k), group, {key: t.clone() for key, t in codes.items()}, native=native)
                   for _ in range(count - 1)]
            x = torch.randn(1, k, dtype=torch.bfloat16)
            for w in ws:
                quantized_linear(x, w)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                for w in ws:
                    quantized_linear(x, w)
                best = min(best, (time.perf_counter() - t) / count)
            label = f"{mode} {'native' if native else 'aten'} ({ws[0].layout})"
            out[label] = ws[0].nbytes / best / 1e9
            del ws
    return out


def profile_duet(folder: Path, threads: int, native: bool = True) -> list[tuple[str, float]]:
    """Where one decode step's time goes (torch profiler, top ops by self CPU time; the
    native kernels, invisible to it as ctypes calls, are labelled native::<entry>)."""
    from kernels import cpu_native

    torch.set_num_threads(threads)
    eng = _load(folder, native, 64)
    tok = torch.tensor([[5]])
    for j in range(3):
        eng.forward(tok, j)
    saved = {name: getattr(cpu_native, name) for name in ("gemm", "gemm_tiled", "dequant", "moe", "moe_bf16", "mla_step",
                                                          "layers_step", "gate")}

    def labelled(name, fn):
        def call(*a):
            with torch.profiler.record_function(f"native::{name}"):
                return fn(*a)
        return call

    try:
        for name, fn in saved.items():
            setattr(cpu_native, name, labelled(name, fn))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for j in range(4):
                eng.forward(tok, 3 + j)
            step_ms = (time.perf_counter() - t) / 4 * 1000
    finally:
        for name, fn in saved.items():
            setattr(cpu_native, name, fn)
    events = prof.key_averages()
    calls = sum(e.count for e in events) // 4
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return [("(whole step, profiled; framework calls)", step_ms, calls)] + [
        (e.key, e.self_cpu_time_total / 4 / 1000, e.count // 4) for e in rows]


def main(argv=None) -> int:
    global DTYPE, PREFILL, PREFILL_PASSES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4, help="v2-lite: how many of its layers")
    ap.add_argument("--shape", default="v2-lite", choices=sorted(SHAPES),
                    help="v2-lite: DeepSeek-V2-Lite layer shapes; v3-small: the engine bench's whole V3-shaped model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=PREFILL,
                    help="the prompt length: prefill is timed over it and the second decode column runs after it")
    ap.add_argument("--modes", default="int8,int4")
    ap.add_argument("--workdir", default=None, help="where the model files go (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quant_bench.json"))
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-aten", action="store_true", help="skip the rows of the aten int4pack path")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="Duet's activation dtype (auto: bfloat16 where bf16 matmuls are native, else float32)")
    a = ap.parse_args(argv)
    if a.context < 512 or a.context % 512:
        ap.error(f"--context {a.context}: a multiple of 512 (the prefill chunk), at least 512")
    PREFILL = a.context
    PREFILL_PASSES = 2 if PREFILL < 4096 else 1
    from kernels import dispatch

    DTYPE = a.dtype if a.dtype != "auto" else str(dispatch.plan().act_dtype).removeprefix("torch.")
    cap = capability()
    print(capability_line(cap) + f"; Duet activations {DTYPE}", flush=True)
    for op, impl in cap["plan"].items():
        print(f"  {op}: {impl}", flush=True)
    cfg = dict(V2_LITE, num_hidden_layers=a.layers) if a.shape == "v2-lite" else dict(V3_SMALL)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="duet-quant-bench-"))
    torch.set_num_threads(a.threads)
    bw = bandwidth_gbs()
    print(f"memory bandwidth: copy {bw['copy_gbs']:.1f} GB/s (read+write), read {bw['read_gbs']:.1f} GB/s",
          flush=True)
    rows, profiles = [], {}
    load_before = os.getloadavg()
    overhead = call_overhead_us(a.threads)
    print(f"quantized_linear per-call cost at 64x256, M=1 (us): {overhead}", flush=True)
    kgbs = kernel_gbs(a.threads)
    print("M=1 matmul streaming 2816x2048 weights from memory: " + ", ".join(
        f"{k_} {v:.1f} GB/s" + ("" if k_ == "read_gbs" else f" ({100 * v / kgbs['read_gbs']:.0f}% of read)")
        for k_, v in kgbs.items()), flush=True)
    try:
        for mode in a.modes.split(","):
            t = time.perf_counter()
            W = build(cfg, mode)
            folder, gguf_path = work / f"duet-{mode}", work / f"llama-{mode}.gguf"
            write_duet(folder, cfg, W)
            from bench.gguf_deepseek2 import write_deepseek2_gguf

            write_deepseek2_gguf(gguf_path, cfg, W.gguf)
            act = active_bytes(cfg, W)
            print(f"[{mode}] weights written in {time.perf_counter() - t:.0f}s; "
                  f"active bytes/token {act / 1e6:.0f} MB", flush=True)
            del W
            duet = run_duet(folder, a.threads)
            print(f"[{mode}] duet {duet}", flush=True)
            aten = run_duet(folder, a.threads, native=False) if not a.no_aten else None
            print(f"[{mode}] duet (aten) {aten}", flush=True)
            if not a.no_profile:
                profiles[mode] = profile_duet(folder, a.threads)
            llama = run_llama(gguf_path, a.threads)
            print(f"[{mode}] llama.cpp {llama}", flush=True)
            limit = bw["read_gbs"] * 1e9 / act
            peer = "Q8_0" if mode == "int8" else "Q4_0"
            rows.append({"engine": f"duet {mode}", **duet, "active_bytes": act, "limit_tok_s": limit})
            if aten is not None:
                rows.append({"engine": f"duet {mode} (aten)", **aten, "active_bytes": act, "limit_tok_s": limit})
            rows.append({"engine": f"llama.cpp {peer}", **llama, "active_bytes": act, "limit_tok_s": limit})
            shutil.rmtree(folder, ignore_errors=True)
            gguf_path.unlink(missing_ok=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(capability_line(cap))
    what = f"DeepSeek-V2-Lite shapes, {a.layers} layers" if a.shape == "v2-lite" else \
        f"the whole small V3-shaped model ({cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']})"
    print(f"{what}, {a.threads} threads, Duet activations {DTYPE}")
    print(f"{'engine':<20}{'decode@0':>10}{'decode@' + str(PREFILL):>14}{'prefill':>10}{'limit':>8}{'% limit':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<20}  error: {r['error']}")
            continue
        pct = 100 * r["decode_ctx0"] / r["limit_tok_s"]
        print(f"{r['engine']:<20}{r['decode_ctx0']:>10.1f}{r['decode_ctx']:>14.1f}{r['prefill']:>10.1f}"
              f"{r['limit_tok_s']:>8.1f}{pct:>8.0f}%")
    for mode, prof in profiles.items():
        print(f"\nduet {mode}: one decode step, top ops by self time (ms, calls)")
        for key, ms, n in prof:
            print(f"  {key:<45}{ms:8.2f} {n:6d}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()}
    print(f"load average before/after: {load['before'][0]:.2f} / {load['after'][0]:.2f} on {load['cpus']} CPUs "
          f"(other processes share these cores: timings are indicative)")
    out.write_text(json.dumps({"shape": a.shape, "context": PREFILL, "config": cfg, "threads": a.threads, "capability": cap, "dtype": DTYPE, "bandwidth": bw, "rows": rows,
                               "call_overhead_us": overhead, "kernel_gbs": kgbs, "profiles": profiles, "load_average": load,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
