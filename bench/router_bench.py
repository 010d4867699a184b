"""How long the router takes per request, over the labelled set.

    python bench/router_bench.py [--repeat N]

Prints a table and writes bench/results/router_bench.json. Also times loading the rules
(once per process) and the accuracy on every tests/data/router_*.jsonl set, so speed and quality are seen together.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import router  # noqa: E402


def _rows(name: str) -> list[dict]:
    path = ROOT / "tests" / "data" / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _accuracy(rows: list[dict]) -> tuple[float, float]:
    decisions = [router.route(r["text"], after_plan=r["after_plan"]) for r in rows]
    exact = sum((d.role, d.intent) == (r["role"], r["intent"]) for d, r in zip(decisions, rows))
    role = sum(d.role == r["role"] for d, r in zip(decisions, rows))
    return exact / len(rows), role / len(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20, help="passes over the labelled set (default 20)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    router.rules.cache_clear()
    router.rules()
    load_ms = (time.perf_counter() - t0) * 1e3

    rows = _rows("router_labelled.jsonl")
    groups = {"all": rows,
              "chinese": [r for r in rows if router._CJK.search(r["text"])],
              "english": [r for r in rows if not router._CJK.search(r["text"])],
              "pasted code/diff": [r for r in rows if "\n" in r["text"]]}
    per_call: dict[str, list[float]] = {name: [] for name in groups}
    fastest: dict[str, list[float]] = {name: [float("inf")] * len(group) for name, group in groups.items()}
    for _ in range(args.repeat):
        for name, group in groups.items():
            for i, r in enumerate(group):
                start = time.perf_counter_ns()
                router.route(r["text"], after_plan=r["after_plan"])
                us = (time.perf_counter_ns() - start) / 1e3
                per_call[name].append(us)
                fastest[name][i] = min(fastest[name][i], us)

    table = []
    for name, times in per_call.items():
        times.sort()
        table.append({"requests": name, "n": len(groups[name]), "mean_us": statistics.fmean(times),
                      "p50_us": times[len(times) // 2], "p99_us": times[int(len(times) * 0.99)],
                      "max_us": times[-1],
                      # each request's fastest run, averaged: the cost without other processes' noise
                      "best_mean_us": statistics.fmean(fastest[name])})
    sets = {path.stem.removeprefix("router_"): _accuracy(_rows(path.name))
            for path in sorted((ROOT / "tests" / "data").glob("router_*.jsonl"))}

    print(f"router: rules loaded in {load_ms:.1f} ms; {args.repeat} passes over {len(rows)} labelled requests")
    print(f"{'requests':<18}{'n':>5}{'mean µs':>10}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}{'best µs':>10}")
    for row in table:
        print(f"{row['requests']:<18}{row['n']:>5}{row['mean_us']:>10.1f}{row['p50_us']:>10.1f}"
              f"{row['p99_us']:>10.1f}{row['max_us']:>10.1f}{row['best_mean_us']:>10.1f}")
    print("best µs: each request's fastest run, averaged (the cost without noise from other processes)")
    print("accuracy role+intent / role: " + ", ".join(f"{name} {e:.1%} / {r:.1%}" for name, (e, r) in sets.items()))

    out = ROOT / "bench" / "results" / "router_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rules_load_ms": load_ms, "repeat": args.repeat, "table": table,
        "accuracy": {name: {"role_intent": e, "role": r} for name, (e, r) in sets.items()},
        "python": platform.python_version(), "machine": platform.machine(),
    }, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
