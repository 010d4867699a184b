"""`duet run` end to end: two scripted loopback servers (reasoner, coder), a real git
repository, the real CLI in a subprocess, the real test command — all under the offline
guard (tests/offline_guard), which fails any connection to a non-loopback address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.store import SessionStore
from app.workspace import Workspace
from tests.sse_server import ScriptedServer, reasoner_reply, text_reply

ROOT = Path(__file__).resolve().parent.parent
GUARD = Path(__file__).resolve().parent / "offline_guard"
TRACE = "SECRET-TRACE: maybe multiply? no, add."
PLAN = "1. In calc.py make add() return the sum.\n2. Keep the signature."
TEST_CMD = f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py"
BROKEN = "def add(a, b):\n    return a - b\n"


def edit(search: str, replace: str, path: str = "calc.py", prose: str = "Here is the change.") -> str:
    return f"{prose}\n\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


@pytest.fixture
def servers():
    with ScriptedServer(reasoner_reply(TRACE, PLAN), models=("r1",)) as reasoner, \
            ScriptedServer(text_reply("no edits"), models=("coder",)) as coder:
        yield reasoner, coder


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "calc.py").write_text(BROKEN)
    (root / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    return root


@pytest.fixture
def config_file(tmp_path, servers) -> Path:
    reasoner, coder = servers
    path = tmp_path / "config.toml"
    path.write_text(f'[reasoner]\nbackend = "openai"\nurl = "{reasoner.base_url}"\nmodel = "r1"\ntimeout = 5\n\n'
                    f'[coder]\nbackend = "openai"\nurl = "{coder.base_url}"\nmodel = "coder"\ntimeout = 5\n',
                    encoding="utf-8")
    return path


@pytest.fixture
def guard_log(tmp_path) -> Path:
    log = tmp_path / "offline-guard.log"
    yield log
    assert not log.exists() or not log.read_text(), f"non-loopback connection attempts:\n{log.read_text()}"


def greedy_coder_config(path: Path, servers, history: str) -> Path:
    """A config on the loopback servers whose coder decodes greedily, with ``history`` as given."""
    reasoner, coder = servers
    path.write_text(f'[reasoner]\nbackend = "openai"\nurl = "{reasoner.base_url}"\nmodel = "r1"\ntimeout = 5\n\n'
                    f'[coder]\nbackend = "openai"\nurl = "{coder.base_url}"\nmodel = "coder"\ntimeout = 5\n'
                    f'history = {history}\n[coder.sampling]\ntemperature = 0\n', encoding="utf-8")
    return path


def plan_and_code(servers, repo: Path, guard_log: Path, config_file: Path, *coder_replies: str):
    """`duet run` of a plan (--apply, --test) with the coder's replies scripted: the process and
    what the coder was asked."""
    _, coder = servers
    coder.requests.clear()
    coder.enqueue(*(text_reply(reply) for reply in coder_replies))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--json", "fix add in calc.py")
    return p, [r.json for r in coder.requests if r.path.endswith("/chat/completions")]


def duet(config_file: Path, repo: Path, guard_log: Path, *args: str, timeout: float = 120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]), DUET_OFFLINE_GUARD="1",
               DUET_OFFLINE_GUARD_LOG=str(guard_log))
    return subprocess.run([sys.executable, "-m", "app", "--config", str(config_file), "--workspace", str(repo),
                           "run", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=repo)


def coder_prompts(coder) -> list[str]:
    return [r.json["messages"][-1]["content"] for r in coder.requests if r.path.endswith("/chat/completions")]


def test_the_offline_guard_refuses_a_non_loopback_connection_and_logs_it(tmp_path):
    log = tmp_path / "log"
    code = ("import socket\ntry:\n    socket.create_connection(('10.255.255.1', 80), timeout=1)\n"
            "except OSError as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, PYTHONPATH=str(GUARD), DUET_OFFLINE_GUARD="1", DUET_OFFLINE_GUARD_LOG=str(log))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert "OfflineViolation" in p.stdout and "10.255.255.1" in log.read_text()


def test_a_failing_first_round_reaches_the_coder_and_the_second_round_passes(servers, repo, config_file, guard_log):
    reasoner, coder = servers
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                  text_reply(edit("    return a * b", "    return a + b", prose="Fixed the operator.")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["rounds"] == 2
    assert out["route"]["role"] == "reasoner" and out["plan"] == PLAN and out["thinking"] == TRACE
    assert [(t["round"], t["exit_code"] != 0) for t in out["tests"]] == [(1, True), (2, False)]
    assert "test_add" in out["tests"][0]["output"]
    assert [(e["path"], e["applied"]) for e in out["edits"]] == [("calc.py", True), ("calc.py", True)]
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    prompts = coder_prompts(coder)
    assert len(prompts) == 2
    assert PLAN in prompts[0] and TRACE not in json.dumps([r.json for r in coder.requests])
    # Round 2 got the failure (test name, assertion), the plan, and the file as it now is.
    assert "test_add" in prompts[1] and "assert 6 == 5" in prompts[1] and "return a * b" in prompts[1]
    assert PLAN in prompts[1]
    # Both rounds are one undo; the session holds the test rounds.
    assert Workspace(repo).undo() == ["calc.py"] and (repo / "calc.py").read_text() == BROKEN
    with SessionStore.open() as store:
        runs = store.test_runs(out["session_id"])
        assert [(r.round, r.status) for r in runs] == [(1, "failed"), (2, "passed")]


def test_a_coder_without_history_gets_the_plan_again_on_the_files_as_they_were_sampled(servers, repo, tmp_path,
                                                                                        guard_log):
    """``history = false`` on the coder (a model trained on single requests): after a failing
    round its change is undone and it is asked the hand-off again (not the fix-forward prompt),
    sampled with a fresh seed; its second reply quotes the file as it was, and passes."""
    _, coder = servers
    config_file = greedy_coder_config(tmp_path / "alone.toml", servers, "false")
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                  text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["rounds"] == 2
    assert [(t["round"], t["exit_code"] != 0) for t in out["tests"]] == [(1, True), (2, False)]
    asks = [r.json for r in coder.requests if r.path.endswith("/chat/completions")]
    assert len(asks) == 2 and asks[1]["messages"] == asks[0]["messages"]  # the same hand-off, the file as it was
    assert "return a * b" not in asks[1]["messages"][-1]["content"] and "assert 6 == 5" not in json.dumps(asks[1])
    assert asks[0].get("temperature", 0) == 0 and asks[1]["temperature"] > 0 and asks[1]["seed"] == 1
    assert "The tests still fail: undid calc.py; asking the coder again, sampled." in p.stderr
    assert "(test retry 1 of 2)" in p.stderr and "test fix" not in p.stderr
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert Workspace(repo).undo() == ["calc.py"] and (repo / "calc.py").read_text() == BROKEN  # one undo, as ever


def test_a_coder_without_history_whose_edit_changes_nothing_is_asked_again_sampled(servers, repo, tmp_path, guard_log):
    """A reply whose block changes nothing (its REPLACE is its SEARCH) is a round that failed:
    a coder without history is asked the same hand-off again, sampled; one with history is not
    (its run ends: no edits)."""
    for history in ("false", "true"):
        config_file = greedy_coder_config(tmp_path / f"noop-{history}.toml", servers, history)
        p, asks = plan_and_code(servers, repo, guard_log, config_file, edit("    return a - b", "    return a - b"),
                                edit("    return a - b", "    return a + b"))
        out = json.loads(p.stdout)
        if history == "false":
            assert p.returncode == 0, p.stderr
            assert out["status"] == "passed" and out["rounds"] == 2
            assert [t["round"] for t in out["tests"]] == [2]  # nothing to test after round 1
            assert len(asks) == 2 and asks[1]["messages"] == asks[0]["messages"]
            assert asks[1]["temperature"] > 0 and asks[1]["seed"] >= 1
            assert "The coder's edit changes nothing: asking it again, sampled." in p.stderr
            assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
            assert Workspace(repo).undo() == ["calc.py"] and (repo / "calc.py").read_text() == BROKEN
        else:
            assert p.returncode == 1 and out["status"] == "failed" and len(asks) == 1
            assert "the coder proposed no edits" in out["reasons"] and "changes nothing" not in p.stderr
            assert (repo / "calc.py").read_text() == BROKEN


def test_a_coder_without_history_whose_blocks_do_not_apply_is_asked_its_request_again_sampled(servers, repo, tmp_path,
                                                                                               guard_log):
    """A block that does not apply (its SEARCH is not in the file) goes back to a coder with
    history with the reasons (the retry prompt); a coder without history, which that prompt
    only leads astray (and greedy, to the same reply), is asked its hand-off again, sampled."""
    for history in ("false", "true"):
        config_file = greedy_coder_config(tmp_path / f"revise-{history}.toml", servers, history)
        p, asks = plan_and_code(servers, repo, guard_log, config_file, edit("    return a ** b", "    return a + b"),
                                edit("    return a - b", "    return a + b"))
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["status"] == "passed"
        assert len(asks) == 2
        if history == "false":
            assert asks[1]["messages"] == asks[0]["messages"]  # the hand-off again ...
            assert asks[1]["temperature"] > 0 and asks[1]["seed"] >= 1  # ... sampled
            assert "asking the coder its request again, sampled (round 1 of 3)" in p.stderr
        else:
            retry = asks[1]["messages"][-1]["content"]
            assert "SEARCH does not match the file exactly" in retry  # told why, not asked afresh
            assert "temperature" not in asks[1] or asks[1]["temperature"] == 0
            assert "asking the coder again (round 1 of 3)" in p.stderr
        assert Workspace(repo).undo() == ["calc.py"] and (repo / "calc.py").read_text() == BROKEN


def test_first_the_tests_run_before_the_plan_and_their_failure_goes_with_the_request(servers, repo, tmp_path,
                                                                                     guard_log):
    """``[workspace] test_first``: the test command runs before the reasoner plans (round 0, in
    the JSON's tests); its trimmed failure follows the request in the reasoner's prompt (not the
    coder's); then the plan goes on as ever. A reasoner without ``history`` (a model trained on
    single requests) is asked the request alone; a coder's request runs no tests first; and
    without the setting nothing runs before the plan."""
    reasoner, coder = servers
    tables = (f'[reasoner]\nbackend = "openai"\nurl = "{reasoner.base_url}"\nmodel = "r1"\ntimeout = 5\n{{alone}}\n'
              f'[coder]\nbackend = "openai"\nurl = "{coder.base_url}"\nmodel = "coder"\ntimeout = 5\n\n'
              f'[workspace]\ntest_first = {{first}}\n')
    first, alone, off = tmp_path / "first.toml", tmp_path / "alone.toml", tmp_path / "off.toml"
    first.write_text(tables.format(alone="", first="true"), encoding="utf-8")
    alone.write_text(tables.format(alone="history = false\n", first="true"), encoding="utf-8")
    off.write_text(tables.format(alone="", first="false"), encoding="utf-8")
    coder.enqueue(text_reply(edit("    return a - b", "    return a + b")))
    p = duet(first, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and [(t["round"], t["status"]) for t in out["tests"]] == [(0, "failed"), (1, "passed")]
    ask = [r.json["messages"][-1]["content"] for r in reasoner.requests if r.path.endswith("/chat/completions")][0]
    told = ask.index(f"The test command `{TEST_CMD}` fails now (trimmed):")
    assert ask.index("fix add in calc.py") < told < ask.index("assert add(2, 3) == 5")  # the failing line, after the request
    assert "fails now" not in coder_prompts(coder)[0]  # the coder gets the plan
    assert "before the plan: tests failed (exit 1" in p.stderr and "the reasoner is shown the failure." in p.stderr
    assert Workspace(repo).undo() == ["calc.py"] and (repo / "calc.py").read_text() == BROKEN

    for config, role, runs_first in [(alone, "reasoner", True), (first, "coder", False), (off, "reasoner", False)]:
        reasoner.requests.clear()
        p = duet(config, repo, guard_log, "--role", role, "--file", "calc.py", "--test", TEST_CMD, "--json",
                 "fix add in calc.py")
        out = json.loads(p.stdout)
        assert [t["round"] for t in out["tests"]] == ([0] if runs_first else []), (config.name, role)
        assert not any("fails now" in json.dumps(r.json) for r in reasoner.requests)
        assert ("the reasoner is asked the request alone (history off)" in p.stderr) is (config is alone)


def test_a_coder_that_never_fixes_it_ends_failed_with_exit_1_after_n_rounds(servers, repo, config_file, guard_log):
    reasoner, coder = servers
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                  text_reply(edit("    return a * b", "    return a ** b")))
    p = duet(config_file, repo, guard_log, "--role", "coder", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--rounds", "2", "--json", "fix add in calc.py")
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "failed" and out["rounds"] == 2 and len(out["tests"]) == 2
    assert all(t["exit_code"] != 0 for t in out["tests"])
    assert not reasoner.requests or not any(r.path.endswith("/chat/completions") for r in reasoner.requests)
    assert len(coder_prompts(coder)) == 2  # no third coder turn after the last round


def test_a_plan_that_fails_its_tests_is_undone_and_the_reasoner_asked_again_sampled(servers, repo, config_file,
                                                                                      guard_log):
    """--replans: the first plan's change fails the tests after its one round; it is undone (the
    second coder turn sees the file as it was), the reasoner is asked again — the request, the plan
    tried and the failing test's output, on the history as it was before the first plan — sampled
    with a seed, and its second plan passes."""
    reasoner, coder = servers
    second = "1. In calc.py, add() must add: return a + b.\n2. Run the tests."
    reasoner.enqueue(reasoner_reply(TRACE, PLAN), reasoner_reply("think again", second))
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                  text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--rounds", "1", "--replans", "2", "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["replans"] == 1 and out["plan"] == second
    assert [(t["attempt"], t["exit_code"] != 0) for t in out["tests"]] == [(0, True), (1, False)]
    assert [(e["path"], e["applied"]) for e in out["edits"]] == [("calc.py", True)]  # the change that stands
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    asks = [r.json for r in reasoner.requests if r.path.endswith("/chat/completions")]
    assert len(asks) == 2 and len(asks[1]["messages"]) == len(asks[0]["messages"])  # not the undone attempt's turns
    first_ask, again = asks[0]["messages"][-1]["content"], asks[1]["messages"][-1]["content"]
    assert "fix add in calc.py" in again and "Already tried" not in first_ask
    tried = again.split("Already tried, and undone because it did not work:\n", 1)[1]
    assert tried.startswith("- " + " ".join(PLAN.split()))  # the plan tried ...
    assert "test_add" in tried and "assert" in tried and TEST_CMD in tried  # ... and how its tests failed
    assert TRACE not in again  # never the trace
    assert asks[1]["temperature"] > 0 and asks[1]["seed"] == 1  # sampled afresh
    prompts = coder_prompts(coder)
    assert second in prompts[1] and "return a - b" in prompts[1] and "return a * b" not in prompts[1]  # undone first
    assert "Already tried" not in prompts[1]  # the coder is told the user's request, not the re-plan's
    assert "the plan failed: undid calc.py; asking the reasoner for another plan (1 of 2)" in p.stderr
    no_replans = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--json",
                      "--replans", "-1", "fix add in calc.py")
    assert no_replans.returncode == 2 and "--replans" in no_replans.stderr


def test_workspace_replans_sets_the_re_plans_and_the_flag_overrides_it(servers, repo, config_file, guard_log):
    """``[workspace] replans`` is duet run's number of re-plans when ``--replans`` is not given
    (the demo config sets it); ``--replans 0`` turns them off for one run."""
    reasoner, coder = servers
    config_file.write_text(config_file.read_text(encoding="utf-8") + f'\n[workspace]\nreplans = 1\ntest = "{TEST_CMD}"\n',
                           encoding="utf-8")
    second = "1. In calc.py, add() must add: return a + b.\n2. Run the tests."
    reasoner.enqueue(reasoner_reply(TRACE, PLAN), reasoner_reply("think again", second))
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                  text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--rounds", "1",
             "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["replans"] == 1 and out["plan"] == second
    assert "asking the reasoner for another plan (1 of 1)" in p.stderr

    (repo / "calc.py").write_text(BROKEN, encoding="utf-8")
    reasoner.enqueue(reasoner_reply(TRACE, PLAN))
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--rounds", "1",
             "--replans", "0", "--json", "fix add in calc.py")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["status"] == "failed" and out["replans"] == 0
    assert len([r for r in reasoner.requests if r.path.endswith("/chat/completions")]) == 3  # no re-plan this time


def test_a_re_plan_that_repeats_a_tried_plan_goes_to_the_coder_again_sampled(servers, repo, config_file, guard_log):
    """The coder proposes no edits for the first plan: the re-plan is told why. The second plan
    is the first again (other spacing): it is handed off again, the coder's reply sampled (a
    greedy coder would only repeat itself), and that reply passes. The next re-plan, had there
    been one, lists the plan once."""
    reasoner, coder = servers
    reasoner.enqueue(reasoner_reply(TRACE, PLAN), reasoner_reply("again", "\n" + PLAN + "  \n"))
    coder.enqueue(text_reply("I see nothing to change."), text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--rounds", "1", "--replans", "3", "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["replans"] == 1 and out["plan"].strip() == PLAN
    assert [t["attempt"] for t in out["tests"]] == [1]
    handoffs = [r.json for r in coder.requests if r.path.endswith("/chat/completions")]
    assert len(handoffs) == 2 and all(PLAN in h["messages"][-1]["content"] for h in handoffs)
    assert "seed" not in handoffs[0] and handoffs[1]["seed"] == 1  # the coder's own temperature, another seed
    assert handoffs[1]["temperature"] == handoffs[0]["temperature"] > 0
    assert "a plan already tried: handing it off again samples the coder's reply afresh" in p.stderr
    asks = [r.json["messages"][-1]["content"] for r in reasoner.requests if r.path.endswith("/chat/completions")]
    assert len(asks) == 2 and "did not get as far as the tests:\n- the coder proposed no edits" in asks[1]
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"


def test_a_plan_less_answer_is_re_planned_with_the_request_alone(servers, repo, config_file, guard_log):
    reasoner, coder = servers
    reasoner.enqueue(reasoner_reply("only thinking, no answer", ""), reasoner_reply("again", "1. return a + b"))
    coder.enqueue(text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--replans", "1", "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["replans"] == 1 and out["plan"] == "1. return a + b"
    asks = [r.json["messages"] for r in reasoner.requests if r.path.endswith("/chat/completions")]
    assert len(asks) == 2 and asks[0] == asks[1]  # nothing tried to tell of
    assert len(coder_prompts(coder)) == 1  # no hand-off of an empty plan
    alone = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--json", "fix it")
    assert json.loads(alone.stdout)["reasons"] == ["the coder proposed no edits"]  # a plan (the default) went
    reasoner.enqueue(reasoner_reply("only thinking", ""))
    empty = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--json", "fix it")
    assert json.loads(empty.stdout)["reasons"] == ["the reasoner gave no plan"] and empty.returncode == 1


def test_a_reasoner_without_history_is_asked_the_same_request_again(servers, repo, tmp_path, guard_log):
    reasoner, coder = servers
    config_file = tmp_path / "alone.toml"
    config_file.write_text(f'[reasoner]\nbackend = "openai"\nurl = "{reasoner.base_url}"\nmodel = "r1"\ntimeout = 5\n'
                           f'history = false\n\n[coder]\nbackend = "openai"\nurl = "{coder.base_url}"\n'
                           f'model = "coder"\ntimeout = 5\n', encoding="utf-8")
    reasoner.enqueue(reasoner_reply(TRACE, PLAN), reasoner_reply("again", "1. return a + b"))
    coder.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                  text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--role", "reasoner", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--rounds", "1", "--replans", "1", "--json", "/plan fix add in calc.py")
    assert p.returncode == 0, p.stderr
    asks = [r.json["messages"] for r in reasoner.requests if r.path.endswith("/chat/completions")]
    assert len(asks) == 2 and asks[0] == asks[1] and len(asks[0]) == 1


def test_the_re_plan_request_is_in_the_request_s_language_and_trims_long_plans():
    from app.prompts import REPLAN_PLAN_CHARS, replan_request

    zh = replan_request("修复 calc.py 里的错误", ["计划一"], command="pytest", output="E assert 1 == 2")
    assert zh.startswith("修复 calc.py 里的错误") and "已经试过" in zh and "- 计划一" in zh
    assert "`pytest`" in zh and "E assert 1 == 2" in zh and "Already" not in zh
    long = replan_request("fix it", ["word " * 500], reasons=["calc.py: SEARCH not found"])
    assert "did not get as far as the tests:" in long
    listed = long.split("did not work:\n", 1)[1].split("\n", 1)[0]
    assert len(listed) == 2 + REPLAN_PLAN_CHARS and listed.endswith("…")
    assert "- calc.py: SEARCH not found" in long
    fenced = replan_request("fix it", ["p"], command="t", output="```\nboom\n```")
    assert fenced.count("```") == 2  # the output cannot close its fence


def test_a_shell_block_in_the_coder_answer_runs_nothing(servers, repo, config_file, guard_log):
    reasoner, coder = servers
    answer = ("First run this:\n\n```sh\ntouch PWNED && echo hacked > calc.py\n```\n\n"
              + edit("    return a - b", "    return a + b"))
    coder.set_script(text_reply(answer))
    p = duet(config_file, repo, guard_log, "--role", "coder", "--file", "calc.py", "--apply", "--test", TEST_CMD,
             "--json", "fix add")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "passed"
    assert not (repo / "PWNED").exists()
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"


def test_without_apply_nothing_is_written_and_the_json_holds_the_diffs(servers, repo, config_file, guard_log):
    reasoner, coder = servers
    coder.set_script(text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--file", "calc.py", "--test", TEST_CMD, "--json", "fix add in calc.py")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["route"]["role"] == "coder" and out["plan"] is None  # the router sent it straight to the coder
    assert out["status"] == "proposed" and out["tests"] == []
    assert [(e["path"], e["applied"]) for e in out["edits"]] == [("calc.py", False)]
    assert "-    return a - b" in out["edits"][0]["diff"] and "+    return a + b" in out["edits"][0]["diff"]
    assert (repo / "calc.py").read_text() == BROKEN
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == ""


def test_plain_output_is_the_diff_on_stdout_and_progress_with_the_trace_on_stderr(servers, repo, config_file,
                                                                                   guard_log):
    reasoner, coder = servers
    coder.set_script(text_reply(edit("    return a - b", "    return a + b")))
    p = duet(config_file, repo, guard_log, "--file", "calc.py", "/plan fix add in calc.py")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("--- a/calc.py\n+++ b/calc.py\n") and "+    return a + b" in p.stdout
    assert TRACE in p.stderr and "reasoner ·" in p.stderr and "coder ·" in p.stderr and "proposed" in p.stderr


def test_bad_rounds_and_a_missing_file_are_exit_2_naming_the_culprit(servers, repo, config_file, guard_log):
    p = duet(config_file, repo, guard_log, "--rounds", "0", "fix it")
    assert p.returncode == 2 and "--rounds" in p.stderr
    p = duet(config_file, repo, guard_log, "--file", "nope.py", "fix it")
    assert p.returncode == 2 and "nope.py" in p.stderr and "Traceback" not in p.stderr


def test_ctrl_c_during_the_test_run_kills_its_process_group_and_exits_130(servers, repo, config_file, guard_log):
    import signal
    import time

    reasoner, coder = servers
    coder.set_script(text_reply(edit("    return a - b", "    return a + b")))
    pidfile = repo / "child.pid"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]), DUET_OFFLINE_GUARD="1",
               DUET_OFFLINE_GUARD_LOG=str(guard_log))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--config", str(config_file), "--workspace", str(repo),
                             "run", "--role", "coder", "--file", "calc.py", "--apply", "--json",
                             "--test", f"sleep 60 & echo $! > {pidfile}; wait", "fix add"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert json.loads(out)["tests"][0]["status"] == "cancelled"
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the test command's child outlived the cancel")


def test_a_re_plan_samples_a_greedy_reasoner_and_keeps_a_sampled_one_s_own_settings():
    from app.config import Sampling
    from app.conversation.replan import RETRY_TEMPERATURE, retry_sampling

    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=1024)
    assert retry_sampling(greedy, seed=2) == Sampling(RETRY_TEMPERATURE, 0.95, 1024, seed=2)
    warm = Sampling(temperature=0.6, top_p=0.9, max_tokens=512)
    assert retry_sampling(warm, seed=3) == Sampling(0.6, 0.9, 512, seed=3)
