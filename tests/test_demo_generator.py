"""The demo models' training data: seeded modules with one planted bug their tests catch,
Duet's own prompts around them, and teacher answers that really fix the bug."""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys

import pytest

from app.prompts import build_prompt, strip_thinking
from app.workspace import Workspace
from training.render import (BOS, EOS, END_THINK, answer, chat, coder_answer, coder_example, reasoner_example,
                             reasoner_prompt, thinking)
from training import tasks
from training.tasks import _WORDS, KINDS, POOLS, make_module


def _modules(style, n, seed):
    rng = random.Random(seed)
    return [make_module(rng, style, kind=KINDS[i % len(KINDS)]) for i in range(n)]


def _run_tests(folder, m) -> int:
    return subprocess.run([sys.executable, m.test_path], cwd=folder, capture_output=True, timeout=60).returncode


def test_a_seed_gives_the_same_module_every_time():
    a = make_module(random.Random(42), "train")
    b = make_module(random.Random(42), "train")
    assert (a.path, a.source, a.test_source) == (b.path, b.source, b.test_source)
    assert make_module(random.Random(43), "train").source != a.source


@pytest.mark.parametrize("style", ["train", "heldout"])
def test_the_planted_bug_fails_its_tests_and_the_fix_passes(tmp_path, style):
    for i, m in enumerate(_modules(style, 12, seed=5)):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / m.test_path).write_text(m.test_source)
        (folder / m.path).write_text(m.source)
        assert _run_tests(folder, m) != 0, m.source
        (folder / m.path).write_text(m.fixed)
        assert _run_tests(folder, m) == 0, m.fixed


def test_modules_keep_to_the_domain_one_bug_on_a_unique_line():
    for m in _modules("train", 60, seed=9) + _modules("heldout", 30, seed=9):
        assert 1 <= len(m.funcs) <= 4
        for f in m.funcs:
            assert 2 <= len(f.lines()) <= 12 and f.doc.count("\n") == 0
        bad = [a for a, b in zip(m.source.splitlines(), m.fixed.splitlines()) if a != b]
        assert bad == [m.bad_line]
        assert m.source.count(m.bad_line + "\n") == 1
        assert m.source.splitlines()[m.bug_line_no - 1] == m.bad_line


def test_every_bug_kind_occurs_in_both_styles():
    for style in ("train", "heldout"):
        assert {m.mutation.kind for m in _modules(style, 24, seed=3)} == set(KINDS)


@pytest.fixture(params=["syllables", "pieces"])
def name_parts(request, monkeypatch):
    """Both ways training invents names: the reasoner's recipe and the coder's."""
    monkeypatch.setattr(tasks, "NAME_PARTS", request.param)
    return request.param


SYLLABLE_WORD = re.compile(r"([bcdfghjklmnprstvwz][aeiou][nrlst]?)+")


def test_invented_names_are_syllables_or_tokenizer_pieces_as_the_recipe_says(name_parts):
    rng = random.Random(4)
    invented = [part.rstrip("0123456789") for _ in range(400) for part in tasks.random_name(rng).split("_")]
    invented = [w for w in invented if w and w not in _WORDS]
    assert len(invented) > 150
    syllabic = sum(bool(SYLLABLE_WORD.fullmatch(w)) for w in invented) / len(invented)
    if name_parts == "syllables":
        assert syllabic == 1.0
    else:  # pieces: consonant runs, vowel runs, whole tokens ("urvroot", "numberroduct")
        assert syllabic < 0.3, invented[:20]


def test_heldout_modules_share_no_file_or_function_names_with_training(name_parts):
    assert not set(POOLS["train"]["files"]) & set(POOLS["heldout"]["files"])
    train = {f.name for m in _modules("train", 300, seed=1) for f in m.funcs}
    held = {f.name for m in _modules("heldout", 150, seed=2) for f in m.funcs}
    assert not train & held, sorted(train & held)
    train_docs = {f.doc for m in _modules("train", 300, seed=1) for f in m.funcs}
    held_docs = {f.doc for m in _modules("heldout", 150, seed=2) for f in m.funcs}
    assert not train_docs & held_docs


def test_the_reasoner_sees_the_prompt_duet_sends():
    m = make_module(random.Random(1), "train")
    request = f"review {m.path}"
    # "review" routes to the reasoner: its prompt is build_prompt's, with the file numbered
    assert reasoner_prompt(m, request) == build_prompt("reasoner", "review", request, files=[(m.path, m.source)])
    e = reasoner_example(random.Random(1), m, request=request)
    assert e.prompt.startswith(BOS) and e.prompt.endswith("<think>\n")
    assert e.target.endswith(EOS) and END_THINK in e.target


def test_the_reasoner_trains_on_the_design_template_duet_run_and_plan_send_in_the_share_asked():
    from training.train import example_stream

    m = make_module(random.Random(1), "train")
    request = f"fix the bug in {m.path}"
    # `duet run --role reasoner` and `/plan` ask with the design template, whatever the router says
    assert reasoner_prompt(m, request, "design") == build_prompt("reasoner", "design", request,
                                                               files=[(m.path, m.source)])
    assert reasoner_prompt(m, request) != reasoner_prompt(m, request, "design")

    def designs(share, n=200):
        stream = example_stream("reasoner", 5, 0.1, "syllables", share)
        return [e.prompt.count("Goal: a design") for e in (next(stream) for _ in range(n))]

    assert designs(0.0) == [0] * 200
    assert 60 <= sum(designs(0.4)) <= 100 and set(designs(0.4)) == {0, 1}


def test_the_training_chat_format_is_the_checkpoint_template():
    import jinja2

    from training.tokenizer import CODER_TEMPLATE, REASONER_TEMPLATE

    msgs = [{"role": "user", "content": "review calc.py"}]
    env = jinja2.Environment()
    for template, reasoning in ((REASONER_TEMPLATE, True), (CODER_TEMPLATE, False)):
        rendered = env.from_string(template).render(messages=msgs, add_generation_prompt=True, bos_token=BOS)
        assert rendered == chat("review calc.py", reasoning=reasoning)


def test_the_teacher_reads_line_by_line_up_to_the_bug_then_plans_the_exact_change():
    for seed in range(8):
        m = make_module(random.Random(seed), "train", n_funcs=3)
        trace = thinking(m)
        prompt = reasoner_prompt(m, f"review {m.path}")
        listed = [line for line in trace.split("\n") if " | " in line]
        # every line up to the buggy one is read back exactly as the prompt numbers it ...
        assert len(listed) == m.bug_line_no
        for line in listed:
            assert "\n" + line + "\n" in prompt
        for i, f in enumerate(m.funcs[: m.bug_func + 1]):  # ... each docstring before its code
            assert f'"""{f.doc}"""' in trace
        for f in m.funcs[m.bug_func + 1:]:  # the one bug is found: the reading stops there
            assert f"def {f.name}(" not in trace
        assert listed[-1].endswith(m.bad_line)
        assert trace.count("This is the bug.") == 1
        assert f"Line {m.bug_line_no} " in trace
        assert f"Change `{m.bad_line.strip()}` to `{m.good_line.strip()}`." in trace
    for lang in ("en", "zh"):
        plan = answer(m, lang)
        assert m.path in plan and f"`{m.func.name}`" in plan and str(m.bug_line_no) in plan
        assert f"`{m.good_line.strip()}`" in plan and f"`{m.bad_line.strip()}`" in plan
        assert strip_thinking(plan) == plan


def test_the_eval_scores_the_teachers_plan_right_and_a_reversed_or_wrong_change_not():
    from training.eval import score_plan

    for seed in range(6):
        m = make_module(random.Random(seed), "heldout", kind=KINDS[seed % len(KINDS)])
        bad, good = m.bad_line.strip(), m.good_line.strip()
        for lang in ("en", "zh"):
            plan = answer(m, lang)
            assert score_plan(plan, m) == {"function": True, "kind": True, "found": True, "change": True}
            reversed_plan = plan.replace(f"`{bad}`", "\0").replace(f"`{good}`", f"`{bad}`").replace("\0", f"`{good}`")
            assert score_plan(reversed_plan, m)["change"] is False  # the right line named, the wrong way round
            assert score_plan(plan.replace(f"`{good}`", "`pass`"), m)["change"] is False
        other = next(f.name for f in m.funcs if f.name != m.func.name) if len(m.funcs) > 1 else None
        if other:
            first, rest = answer(m, "en").split("\n", 1)
            assert not score_plan(first.replace(f"`{m.func.name}`", f"`{other}`") + "\n" + rest, m)["found"]


def test_the_teachers_edit_applies_with_duets_workspace_and_the_tests_pass(tmp_path):
    for i, m in enumerate(_modules("heldout", 12, seed=11)):
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / m.path).write_text(m.source)
        (folder / m.test_path).write_text(m.test_source)
        e = coder_example(random.Random(i), m)
        assert e.target == coder_answer(m, e.lang) + EOS
        ws = Workspace(folder)
        changes = ws.propose(coder_answer(m, e.lang))
        assert not changes.rejected and len(changes.edits) == 1
        ws.apply(changes)
        assert (folder / m.path).read_text() == m.fixed
        assert _run_tests(folder, m) == 0


def _search_replace(block_text):
    block = block_text.split("\n>>>>>>> REPLACE")[0]
    search, replace = block.split("\n<<<<<<< SEARCH\n", 1)[1].split("\n=======\n")
    return search.split("\n"), replace.split("\n")


def test_the_teachers_block_is_the_buggy_line_alone_and_changes_only_it():
    for style in ("train", "heldout"):
        for m in _modules(style, 12, seed=5):
            s, r = _search_replace(coder_answer(m, "en"))
            assert s == [m.bad_line] and r == [m.good_line]  # the line as the file has it, indentation included
            assert m.source.split("\n").count(m.bad_line) == 1


def test_the_teachers_block_takes_lines_above_the_buggy_line_until_it_matches_one_place(tmp_path):
    m = _modules("train", 1, seed=9)[0]
    k = m.bug_line_no
    lines = m.source.split("\n")
    # the buggy line, and the one above it, again in a function after the module's own
    twin = "\n\n\ndef twin(a):\n" + "\n".join(lines[k - 2:k]) + "\n"
    m2 = dataclasses.replace(m, source=m.source.rstrip("\n") + twin)
    s, r = _search_replace(coder_answer(m2, "en"))
    assert s[-1] == m.bad_line and r == s[:-1] + [m.good_line] and len(s) >= 2
    assert m2.source.count("\n".join(s) + "\n") == 1
    (tmp_path / m.path).write_text(m2.source)
    ws = Workspace(tmp_path)
    changes = ws.propose(coder_answer(m2, "en"))
    assert not changes.rejected and len(changes.edits) == 1
    ws.apply(changes)
    got = (tmp_path / m.path).read_text().split("\n")
    assert got[k - 1] == m.good_line and got[:k - 1] == lines[:k - 1]
    assert (tmp_path / m.path).read_text().endswith(twin)  # the twin is left as it was


def test_decision_spans_mark_where_a_target_decides_not_where_it_copies():
    from training.render import decision_spans

    m = _modules("train", 1, 11)[0]
    target = reasoner_example(random.Random(1), m).target
    spans = decision_spans(target)
    marked = [target[a:b] for a, b in spans]
    listed = [line for line in thinking(m).split("\n")[1:] if " | " in line]
    # one character at the start of each line read back, then the finding, the conclusion, the diagnosis
    assert len(marked) == len(listed) + 3 and all(len(s) == 1 for s in marked[:len(listed)])
    assert marked[len(listed)].startswith(f"Line {m.bug_line_no} ") and marked[-2].startswith("So the bug is in")
    assert marked[-1].startswith(("**Bug:**", "**错误：**")) and "\n" not in marked[-1]
    reply = coder_example(random.Random(1), m).target
    assert [reply[a:b] for a, b in decision_spans(reply)] == [m.good_line + "\n"]


def test_a_miscopied_plan_changes_one_word_of_the_fixed_line_and_never_the_fix_itself():
    """training.render.miscopied: one name or number of the line as it should be written wrongly,
    the way the demo reasoner miscopies unseen text; operators and the code around stay, a number
    the fix is about (an off-by-one bound, an accumulator's start) is never touched, the fix's own
    name (wrong_name's) is only misspelt, and the coder's target stays the right fix."""
    from training.render import WORD, code_names, miscopied

    rng = random.Random(11)
    seen = set()
    for _ in range(300):
        m = make_module(rng, "train", kind=rng.choice(KINDS))
        miscopy = miscopied(rng, m)
        if miscopy is None:
            continue
        word, new = miscopy
        good, bad = m.good_line.strip(), m.bad_line.strip()
        assert word in WORD.findall(good) and new != word and (new or len(word) == 1)  # `return  * v`
        garbled = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", new, good, count=1)
        assert WORD.sub("", garbled) == WORD.sub("", good)  # operators, brackets, spacing: the fix's
        if word.isdigit():
            assert m.mutation.kind not in ("off_by_one", "accumulator") and word in WORD.findall(bad)
        elif word not in WORD.findall(bad):  # the fix's own name: misspelt, not another of the file's
            assert new not in code_names(m.source)
        seen.add("number" if word.isdigit() else "name")
        plan = answer(m, "en", miscopy)
        assert f"to `{garbled}`" in plan and f"from `{bad}`" in plan
    assert seen == {"number", "name"}
    m = make_module(random.Random(3), "train", kind="swapped_args")
    example = coder_example(random.Random(4), m, mode="handoff", miscopy_share=1.0)
    assert m.good_line.strip() not in example.prompt.split("**Plan:**")[1]  # the plan has it wrong ...
    assert example.target == coder_answer(m, "en") + EOS                    # ... the target right
    before = random.Random(5)
    plain = coder_example(before, m, mode="handoff")
    after = random.Random(5)
    assert coder_example(after, m, mode="handoff", miscopy_share=0.0) == plain and before.random() == after.random()


def test_kind_weights_shift_the_bug_kinds_and_leave_the_committed_recipes_stream_as_it_was():
    from training.render import sample_module

    def kinds(weights, n=600):
        rng = random.Random(3)
        return [sample_module(rng, "train", weights).mutation.kind for _ in range(n)]

    # no weights: the uniform draw the committed recipe made (rng.choice), module for module
    rng = random.Random(3)
    assert kinds(None, 60) == [make_module(rng, "train", kind=rng.choice(KINDS)).mutation.kind for _ in range(60)]
    doubled = kinds({"wrong_name": 2.0})
    assert 0.22 <= doubled.count("wrong_name") / len(doubled) <= 0.36     # 2/7 expected
    assert all(0.08 <= doubled.count(k) / len(doubled) <= 0.22 for k in KINDS if k != "wrong_name")   # 1/7 each
    assert kinds({"comparison": 0.0}).count("comparison") == 0
