"""One-shot GPU check: every kernel's CUDA path against its reference, and its time.

    python bench/cuda_check.py            # ~1-2 minutes on one GPU; writes bench/results/cuda_check.json
    python bench/cuda_check.py --device cpu   # the same checks on CPU (to test this script)

For each kernel (quantized int8/int4 matmul, RMSNorm, RoPE, MLA decode attention, MoE
dispatch, FP8 block dequant, and a tiny quantized engine end to end) it runs the fast path
and the reference on random inputs of awkward shapes on ``cuda``, reports the max relative
error and pass/fail, and times the fast path (CUDA events, median of 20) at DeepSeek-V2-Lite
sizes. It also probes which aten packed ops this GPU/torch has. Exit 1 if any check fails,
2 without a GPU.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS: list[dict] = []


def rel(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


DEV = "cuda"


def cuda_time_us(fn, reps: int = 20) -> float:
    fn()
    if DEV == "cpu":
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e6)
        return sorted(times)[len(times) // 2]
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1000)
    return sorted(times)[len(times) // 2]


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def check(name: str, tol: float):
    def wrap(fn):
        t0 = time.perf_counter()
        try:
            err, timing = fn()
            ok = err <= tol
            RESULTS.append({"check": name, "ok": ok, "rel_err": err, "tol": tol, **timing})
            print(f"{'PASS' if ok else 'FAIL'} {name:<44} rel_err {err:.2e} (tol {tol:.0e}) {timing}", flush=True)
        except Exception as e:  # record and go on: one script run must report everything
            RESULTS.append({"check": name, "ok": False, "error": repr(e)})
            print(f"FAIL {name:<44} {e!r}", flush=True)
            traceback.print_exc()
        RESULTS[-1]["wall_s"] = time.perf_counter() - t0
        return fn
    return wrap


def probe_ops() -> dict:
    dev = DEV
    out = {}
    x = torch.randn(4, 256, device=dev, dtype=torch.bfloat16)
    try:
        q = torch.randint(-127, 128, (64, 256), dtype=torch.int8, device=dev)
        torch.ops.aten._weight_int8pack_mm(x, q, torch.rand(64, device=dev, dtype=torch.bfloat16))
        out["_weight_int8pack_mm"] = True
    except Exception as e:
        out["_weight_int8pack_mm"] = repr(e)[:120]
    try:
        p = torch.randint(0, 256, (64, 128), dtype=torch.uint8, device=dev)
        packed = torch.ops.aten._convert_weight_to_int4pack(p, 8)
        torch.ops.aten._weight_int4pack_mm(x, packed, 64, torch.rand(4, 64, 2, device=dev, dtype=torch.bfloat16))
        out["_weight_int4pack_mm"] = True
    except Exception as e:
        out["_weight_int4pack_mm"] = repr(e)[:120]
    try:
        import triton  # noqa: F401
        out["triton"] = triton.__version__
    except Exception as e:
        out["triton"] = repr(e)[:80]
    return out


def main() -> int:
    global DEV
    if "--device" in sys.argv:
        DEV = sys.argv[sys.argv.index("--device") + 1]
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    dev = DEV
    torch.manual_seed(0)
    from kernels import fp8, mla, moe, norm_rope
    from kernels.quant import quantize_weight, quantized_linear, reference_quantized_linear

    ops = probe_ops()
    print("aten ops:", ops, flush=True)

    for mode in ("int8", "int4"):
        for n, k in [(13, 33), (48, 130), (64, 256), (1408, 2048), (2048, 1408)]:
            @check(f"quantized_linear {mode} [{n}x{k}]", 2e-2)
            def _(mode=mode, n=n, k=k):
                qw = quantize_weight(torch.randn(n, k), mode).to(dev)
                errs = []
                for m in (0, 1, 7):
                    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
                    y = quantized_linear(x, qw)
                    assert y.shape == (m, n)
                    if m:
                        errs.append(rel(y, reference_quantized_linear(x, qw)))
                x1 = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
                us = cuda_time_us(lambda: quantized_linear(x1, qw))
                return max(errs), {"layout": qw.layout, "us_m1": round(us, 1),
                                   "gbs_m1": round(qw.nbytes / us / 1e3, 1)}

    @check("rms_norm [3,7,2048] bf16", 1e-2)
    def _():
        x = torch.randn(3, 7, 2048, device=dev, dtype=torch.bfloat16)
        w = torch.randn(2048, device=dev, dtype=torch.bfloat16)
        us = cuda_time_us(lambda: norm_rope.rms_norm(x, w, 1e-6))
        return rel(norm_rope.rms_norm(x, w, 1e-6), norm_rope.reference_rms_norm(x, w, 1e-6)), {"us": round(us, 1)}

    for inter in (True, False):
        @check(f"apply_rope interleaved={inter} [2,5,16,64]", 1e-2)
        def _(inter=inter):
            x = torch.randn(2, 5, 16, 64, device=dev, dtype=torch.bfloat16)
            ang = torch.rand(5, 32, device=dev) * 6
            cos, sin = ang.cos(), ang.sin()
            us = cuda_time_us(lambda: norm_rope.apply_rope(x, cos, sin, inter))
            return rel(norm_rope.apply_rope(x, cos, sin, inter),
                       norm_rope.reference_apply_rope(x, cos, sin, inter)), {"us": round(us, 1)}

    for T, S in [(1, 1), (1, 2049), (3, 37), (17, 17)]:
        @check(f"mla_attention T={T} S={S} H=16 kv_lora=512", 2e-2)
        def _(T=T, S=S):
            q = torch.randn(1, T, 16, 576, device=dev, dtype=torch.bfloat16)
            cache = torch.randn(1, S, 576, device=dev, dtype=torch.bfloat16)
            start = S - T
            us = cuda_time_us(lambda: mla.mla_attention(q, cache, 512, 0.07, start))
            return rel(mla.mla_attention(q, cache, 512, 0.07, start),
                       mla.reference_mla_attention(q, cache, 512, 0.07, start)), {"us": round(us, 1)}

    for mode in (None, "int4"):
        @check(f"moe dispatch ({mode or 'bf16'}) 64 experts top-6, N=1/5/0", 2e-2)
        def _(mode=mode):
            from local_engine.model import MLP
            from local_engine.quantize import quantize_block_

            H, I, E = 256, 128, 64
            experts = torch.nn.ModuleList(MLP(H, I) for _ in range(E))
            for e in experts:
                for lin in (e.w13, e.w2):
                    torch.nn.init.normal_(lin.weight, std=0.05)
            if mode:
                holder = torch.nn.Module()
                holder.ffn = experts
                quantize_block_(holder, mode)
            experts = experts.to(dev).to(torch.bfloat16)
            if mode:
                for e in experts:
                    for lin in (e.w13, e.w2):
                        lin.qweight = lin.qweight.to(dev)
            errs = []
            for n in (1, 5, 0):
                x = torch.randn(n, H, device=dev, dtype=torch.bfloat16)
                w = torch.rand(n, 6, device=dev)
                idx = torch.stack([torch.randperm(E, device=dev)[:6] for _ in range(n)]) if n else \
                    torch.zeros(0, 6, dtype=torch.long, device=dev)
                y = moe.moe(x, w, idx, experts)
                if n:
                    errs.append(rel(y, moe.reference_moe(x, w, idx, experts)))
            x = torch.randn(1, H, device=dev, dtype=torch.bfloat16)
            w, idx = torch.rand(1, 6, device=dev), torch.randperm(E, device=dev)[:6][None]
            return max(errs), {"us_n1": round(cuda_time_us(lambda: moe.moe(x, w, idx, experts)), 1)}

    @check("fp8_block_dequant [300x520]", 1e-3)
    def _():
        w = (torch.randn(300, 520, device=dev) * 0.5).to(torch.float8_e4m3fn)
        s = torch.rand(3, 5, device=dev) + 0.5
        us = cuda_time_us(lambda: fp8.fp8_block_dequant(w, s, torch.bfloat16))
        return rel(fp8.fp8_block_dequant(w, s, torch.float32),
                   fp8.reference_fp8_block_dequant(w, s, torch.float32)), {"us": round(us, 1)}

    for mode in ("int8", "int4"):
        @check(f"engine end to end on cuda, quant={mode} (tiny V3) vs cpu", 5e-2)
        def _(mode=mode):
            import tempfile

            from local_engine import Engine
            from tests.tiny_checkpoints import write_tiny_v3

            with tempfile.TemporaryDirectory() as d:
                path = write_tiny_v3(Path(d) / "m", hidden_size=128, intermediate_size=192,
                                     moe_intermediate_size=64)
                ids = torch.randint(0, 400, (1, 16))
                cpu = Engine.load(path, dtype="float32", quant=mode).forward(ids)
                gpu_eng = Engine.load(path, dtype="float32", quant=mode, device=dev)
                gpu = gpu_eng.forward(ids)
                tok = torch.tensor([[5]])
                gpu_eng.forward(tok, 16)
                sync()
                t = time.perf_counter()
                for j in range(10):
                    gpu_eng.forward(tok, 17 + j)
                sync()
                return rel(gpu.cpu(), cpu), {"decode_ms": round((time.perf_counter() - t) / 10 * 1000, 2)}

    ok = all(r["ok"] for r in RESULTS)
    out = ROOT / "bench" / "results" / f"{DEV}_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "torch": torch.__version__,
                               "ops": ops, "results": RESULTS, "all_ok": ok}, indent=1))
    print(f"\n{sum(r['ok'] for r in RESULTS)}/{len(RESULTS)} checks passed; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
