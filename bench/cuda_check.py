"""One-shot GPU check: every kernel's CUDA path against its reference, and its time.

    python bench/cuda_check.py            # ~1-2 minutes on one GPU; writes bench/results/cuda_check.json
    python bench/cuda_check.py --device cpu   # the same checks on CPU (to test this script)
    python bench/cuda_check.py --only triton   # just the Triton section (or any other name prefix)
    python bench/cuda_check.py --compile-only [--arch 80,90]  # no GPU: compile the Triton kernels for sm_90

For each kernel (quantized int8/int4 matmul, RMSNorm, RoPE, MLA decode attention, MoE
dispatch, FP8 block dequant, and a tiny quantized engine end to end) it runs the fast path
and the reference on random inputs of awkward shapes on ``cuda``, reports the max relative
error and pass/fail, and times the fast path (CUDA events, median of 20) at DeepSeek-V2-Lite
sizes. It also probes which aten packed ops this GPU/torch has.

Then each Triton kernel (kernels/triton_ops.py) is checked against its reference and timed
against the PyTorch path it would replace, at DeepSeek-V2-Lite (hidden 2048, 16 heads,
kv_lora 512, rope 64, experts 1408) and R1 (hidden 7168, 128 heads, experts 2048) shapes,
with L2 flushed before each timed call; a table is printed and stored under "triton" in
the JSON. With ``--device cpu`` those run in Triton's interpreter on tiny shapes (checks
only: interpreter times mean nothing). Exit 1 if any check fails, 2 without a GPU.
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


_FLUSH = None   # a buffer larger than L2, zeroed before each timed call when flush=True


def cuda_time_us(fn, reps: int = 20, flush: bool = False) -> float:
    global _FLUSH
    fn()
    if DEV == "cpu":
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e6)
        return sorted(times)[len(times) // 2]
    torch.cuda.synchronize()
    if flush and _FLUSH is None:
        _FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if flush:
            _FLUSH.zero_()
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1000)
    return sorted(times)[len(times) // 2]


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


ONLY = ""   # --only PREFIX: run just the checks whose name starts with it (e.g. "triton")


def check(name: str, tol: float):
    def wrap(fn):
        if not name.startswith(ONLY):
            return fn
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
    global DEV, ONLY
    if "--only" in sys.argv:
        ONLY = sys.argv[sys.argv.index("--only") + 1]
    if "--compile-only" in sys.argv:
        archs = sys.argv[sys.argv.index("--arch") + 1] if "--arch" in sys.argv else "90"
        return 0 if all([compile_all(int(a)) for a in archs.split(",")]) else 1
    if "--device" in sys.argv:
        DEV = sys.argv[sys.argv.index("--device") + 1]
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    if DEV == "cpu":   # the Triton kernels run in the interpreter: set before they are decorated
        import os

        os.environ["TRITON_INTERPRET"] = "1"
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
        us = cuda_time_us(lambda: norm_rope.torch_rms_norm(x, w, 1e-6))
        return rel(norm_rope.torch_rms_norm(x, w, 1e-6), norm_rope.reference_rms_norm(x, w, 1e-6)), {"us": round(us, 1)}

    for inter in (True, False):
        @check(f"apply_rope interleaved={inter} [2,5,16,64]", 1e-2)
        def _(inter=inter):
            x = torch.randn(2, 5, 16, 64, device=dev, dtype=torch.bfloat16)
            ang = torch.rand(5, 32, device=dev) * 6
            cos, sin = ang.cos(), ang.sin()
            us = cuda_time_us(lambda: norm_rope.torch_apply_rope(x, cos, sin, inter))
            return rel(norm_rope.torch_apply_rope(x, cos, sin, inter),
                       norm_rope.reference_apply_rope(x, cos, sin, inter)), {"us": round(us, 1)}

    for T, S in [(1, 1), (1, 2049), (3, 37), (17, 17)]:
        @check(f"mla_attention T={T} S={S} H=16 kv_lora=512", 2e-2)
        def _(T=T, S=S):
            q = torch.randn(1, T, 16, 576, device=dev, dtype=torch.bfloat16)
            cache = torch.randn(1, S, 576, device=dev, dtype=torch.bfloat16)
            start = S - T
            us = cuda_time_us(lambda: mla.torch_mla_attention(q, cache, 512, 0.07, start))
            return rel(mla.torch_mla_attention(q, cache, 512, 0.07, start),
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
                y = moe.grouped_moe(x, w, idx, experts)
                if n:
                    errs.append(rel(y, moe.reference_moe(x, w, idx, experts)))
            x = torch.randn(1, H, device=dev, dtype=torch.bfloat16)
            w, idx = torch.rand(1, 6, device=dev), torch.randperm(E, device=dev)[:6][None]
            return max(errs), {"us_n1": round(cuda_time_us(lambda: moe.grouped_moe(x, w, idx, experts)), 1)}

    @check("fp8_block_dequant [300x520]", 1e-3)
    def _():
        w = (torch.randn(300, 520, device=dev) * 0.5).to(torch.float8_e4m3fn)
        s = torch.rand(3, 5, device=dev) + 0.5
        us = cuda_time_us(lambda: fp8.torch_fp8_block_dequant(w, s, torch.bfloat16))
        return rel(fp8.torch_fp8_block_dequant(w, s, torch.float32),
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

    from kernels import triton_ops

    table = triton_checks() if triton_ops.available() else []

    ok = all(r["ok"] for r in RESULTS)
    out = ROOT / "bench" / "results" / f"{DEV}_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0) if DEV == "cuda" else "cpu", "torch": torch.__version__,
                               "ops": ops, "results": RESULTS, "triton": table, "all_ok": ok}, indent=1))
    print(f"\n{sum(r['ok'] for r in RESULTS)}/{len(RESULTS)} checks passed; wrote {out}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------
# Triton kernels vs the PyTorch paths they would replace

def triton_checks() -> list[dict]:
    """Check every Triton kernel against its reference and time it against the torch path.
    Returns the table rows (also printed)."""
    import torch.nn.functional as F

    from kernels import fp8, mla, moe, norm_rope, quant, triton_ops

    dev, gpu = DEV, DEV == "cuda"
    table: list[dict] = []

    def compare(name: str, tol: float, ref, triton_fn, torch_paths: dict, nbytes: int = 0):
        """ref(): the reference output; triton_fn(): the Triton output; torch_paths: label -> fn."""
        @check(f"triton {name}", tol)
        def _():
            got = triton_fn()
            err = rel(got, ref())
            row = {"kernel": name, "rel_err": err}
            if gpu:   # interpreter times mean nothing: on CPU the kernels are only checked
                row["triton_us"] = round(cuda_time_us(triton_fn, 20, flush=True), 1)
                for label, fn in torch_paths.items():
                    row[f"{label}_us"] = round(cuda_time_us(fn, 20, flush=True), 1)
                if nbytes:
                    row["triton_gbs"] = round(nbytes / row["triton_us"] / 1e3, 1)
                row["speedup"] = round(min(row[f"{label}_us"] for label in torch_paths) / row["triton_us"], 2)
            table.append(row)
            return err, {k: v for k, v in row.items() if k.endswith(("_us", "_gbs"))}

    bf16 = torch.bfloat16
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=bf16):
        return torch.randn(*shape, generator=g).to(dtype).to(dev)

    # -- weight-only int4 / int8 linear ---------------------------------------------------
    if gpu:
        lin_shapes = [("V2-Lite expert w13", 2816, 2048), ("V2-Lite expert w2", 2048, 1408),
                      ("R1 expert w13", 4096, 7168), ("R1 expert w2", 7168, 2048), ("R1 attn wo", 7168, 16384),
                      ("awkward", 333, 1000)]
        ms = (1, 4, 64)
    else:
        lin_shapes, ms = [("awkward", 37, 200)], (1, 5)

    def aten_int4(x, codes, group):
        """aten's CUDA int4 kernel on the same codes (as kernels.quant packs them), or None."""
        nib = codes["q"]
        try:
            packed = torch.ops.aten._convert_weight_to_int4pack((((nib & 15) << 4) | (nib >> 4)).contiguous(), 8)
            sz = codes["scale_zero"]
            torch.ops.aten._weight_int4pack_mm(x[:1], packed, group, sz)
        except Exception:
            return None
        return lambda: torch.ops.aten._weight_int4pack_mm(x, packed, group, sz)

    gd = torch.Generator(device=dev).manual_seed(1)

    def random_weight(mode: str, n: int, k: int):
        """(portable weight for Triton, the same codes in the device's own layout): random codes
        and scales straight on the device (rounding real weights of R1's size on the CPU would
        take minutes; the kernels do not care what the codes mean)."""
        group = quant.DEFAULT_GROUP if mode == "int4" else quant.INT8_GROUP
        np_, kp = -(-n // 16) * 16, -(-k // group) * group
        if mode == "int4":
            sz = torch.stack([torch.rand(kp // group, np_, device=dev, generator=gd) * 4e-3 + 1e-3,
                              torch.randn(kp // group, np_, device=dev, generator=gd) * 1e-3], -1)
            codes = {"q": torch.randint(0, 256, (np_, kp // 2), device=dev, generator=gd, dtype=torch.uint8),
                     "scale_zero": sz.to(bf16)}
        else:
            codes = {"q": torch.randint(0, 256, (np_, kp), device=dev, generator=gd, dtype=torch.uint8),
                     "scale": (torch.rand(kp // group, np_, device=dev, generator=gd) * 3e-4 + 1e-4).to(bf16)}
        tq = quant.QuantizedWeight(mode, (n, k), group, codes, "nibbles" if mode == "int4" else "codes")
        return tq, quant.from_codes(mode, (n, k), group, codes)

    for mode in ("int4", "int8"):
        for label, n, k in lin_shapes:
            tq, dq = random_weight(mode, n, k)
            codes, group, kp = tq.tensors, tq.group_size, tq.padded_shape[1]
            dense = quant.dequantize(tq, bf16)                             # bf16 weight: cuBLAS baseline
            for m in ms:
                x = randn(m, k)
                paths = {f"quant[{dq.layout}]": lambda x=x, dq=dq: quant.quantized_linear(x, dq),
                         "bf16_dense": lambda x=x, d=dense: F.linear(x, d)}
                if mode == "int4" and gpu and k == kp:
                    fn = aten_int4(x, codes, group)
                    if fn is not None:
                        paths["aten_int4pack"] = fn
                compare(f"quantized_linear {mode} {label} [{n}x{k}] M={m}", 1e-2,
                        lambda x=x, tq=tq: quant.reference_quantized_linear(x, tq),
                        lambda x=x, tq=tq: triton_ops.quantized_linear(x, tq), paths, tq.nbytes)
            del dense

    # -- MoE decode: the token's top-k quantized experts ------------------------------------
    moe_cases = ([("V2-Lite", 2048, 1408, 64, 6), ("R1", 7168, 2048, 32, 8)] if gpu else
                 [("tiny", 45, 23, 5, 3)])   # R1: 32 of its 256 experts are enough to pick 8 from
    for mode in ("int4", "int8"):
        for label, H, I, E, K in moe_cases:
            pairs = [(random_weight(mode, 2 * I, H), random_weight(mode, H, I)) for _ in range(E)]
            experts = triton_ops.ExpertTable([p[0][0] for p in pairs], [p[1][0] for p in pairs])

            def mlp(w13, w2, lin):
                def f(x):
                    gate, up = lin(x, w13).split(I, dim=-1)
                    return lin(F.silu(gate) * up, w2)
                return f

            ref_experts = [mlp(a[0], b[0], quant.reference_quantized_linear) for a, b in pairs]
            dev_experts = [mlp(a[1], b[1], quant.quantized_linear) for a, b in pairs]   # the engine's path today
            x = randn(1, H)
            idx = torch.randperm(E, generator=g)[:K][None].to(dev)
            w = (torch.rand(1, K, generator=g) / K).to(dev)
            nbytes = K * (pairs[0][0][0].nbytes + pairs[0][1][0].nbytes)
            compare(f"moe_decode {mode} {label} E={E} top-{K} H={H} I={I}", 2e-2,
                    lambda x=x, w=w, i=idx, ex=ref_experts: moe.reference_moe(x.float(), w, i, ex),
                    lambda x=x, w=w, i=idx, t=experts: triton_ops.moe_decode(x, w, i, t),
                    {f"moe[{pairs[0][0][1].layout}]": lambda x=x, w=w, i=idx, ex=dev_experts: moe.grouped_moe(x, w, i, ex)},
                    nbytes)
            del pairs, experts, ref_experts, dev_experts

    # -- absorbed MLA decode attention ----------------------------------------------------
    if gpu:
        mla_cases = [("V2-Lite", 1, 1, 16, 1), ("V2-Lite", 1, 1, 16, 2049), ("V2-Lite", 1, 1, 16, 8192),
                     ("V2-Lite", 1, 3, 16, 37), ("V2-Lite", 4, 1, 16, 1000), ("R1", 1, 1, 128, 2049),
                     ("R1", 1, 1, 128, 8192)]
        R, P = 512, 64
    else:
        mla_cases, R, P = [("tiny", 1, 1, 5, 70), ("tiny", 2, 3, 5, 12)], 48, 8
    for label, B, T, H, S in mla_cases:
        q, cache = randn(B, T, H, R + P), randn(B, S + 5, R + P)   # 5 stale rows past the queries
        start = S - T
        compare(f"mla_attention {label} B={B} T={T} H={H} S={S}", 1e-2,
                lambda q=q, c=cache, s=start, S=S: mla.reference_mla_attention(q, c[:, :S], R, 0.07, s),
                lambda q=q, c=cache, s=start: triton_ops.mla_attention(q, c, R, 0.07, s),
                {"torch": lambda q=q, c=cache, s=start: mla.torch_mla_attention(q, c, R, 0.07, s)},
                cache[:, :S].numel() * 2)

    # -- RMSNorm, add + RMSNorm, RoPE -----------------------------------------------------
    norm_shapes = [(1, 2048), (1, 7168), (64, 7168), (3, 130)] if gpu else [(3, 130)]
    for shape in norm_shapes:
        x, r, w = randn(*shape), randn(*shape), randn(shape[-1])
        compare(f"rms_norm {list(shape)}", 1e-2, lambda x=x, w=w: norm_rope.reference_rms_norm(x, w, 1e-6),
                lambda x=x, w=w: triton_ops.rms_norm(x, w, 1e-6),
                {"torch": lambda x=x, w=w: norm_rope.torch_rms_norm(x, w, 1e-6)})
        compare(f"add_rms_norm {list(shape)}", 1e-2,
                lambda x=x, r=r, w=w: torch.cat([x + r, norm_rope.reference_rms_norm(x + r, w, 1e-6)]),
                lambda x=x, r=r, w=w: torch.cat(triton_ops.add_rms_norm(x, r, w, 1e-6)),
                {"torch": lambda x=x, r=r, w=w: norm_rope.torch_rms_norm(x + r, w, 1e-6)})
    rope_shapes = [(1, 1, 17, 64), (1, 1, 129, 64), (1, 64, 129, 64)] if gpu else [(1, 3, 5, 16)]
    for shape in rope_shapes:
        for inter in (True, False):
            x = randn(*shape)
            ang = torch.rand(shape[1], shape[-1] // 2, generator=g).to(dev) * 6
            cos, sin = ang.cos(), ang.sin()
            compare(f"apply_rope {list(shape)} interleaved={inter}", 1e-2,
                    lambda x=x, c=cos, s=sin, i=inter: norm_rope.reference_apply_rope(x, c, s, i),
                    lambda x=x, c=cos, s=sin, i=inter: triton_ops.apply_rope(x, c, s, i),
                    {"torch": lambda x=x, c=cos, s=sin, i=inter: norm_rope.torch_apply_rope(x, c, s, i)})

    # -- FP8 block dequant ---------------------------------------------------------------
    fp8_shapes = [(2048, 7168), (7168, 2048), (1408, 2048), (300, 520)] if gpu else [(300, 200)]
    for shape in fp8_shapes:
        for dtype in (torch.float32, bf16):
            wq = (torch.randn(*shape, generator=g) * 0.5).to(torch.float8_e4m3fn).to(dev)
            sc = (torch.rand(-(-shape[0] // 128), -(-shape[1] // 128), generator=g) + 0.5).to(dev)
            # bit-exact on CUDA; the interpreter rounds to bf16 by truncation
            compare(f"fp8_block_dequant {list(shape)} -> {str(dtype)[6:]}",
                    0.0 if gpu or dtype == torch.float32 else 1e-2,
                    lambda w=wq, s=sc, d=dtype: fp8.reference_fp8_block_dequant(w, s, d),
                    lambda w=wq, s=sc, d=dtype: triton_ops.fp8_block_dequant(w, s, d),
                    {"torch": lambda w=wq, s=sc, d=dtype: fp8.torch_fp8_block_dequant(w, s, d)},
                    wq.numel() * (1 + torch.finfo(dtype).bits // 8))

    print("\nTriton vs PyTorch (speedup: best torch path / triton; L2 flushed before each call)" if gpu else
          "\nTriton kernels in the interpreter (checked only, not timed)")
    cols = ["kernel", "triton_us", "speedup", "rel_err"]
    extra = sorted({k for row in table for k in row if k.endswith(("_us", "_gbs")) and k not in cols})
    print(" | ".join(cols + extra))
    for row in table:
        print(" | ".join(f"{row.get(c, ''):.2e}" if c == "rel_err" else str(row.get(c, "")) for c in cols + extra))
    return table


# ---------------------------------------------------------------------------------------
# no GPU: compile the Triton kernels for one, at the shapes the checks above run

V2_LITE = {"hidden": 2048, "heads": 16, "kv_lora": 512, "rope": 64, "expert": 1408}
R1 = {"hidden": 7168, "heads": 128, "kv_lora": 512, "rope": 64, "expert": 2048}
SMEM_LIMIT = 232448   # bytes of shared memory one block may use on sm_90 (227 KiB)


def _meta_codes(mode: str, n: int, k: int, group: int, empty) -> dict:
    """Portable-layout tensors of an [n, k] quantized weight (shapes only, via ``empty``)."""
    np_, kp = -(-n // 16) * 16, -(-k // group) * group
    if mode == "int4":
        return {"q": empty(np_, kp // 2, dtype=torch.uint8), "scale_zero": empty(kp // group, np_, 2)}
    return {"q": empty(np_, kp, dtype=torch.uint8), "scale": empty(kp // group, np_)}


def compile_all(arch: int = 90) -> bool:
    """Build every kernel the launchers would start at V2-Lite and R1 shapes (tensors on the meta
    device) for CUDA sm_<arch>, then ask ptxas for registers and spills. True if all fit in
    shared memory and none spills registers. Writes bench/results/triton_compile_sm<arch>.json."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    from kernels import quant, triton_ops

    def empty(*shape, dtype=torch.bfloat16):
        return torch.empty(*shape, dtype=dtype, device="meta")

    t0 = time.perf_counter()
    with triton_ops.compiling_for(arch) as built:
        for cfg in (V2_LITE, R1):
            h, e = cfg["hidden"], cfg["expert"]
            for mode, g in (("int4", quant.DEFAULT_GROUP), ("int8", quant.INT8_GROUP)):
                for n, k in ((2 * e, h), (h, e), (333, 1000)):
                    qw = quant.QuantizedWeight(mode, (n, k), g, _meta_codes(mode, n, k, g, empty),
                                               "nibbles" if mode == "int4" else "codes")
                    for m, dtype in ((1, torch.bfloat16), (64, torch.bfloat16), (64, torch.float32)):
                        triton_ops.quantized_linear(empty(m, k, dtype=dtype), qw)
                w13 = quant.QuantizedWeight(mode, (2 * e, h), g, _meta_codes(mode, 2 * e, h, g, empty), qw.layout)
                w2 = quant.QuantizedWeight(mode, (h, e), g, _meta_codes(mode, h, e, g, empty), qw.layout)
                for dtype in (torch.bfloat16, torch.float32):
                    table = triton_ops.ExpertTable([w13] * 4, [w2] * 4)
                    triton_ops.moe_decode(empty(1, h, dtype=dtype), empty(1, 4, dtype=torch.float32),
                                          empty(1, 4, dtype=torch.int64), table)
            H, R, P = cfg["heads"], cfg["kv_lora"], cfg["rope"]
            for T, S in ((1, 1), (1, 8192), (4, 2048)):
                triton_ops.mla_attention(empty(1, T, H, R + P), empty(1, S, R + P), R, 0.07, S - T)
            triton_ops.mla_attention(empty(1, 1, H, R + P, dtype=torch.float32),
                                     empty(1, 9, R + P, dtype=torch.float32), R, 0.07, 8)
            for dtype in (torch.bfloat16, torch.float32):
                x = empty(3, h, dtype=dtype)
                triton_ops.rms_norm(x, empty(h), 1e-6)
                triton_ops.add_rms_norm(x, x, empty(h), 1e-6)
                for inter in (True, False):
                    triton_ops.apply_rope(empty(1, 5, H + 1, P, dtype=dtype), empty(5, P // 2, dtype=torch.float32),
                                          empty(5, P // 2, dtype=torch.float32), inter)
                triton_ops.fp8_block_dequant(empty(2 * e, h, dtype=torch.float8_e4m3fn),
                                             empty(-(-2 * e // 128), -(-h // 128), dtype=torch.float32), dtype)
    rows, seen, ok = [], set(), True
    with tempfile.TemporaryDirectory() as d:
        for name, meta, kern in built:
            if kern.hash in seen:
                continue
            seen.add(kern.hash)
            ptx = Path(d) / f"{kern.hash}.ptx"
            ptx.write_text(kern.asm["ptx"])
            log = subprocess.run([get_ptxas(arch).path, f"-arch=sm_{arch}{'a' if arch >= 90 else ''}", "-v", str(ptx), "-o", str(ptx) + ".o"],
                                 capture_output=True, text=True).stderr
            words = log.split()
            regs = next((int(w) for w, nxt in zip(words, words[1:]) if nxt == "registers,"), -1)
            spill = "0 bytes spill stores" not in log
            fits = kern.metadata.shared <= SMEM_LIMIT and regs > 0
            ok &= fits and not spill
            consts = " ".join(f"{k}={v}" for k, v in meta.items() if k not in ("num_warps", "UPCAST"))
            rows.append({"kernel": name, "warps": kern.metadata.num_warps, "shared": kern.metadata.shared,
                         "registers": regs, "spills": spill, "fits": fits, "constexprs": consts})
    print(f"compiled {len(built)} launches ({len(rows)} distinct kernels) for sm_{arch} in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"{'kernel':<14}{'warps':>6}{'shared':>9}{'regs':>6}  spills  fits   constexprs")
    for r in rows:
        print(f"{r['kernel']:<14}{r['warps']:>6}{r['shared']:>9}{r['registers']:>6}  {str(r['spills']):<7} "
              f"{str(r['fits']):<6} {r['constexprs']}")
    out = ROOT / "bench" / "results" / f"triton_compile_sm{arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
