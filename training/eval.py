"""Eval of the demo models on held-out modules (the generator's "heldout" style: other names,
files and docstring phrasings than training), through Duet's real prompts.

    python -m training.eval [--reasoner DIR] [--coder FILE.gguf] [--n 60] [--seed 7]

Reports, and writes as JSON to bench/results/demo_eval.json:
- reasoner: the answer names the right function and bug kind (and the exact change), with its
  thinking, and the same model with its thinking suppressed (an empty ``<think></think>``). As
  Duet runs it: the lines it reads back held to the module's and its answer's inline code to
  its thinking's or the module's (``exact_quotes``), and the names in its inline code to the
  module's (``known_names``); and, for comparison, with those held but not the names, decoded
  freely, and asked with the design template (`duet run
  --role reasoner`'s and `/plan`'s) rather than the router's;
- coder: given the teacher's (correct) plan, its SEARCH/REPLACE blocks apply and the tests pass;
  and with no plan at all (the request straight to the coder). As Duet runs it: sampled under
  the edit grammar (``constrain_edits``) with its REPLACE names held (``known_names``), and, for
  comparison, given the plan, sampled freely;
- end to end: the reasoner's plan → the coder's hand-off brief (app.prompts.handoff_brief) →
  app.workspace applies the blocks → the module's tests run; and the same through
  ``duet run --role reasoner --file MODULE --apply --test ...`` as a user runs it;
- tokens/s of both models (greedy decode, as the demo runs them);
- reading back (``--part copy``): with the teacher's trace fed in, how much of it the reasoner
  predicts, token by token and whole (a finer measure of the copying its traces need).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.config import demo_role
from training.render import (END_THINK, REQUESTS_EN, REQUESTS_ZH, answer, coder_prompt, lang_of,
                             reasoner_prompt)
from training.tasks import KIND_EN, KIND_ZH, KINDS, Module, make_module

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = REQUESTS_EN + REQUESTS_ZH


STYLE = "heldout"  # "train": fresh modules in the training style (names from its pools), for comparison
TEST_FIRST = True  # duet run as the demo runs it: the tests before the plan (--no-test-first: without)


def heldout_cases(n: int, seed: int) -> list[tuple[Module, str]]:
    if STYLE == "sample":  # the demo's sample project, each module with each request form
        import tempfile

        from training.sample_project import build

        mods = build(Path(tempfile.mkdtemp()))
        return [(m, REQUESTS[j % len(REQUESTS)].format(path=m.path, func=m.func.name))
                for j in range(len(REQUESTS)) for m in mods][:n]
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        m = make_module(rng, STYLE, kind=KINDS[i % len(KINDS)])
        cases.append((m, REQUESTS[i % len(REQUESTS)].format(path=m.path, func=m.func.name)))
    return cases


# ---------------------------------------------------------------------------- models

class Reasoner:
    def __init__(self, folder, quant="int8"):
        from local_engine import Engine

        self.engine = Engine.load(str(folder), quant=quant, max_seq_len=2048)
        self.tok = self.engine.tokenizer
        self.decoded, self.decode_s = 0, 0.0  # decode only (after the first token)
        self.token_bytes = self.tok.token_bytes()

    def run(self, user_text: str, *, think: bool = True, max_new: int = 700, files=None, names: bool = True,
            failing=frozenset()):
        """Greedy; with ``files``, the numbered lines it writes held to theirs and its answer's
        inline code to its thinking's or theirs (``exact_quotes``) and, with ``names``, the names
        in its inline code (``known_names``), with ``failing`` (the functions failing tests
        reach) its reading focused on them, as the demo runs it."""
        from app.exact_quotes import Quotes
        from app.held_reply import HeldReply

        prompt = self.tok.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True)
        ids = self.tok.encode(prompt)
        if not think:  # an empty trace, in the tokens training gave it: "\n" "</think>" "\n" (the
            # model goes on "\n" "**Bug"; the text "</think>\n\n" would be one "\n\n" token
            # it never saw there, after which it starts its answer mid-sentence)
            ids += self.tok.encode("\n" + END_THINK + "\n")
        out, first = [], None
        stops = self.tok.turn_markers(ids) | {self.tok.eos_token_id}  # as the local backend stops
        if files:  # as the local backend runs it: held to the rules, with its look back
            held = HeldReply(self.engine, ids, Quotes(tuple(files), frozenset(failing)), thinking=think, names=names,
                             token_bytes=self.token_bytes)
            tokens = held.tokens(max_new_tokens=max_new, temperature=0.0, stop_ids=stops)
        else:
            tokens = self.engine.generate(ids, max_new_tokens=max_new, temperature=0.0, stop_ids=stops)
        for token in tokens:
            out.append(int(token))
            if first is None:
                first = time.perf_counter()  # the prompt is read: decode starts
        dt = time.perf_counter() - first if first is not None else 0.0
        self.decoded += max(len(out) - 1, 0)
        self.decode_s += dt
        out = [i for i in out if i != self.tok.eos_token_id]
        text = self.tok.decode(out)
        if think:
            trace, _, ans = text.partition(END_THINK)
        else:
            trace, ans = "", text
        return trace.strip(), ans.strip(), len(out), dt


class Coder:
    """The coder GGUF on llama.cpp. ``files`` given to ``run``: its reply is sampled under the
    edit grammar for them, as Duet runs the demo coder (``constrain_edits``); else freely."""

    def __init__(self, gguf_path):
        from llama_cpp import Llama

        self.llm = Llama(str(gguf_path), n_ctx=2048, n_threads=1, verbose=False)
        self.template = self.llm.metadata["tokenizer.chat_template"]
        self.known_names = demo_role("coder").known_names  # its REPLACE names held, as Duet runs it
        self.plan_lines = demo_role("coder").plan_lines  # its REPLACE lines to the file's and the plan's, as Duet holds its first reply to a plan

    def run(self, user_text: str, max_new: int = 600, files=None, plan: str | None = None):
        import jinja2

        from app.backends.llamacpp import compile_grammar
        from app.backends.llama_sampling import drawing
        from app.workspace.edit_grammar import edit_grammar, held_names, plan_lines, plan_target

        names = held_names(files, plan) if files and self.known_names else None
        lines = plan_lines(files, plan) if files and self.plan_lines else None
        covers = plan_target(files, plan) if lines is not None else None
        grammar = compile_grammar(self.llm, edit_grammar(files, names=names, lines=lines, covers=covers),
                                  "coder") if files else None

        prompt = jinja2.Environment().from_string(self.template).render(
            messages=[{"role": "user", "content": user_text}], add_generation_prompt=True,
            bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        self.llm.reset()
        self.llm.eval(tokens[:-1])  # read the prompt first, so the timing below is decode
        t = time.perf_counter()
        with drawing(self.llm, grammar):  # as Duet draws: the grammar checked last
            out = self.llm.create_completion(tokens, max_tokens=max_new, temperature=0.0)
        dt = time.perf_counter() - t
        return out["choices"][0]["text"], out["usage"]["completion_tokens"], dt


# ---------------------------------------------------------------------------- scoring

def score_plan(ans: str, m: Module) -> dict:
    first = ans.strip().split("\n", 1)[0]
    name = m.func.name
    func_ok = f"function `{name}`" in first or f"函数 `{name}`" in first
    kind_ok = KIND_EN[m.mutation.kind] in first or KIND_ZH[m.mutation.kind] in first
    good = m.good_line.strip()  # the plan's own change, "... to `good`" (zh "... 改为 `good`")
    change_ok = f"to `{good}`" in ans or f"改为 `{good}`" in ans
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


def failing_of(m: Module) -> frozenset[str]:
    """The functions the module's tests, run for real, fail in, found in their output as
    `duet run` with ``test_first`` finds them for its first plan."""
    from app.conversation.verify import failing_functions

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / m.path).write_text(m.source, encoding="utf-8")
        (Path(tmp) / m.test_path).write_text(m.test_source, encoding="utf-8")
        r = subprocess.run([sys.executable, m.test_path], cwd=tmp, capture_output=True, text=True, timeout=30)
    return failing_functions(r.stdout + r.stderr, [(m.path, m.source)], reach=False)


def coder_in_duet(config_path: Path, m: Module, request: str, plan: str) -> bool:
    """The coder handed ``plan`` as `duet run` hands it a plan (`Conversation.prepare_handoff`),
    in Duet's own loop: blocks checked (syntax too) and applied, the module's tests run, a
    rejected block or a failing round retried within the rounds as Duet retries them. Whether
    the run ends with the tests passing."""
    from app.config import load_config
    from app.conversation import Conversation
    from app.conversation.steps import Plan
    from app.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / m.path).write_text(m.source, encoding="utf-8")
        (root / m.test_path).write_text(m.test_source, encoding="utf-8")
        config = load_config(config_path)
        ws = Workspace.from_config(str(root), config)
        ws.context.add(m.path)
        conv = Conversation(config, workspace=ws, save=False, test_command=f"{shlex.quote(sys.executable)} {m.test_path}")
        conv.plan = Plan.from_answer(plan)
        events = list(conv.run(conv.prepare_handoff(request), approve=lambda changes: changes))
    return getattr(events[-1], "status", None) == "passed"


def eval_coder(coder_gguf, n: int, seed: int, log=print) -> dict:
    """The coder alone: given the teacher's (correct) plan through the hand-off brief (one
    reply, applied and tested), the same in Duet's own loop as `duet run` hands it a plan
    (``coder_in_duet``: its retries too), and given no plan (the request straight to it, as the
    router sends "fix ...")."""
    from app.backends import close_all
    from app.config_writer import demo_table

    cd = Coder(coder_gguf)
    rows, tok, secs = [], 0, 0.0
    tmp = tempfile.TemporaryDirectory()
    config_path = Path(tmp.name) / "config.toml"
    config_path.write_text(demo_table("coder", Path(coder_gguf).resolve()), encoding="utf-8")
    for i, (m, request) in enumerate(heldout_cases(n, seed)):
        lang = lang_of(request)
        files = [(m.path, m.source)]
        brief = coder_prompt(m, request, answer(m, lang), "handoff")
        text, ck, cdt = cd.run(brief, files=files, plan=answer(m, lang))
        tok, secs = tok + ck, secs + cdt
        given_plan, why = apply_and_test(m, text)
        in_duet = coder_in_duet(config_path, m, request, answer(m, lang))
        free, why_free = apply_and_test(m, cd.run(brief)[0])
        direct_req = ("修复 {path} 里的错误" if lang == "zh" else "fix the bug in {path}").format(path=m.path)
        direct, _ = apply_and_test(m, cd.run(coder_prompt(m, direct_req, None, "direct"), files=files)[0])
        rows.append({"i": i, "path": m.path, "function": m.func.name, "kind": m.mutation.kind, "request": request,
                     "coder_given_plan": given_plan, "coder_given_plan_duet": in_duet, "coder_given_plan_free": free,
                     "coder_direct": direct, "why": "" if given_plan else why, "why_free": "" if free else why_free})
        log(f"{i:3d} {m.mutation.kind:13s} coder={int(given_plan)} in_duet={int(in_duet)} free={int(free)} "
            f"direct={int(direct)}  {request}")
    close_all()
    tmp.cleanup()
    return {"coder_n": len(rows), "coder_given_plan": _rate(rows, "coder_given_plan"),
            "coder_given_plan_duet": _rate(rows, "coder_given_plan_duet"),
            "coder_given_plan_free": _rate(rows, "coder_given_plan_free"),
            "coder_direct": _rate(rows, "coder_direct"), "coder_tok_s": round(tok / max(secs, 1e-9), 1),
            "coder_by_kind": {k: rate_k(rows, k, lambda r: r["coder_given_plan"]) for k in KINDS},
            "coder_rows": rows}


def eval_reasoner(reasoner_dir, coder_gguf, n: int, seed: int, log=print, max_new: int = 700) -> dict:
    """The reasoner with its thinking and with it suppressed, its numbered lines held to the
    module's as Duet runs it (and, thinking, decoded freely, or asked with the design template
    `duet run --role reasoner` and `/plan` send rather than the router's; and as `duet run` with
    ``test_first`` asks, after the module's tests ran: design template, reading focused on the
    functions they fail in); end to end: its answer is the plan the coder gets (hand-off brief),
    the blocks are applied and the tests run."""
    rs = Reasoner(reasoner_dir)
    cd = Coder(coder_gguf)
    rows = []
    for i, (m, request) in enumerate(heldout_cases(n, seed)):
        user, files = reasoner_prompt(m, request), [(m.path, m.source)]
        trace, ans, k, _ = rs.run(user, think=True, max_new=max_new, files=files)
        think = score_plan(ans, m)
        _, ans_design, _, _ = rs.run(reasoner_prompt(m, request, "design"), think=True, max_new=max_new, files=files)
        design = score_plan(ans_design, m)  # asked as `duet run --role reasoner` and `/plan` ask
        _, ans_lines, _, _ = rs.run(user, think=True, max_new=max_new, files=files, names=False)
        lines_only = score_plan(ans_lines, m)
        _, ans_free, _, _ = rs.run(user, think=True, max_new=max_new)
        free = score_plan(ans_free, m)
        _, ans0, _, _ = rs.run(user, think=False, max_new=max_new, files=files)
        nothink = score_plan(ans0, m)
        failing = failing_of(m)  # after its tests ran (duet run's test_first), as duet run asks
        _, ans_tests, _, _ = rs.run(reasoner_prompt(m, request, "design"), max_new=max_new, files=files, failing=failing)
        tests = score_plan(ans_tests, m)
        _, ans0_tests, _, _ = rs.run(reasoner_prompt(m, request, "design"), think=False, max_new=max_new, files=files,
                                     failing=failing)
        nothink_tests = score_plan(ans0_tests, m)
        e2e = False
        if ans.strip():
            e2e, _ = apply_and_test(m, cd.run(coder_prompt(m, request, ans, "handoff"), files=[(m.path, m.source)],
                                              plan=ans)[0])
        rows.append({"i": i, "path": m.path, "function": m.func.name, "kind": m.mutation.kind, "request": request,
                     "think": think, "think_design": design, "think_lines": lines_only, "think_free": free, "nothink": nothink,
                     "think_tests": tests, "nothink_tests": nothink_tests,
                     "end_to_end": e2e, "think_tokens": k,
                     "answer": ans[:400], "nothink_answer": ans0[:400]})
        log(f"{i:3d} {m.mutation.kind:13s} think={int(think['found'])} design={int(design['found'])} "
            f"lines={int(lines_only['found'])} "
            f"free={int(free['found'])} "
            f"nothink={int(nothink['found'])} tests={int(tests['found'])} nothink_tests={int(nothink_tests['found'])} "
            f"e2e={int(e2e)}  {request}")
    by_kind = {k: {"think": rate_k(rows, k, lambda r: r["think"]["found"]),
                   "nothink": rate_k(rows, k, lambda r: r["nothink"]["found"]),
                   "end_to_end": rate_k(rows, k, lambda r: r["end_to_end"])} for k in KINDS}
    f = lambda key, sub: round(sum(1 for r in rows if r[key][sub]) / len(rows), 3)  # noqa: E731
    return {"reasoner_n": len(rows),
            "reasoner_found": f("think", "found"), "reasoner_exact_change": f("think", "change"),
            "reasoner_found_design": f("think_design", "found"), "reasoner_exact_change_design": f("think_design", "change"),
            "reasoner_found_lines": f("think_lines", "found"), "reasoner_exact_change_lines": f("think_lines", "change"),
            "reasoner_found_free": f("think_free", "found"), "reasoner_exact_change_free": f("think_free", "change"),
            "reasoner_nothink_found": f("nothink", "found"), "reasoner_nothink_exact_change": f("nothink", "change"),
            "reasoner_function": f("think", "function"), "reasoner_function_tests": f("think_tests", "function"),
            "reasoner_found_tests": f("think_tests", "found"), "reasoner_exact_change_tests": f("think_tests", "change"),
            "reasoner_nothink_found_tests": f("nothink_tests", "found"),
            "reasoner_nothink_exact_change_tests": f("nothink_tests", "change"),
            "end_to_end": _rate(rows, "end_to_end"),
            "reasoner_tok_s": round(rs.decoded / max(rs.decode_s, 1e-9), 1),
            "reasoner_by_kind": by_kind, "reasoner_rows": rows}


def eval_duet_run(reasoner_dir, coder_gguf, n: int, seed: int, log=print, replans: int = 0) -> dict:
    """End to end as a user runs it: ``duet run --role reasoner --file MODULE --apply --test
    "python test_MODULE.py" REQUEST`` on a fresh workspace per held-out module (in process, so
    the models load once), with a config naming these two models as the demo runs them; with
    ``replans``, ``--replans N`` (a plan whose change fails the tests is undone and the reasoner
    asked again, sampled): its figures are under ``duet_run_replans_*``."""
    import contextlib
    import io

    from app.backends import close_all
    from app.cli import main as duet
    from app.config_writer import demo_table

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(demo_table("reasoner", Path(reasoner_dir).resolve()) + "\n"
                       + demo_table("coder", Path(coder_gguf).resolve())
                       + f"\n[workspace]\ntest_first = {str(TEST_FIRST).lower()}\n", encoding="utf-8")
        for i, (m, request) in enumerate(heldout_cases(n, seed)):
            ws = Path(tmp) / f"ws{i}"
            ws.mkdir()
            (ws / m.path).write_text(m.source, encoding="utf-8")
            (ws / m.test_path).write_text(m.test_source, encoding="utf-8")
            test = f"{shlex.quote(sys.executable)} {m.test_path}"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = duet(["--config", str(cfg), "--workspace", str(ws), "run", "--role", "reasoner", "--file",
                             m.path, "--apply", "--test", test, "--no-save", "--json", "--replans", str(replans),
                             request])
            try:
                report = json.loads(out.getvalue().strip().splitlines()[-1])
            except (ValueError, IndexError):
                report = {"status": f"no JSON (exit {code})"}
            status = report.get("status")
            passed = code == 0 and status == "passed"
            rows.append({"i": i, "path": m.path, "function": m.func.name, "kind": m.mutation.kind,
                         "request": request, "duet_run": passed, "status": status, "replans": report.get("replans")})
            log(f"{i:3d} {m.mutation.kind:13s} duet run={int(passed)} ({status}, re-plans {report.get('replans')})  "
                f"{request}")
    close_all()
    key = "duet_run_replans" if replans else "duet_run"
    result = {f"{key}_n": len(rows), f"{key}_passed": _rate(rows, "duet_run"),
              f"{key}_by_kind": {k: rate_k(rows, k, lambda r: r["duet_run"]) for k in KINDS}, f"{key}_rows": rows}
    if replans:
        result["duet_run_replans_max"] = replans
    return result


def eval_copying(reasoner_dir, n: int, seed: int, log=print) -> dict:
    """How well the reasoner reads the module back: with the teacher's trace fed in (teacher
    forcing, transformers in float32), the share of the trace's tokens it predicts (argmax) and
    of traces it predicts whole. A finer measure than the generation figures: the committed
    reasoner reads training-style modules back almost perfectly and held-out ones far less so,
    which is where its held-out answers go wrong (it writes unfamiliar text from memory)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import DeepseekV3ForCausalLM

    from training.render import reasoner_example

    tok = Tokenizer.from_file(str(Path(reasoner_dir) / "tokenizer.json"))
    model = DeepseekV3ForCausalLM.from_pretrained(reasoner_dir, torch_dtype=torch.float32).eval()
    rng = random.Random(seed)
    hit = total = whole = 0
    for i, (m, request) in enumerate(heldout_cases(n, seed)):
        e = reasoner_example(rng, m, request=request)
        prompt, trace = tok.encode(e.prompt).ids, tok.encode(e.target.split(END_THINK)[0]).ids
        with torch.no_grad():
            logits = model(torch.tensor([prompt + trace])).logits[0]
        ok = logits[len(prompt) - 1:-1].argmax(-1) == torch.tensor(trace)
        hit, total, whole = hit + int(ok.sum()), total + len(trace), whole + int(ok.all())
        log(f"[copy {i + 1}/{n}] {int(ok.sum())}/{len(trace)} trace tokens")
    return {"copy_n": n, "copy_token_acc": hit / max(total, 1), "copy_whole_trace": whole / max(n, 1)}


def _rate(rows, key):
    return round(sum(1 for r in rows if r[key]) / len(rows), 3) if rows else None


def rate_k(rows, kind, get):
    sel = [r for r in rows if r["kind"] == kind]
    return round(sum(1 for r in sel if get(r)) / len(sel), 3) if sel else None


LABELS = [("reasoner_found", "reasoner: right function + kind (thinking)"),
          ("reasoner_exact_change", "reasoner: exact change in the plan"),
          ("reasoner_found_design", "  the same, asked with the design template (duet run, /plan)"),
          ("reasoner_exact_change_design", "  exact change, asked with the design template"),
          ("reasoner_found_lines", "  the same, numbered lines held but not names"),
          ("reasoner_exact_change_lines", "  exact change, numbered lines held but not names"),
          ("reasoner_found_free", "  the same, decoded without exact_quotes"),
          ("reasoner_exact_change_free", "  exact change, decoded without exact_quotes"),
          ("reasoner_nothink_found", "reasoner, thinking suppressed: function + kind"),
          ("reasoner_nothink_exact_change", "reasoner, thinking suppressed: exact change"),
          ("reasoner_function", "reasoner: right function (thinking)"),
          ("reasoner_function_tests", "reasoner: right function after its failing tests"),
          ("reasoner_found_tests", "after its failing tests (test_first, design): function + kind"),
          ("reasoner_exact_change_tests", "  exact change, after its failing tests"),
          ("reasoner_nothink_found_tests", "  thinking suppressed, after its failing tests: function + kind"),
          ("reasoner_nothink_exact_change_tests", "  thinking suppressed, after its failing tests: exact change"),
          ("coder_given_plan", "coder given a correct plan: tests pass"),
          ("coder_given_plan_duet", "  the same in Duet's loop, as duet run hands it a plan (its retries)"),
          ("coder_given_plan_free", "  the same, sampled without the edit grammar"),
          ("coder_direct", "coder alone (no plan): tests pass"),
          ("end_to_end", "end to end (reasoner → coder → apply → test)"),
          ("duet_run_passed", "end to end through `duet run --apply --test`"),
          ("duet_run_replans_passed", "  the same with --replans (the tests choose among plans)"),
          ("copy_token_acc", "reasoner reading back (teacher-forced): trace tokens"),
          ("copy_whole_trace", "reasoner reading back (teacher-forced): whole traces"),
          ("reasoner_tok_s", "reasoner decode tokens/s (local_engine int8)"),
          ("coder_tok_s", "coder decode tokens/s (llama.cpp F16, 1 thread)")]


def main(argv=None):
    from app import demo

    ap = argparse.ArgumentParser(prog="python -m training.eval")
    ap.add_argument("--reasoner", type=Path, default=demo.reasoner_path())
    ap.add_argument("--coder", type=Path, default=demo.coder_path())
    ap.add_argument("--n", type=int, default=30, help="held-out modules for the reasoner and end to end")
    ap.add_argument("--n-coder", type=int, default=60, help="held-out modules for the coder alone")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-new", type=int, default=900, help="the reasoner's token limit per answer")
    ap.add_argument("--n-run", type=int, default=20, help="held-out modules through `duet run`")
    ap.add_argument("--replans", type=int, default=4,
                    help="the run part also runs `duet run --replans N` (0: only without re-plans)")
    ap.add_argument("--part", choices=["all", "coder", "reasoner", "run", "copy"], default="all",
                    help="run one part; its figures are merged into --out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_eval.json")
    ap.add_argument("--style", choices=["heldout", "train", "sample"], default="heldout",
                    help="heldout: the second generator's names and phrasings; train: new modules in the training style")
    ap.add_argument("--no-test-first", action="store_true",
                    help="duet run without the tests before the plan ([workspace] test_first = false)")
    a = ap.parse_args(argv)
    global STYLE, TEST_FIRST
    STYLE, TEST_FIRST = a.style, not a.no_test_first
    res = json.loads(a.out.read_text()) if a.part != "all" and a.out.is_file() else {}
    res.update({"seed": a.seed, "style": a.style})
    if a.part in ("all", "coder"):
        res.update(eval_coder(a.coder, a.n_coder, a.seed))
    if a.part in ("all", "reasoner"):
        res.update(eval_reasoner(a.reasoner, a.coder, a.n, a.seed, max_new=a.max_new))
    if a.part in ("all", "run"):
        res.update(eval_duet_run(a.reasoner, a.coder, a.n_run, a.seed))
        if a.replans:
            res.update(eval_duet_run(a.reasoner, a.coder, a.n_run, a.seed, replans=a.replans))
    if a.part in ("all", "copy"):
        res.update(eval_copying(a.reasoner, a.n, a.seed))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(f"held-out modules (seed {a.seed}): reasoner {res.get('reasoner_n')}, coder {res.get('coder_n')}")
    print(f"{'metric':48s} value")
    for key, label in LABELS:
        v = res.get(key)
        if v is not None:
            print(f"{label:48s} {v}" if key.endswith("tok_s") else f"{label:48s} {v:.1%}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
