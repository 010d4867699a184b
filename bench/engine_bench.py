"""Duet's engine vs transformers, side by side in one process on the same weights.

    python bench/engine_bench.py [--model DIR] [--dtype bfloat16|float32] [--threads N] [--profile]
    python -m local_engine bench ...      (the same, from a source checkout)

Measures load time, peak RSS while loading, prefill tokens/s (512-token prompt), decode
tokens/s at batch 1 at context 0 and 2048, and KV-cache bytes per token. Without --model it
builds (once, cached) a ~200M-parameter DeepSeek-V3-shaped random model: hidden 512, 8 layers,
64 routed experts of 256 (6 active, 2 groups), 2 shared, kv_lora 128, rope 32, vocab 8192."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MID = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, moe_intermediate_size=256,
           num_hidden_layers=8, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8,
           q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
           n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=2, n_group=2, topk_group=1,
           routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True,
           max_position_embeddings=4096, initializer_range=0.02, bos_token_id=0, eos_token_id=1,
           tie_word_embeddings=False, rope_scaling=None)


def add_arguments(p) -> None:
    p.add_argument("--model", help="HF folder (default: build the ~200M V3-shaped bench model)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch threads for both engines (default: torch's)")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile Duet's decode and prefill (top ops)")
    p.add_argument("--out", default="bench/results/engine_bench.json")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> int:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def build_model(folder: Path, dtype: str) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**MID)).to(getattr(torch, dtype))
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    model.save_pretrained(folder, max_shard_size="200MB")
    return folder


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class DuetRunner:
    name = "duet"

    def __init__(self, folder, dtype, max_seq):
        from local_engine import Engine

        self.engine = Engine.load(folder, dtype=dtype, max_seq_len=max_seq)

    def prefill(self, ids):   # the last position's logits: what sampling the next token needs
        self.engine.reset()
        return self.engine.forward(ids, 0, last_only=True)

    def decode(self, ids, steps):
        import torch

        logits = self.prefill(ids)
        pos, tok = ids.shape[1], logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(steps):
            tok = self.engine.forward(tok, pos)[:, -1:].argmax(-1)
            pos += 1
        return time.perf_counter() - t

    def cache_bytes_per_token(self, ids):
        return self.engine.cache_bytes_per_token()


class TransformersRunner:
    name = "transformers"

    def __init__(self, folder, dtype, max_seq):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()

    def prefill(self, ids):   # as generate() does: the last position's logits
        with self.torch.inference_mode():
            return self.model(ids, use_cache=True, logits_to_keep=1)

    def decode(self, ids, steps):
        with self.torch.inference_mode():
            out = self.model(ids, use_cache=True, logits_to_keep=1)
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(steps):
                out = self.model(tok, past_key_values=cache, use_cache=True)
                cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return time.perf_counter() - t

    def cache_bytes_per_token(self, ids):
        out = self.prefill(ids[:, :16])
        total = 0
        for layer in out.past_key_values.layers:
            for t in (layer.keys, layer.values):
                total += t.numel() * t.element_size()
        return total // 16


def _warm_imports(folder) -> None:
    """Import both engines' code and touch the meta device first: imports are not load memory."""
    import torch
    import transformers  # noqa: F401
    from transformers import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM  # noqa: F401

    import local_engine.engine  # noqa: F401
    import local_engine.loader  # noqa: F401

    with torch.device("meta"):
        torch.nn.Embedding(8, 8), torch.nn.Linear(8, 8)


def measure(runner_cls, folder, args) -> dict:
    import torch

    base = _reset_peak()
    load_s = _timed(lambda: setattr(measure, "r", runner_cls(folder, args.dtype, args.context + args.decode_steps + 8)))
    r = measure.r
    res = {"load_s": round(load_s, 2), "peak_rss_load_mb": round((_status("VmHWM") - base) / 2**20, 1),
           "rss_after_load_mb": round((_status("VmRSS") - base) / 2**20, 1)}
    g = torch.Generator().manual_seed(0)
    vocab = r.engine.args.vocab_size if hasattr(r, "engine") else r.model.config.vocab_size
    p = torch.randint(2, vocab, (1, args.prefill), generator=g)
    r.prefill(p[:, :32])  # warm up
    times = [_timed(lambda: r.prefill(p)) for _ in range(2)]
    res["prefill_tok_s"] = round(args.prefill / min(times), 1)
    one = torch.randint(2, vocab, (1, 1), generator=g)
    res["decode_tok_s_ctx0"] = round(args.decode_steps / r.decode(one, args.decode_steps), 1)
    ctx = torch.randint(2, vocab, (1, args.context), generator=g)
    steps = max(8, args.decode_steps // 2)
    res["decode_tok_s_ctx%d" % args.context] = round(steps / r.decode(ctx, steps), 1)
    res["cache_bytes_per_token"] = int(r.cache_bytes_per_token(p))
    del measure.r
    return res


def profile(folder, args) -> dict:
    """Where Duet's time goes: top ops by self CPU time for decode steps and for a prefill."""
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile

    r = DuetRunner(folder, args.dtype, 1024)
    ids = torch.randint(2, r.engine.args.vocab_size, (1, 256))
    r.prefill(ids)
    tok = torch.tensor([[5]])

    def decode():
        for i in range(16):
            r.engine.forward(tok, 256 + i)

    out = {}
    for label, fn in (("decode: 16 steps at ctx 256", decode), ("prefill: 256 tokens", lambda: r.prefill(ids))):
        fn()
        t = time.perf_counter()
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        wall = time.perf_counter() - t
        events = prof.key_averages()
        print(f"\n== profile: {label} (wall {wall * 1000:.1f} ms under the profiler)")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))
        total = sum(e.self_cpu_time_total for e in events)
        out[label] = {"wall_ms": round(wall * 1000, 1), "ops_ms": round(total / 1000, 1),
                      "top": [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 2),
                               "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
                              for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]]}
    return out


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # the same float environment for both engines
    if args.model:
        folder = Path(args.model)
    else:
        cache = Path(os.environ.get("DUET_BENCH_CACHE", Path(tempfile.gettempdir()) / "duet-bench"))
        folder = build_model(cache / f"v3-mid-{args.dtype}", args.dtype)
    _warm_imports(folder)
    load_before = os.getloadavg()[0]
    rows = {"duet": measure(DuetRunner, folder, args)}
    if not args.skip_transformers:
        rows["transformers"] = measure(TransformersRunner, folder, args)
    from kernels import capability, dispatch
    from local_engine.config import ModelArgs

    a = ModelArgs.from_folder(folder)
    report = {"model": str(folder), "dtype": args.dtype, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "torch": torch.__version__, "cpus": os.cpu_count(),
              "loadavg_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "shape": {k: getattr(a, k) for k in ("hidden_size", "num_hidden_layers", "n_routed_experts",
                                                   "num_experts_per_tok", "kv_lora_rank", "vocab_size")},
              "capability": dict(capability.report()), "plan": dict(dispatch.describe()), "results": rows}
    if "transformers" in rows:
        report["speedup"] = {k: round(rows["duet"][k] / rows["transformers"][k], 2)
                             for k in rows["duet"] if k.startswith(("prefill", "decode"))}
    if args.profile:
        report["profile"] = profile(folder, args)
    _print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}")
    return 0


def _print_table(report) -> None:
    rows = report["results"]
    keys = list(rows["duet"])
    names = list(rows)
    print(f"\nengine bench: {report['model']} ({report['dtype']}, {report['threads']} threads)")
    for name, state in {**report["capability"], **report["plan"]}.items():
        print(f"  {name}: {state}")
    print(f"{'metric':28}" + "".join(f"{n:>14}" for n in names) + ("     speedup" if "speedup" in report else ""))
    for k in keys:
        line = f"{k:28}" + "".join(f"{rows[n].get(k, ''):>14}" for n in names)
        if k in report.get("speedup", {}):
            line += f"{report['speedup'][k]:>11}x"
        print(line)


def main(argv=None) -> int:
    from local_engine.errors import InputError, ModelError

    p = argparse.ArgumentParser(prog="python bench/engine_bench.py", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except (ModelError, InputError) as e:
        print(f"engine_bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
