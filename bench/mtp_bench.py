"""MTP self-speculative decoding and latent-cache prefix reuse, side by side in one run.

    python -m bench.mtp_bench [--threads 1] [--dtype bfloat16] [--new 64] [--turns 8]

1. Decode tok/s without drafts, with ``speculative="mtp"`` as the engine runs it (the draft
   policy times its rounds and pauses drafting while it costs more than it saves), and with
   drafting always on (``DraftLength(timed=False)``: what verification costs or buys), and the
   acceptance rate, on
   - "v3-mid": a DeepSeek-V3-shaped model (MLA, sigmoid-gated MoE with groups, YaRN, an MTP
     layer with random weights). Random weights accept ~nothing: this row measures what
     drafting costs when it fails and how the draft-length controller backs off.
   - "v3-1layer-copy": the same shapes in one MoE layer, whose MTP module is a copy of that
     layer reading the next token's embedding (tests/tiny_checkpoints.py, mtp="copy"): its
     drafts are often right, so this row shows what verification in one forward buys.
   - the trained demo reasoner, when app/data/demo holds one (else the JSON says so), on the
     sample project's review requests (its own domain; random prompts would make it babble).
   Greedy, prompt 64 random tokens (the demo: its real prompts); tok/s = tokens after the
   first / the time after the first.
2. Time to first token at turns 1..N of a growing conversation (each turn adds a 96-token
   user message to the history plus the 16 tokens answered), one engine kept across turns
   (prefix reuse) vs. the cache reset before every turn (the whole history prefilled).

Writes bench/results/mtp_bench.json and prints the tables."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MID = dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, moe_intermediate_size=192,
           num_hidden_layers=6, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8,
           q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32,
           n_routed_experts=32, num_experts_per_tok=6, n_shared_experts=1, n_group=4, topk_group=2,
           max_position_embeddings=4096, initializer_range=0.02)


def _ids(seed: int, n: int, vocab: int = 8000) -> list[int]:
    return torch.randint(10, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def decode_row(engine, name: str, new: int, prompts: list[list[int]]) -> dict:
    from local_engine.speculative import DraftLength

    out = {"model": name, "weights_mb": round(engine.weight_bytes() / 1e6, 1)}
    for key, mode in (("plain", None), ("mtp", "mtp"), ("mtp_always", "mtp")):
        engine.draft_length = DraftLength(timed=key != "mtp_always")  # each mode starts afresh
        rates, drafted, accepted, tokens = [], 0, 0, []
        for ids in prompts:
            engine.reset()
            got, t_first = [], None
            for tok in engine.generate(ids, max_new_tokens=new, temperature=0, speculative=mode):
                got.append(tok)
                if t_first is None:
                    t_first = time.perf_counter()
            t_end = time.perf_counter()
            if len(got) > 1:
                rates.append((len(got) - 1) / (t_end - t_first))
            drafted += engine.last_stats["drafted"]
            accepted += engine.last_stats["accepted"]
            tokens.append(got)
        out[f"{key}_tok_s"] = round(statistics.median(rates), 1)
        out[f"{key}_tokens"] = tokens
        if mode:
            out[f"{key}_drafted"], out[f"{key}_accepted"] = drafted, accepted
    engine.draft_length = DraftLength()
    plain = out.pop("plain_tokens")
    out["same_greedy_output"] = plain == out.pop("mtp_tokens") == out.pop("mtp_always_tokens")
    out["speedup"] = round(out["mtp_tok_s"] / out["plain_tok_s"], 2)
    out["speedup_always"] = round(out["mtp_always_tok_s"] / out["plain_tok_s"], 2)
    return out


def demo_prompts(engine) -> list[list[int]]:
    """The demo reasoner's real prompts: each sample-project module with a review request."""
    from training.render import reasoner_prompt
    from training.sample_project import build

    with tempfile.TemporaryDirectory() as tmp:
        modules = build(Path(tmp))
    tok = engine.tokenizer
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": reasoner_prompt(m, f"review {m.path}")}],
                                               add_generation_prompt=True)) for m in modules]


def ttft_rows(engine, turns: int, user: int = 96, answer: int = 16) -> list[dict]:
    rows, history = [], []
    engine.reset()
    reused = []
    for turn in range(turns):  # one engine kept across turns
        history = history + _ids(500 + turn, user)
        t0 = time.perf_counter()
        it = engine.generate(history, max_new_tokens=answer, temperature=0)
        first = next(it)
        ttft = time.perf_counter() - t0
        rest = list(it)
        reused.append((len(history), engine.last_stats["cached_tokens"], ttft))
        history = history + [first] + rest
    history = []
    for turn in range(turns):  # the cache reset before each turn
        history = history + _ids(500 + turn, user)
        engine.reset()
        t0 = time.perf_counter()
        it = engine.generate(history, max_new_tokens=answer, temperature=0)
        first = next(it)
        ttft = time.perf_counter() - t0
        rest = list(it)
        n, cached, t_reuse = reused[turn]
        assert n == len(history)
        rows.append({"turn": turn + 1, "prompt_tokens": n, "cached_tokens": cached,
                     "ttft_reuse_s": round(t_reuse, 4), "ttft_fresh_s": round(ttft, 4),
                     "speedup": round(ttft / t_reuse, 1)})
        history = history + [first] + rest
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mtp_bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--turns", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    result = {"threads": args.threads, "dtype": args.dtype, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "decode": [], "ttft": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mid = write_tiny_v3(tmp / "mid", mtp=True, dtype=args.dtype, tokenizer=False, **MID)
        one = write_tiny_v3(tmp / "one", mtp="copy", dtype=args.dtype, tokenizer=False,
                            **{**MID, "num_hidden_layers": 1, "first_k_dense_replace": 0})
        max_seq = 64 + args.new + args.turns * (96 + 16) + 8
        engines = {"v3-mid (random MTP)": Engine.load(mid, dtype=args.dtype, max_seq_len=max_seq),
                   "v3-1layer (copy MTP)": Engine.load(one, dtype=args.dtype, max_seq_len=max_seq)}
        for name, engine in engines.items():
            prompts = [_ids(100 + p, 64, engine.args.vocab_size - 10) for p in range(args.prompts)]
            result["decode"].append(decode_row(engine, name, args.new, prompts))
        demo = ROOT / "app" / "data" / "demo"
        if demo.is_dir() and any(demo.glob("**/config.json")):
            folder = next(demo.glob("**/config.json")).parent
            engine = Engine.load(folder, dtype=args.dtype, quant="int8", max_seq_len=2048)
            if engine.has_mtp:
                result["decode"].append(decode_row(engine, "demo reasoner (int8)", 600, demo_prompts(engine)))
            else:
                result["demo"] = f"{folder}: no MTP module"
        else:
            result["demo"] = "no trained demo reasoner under app/data/demo when this ran"
        result["ttft"] = ttft_rows(engines["v3-mid (random MTP)"], args.turns)

    print(f"decode, greedy, {args.dtype}, {args.threads} thread(s), prompt 64, {args.new} new tokens")
    print(f"{'model':26} {'weights':>8} {'plain tok/s':>11} {'mtp tok/s':>9} {'speedup':>7} {'accepted':>9} "
          f"{'always tok/s':>12} {'speedup':>7} {'accepted':>9} {'same out':>8}")
    for r in result["decode"]:
        acc = f"{r['mtp_accepted']}/{r['mtp_drafted']}"
        always = f"{r['mtp_always_accepted']}/{r['mtp_always_drafted']}"
        print(f"{r['model']:26} {r['weights_mb']:>6}MB {r['plain_tok_s']:>11} {r['mtp_tok_s']:>9} {r['speedup']:>6}x "
              f"{acc:>9} {r['mtp_always_tok_s']:>12} {r['speedup_always']:>6}x {always:>9} {str(r['same_greedy_output']):>8}")
    if "demo" in result:
        print("demo:", result["demo"])
    print("\ntime to first token, growing conversation (v3-mid)")
    print(f"{'turn':>4} {'prompt':>6} {'cached':>6} {'reuse s':>8} {'fresh s':>8} {'speedup':>7}")
    for r in result["ttft"]:
        print(f"{r['turn']:>4} {r['prompt_tokens']:>6} {r['cached_tokens']:>6} {r['ttft_reuse_s']:>8} "
              f"{r['ttft_fresh_s']:>8} {r['speedup']:>6}x")
    out = ROOT / "bench" / "results" / "mtp_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
