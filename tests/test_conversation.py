"""The conversation core without any UI: one routing decision per request, answers-only
history, the plan's steps, grouped undo, rewind, and the test runner."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

import pytest

from app.conversation import (ChangeApplied, ChangeProposed, Conversation, FlowEnded, Notice, PlanReady, Routed,
                              TestFinished, TurnEnded, failure_summary, parse_steps, run_tests)
from app.conversation.steps import Plan
from app.conversation.verify import HEAD_BYTES, TAIL_BYTES, with_changed
from app.prompts import build_prompt
from app.router import route
from app.store import SessionStore
from app.workspace import Workspace
from tests.sse_server import ScriptedServer, reasoner_reply, text_reply
from tests.tui_support import server_config

TRACE = "SECRET-TRACE weighing options"
PLAN = "1. Add a cache.\n2. Use it in api.py."


@pytest.fixture
def server():
    with ScriptedServer(reasoner_reply(TRACE, PLAN)) as s:
        yield s


def drain(conv: Conversation, routed: Routed, approve=None) -> list:
    return list(conv.run(routed, threading.Event(), approve))


def test_after_a_plan_a_request_is_routed_once_and_the_prompt_and_store_follow_that_decision(server):
    with SessionStore.open() as store:
        conv = Conversation(server_config(server.base_url), store=store)
        drain(conv, conv.prepare("/plan a cache"))
        routed = conv.prepare("plan?")
        expected = route("plan?", after_plan=True)
        assert (routed.route.role, routed.route.intent) == (expected.role, expected.intent) == ("reasoner", "analysis")
        assert routed.turn.prompt == build_prompt("reasoner", "analysis", "plan?")
        drain(conv, routed)
        stored = store.message(routed.turn.result.message_id)
        assert stored.intent == "analysis" and stored.prompt == routed.turn.prompt
        assert server.requests[-1].json["messages"][-1]["content"] == routed.turn.prompt


def test_a_plan_s_hand_off_asks_the_coder_for_tests_only_when_the_request_asked_for_tests(server):
    """"why does add fail its test?" is a question (the reasoner's); the coder implementing its
    plan gets the edit prompt, not the test-writing one that says not to change the code."""
    conv = Conversation(server_config(server.base_url), save=False)
    drain(conv, conv.prepare("/plan why does add fail its test?"))
    for request, intent in [("why does add fail its test?", "edit"), ("为什么 add 的测试失败？", "edit"),
                            ("fix the bug in calc.py", "edit"), ("add tests for calc.py", "test"),
                            ("给 calc.py 写单元测试", "test")]:
        routed = conv.prepare_handoff(request)
        assert (routed.route.role, routed.route.intent) == ("coder", intent), request
        assert routed.turn.plan == PLAN
    assert "do not change the code" not in conv.prepare_handoff("why does add fail its test?").turn.prompt


def test_a_re_plan_needs_a_plan_and_keeps_each_plan_tried_once(server):
    from app.errors import DuetError

    conv = Conversation(server_config(server.base_url), save=False)
    with pytest.raises(DuetError, match="nothing to re-plan"):
        conv.prepare_replan()
    drain(conv, conv.prepare("/plan a cache"))
    first = conv.attempts
    assert (first.request, first.intent, first.tried, first.history) == ("a cache", "design", [PLAN], [])
    events = drain(conv, conv.prepare_replan())  # the scripted server answers the same plan again
    assert conv.attempts is first and first.repeated and first.tried == [PLAN]
    assert [e.text for e in events if isinstance(e, Notice)] == [
        "The reasoner gave a plan already tried: handing it off again samples the coder's reply afresh."]
    server.enqueue(reasoner_reply(TRACE, "1. Use functools.lru_cache."))
    drain(conv, conv.prepare_replan())
    assert not first.repeated and first.tried == [PLAN, "1. Use functools.lru_cache."]
    drain(conv, conv.prepare("/plan something else"))  # a new request starts its own attempts
    assert conv.attempts is not first and conv.attempts.tried == [PLAN] and len(conv.attempts.history) == 6
    second = conv.attempts
    drain(conv, conv.prepare("Continue your answer.", "reasoner", author="duet → continue"))
    assert conv.attempts is second and second.tried == [PLAN]  # a turn Duet asked for is not a new request


def test_a_plan_handed_off_again_gets_a_sampled_reply_with_a_new_seed_each_time(server):
    """A greedy coder given the same plan again would write the same edits: the second and later
    hand-offs of a plan (the same words, whatever the spacing) are sampled, seeds 1, 2, ...; a
    fix round and another plan's first hand-off keep the coder's own settings; clear() forgets."""
    conv = Conversation(server_config(server.base_url), save=False)
    drain(conv, conv.prepare("/plan a cache"))
    server.set_script(text_reply("done"))

    def coder_wire(routed):
        drain(conv, routed)
        return server.requests[-1].json

    first = conv.prepare_handoff("Implement the plan.")
    assert not first.notes
    assert coder_wire(first).get("temperature", 0) == 0 and "seed" not in server.requests[-1].json
    for seed in (1, 2):
        again = conv.prepare("Implement the plan.", "coder", plan="1. Add a cache.\n\n2. Use it in  api.py.")
        assert again.notes == (f"This plan went to the coder {seed} time(s) before: its reply is sampled "
                               f"(temperature 0.7, seed {seed}).",)
        wire = coder_wire(again)
        assert wire["temperature"] == 0.7 and wire["seed"] == seed
    fix = conv.prepare("The tests fail: fix it.", "coder", intent="edit")  # a round of Duet's, not a hand-off
    assert coder_wire(fix).get("temperature", 0) == 0 and not fix.notes
    other = conv.prepare("go", "coder", plan="1. Other.")
    assert coder_wire(other).get("temperature", 0) == 0
    conv.clear()
    assert coder_wire(conv.prepare("go", "coder", plan=PLAN)).get("temperature", 0) == 0


def test_the_history_resends_answers_only_and_the_coder_gets_the_plan_not_the_trace(server):
    conv = Conversation(server_config(server.base_url), save=False)
    events = drain(conv, conv.prepare("/plan a cache"))
    assert any(isinstance(e, PlanReady) and e.plan.text == PLAN for e in events)
    assert isinstance(events[-1], FlowEnded) and events[-1].status == "answered"
    server.set_script(text_reply("done"))
    routed = conv.prepare("/code do it")
    assert routed.turn.plan == PLAN and routed.turn.handoff_from is None  # unsaved: no message id
    drain(conv, routed)
    wire = "\n".join(m["content"] for m in server.requests[-1].json["messages"])
    assert PLAN in wire and TRACE not in wire
    assert [m.role for m in conv.history] == ["user", "assistant", "user", "assistant"]


def test_a_role_with_history_off_gets_each_request_alone_with_the_plan_in_it(server):
    config = server_config(server.base_url)
    config = dataclasses.replace(config, coder=dataclasses.replace(config.coder, history=False))
    conv = Conversation(config, save=False)
    drain(conv, conv.prepare("/plan add a cache"))
    server.set_script(text_reply("done"))
    drain(conv, conv.prepare("implement it", "coder"))
    wire = server.requests[-1].json["messages"]
    assert [m["role"] for m in wire] == ["user"] and PLAN in wire[0]["content"]
    drain(conv, conv.prepare("/plan and now?"))  # the reasoner keeps its history
    assert len(server.requests[-1].json["messages"]) == 5


def test_a_coder_answer_with_edits_is_proposed_applied_and_one_undo_takes_back_every_round(tmp_path, server):
    root = tmp_path / "p"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    ws = Workspace(root)
    ws.context.add("calc.py")
    server.enqueue(text_reply("calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a * b\n>>>>>>> REPLACE\n"),
                   text_reply("calc.py\n<<<<<<< SEARCH\n    return a * b\n=======\n    return a + b\n>>>>>>> REPLACE\n"))
    check = f"{sys.executable} -c \"from calc import add; assert add(2, 3) == 5, add(2, 3)\""
    conv = Conversation(server_config(server.base_url), workspace=ws, save=False, test_command=check)
    events = drain(conv, conv.prepare("/code fix add"), approve=lambda changes: changes)
    kinds = [type(e).__name__ for e in events if not type(e).__name__.endswith("Delta")]
    assert kinds.count("ChangeApplied") == 2 and kinds.count("TestFinished") == 2
    assert [e.result.status for e in events if isinstance(e, TestFinished)] == ["failed", "passed"]
    assert events[-1] == FlowEnded("passed", 2)
    assert (root / "calc.py").read_text().endswith("a + b\n")
    assert ws.undo() == ["calc.py"] and (root / "calc.py").read_text().endswith("a - b\n")
    assert not ws.can_undo


def test_changed_in_the_test_command_becomes_the_applied_files_so_other_failing_modules_do_not_count(tmp_path, server):
    root = tmp_path / "p"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "other file.py").write_text("raise SystemExit('still broken')\n")
    ws = Workspace(root)
    ws.context.add("calc.py")
    server.set_script(text_reply("calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n"))
    runner = tmp_path / "runner.py"  # runs each file named, or every .py file when none is
    runner.write_text("import glob, runpy, sys\nfor f in sys.argv[1:] or sorted(glob.glob('*.py')):\n"
                      "    print('ran', f); runpy.run_path(f)\n")
    conv = Conversation(server_config(server.base_url), workspace=ws, save=False,
                        test_command=f"{sys.executable} {runner} {{changed}}")
    events = drain(conv, conv.prepare("/code fix add"), approve=lambda changes: changes)
    tested = [e.result for e in events if isinstance(e, TestFinished)]
    assert len(tested) == 1 and tested[0].passed and tested[0].command.endswith(" calc.py")
    assert tested[0].output.strip() == "ran calc.py" and events[-1] == FlowEnded("passed", 1)
    whole = list(conv.test(2))  # /test after it: no apply before, so the whole suite
    assert not whole[-1].result.passed and "ran other file.py" in whole[-1].result.output


def test_a_test_command_that_finds_no_test_ends_the_apply_untested_not_retried(tmp_path, server):
    """pytest's exit 5 ("no tests ran") and the demo runner's: the change stands, reported as
    untested; the coder is not asked to fix a failure there is not."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    ws = Workspace(root)
    ws.context.add("calc.py")
    server.set_script(text_reply("calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n"))
    runner = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app", "plain_tests.py")
    conv = Conversation(server_config(server.base_url), workspace=ws, save=False,
                        test_command=f"{sys.executable} {runner} {{changed}}")
    events = drain(conv, conv.prepare("/code fix add"), approve=lambda changes: changes)
    tested = [e.result for e in events if isinstance(e, TestFinished)]
    assert [(t.status, t.exit_code) for t in tested] == [("no_tests", 5)]
    assert events[-1] == FlowEnded("applied", 1, ("the test command ran no tests",))
    assert len(server.requests) == 1 and (root / "calc.py").read_text().endswith("a + b\n")


@pytest.mark.parametrize("script, status", [
    ("print('no tests ran in 0.01s'); raise SystemExit(5)", "no_tests"),  # pytest -q in a project without tests
    ("print('collected 0 items'); raise SystemExit(5)", "no_tests"),
    ("print('boom'); raise SystemExit(5)", "failed"),  # exit 5 alone is some other failure
    ("print('no tests ran'); raise SystemExit(1)", "failed"),
])
def test_no_tests_is_pytests_exit_5_with_its_words(tmp_path, script, status):
    assert run_tests(f"{sys.executable} -c \"{script}\"", tmp_path).status == status


def test_changed_paths_are_shell_quoted_and_absent_when_nothing_changed():
    assert with_changed("pytest {changed}", ["a b.py", "c.py"]) == "pytest 'a b.py' c.py"
    assert with_changed("pytest {changed}") == "pytest"
    assert with_changed("make test", ["a.py"]) == "make test"
    assert with_changed("run {changed}", ["x;rm -rf ~.py"]) == "run 'x;rm -rf ~.py'"


def test_declining_the_review_writes_nothing_and_ends_proposed(tmp_path, server):
    root = tmp_path / "p"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    server.set_script(text_reply("a.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n"))
    conv = Conversation(server_config(server.base_url), workspace=Workspace(root), save=False)
    events = drain(conv, conv.prepare("/code set x"), approve=lambda changes: None)
    assert any(isinstance(e, ChangeProposed) for e in events) and not any(isinstance(e, ChangeApplied) for e in events)
    assert events[-1].status == "proposed" and (root / "a.py").read_text() == "x = 1\n"


def test_rewinding_drops_the_request_and_later_messages_and_survives_a_restart(server):
    with SessionStore.open() as store:
        conv = Conversation(server_config(server.base_url), store=store)
        drain(conv, conv.prepare("/plan first"))
        second = conv.prepare("/plan second")
        drain(conv, second)
        assert len(conv.history) == 4
        conv.rewind(second.turn.result.message_id)  # a reply: its request goes with it
        assert len(conv.history) == 2
        sid = conv.session_id
    with SessionStore.open() as store:  # a new process, as after a restart
        again = Conversation(server_config(server.base_url), store=store)
        messages = again.resume(sid)
        assert [m.answer for m in messages if m.kind == "user"] == ["/plan first"]
        assert len(again.history) == 2 and again.plan.text == PLAN


def test_a_turn_that_ends_routed_reports_more_only_for_coder_edits(server):
    conv = Conversation(server_config(server.base_url), save=False)
    events = drain(conv, conv.prepare("/plan x"))
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ended) == 1 and not ended[0].more


# ---- the plan's steps ------------------------------------------------------------------------

def test_numbered_steps_become_a_checklist_with_their_sub_lines():
    text = "Here is the plan:\n\n1. Add `cache.py`.\n   - an LRU class\n2) Use it in api.py.\n**3.** Test it.\n"
    assert parse_steps(text) == ["Add `cache.py`.\n   - an LRU class", "Use it in api.py.", "Test it."]


def test_a_plan_without_numbers_is_one_step_and_numbers_inside_code_are_not_steps():
    assert parse_steps("Just add a cache.") == ["Just add a cache."]
    text = "1. Write:\n```\n2. not a step\n```\n2. Done."
    assert [s.split("\n")[0] for s in parse_steps(text)] == ["Write:", "Done."]


def test_one_step_hand_off_names_the_step_and_lists_the_rest():
    plan = Plan.from_answer("1. Add a cache.\n2. Use it.\n3. Test it.")
    text = plan.step_text(1)
    assert text.startswith("Implement step 2 of the plan only:\n\nUse it.") and "1. Add a cache." in text


# ---- the test runner -----------------------------------------------------------------------

def test_a_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    result = run_tests(f"sleep 30 & echo $! > {pidfile}; wait", tmp_path, timeout=0.5)
    assert result.status == "timeout" and result.seconds < 30 and "too long" in result.output
    child = int(pidfile.read_text())
    for _ in range(100):  # the orphan is reaped by init soon after the kill
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the test command's child survived the timeout")


def test_cancel_stops_a_running_test_and_says_so(tmp_path):
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    result = run_tests("sleep 30", tmp_path, timeout=60, cancel=cancel)
    assert result.status == "cancelled" and result.seconds < 30 and not result.passed


def test_output_is_capped_keeping_its_head_and_tail(tmp_path):
    code = "import sys\nsys.stdout.write('HEAD\\n' + 'x' * 1_000_000 + '\\nTAIL\\n')\nsys.exit(3)"
    (tmp_path / "loud.py").write_text(code)
    result = run_tests(f"{sys.executable} loud.py", tmp_path, timeout=60)
    assert result.status == "failed" and result.exit_code == 3
    assert result.output.startswith("HEAD") and result.output.rstrip().endswith("TAIL")
    assert len(result.output) < HEAD_BYTES + TAIL_BYTES + 200 and "dropped" in result.output


def test_a_command_that_cannot_run_is_a_failed_result_not_an_exception(tmp_path):
    result = run_tests("definitely-not-a-command-xyz", tmp_path, timeout=10)
    assert not result.passed and result.exit_code != 0


def test_the_failure_summary_keeps_failing_names_assertions_and_the_tail():
    noise = "\n".join(f"tests/test_x.py::test_{i} PASSED" for i in range(400))
    output = (noise + "\n________ test_add ________\n    def test_add():\n>       assert add(2, 3) == 5\n"
              "E       assert 6 == 5\n" + "\n".join(f"filler {i}" for i in range(200))
              + "\nFAILED tests/test_calc.py::test_add - assert 6 == 5\n1 failed, 400 passed in 0.5s")
    summary = failure_summary(output, limit=3000)
    assert len(summary) <= 3000
    assert "FAILED tests/test_calc.py::test_add" in summary and "E       assert 6 == 5" in summary
    assert summary.rstrip().endswith("1 failed, 400 passed in 0.5s") and "test_17 PASSED" not in summary


def test_a_file_named_in_the_request_joins_the_context_and_the_prompt(tmp_path, server):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    ws = Workspace(root)
    conv = Conversation(server_config(server.base_url), workspace=ws, save=False)
    routed = conv.prepare("/plan fix the bug in calc.py")
    assert ws.context.files == ["calc.py"]
    assert routed.notes == ("calc.py joined the context (named in the request).",)
    assert ("calc.py", "def add(a, b):\n    return a - b\n") in routed.turn.files
    again = conv.prepare("/plan and calc.py once more")
    assert again.notes == ()  # already there: no second note
    (root / "stats.py").write_text("def only_odd(xs):\n    return xs\n")
    asked = conv.prepare("why does only_odd fail its test?")
    assert asked.notes == ("stats.py joined the context (it defines only_odd, named in the request).",)
    assert ws.context.files == ["calc.py", "stats.py"] and ("stats.py", "def only_odd(xs):\n    return xs\n") in asked.turn.files
