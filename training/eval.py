"""Eval of the demo models on held-out modules (the generator's "heldout" style: other names,
files and docstring phrasings than training), through Duet's real prompts.

    python -m training.eval [--reasoner DIR] [--coder FILE.gguf] [--n 60] [--seed 7]

Reports, and writes as JSON to bench/results/demo_eval.json:
- reasoner: the answer names the right function and bug kind (and the exact change), with its
  thinking, and the same model with its thinking suppressed (an empty ``<think></think>``);
- coder: given the teacher's (correct) plan, its SEARCH/REPLACE blocks apply and the tests pass;
  and with no plan at all (the request straight to the coder);
- end to end: the reasoner's plan → the coder's hand-off brief (app.prompts.handoff_brief) →
  app.workspace applies the blocks → the module's tests run;
- tokens/s of both models (greedy decode, as the demo runs them).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from training.render import (END_THINK, REQUESTS_EN, REQUESTS_ZH, answer, chat, coder_prompt, lang_of,
                             reasoner_prompt)
from training.tasks import KIND_EN, KIND_ZH, KINDS, Module, make_module

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = REQUESTS_EN + REQUESTS_ZH


def heldout_cases(n: int, seed: int) -> list[tuple[Module, str]]:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        m = make_module(rng, "heldout", kind=KINDS[i % len(KINDS)])
        cases.append((m, REQUESTS[i % len(REQUESTS)].format(path=m.path, func=m.func.name)))
    return cases


# ---------------------------------------------------------------------------- models

class Reasoner:
    def __init__(self, folder, quant="int8"):
        from local_engine import Engine

        self.engine = Engine.load(str(folder), quant=quant, max_seq_len=2048)
        self.tok = self.engine.tokenizer

    def run(self, user_text: str, *, think: bool = True, max_new: int = 700):
        prompt = self.tok.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True)
        if not think:
            prompt += "\n" + END_THINK + "\n\n"
        ids = self.tok.encode(prompt)
        t = time.perf_counter()
        out = list(self.engine.generate(ids, max_new_tokens=max_new, temperature=0.0,
                                        stop_ids=[self.tok.eos_token_id]))
        dt = time.perf_counter() - t
        out = [i for i in out if i != self.tok.eos_token_id]
        text = self.tok.decode(out)
        if think:
            trace, _, ans = text.partition(END_THINK)
        else:
            trace, ans = "", text
        return trace.strip(), ans.strip(), len(out), dt


class Coder:
    def __init__(self, gguf_path):
        from llama_cpp import Llama

        self.llm = Llama(str(gguf_path), n_ctx=2048, n_threads=2, verbose=False)
        self.template = self.llm.metadata["tokenizer.chat_template"]

    def run(self, user_text: str, max_new: int = 300):
        import jinja2

        prompt = jinja2.Environment().from_string(self.template).render(
            messages=[{"role": "user", "content": user_text}], add_generation_prompt=True,
            bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        self.llm.reset()
        t = time.perf_counter()
        out = self.llm.create_completion(tokens, max_tokens=max_new, temperature=0.0)
        dt = time.perf_counter() - t
        return out["choices"][0]["text"], out["usage"]["completion_tokens"], dt


# ---------------------------------------------------------------------------- scoring

def score_plan(ans: str, m: Module) -> dict:
    first = ans.strip().split("\n", 1)[0]
    name = m.func.name
    func_ok = f"function `{name}`" in first or f"函数 `{name}`" in first
    kind_ok = KIND_EN[m.mutation.kind] in first or KIND_ZH[m.mutation.kind] in first
    change_ok = f"`{m.good_line.strip()}`" in ans
    return {"function": func_ok, "kind": kind_ok, "found": func_ok and kind_ok, "change": change_ok}


def apply_and_test(m: Module, coder_text: str) -> tuple[bool, str]:
    """Blocks applied by app.workspace to a temp copy of the module, then its tests run."""
    from app.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / m.path).write_text(m.source, encoding="utf-8")
        (root / m.test_path).write_text(m.test_source, encoding="utf-8")
        ws = Workspace(root)
        try:
            cs = ws.propose(coder_text)
        except Exception as e:  # noqa: BLE001 - model output is untrusted
            return False, f"propose failed: {e}"
        if cs.rejected or not cs.edits:
            return False, "rejected: " + "; ".join(f"{r.path}: {r.reason}" for r in cs.rejected) if cs.rejected else "no edits"
        ws.apply(cs)
        r = subprocess.run([sys.executable, m.test_path], cwd=root, capture_output=True, text=True, timeout=30)
        return r.returncode == 0, (r.stdout + r.stderr)[-300:]


def evaluate(reasoner_dir, coder_gguf, n: int, seed: int, log=print, max_new: int = 700) -> dict:
    cases = heldout_cases(n, seed)
    rs = Reasoner(reasoner_dir)
    cd = Coder(coder_gguf)
    rows = []
    tot = {"r_tok": 0, "r_s": 0.0, "c_tok": 0, "c_s": 0.0}
    for i, (m, request) in enumerate(cases):
        lang = lang_of(request)
        user = reasoner_prompt(m, request)
        trace, ans, k, dt = rs.run(user, think=True, max_new=max_new)
        tot["r_tok"] += k
        tot["r_s"] += dt
        think = score_plan(ans, m)
        _, ans0, k0, dt0 = rs.run(user, think=False, max_new=max_new)
        tot["r_tok"] += k0
        tot["r_s"] += dt0
        nothink = score_plan(ans0, m)
        # coder given the correct (teacher) plan, as the hand-off sends it
        text, ck, cdt = cd.run(coder_prompt(m, request, answer(m, lang), "handoff"))
        tot["c_tok"] += ck
        tot["c_s"] += cdt
        given_plan, _ = apply_and_test(m, text)
        # coder alone: the request straight to it (what the router does with "fix ...")
        direct_req = ("修复 {path} 里的错误" if lang == "zh" else "fix the bug in {path}").format(path=m.path)
        text_d, _, _ = cd.run(coder_prompt(m, direct_req, None, "direct"))
        direct, _ = apply_and_test(m, text_d)
        # end to end: the reasoner's own answer is the plan
        e2e = False
        if ans.strip():
            text_e, _, _ = cd.run(coder_prompt(m, request, ans, "handoff"))
            e2e, _ = apply_and_test(m, text_e)
        row = {"i": i, "path": m.path, "function": m.func.name, "kind": m.mutation.kind, "request": request,
               "think": think, "nothink": nothink, "coder_given_plan": given_plan, "coder_direct": direct,
               "end_to_end": e2e, "think_tokens": k}
        rows.append(row)
        log(f"{i:3d} {m.mutation.kind:13s} think={int(think['found'])} nothink={int(nothink['found'])} "
            f"coder={int(given_plan)} direct={int(direct)} e2e={int(e2e)}  {request}")

    def rate(get):
        return round(sum(1 for r in rows if get(r)) / len(rows), 3)

    by_kind = {k: {"n": sum(1 for r in rows if r["kind"] == k),
                   "think": rate_k(rows, k, lambda r: r["think"]["found"]),
                   "nothink": rate_k(rows, k, lambda r: r["nothink"]["found"]),
                   "end_to_end": rate_k(rows, k, lambda r: r["end_to_end"])} for k in KINDS}
    return {
        "n": len(rows), "seed": seed, "style": "heldout",
        "reasoner_found": rate(lambda r: r["think"]["found"]),
        "reasoner_exact_change": rate(lambda r: r["think"]["change"]),
        "reasoner_nothink_found": rate(lambda r: r["nothink"]["found"]),
        "reasoner_nothink_exact_change": rate(lambda r: r["nothink"]["change"]),
        "coder_given_plan": rate(lambda r: r["coder_given_plan"]),
        "coder_direct": rate(lambda r: r["coder_direct"]),
        "end_to_end": rate(lambda r: r["end_to_end"]),
        "reasoner_tok_s": round(tot["r_tok"] / max(tot["r_s"], 1e-9), 1),
        "coder_tok_s": round(tot["c_tok"] / max(tot["c_s"], 1e-9), 1),
        "by_kind": by_kind,
        "rows": rows,
    }


def rate_k(rows, kind, get):
    sel = [r for r in rows if r["kind"] == kind]
    return round(sum(1 for r in sel if get(r)) / len(sel), 3) if sel else None


def main(argv=None):
    from app import demo

    ap = argparse.ArgumentParser(prog="python -m training.eval")
    ap.add_argument("--reasoner", type=Path, default=demo.reasoner_path())
    ap.add_argument("--coder", type=Path, default=demo.coder_path())
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-new", type=int, default=700, help="the reasoner's token limit per answer")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_eval.json")
    a = ap.parse_args(argv)
    res = evaluate(a.reasoner, a.coder, a.n, a.seed, max_new=a.max_new)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(f"held-out modules: {res['n']} (seed {res['seed']})")
    print(f"{'metric':44s} value")
    for key, label in [("reasoner_found", "reasoner: right function + kind (thinking)"),
                       ("reasoner_exact_change", "reasoner: exact change in the plan"),
                       ("reasoner_nothink_found", "reasoner, thinking suppressed: function + kind"),
                       ("reasoner_nothink_exact_change", "reasoner, thinking suppressed: exact change"),
                       ("coder_given_plan", "coder given a correct plan: tests pass"),
                       ("coder_direct", "coder alone (no plan): tests pass"),
                       ("end_to_end", "end to end (reasoner → coder → apply → test)"),
                       ("reasoner_tok_s", "reasoner tokens/s (local_engine int8)"),
                       ("coder_tok_s", "coder tokens/s (llama.cpp F16)")]:
        v = res[key]
        print(f"{label:44s} {v}" if key.endswith("tok_s") else f"{label:44s} {v:.1%}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
