"""Duet vs llama.cpp on the very same deepseek2 GGUF files: Q8_0, Q4_0, Q4_K_M, Q3_K_M and Q2_K,
and files whose routed experts are i-quants (IQ1_S, IQ2_XXS, IQ3_XXS).

    python -m bench.gguf_bench [--layers 2] [--threads 2] [--types Q8_0,Q4_0,Q4_K_M] [--decode 48]

DeepSeek-V2-Lite layer shapes (bench/quant_bench.py's V2_LITE: hidden 2048, 64 routed experts
of 1408, 2 shared, 6 active, kv_lora 512, q_lora 1536, vocab 16384), ``--layers`` layers (the
first dense). Random weights are written straight into Q8_0 and Q4_0 blocks (quant_bench's
generator and bench/gguf_deepseek2.py's writer); the Q4_K_M, Q3_K_M and Q2_K files are
llama.cpp's own quantizer run on the Q8_0 file (requantized: Q4_K / Q6_K, with Q5_0 for
attn_k_b's rows of 128, as real DeepSeek Q4_K_M files hold; Q3_K_M: Q3_K / Q4_K / Q5_K / Q6_K;
Q2_K: Q2_K / Q3_K / Q4_K / Q6_K; their rows of 128 fall back to llama.cpp's choice, Q4_0 or
IQ4_NL, printed with each file's tensor types). The i-quant files (IQ_FILES) are written here
with random expert blocks (llama.cpp's quantizer makes i-quants only with an importance
matrix): R1's expert width, the rest Q8_0. Each file is then loaded by ``Engine.load(file.gguf)`` (its blocks
run as stored, kernels/kquant.py) and by llama.cpp (llama-cpp-python, in a subprocess, f16
cache, each column the better of flash attention off and on, its default CPU weight repacking),
same thread count.

Reports decode tok/s at batch 1 at context 0 and 2048 and prefill tok/s (2048 tokens, chunks of
512) -- quant_bench's timing code for both engines -- and writes bench/results/gguf_bench.json.
``--decode N`` times N decode steps per context (default 48; fewer: a shorter run, same columns).
Duet runs its default GGUF activation precision (kernels.kquant.act_bits(); set
DUET_GGUF_ACT_BITS=8 for llama.cpp's own 8-bit activation codes), printed with the table, and
its plan's prefill tiles (bf16 where the CPU multiplies bf16 natively); ``--f32-tiles`` adds a
row "duet f32" with float32 prefill tiles, the path before bf16 tiles and the one AVX2 CPUs run.
The machine is shared: the load average before/after is printed with the numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import quant_bench as qb  # noqa: E402
from kernels import dispatch, iquant  # noqa: E402

# the files llama.cpp's quantizer writes from the Q8_0 file: its llama_ftype values (llama.h)
LLAMA_FTYPES = {"Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10}
# files whose routed experts are i-quant blocks (the low-bit DeepSeek-R1 GGUFs' experts), written
# here: llama.cpp's quantizer makes i-quants only with an importance matrix. Random blocks (their
# scales set small and finite) cost the kernels what real ones do; the experts are R1's width
# (moe_intermediate_size 2048: V2-Lite's 1408 is no whole number of 256-blocks; each row of the
# JSON says its file's width), gate and up in the named type, down in IQ_DOWN's (IQ1_S's a step
# wider: this bench's choice, a mix of two i-quants in one MoE step), the rest of the file Q8_0.
IQ_FILES = ("IQ1_S", "IQ2_XXS", "IQ3_XXS")
IQ_DOWN = {"IQ1_S": "IQ2_XXS", "IQ2_XXS": "IQ2_XXS", "IQ3_XXS": "IQ3_XXS"}
IQ_EXPERT_WIDTH = 2048
# llama.cpp with its extra weight buffers (AMX / repacked kernels) turned off: llama-cpp-python
# 0.3.36's AMX path crashes on some deepseek2 matrices on AMX CPUs; then this run is reported
NO_REPACK = ("import llama_cpp.llama_cpp as _low\n_d = _low.llama_model_default_params\n"
             "def _p():\n    p = _d()\n    p.use_extra_bufts = False\n    return p\n"
             "_low.llama_model_default_params = _p\n")


def run_llama(path: Path, threads: int) -> dict:
    """quant_bench's llama.cpp timing; where the default (repacking) build crashes, again without
    repacking, marked "repack": False."""
    r = qb.run_llama(path, threads)
    if "error" not in r:
        return {**r, "repack": True}
    r = qb.run_llama(path, threads, prefix=NO_REPACK)
    if "error" in r:
        return {"error": "crashed with and without repacking"}
    return {**r, "repack": False}


def write_files(cfg: dict, work: Path, types: list[str]) -> dict[str, Path]:
    from bench.gguf_deepseek2 import write_deepseek2_gguf

    paths = {}
    requantized = [kind for kind in types if kind in LLAMA_FTYPES]
    for kind, mode in (("Q8_0", "int8"), ("Q4_0", "int4")):
        if kind in types or (kind == "Q8_0" and requantized):
            W = qb.build(cfg, mode)
            paths[kind] = work / f"v2lite-{kind}.gguf"
            write_deepseek2_gguf(paths[kind], cfg, W.gguf)
            del W
    for kind in requantized:
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_FTYPES[kind]
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 2
        paths[kind] = work / f"v2lite-{kind}.gguf"
        rc = llama_cpp.llama_model_quantize(str(paths["Q8_0"]).encode(), str(paths[kind]).encode(),
                                            ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize {kind} failed ({rc})")
    for kind in (t for t in types if t in IQ_FILES):
        W = qb.build(file_config(cfg, kind), "int8")
        rng = np.random.default_rng(len(kind))
        for name, spec in list(W.gguf.items()):
            if name.endswith(("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")):
                q = spec[1]   # int8 codes [experts, n, k]
                W.gguf[name] = ("blocks", *iq_blocks(IQ_DOWN[kind] if "down" in name else kind, q.shape, rng))
        paths[kind] = work / f"v2lite-{kind}.gguf"
        write_deepseek2_gguf(paths[kind], file_config(cfg, kind), W.gguf)
        del W
    return paths


def file_config(cfg: dict, kind: str) -> dict:
    """The model a file of ``kind`` holds: the bench's, with R1's expert width for i-quant files."""
    return dict(cfg, moe_intermediate_size=IQ_EXPERT_WIDTH) if kind in IQ_FILES else cfg


def iq_blocks(name: str, shape: tuple, rng) -> tuple:
    """(ggml type, uint8 [..., row bytes]): random blocks of i-quant ``name`` for a weight of
    ``shape`` (rows of whole 256-blocks), each block's fp16 scale in 0.002..0.01."""
    tid = iquant.NAMES[name]
    *lead, k = shape
    rows = int(np.prod(lead))
    nb, bb = k // 256, iquant.IQ_TYPES[tid][2]
    b = rng.integers(0, 256, size=(rows * nb, bb), dtype=np.uint8)
    halves = rng.uniform(0.002, 0.01, size=rows * nb).astype(np.float16).view(np.uint16)
    b = iquant.set_scales(name, b, halves)
    return GGMLQuantizationType(tid), b.reshape(*lead, nb * bb)


def types_in(path: Path) -> dict[str, int]:
    from local_engine.gguf_file import summarize

    return summarize(path).types


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="Q8_0,Q4_0,Q4_K_M")
    ap.add_argument("--workdir", default=None, help="where the GGUF files go (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gguf_bench.json"))
    ap.add_argument("--decode", type=int, default=qb.DECODE, help="decode steps timed per context")
    ap.add_argument("--f32-tiles", action="store_true",
                    help="also time Duet with float32 prefill tiles where the plan has bf16 ones (row 'duet f32')")
    a = ap.parse_args(argv)
    if a.decode < 6:
        ap.error("--decode: at least 6 steps")
    qb.DECODE, qb.WINDOWS = a.decode, min(qb.WINDOWS, a.decode // 4) or 1
    types = a.types.split(",")
    known = {"Q8_0", "Q4_0", *LLAMA_FTYPES, *IQ_FILES}
    if set(types) - known:
        ap.error(f"--types: {', '.join(sorted(set(types) - known))} (choose from {', '.join(sorted(known))})")
    cfg = dict(qb.V2_LITE, num_hidden_layers=a.layers)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="duet-gguf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    rows = []
    try:
        t = time.perf_counter()
        paths = write_files(cfg, work, types)
        print(f"files written in {time.perf_counter() - t:.0f}s: " + ", ".join(
            f"{k} {p.stat().st_size / 1e6:.0f} MB" for k, p in paths.items()), flush=True)
        for kind in types:
            path = paths[kind]
            blocks = types_in(path)
            info = {"file": kind, "bytes": path.stat().st_size, "types": blocks,
                    "expert_width": file_config(cfg, kind)["moe_intermediate_size"]}
            print(f"[{kind}] tensor types {blocks}", flush=True)
            duet = qb.run_duet(path, a.threads)
            print(f"[{kind}] duet {duet}", flush=True)
            if a.f32_tiles and dispatch.plan().gguf.prefill_dtype != torch.float32:
                with dispatch.overridden(gguf_prefill=torch.float32):
                    f32 = qb.run_duet(path, a.threads)
                print(f"[{kind}] duet, float32 prefill tiles {f32}", flush=True)
                rows.append({**info, "engine": "duet f32", **f32})
            llama = run_llama(path, a.threads)
            print(f"[{kind}] llama.cpp {llama}", flush=True)
            rows.append({**info, "engine": "duet", **duet})
            rows.append({**info, "engine": "llama.cpp", **llama})
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load = {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()}
    print()
    from kernels import kquant

    acts = (f"duet GGUF activations {kquant.act_bits()}-bit, integer dot products {kquant.isa() or 'not built'}, "
            f"prefill tiles {str(dispatch.plan().gguf.prefill_dtype).removeprefix('torch.')}")
    builds = sorted({r["build"] for r in rows if r.get("build")})
    print(f"Same GGUF file for both engines: DeepSeek-V2-Lite shapes, {a.layers} layers, {a.threads} threads; {acts}; "
          f"llama.cpp built for {', '.join(builds) or 'unknown'}")
    print(f"{'file':<8}{'engine':<11}{'decode@0':>10}{'decode@' + str(qb.PREFILL):>14}{'prefill':>10}{'load s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['file']:<8}{r['engine']:<11}  error: {r['error']}")
            continue
        note = "  (no repacking: the AMX build crashed)" if r.get("repack") is False else ""
        print(f"{r['file']:<8}{r['engine']:<11}{r['decode_ctx0']:>10.1f}{r['decode_ctx']:>14.1f}"
              f"{r['prefill']:>10.1f}{r['load_s']:>8.1f}{note}")
    print(f"load average before/after: {load['before'][0]:.2f} / {load['after'][0]:.2f} on {load['cpus']} CPUs "
          f"(other processes share these cores: timings are indicative)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": cfg, "threads": a.threads, "rows": rows, "load_average": load,
                               "duet_activations": acts, "decode_steps": qb.DECODE,
                               "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
