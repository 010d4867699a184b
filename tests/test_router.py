"""The router: labelled-set accuracy, prefixes, the CONTRACT examples, the CLI, the rules file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import ConfigError
from app.router import RULES_PATH, Route, load_rules, route, rules

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def _load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _accuracy(rows: list[dict]) -> tuple[float, float, list[str]]:
    exact = role_ok = 0
    misses = []
    for row in rows:
        got = route(row["text"], after_plan=row["after_plan"])
        role_ok += got.role == row["role"]
        if (got.role, got.intent) == (row["role"], row["intent"]):
            exact += 1
        else:
            misses.append(f"  want {row['role']}/{row['intent']}, got {got.role}/{got.intent}: "
                          f"{row['text'][:60]!r} ({got.why})")
    return exact / len(rows), role_ok / len(rows), misses


def test_labelled_set_is_large_half_chinese_and_covers_every_intent_and_role():
    rows = _load("router_labelled.jsonl")
    assert len(rows) >= 200
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in r["text"]) for r in rows)
    assert chinese >= len(rows) // 2
    intents = Counter(r["intent"] for r in rows)
    assert set(intents) == set(rules().intents)
    assert {r["role"] for r in rows} == {"reasoner", "coder"}
    assert any(r["after_plan"] for r in rows)
    for r in rows:  # labels agree with the rules' intent table
        assert rules().intents[r["intent"]][0] == r["role"], r


def test_router_gets_at_least_95_percent_of_the_labelled_set_right(capsys):
    exact, role_ok, misses = _accuracy(_load("router_labelled.jsonl"))
    with capsys.disabled():
        print(f"\nrouter labelled set: role+intent {exact:.1%}, role {role_ok:.1%}")
        print("\n".join(misses))
    assert exact >= 0.95, "\n".join(misses)
    assert role_ok >= 0.95


def test_router_on_the_former_held_out_set_stays_right(capsys):
    # Written after the first rules: 76% role, 60% role+intent when frozen. The lexicon rework
    # was tuned on it (now 100% / 100%), so it is a regression guard, no longer held out.
    exact, role_ok, misses = _accuracy(_load("router_heldout.jsonl"))
    with capsys.disabled():
        print(f"\nrouter held-out set: role+intent {exact:.1%}, role {role_ok:.1%}")
    assert role_ok >= 0.95 and exact >= 0.90, "\n".join(misses)


# Fresh sets, each written before a round of rule changes and measured on the rules of the day
# before anything was changed (role / role+intent):
#   router_fresh   120 requests: 92.5% / 83.3% on the original rules
#   router_fresh2   65 requests: 78.5% / 61.5% original, 89.2% / 76.9% after round 1
#   router_fresh3   65 requests: 84.6% / 55.4% original, 87.7% / 64.6% after round 2
#   router_fresh4   60 requests: 85.0% / 68.3% original, 95.0% / 81.7% after round 3 (role-first)
#   router_fresh5   40 requests: 82.5% / 70.0% original, 92.5% / 82.5% after round 4
# Later rounds looked at the earlier sets' misses by category, so today's figures on them
# (all 100% role, 95-100% role+intent) overstate what unseen phrasings get; the "after"
# column above is the honest one. The floors sit a few points under today's figures.
FRESH_FLOORS = {"router_fresh.jsonl": (0.95, 0.93), "router_fresh2.jsonl": (0.95, 0.92),
                "router_fresh3.jsonl": (0.95, 0.90), "router_fresh4.jsonl": (0.95, 0.92),
                "router_fresh5.jsonl": (0.95, 0.85)}


@pytest.mark.parametrize("name", sorted(FRESH_FLOORS))
def test_router_on_the_fresh_sets_is_reported_and_stays_above_its_floor(name, capsys):
    rows = _load(name)
    exact, role_ok, misses = _accuracy(rows)
    with capsys.disabled():
        print(f"\nrouter {name}: {len(rows)} requests, role+intent {exact:.1%}, role {role_ok:.1%}")
    role_floor, exact_floor = FRESH_FLOORS[name]
    assert role_ok >= role_floor and exact >= exact_floor, "\n".join(misses)


def test_the_fresh_set_is_half_chinese_and_covers_every_intent_both_roles_and_follow_ups():
    rows = _load("router_fresh.jsonl")
    assert len(rows) >= 120
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in r["text"]) for r in rows)
    assert chinese >= len(rows) // 2
    assert {r["intent"] for r in rows} == set(rules().intents)
    assert any(r["after_plan"] for r in rows) and any("\n" in r["text"] for r in rows)


def test_an_english_verb_used_as_a_noun_does_not_make_a_request_a_coding_task():
    # "build", "generate", "update" open an imperative; mid-sentence they describe a situation.
    assert route("build a CLI that tails a log file").role == "coder"
    assert route("our build went from 4 to 11 minutes after the upgrade, where is the time going?").role == "reasoner"
    assert route("please generate a uuid helper").role == "coder"
    assert route("what is 2^64 / 10^9 in years if we generate one id per ns").role == "reasoner"


def test_an_open_question_leans_to_the_reasoner_without_taking_the_intent():
    r = route("单体应用到底要不要拆")
    assert (r.role, r.intent) == ("reasoner", "analysis")
    r = route("is this thread safe?\n\nclass C:\n    def inc(self):\n        self.n += 1")
    assert (r.role, r.intent) == ("reasoner", "review")


def test_in_chinese_the_ask_at_the_end_of_the_request_counts():
    r = route("Rust 和 Go 写这种网关，哪个更划算")
    assert r.role == "reasoner"
    assert route("我们要做一个多租户的 SaaS，数据库怎么隔离比较好？").role == "reasoner"


def test_plan_words_name_the_plan_right_after_one():
    assert route("plan the migration of the billing module").intent == "design"
    assert route("go with plan B, write the code", after_plan=True).role == "coder"
    assert route("就用方案 A，帮我把代码写出来", after_plan=True).role == "coder"


@pytest.mark.parametrize("prefix, role", [
    ("/plan", "reasoner"), ("/design", "reasoner"), ("/review", "reasoner"), ("/think", "reasoner"),
    ("/code", "coder"), ("/edit", "coder"),
])
def test_every_prefix_overrides_the_rules_whatever_the_text_says(prefix, role):
    # Texts whose rules point the other way.
    text = "implement binary search in Go" if role == "reasoner" else "帮我设计一个缓存方案"
    assert route(text).role != role
    r = route(f"{prefix} {text}")
    assert (r.role, r.forced, r.text) == (role, True, text)
    assert prefix in r.why
    assert rules().intents[r.intent][0] == role


def test_a_prefix_with_a_fixed_intent_keeps_it_and_a_bare_prefix_picks_the_best_fit():
    assert route("/review the session store").intent == "review"
    assert route("/plan 用户系统").intent == "design"
    assert route("/edit write a cache").intent == "edit"
    assert route("/think what is the time complexity of heapify").intent == "compute"
    assert route("/code write tests for parse_config").intent == "test"
    assert route("/think hmm").intent == "analysis"  # the reasoner's default
    assert route("/code").intent == "implement"


def test_a_question_about_a_failing_test_sent_to_the_coder_asks_for_a_fix_not_for_tests():
    for text in ("/code why does add fail its test?", "/code 为什么 add 的测试失败？"):
        r = route(text)
        assert (r.role, r.intent) == ("coder", "edit") and "the code is to change" in r.why
    assert route("/code write tests for add").intent == "test"
    assert route("/code 给 add 写单元测试").intent == "test"


def test_prefixes_are_case_insensitive_and_unknown_slashes_are_just_text():
    assert route("/CODE design a cache").role == "coder"
    r = route("/usr/bin/python crashes at start, why?")
    assert (r.role, r.forced) == ("reasoner", False)
    assert r.text.startswith("/usr/bin/python")


def test_contract_examples_route_as_the_contract_says():
    r = route("帮我设计一个缓存方案")
    assert (r.role, r.intent, r.forced) == ("reasoner", "design", False)
    assert "设计" in r.why and "reasoner" in r.why
    r = route("implement binary search in Go")
    assert (r.role, r.intent) == ("coder", "implement")


def test_why_names_the_words_that_decided():
    assert route("帮我设计一个缓存方案").why == 'design request ("设计", "方案") → reasoner'
    assert '"review"' in route("please review this").why
    assert "pasted diff" in route("thoughts?\n\n@@ -1 +1 @@\n-a = 1\n+a = 2").why


def test_pasted_code_is_not_read_as_the_request():
    # The words inside the paste (test, design, review) must not decide.
    code = "def test_design_review():\n    review = design()\n    assert review"
    assert route(f"add type hints to this:\n\n{code}").intent == "edit"
    assert route(f"```python\n{code}\n```\nwhat does this do?").intent == "explain-code"


def test_why_it_crashes_goes_to_the_reasoner_and_fix_it_goes_to_the_coder():
    trace = "\n\nTraceback (most recent call last):\n  File \"a.py\", line 3, in <module>\nKeyError: 'x'"
    assert route("why does this crash?" + trace).role == "reasoner"
    assert route("fix this crash" + trace).role == "coder"
    assert (route("为什么 add 的测试失败？").role, route("why does add fail its test?").role) == ("reasoner", "reasoner")


def test_after_a_plan_follow_ups_go_to_the_coder_but_questions_do_not():
    for text in ("implement it", "write the code for step 2", "按照上面的方案写代码", "go ahead"):
        r = route(text, after_plan=True)
        assert (r.role, r.intent) == ("coder", "implement"), text
    assert route("ok", after_plan=True).role == "coder"
    assert route("why did you pick a B-tree here?", after_plan=True).role == "reasoner"


def test_route_is_a_frozen_value():
    r = route("hello")
    assert isinstance(r, Route)
    with pytest.raises(AttributeError):
        r.role = "reasoner"


def test_empty_and_whitespace_requests_still_route():
    for text in ("", "   ", "\n\n"):
        r = route(text)
        assert r.role in ("reasoner", "coder") and r.why


def test_duet_route_json_prints_the_decision():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for text, role, intent in [("帮我设计一个缓存方案", "reasoner", "design"),
                               ("implement binary search in Go", "coder", "implement")]:
        out = subprocess.run([sys.executable, "-m", "app", "route", "--json", text],
                             capture_output=True, text=True, env=env, timeout=60, check=True)
        got = json.loads(out.stdout)
        assert (got["role"], got["intent"]) == (role, intent)
        assert got["why"]


def test_duet_route_plain_and_after_plan():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "app", "route", "--after-plan", "implement", "it"],
                         capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.startswith("coder · implement")


def _write_rules(tmp_path, edit) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(edit(RULES_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def test_rules_are_data_a_new_phrase_is_one_line_in_the_file(tmp_path):
    phrase = "zorblify"
    assert route(f"please {phrase} the parser").intent != "edit"
    path = _write_rules(tmp_path, lambda s: s.replace("en = ['rename',", f"en = ['{phrase}', 'rename',", 1))
    from app import router

    table = load_rules(path)
    assert router.best(router.score(f"please {phrase} the parser", table=table), table.intents) == "edit"


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.replace('[[cues]]\nintent = "edit"', '[[cues]]\nintent = "edits"', 1), "cues["),
    (lambda s: s.replace("weight = 4", 'weight = "heavy"', 1), ".weight"),
    (lambda s: s.replace("zh = ['改成',", "zh = ['改成(',", 1), "cues["),
    (lambda s: s.replace('"/code" = { role = "coder" }', '"/code" = { role = "writer" }'), "prefixes./code.role"),
    (lambda s: s + "\n[[cues]]\nintent = \"edit\"\nweight = 1\n", "cues["),
    (lambda s: s + "\n[[cues]]\nrole = \"writer\"\nweight = 1\nwhen = \"question\"\n", ".role"),
    (lambda s: s + "\n[[cues]]\nintent = \"edit\"\nweight = 1\nunless = \"sunny\"\nen = ['x']\n", ".unless"),
])
def test_a_broken_rules_file_is_one_error_naming_file_and_key(tmp_path, edit, key):
    path = _write_rules(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = str(info.value)
    assert str(path) in message and key in message and "\n" not in message


def test_a_long_paste_is_judged_by_the_ask_at_either_end():
    log = "\n".join(f"2024-01-01 12:00:{i % 60:02d} INFO worker {i} done in 12ms" for i in range(5000))
    assert route(f"why does the worker stall after this?\n{log}").role == "reasoner"
    assert route(f"{log}\n\nwhy does the worker stall after this?").role == "reasoner"
    assert route(f"{log}\n\nwrite a script that counts the INFO lines per worker").role == "coder"


@given(st.text(max_size=300), st.booleans())
@settings(max_examples=200, deadline=None)
def test_any_text_routes_to_a_known_role_and_intent(text, after_plan):
    r = route(text, after_plan=after_plan)
    assert rules().intents[r.intent][0] == r.role and r.why


@given(st.sampled_from(sorted(("/plan", "/design", "/review", "/think", "/code", "/edit"))), st.text(max_size=200))
@settings(max_examples=100, deadline=None)
def test_a_prefix_decides_whatever_follows_it(prefix, text):
    r = route(f"{prefix} {text}")
    assert r.forced and r.role == rules().prefixes[prefix][0]
