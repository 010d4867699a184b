"""`duet ask` in a real subprocess against a real scripted server, and `Turn` in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vocab.messages import ChatMessage
from vocab.events import AnswerDelta, Done
from app import demo
from app.config import load_config
from app.exact_quotes import stated_changes
from app.store import SessionStore
from app.turn import Turn, decide
from tests.sse_server import RESET, ScriptedServer, error_reply, reasoner_reply, text_reply, with_fault

ROOT = Path(__file__).resolve().parent.parent
THINKING = "We need 2+3.\n2+3 = 5."
ANSWER = "The sum is **5**.\n\n答案是 5。"


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(models=("r1", "coder-7b")) as s:
        yield s


@pytest.fixture
def config_file(tmp_path, server) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[reasoner]\nbackend = "openai"\nurl = "{server.base_url}"\nmodel = "r1"\ntimeout = 5\n\n'
                    f'[coder]\nbackend = "openai"\nurl = "{server.base_url}"\nmodel = "coder-7b"\n', encoding="utf-8")
    return path


def duet(*args, timeout=60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_ask_json_returns_thinking_answer_usage_and_timings(server, config_file):
    server.set_script(reasoner_reply(THINKING, ANSWER, placement="reasoning_content"))
    p = duet("--config", str(config_file), "ask", "--json", "--role", "reasoner", "What is 2+3?")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["role"], out["model"], out["thinking"], out["answer"]) == ("reasoner", "r1", THINKING, ANSWER)
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 34}
    assert 0 < out["timings"]["first_token_s"] <= out["timings"]["total_s"]
    assert server.requests[-1].json["model"] == "r1"


def test_ask_streams_the_answer_to_stdout_and_the_thinking_to_stderr(server, config_file):
    server.set_script(reasoner_reply(THINKING, ANSWER, placement="inline_no_open"))
    p = duet("--config", str(config_file), "ask", "--role", "reasoner", "What is 2+3?")
    assert p.returncode == 0, p.stderr
    assert p.stdout == ANSWER + "\n"
    assert p.stderr == THINKING + "\n"


def test_ask_routes_by_itself_and_a_forced_role_wins(server, config_file):
    server.set_script(text_reply("ok"))
    routed = json.loads(duet("--config", str(config_file), "ask", "--json", "帮我设计一个缓存方案").stdout)
    assert (routed["role"], routed["intent"], routed["model"]) == ("reasoner", "design", "r1")
    forced = json.loads(duet("--config", str(config_file), "ask", "--json", "--role", "coder", "帮我设计一个缓存方案").stdout)
    assert (forced["role"], forced["model"]) == ("coder", "coder-7b") and "--role coder" in forced["why"]
    assert server.requests[-1].json["model"] == "coder-7b"


def test_ask_saves_the_turn_unless_no_save(server, config_file, duet_home):
    server.set_script(reasoner_reply(THINKING, ANSWER))
    duet("--config", str(config_file), "ask", "--role", "reasoner", "What is 2+3?")
    with SessionStore.open() as store:
        [session] = store.list_sessions()
        user, reply = store.messages(session.id)
        assert (user.kind, user.text) == ("user", "What is 2+3?")
        assert (reply.role, reply.model, reply.thinking, reply.answer, reply.status) == ("reasoner", "r1", THINKING, ANSWER, "done")
        assert reply.usage == {"prompt_tokens": 12, "completion_tokens": 34}
    duet("--config", str(config_file), "ask", "--no-save", "--role", "reasoner", "again")
    with SessionStore.open() as store:
        assert len(store.list_sessions()) == 1


def test_a_fault_mid_answer_is_one_line_exit_1_with_the_partial_answer(server, config_file, duet_home):
    server.set_script(with_fault(reasoner_reply(THINKING, ANSWER, chunk_size=4), RESET, after=9))
    p = duet("--config", str(config_file), "ask", "--role", "reasoner", "What is 2+3?")
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1].startswith("duet: lost the connection") and p.stderr.endswith("\n")
    assert p.stdout.strip() and ANSWER.startswith(p.stdout.rstrip("\n"))
    with SessionStore.open() as store:
        reply = store.messages(store.last_session_id())[-1]
        assert reply.status == "failed" and reply.answer == p.stdout.rstrip("\n")


def test_a_json_fault_keeps_the_partial_answer_in_the_object(server, config_file):
    server.set_script(with_fault(reasoner_reply(THINKING, ANSWER, chunk_size=4), RESET, after=9))
    p = duet("--config", str(config_file), "ask", "--json", "--role", "reasoner", "What is 2+3?")
    out = json.loads(p.stdout)
    assert p.returncode == 1 and out["status"] == "failed" and out["thinking"] == THINKING
    assert out["answer"] and ANSWER.startswith(out["answer"]) and "lost the connection" in out["error"]


def test_an_http_error_is_one_line_and_exit_1(server, config_file):
    server.set_script(error_reply(503, "Service Unavailable: model is loading", style="vllm"))
    p = duet("--config", str(config_file), "ask", "--role", "reasoner", "hi")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "HTTP 503" in p.stderr and "model is loading" in p.stderr


def test_an_unreachable_server_names_the_config_file_and_key_and_exits_2(tmp_path, free_port):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[reasoner]\nbackend = "openai"\nurl = "http://127.0.0.1:{free_port}/v1"\nmodel = "r1"\n')
    p = duet("--config", str(cfg), "ask", "--role", "reasoner", "hi")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"duet: {cfg}: reasoner.url: ")
    assert "unreachable" in p.stderr


def test_ctrl_c_cancels_promptly_keeps_the_partial_answer_and_saves_it(server, config_file, duet_home):
    server.set_script(reasoner_reply(THINKING, ANSWER * 50, delay=0.03))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--config", str(config_file), "ask", "--role", "reasoner",
                             "What is 2+3?"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, bufsize=0)
    first = proc.stdout.read(5)  # the answer has started (unbuffered: nothing read ahead)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == 130 and err.decode().endswith("duet: cancelled\n")
    partial = (first + out).decode().rstrip("\n")
    assert partial and len(partial) < len(ANSWER * 50)
    with SessionStore.open() as store:
        reply = store.messages(store.last_session_id())[-1]
        assert reply.status == "cancelled" and reply.answer == partial


def test_ask_runs_the_demo_model_in_process(tmp_path):
    p = duet("--demo", "ask", "--json", "--role", "coder", "Say hello.", timeout=180)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["model"] == "duet-demo-coder (demo)" and out["answer"] and out["usage"]["completion_tokens"] > 0


# -- Turn, as the TUI drives it -------------------------------------------------------------

def test_a_turn_sends_history_answers_and_records_while_streaming(server, config_file):
    config = load_config(config_file)
    server.set_script(reasoner_reply(THINKING, ANSWER, delay=0.02))
    history = [ChatMessage("user", "Plan a cache."), ChatMessage("assistant", "Use an LRU.", thinking="TRACE")]
    with SessionStore.open() as store:
        turn = Turn(config, "/think is LRU right here?", decide("/think is LRU right here?"), history=history, store=store)
        assert (turn.route.role, turn.route.forced) == ("reasoner", True)
        seen_in_db = []
        for event in turn.events():
            if isinstance(event, AnswerDelta) and not seen_in_db:
                time.sleep(0.6)  # past the recorder's flush interval
                seen_in_db.append(store.message(turn.result.message_id).status)
        assert seen_in_db == ["streaming"]
        sent = server.requests[-1].json["messages"]
        assert [m["content"] for m in sent[:2]] == ["Plan a cache.", "Use an LRU."] and "TRACE" not in str(sent)
        assert turn.result.thinking == THINKING and turn.result.answer == ANSWER
        assert store.message(turn.result.message_id).status == "done"


def test_a_turn_abandoned_mid_stream_is_saved_as_cancelled(server, config_file):
    config = load_config(config_file)
    server.set_script(reasoner_reply(THINKING, ANSWER * 20, delay=0.02))
    with SessionStore.open() as store:
        turn = Turn(config, "/think what now", decide("/think what now"), store=store)
        events = turn.events()
        for event in events:
            if isinstance(event, AnswerDelta):
                break
        events.close()
        assert store.message(turn.result.message_id).status == "cancelled"


def test_a_turn_cancelled_from_another_thread_ends_with_done_cancelled(server, config_file):
    config = load_config(config_file)
    server.set_script(reasoner_reply(THINKING, ANSWER * 20, delay=0.05))
    cancel = threading.Event()
    turn = Turn(config, "/think hmm", decide("/think hmm"), save=False)
    threading.Timer(0.3, cancel.set).start()
    events = list(turn.events(cancel))
    assert events[-1] == turn.result.done and isinstance(events[-1], Done)
    assert turn.result.status == "cancelled" and turn.result.session_id is None


def test_ask_with_the_demo_model_and_no_file_says_what_the_demo_knows_and_still_answers(tmp_path):
    p = duet("--demo", "ask", "--role", "coder", "--no-save", "Say hello.", timeout=180)
    assert p.returncode == 0, p.stderr
    # the note on stderr, then the coder's reply on stdout; llama.cpp's own logs stay out
    assert p.stdout.strip() and p.stderr == f"duet: {demo.NO_FILE_NOTE}\n"


def test_demo_ask_sends_the_sample_module_it_names_and_the_reasoner_plans_from_it():
    """`duet --demo ask "review stats.py"`: the sample project's stats.py joins the context (its
    tests run first, as the demo config says), the demo reasoner reads it and plans a change of
    one of its lines."""
    p = duet("--demo", "ask", "--no-save", "review stats.py", timeout=300)
    assert p.returncode == 0, p.stderr
    notes = [line for line in p.stderr.splitlines() if line.startswith("duet: ")]
    assert "duet: stats.py joined the context (named in the request)." in notes
    assert not any(demo.NO_FILE_NOTE in line for line in notes)
    assert "stats.py has 2 functions. I read the code line by line" in p.stderr   # its thinking
    source = (demo.sample_source() / "stats.py").read_text(encoding="utf-8")
    changed = [x for x, _ in stated_changes(p.stdout)]
    assert changed and all(x in source for x in changed)                         # a line stats.py has


def test_ask_sends_the_files_its_request_names_from_the_workspace_and_notes_it(server, config_file, tmp_path):
    ws = tmp_path / "proj"
    ws.mkdir()
    (ws / "calc.py").write_text("def add(a, b):\n    return a - b\n", encoding="utf-8")
    server.set_script(text_reply("ok"))
    p = duet("--config", str(config_file), "--workspace", str(ws), "ask", "--role", "reasoner", "--no-save",
             "review calc.py")
    assert p.returncode == 0, p.stderr
    assert "return a - b" in json.dumps(server.requests[-1].json["messages"])
    assert "duet: calc.py joined the context (named in the request)." in p.stderr.splitlines()
    assert p.stdout == "ok\n"
    j = duet("--config", str(config_file), "--workspace", str(ws), "ask", "--json", "--no-save", "why does add fail?")
    out = json.loads(j.stdout)
    assert "calc.py joined the context (it defines add, named in the request)." in out["notes"]
    assert "return a - b" in json.dumps(server.requests[-1].json["messages"])
    assert sorted(p.name for p in ws.iterdir()) == ["calc.py"]                  # ask writes nothing there
    bare = json.loads(duet("--config", str(config_file), "ask", "--json", "--no-save", "What is 2+3?").stdout)
    assert bare["notes"] == [] and bare["answer"] == "ok"


def test_closing_stdout_early_cancels_the_turn_quietly(server, config_file, duet_home):
    """`duet ask … | head -c 5`: the reader leaves, the model stops, no traceback."""
    server.set_script(reasoner_reply(THINKING, ANSWER * 200, delay=0.01))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--config", str(config_file), "ask", "--role", "reasoner",
                             "What is 2+3?"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, bufsize=0)
    assert proc.stdout.read(5)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=10) == 130
    assert "Traceback" not in err and err.endswith("duet: cancelled\n")
    with SessionStore.open() as store:
        assert store.messages(store.last_session_id())[-1].status == "cancelled"


def _ask_with_config(tmp_path, body: str):
    config = tmp_path / "config.toml"
    config.write_text(body)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "app", "--config", str(config), "ask", "--role", "coder", "hi"],
                          capture_output=True, text=True, env=env, timeout=120), config


def test_a_gguf_that_is_not_a_model_is_exit_2_naming_file_and_key(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a gguf file")
    result, config = _ask_with_config(tmp_path, f'[coder]\nbackend = "llama.cpp"\npath = "{bad}"\n')
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert str(config) in line and "coder.path" in line and "broken.gguf" in line
    assert "Traceback" not in result.stderr


def test_a_local_folder_with_a_corrupt_shard_is_exit_2_naming_the_shard(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["DeepseekV3ForCausalLM"]}')
    (model / "model.safetensors").write_bytes(b"\x00garbage")
    result, config = _ask_with_config(tmp_path, f'[coder]\nbackend = "local"\npath = "{model}"\n')
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert str(config) in line and "coder.path" in line
    assert "Traceback" not in result.stderr


def test_kill_9_mid_answer_leaves_the_partial_answer_marked_interrupted(server, config_file, duet_home):
    server.set_script(reasoner_reply(THINKING, ANSWER * 80, delay=0.03))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--config", str(config_file), "ask", "--role", "reasoner",
                             "What is 2+3?"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, bufsize=0)
    shown = proc.stdout.read(300)  # the answer is well under way
    time.sleep(1.2)  # past at least one batch interval (0.5 s) after those bytes
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
    proc.wait(timeout=10)
    with SessionStore.open() as store:  # "start again"
        reply = store.messages(store.last_session_id())[-1]
    assert reply.status == "interrupted"
    assert reply.thinking == THINKING  # the trace finished streaming long before the kill
    assert len(reply.answer) >= len(shown.decode()) and (ANSWER * 80).startswith(reply.answer)
    assert len(reply.answer) < len(ANSWER * 80)
