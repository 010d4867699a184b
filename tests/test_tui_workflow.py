"""The TUI around the chat: coder edits through the diff preview to disk, files in context,
sessions (resume, interrupted replies, search, rename, delete), first run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vocab.events import AnswerDelta, Done, ThinkingDelta, Usage
from app.store import SessionStore
from app.tui.dialogs import Ask, Confirm, FilePicker, fuzzy_score
from app.tui.diff_preview import DiffPreview
from app.tui.first_run import FirstRunScreen
from app.tui.messages import UserItem
from app.tui.sessions import SessionsScreen
from app.workspace import Workspace
from tests.sse_server import ScriptedServer, text_reply
from tests.tui_support import (make_app, replies, screen_text, sent_messages, server_config, type_and_send, wait_for,
                               wait_reply, wait_text)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server():
    with ScriptedServer(text_reply("ok")) as s:
        yield s


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "README.md").write_text("# proj\n")
    return Workspace(root)


async def test_a_coder_reply_opens_the_diff_preview_and_accepting_writes_the_file(server, ws):
    server.set_script(text_reply("Fixed.\n\nsrc/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n"
                                 "    return a + b\n>>>>>>> REPLACE\n"))
    store_path = ws.root.parent / "s.db"
    app = make_app(server_config(server.base_url), workspace=ws, store_path=store_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/edit fix add in src/calc.py")
        item = await wait_reply(pilot, app)
        await wait_for(pilot, lambda: isinstance(app.screen, DiffPreview))
        await wait_text(pilot, app, "+    return a + b")
        await pilot.press("a", "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, DiffPreview))
        await pilot.pause()
        assert (ws.root / "src" / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
        await pilot.press("f12")  # undo puts the exact bytes back
        await pilot.pause()
        assert (ws.root / "src" / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"
    with SessionStore.open(store_path) as store:
        assert store.message(item.message_id).applied  # the store knows this reply's change was applied


async def test_rejecting_the_diff_leaves_the_file_untouched(server, ws):
    server.set_script(text_reply("src/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return 0\n>>>>>>> REPLACE\n"))
    app = make_app(server_config(server.base_url), workspace=ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/edit break it")
        await wait_reply(pilot, app)
        await wait_for(pilot, lambda: isinstance(app.screen, DiffPreview))
        await pilot.press("r")
        await wait_for(pilot, lambda: not isinstance(app.screen, DiffPreview))
    assert (ws.root / "src" / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"


def test_fuzzy_score_prefers_runs_and_path_starts():
    assert fuzzy_score("calc", "src/calc.py") > fuzzy_score("calc", "scarlet/cache.py")
    assert fuzzy_score("xyz", "src/calc.py") is None
    assert fuzzy_score("", "anything") == 0


async def test_the_file_picker_adds_a_fuzzy_match_and_the_coder_gets_its_text(server, ws):
    app = make_app(server_config(server.base_url), workspace=ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: isinstance(app.screen, FilePicker))
        await pilot.press(*"scalc", "enter")
        await pilot.pause()
        assert ws.context.files == ["src/calc.py"]
        await wait_text(pilot, app, "✓ src/calc.py")
        await pilot.press("escape")
        await pilot.pause()
        await wait_text(pilot, app, "in 1 files")  # the status bar's context budget
        await type_and_send(pilot, "/code add a docstring")
        await wait_reply(pilot, app)
        assert "return a - b" in sent_messages(server)[-1]["content"]
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: isinstance(app.screen, FilePicker))
        await pilot.press(*"scalc", "enter")  # again: drops it
        await pilot.pause()
        assert ws.context.files == []


def _seed_session(path, title="Cache design", answer="Use an LRU cache.") -> int:
    with SessionStore.open(path) as store:
        sid = store.create_session(title)
        store.add_user_message(sid, "/plan a cache")
        with store.begin_reply(sid, role="reasoner", model="r1-test", intent="design", why="/plan prefix → reasoner",
                               prompt="a cache") as rec:
            for event in (ThinkingDelta("Keys first. "), ThinkingDelta("TRACE-IN-STORE."), AnswerDelta(answer),
                          Usage(20, 30), Done("stop", 0.5, 3.0)):
                rec.add(event)
        return sid


async def test_the_last_session_is_resumed_on_start_with_its_trace_collapsed(server, tmp_path):
    store_path = tmp_path / "s.db"
    _seed_session(store_path)
    app = make_app(server_config(server.base_url), store_path=store_path, resume=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: replies(app) and replies(app)[0].answer)
        await pilot.pause()
        screen = screen_text(app)
        assert "Use an LRU cache." in screen and "thought for 3 s · 2 tokens" in screen
        # It continues: the next coder turn carries the resumed plan and its history.
        await type_and_send(pilot, "/code do it")
        await wait_reply(pilot, app, 2)
        wire = repr(sent_messages(server))
        assert "Use an LRU cache." in sent_messages(server)[-1]["content"] and "TRACE-IN-STORE" not in wire
        assert app.chat.session_id is not None
    with SessionStore.open(store_path) as store:
        assert len(store.list_sessions()) == 1 and len(store.messages(store.list_sessions()[0].id)) == 4


async def test_an_interrupted_reply_from_a_killed_process_offers_continue(server, tmp_path):
    store_path = tmp_path / "s.db"
    code = ("import os, sys\nfrom app.store import SessionStore\nfrom vocab.events import AnswerDelta\n"
            f"s = SessionStore.open({str(store_path)!r})\nsid = s.create_session('crashed')\n"
            "s.add_user_message(sid, 'write a long essay')\n"
            "r = s.begin_reply(sid, role='coder', model='m', prompt='write a long essay')\n"
            "r.add(AnswerDelta('PARTIAL-BEFORE-CRASH')); r.flush(); os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    server.set_script(text_reply(" and the rest."))
    app = make_app(server_config(server.base_url), store_path=store_path, resume=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: replies(app) and replies(app)[0].status == "interrupted")
        await pilot.pause()
        await wait_text(pilot, app, "interrupted", "F4 continue")
        await pilot.press("f4")
        await wait_reply(pilot, app, 2)
        messages = sent_messages(server)
        assert messages[-2] == {"role": "assistant", "content": "PARTIAL-BEFORE-CRASH"}
        assert "Continue" in messages[-1]["content"]


async def test_sessions_screen_searches_switches_renames_and_deletes_with_confirmation(server, tmp_path):
    store_path = tmp_path / "s.db"
    first = _seed_session(store_path, "Cache design", "Use an LRU cache.")
    second = _seed_session(store_path, "缓存方案", "使用最近最少使用缓存。")
    app = make_app(server_config(server.base_url), store_path=store_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
        await pilot.press(*"最少使用")
        await wait_for(pilot, lambda: "缓存方案" in screen_text(app) and "Cache design" not in screen_text(app))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat.session_id == second and replies(app))
        await pilot.pause()
        await wait_text(pilot, app, "使用最近最少使用缓存。")
        # rename the highlighted (newest) session, then delete the other one
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, Ask))
        await pilot.press("ctrl+a", "ctrl+k", *"Renamed", "enter")
        await wait_for(pilot, lambda: "Renamed" in screen_text(app))
        await pilot.press("down", "ctrl+d")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")  # declined: nothing is deleted
        await pilot.pause()
        assert len(app.store.list_sessions()) == 2
        await pilot.press("ctrl+d")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(app.store.list_sessions()) == 1)
        assert app.store.session(first) is None and app.store.session(second).title == "Renamed"


async def test_sessions_screen_exports_markdown_with_the_trace_in_details(server, tmp_path, duet_home):
    store_path = tmp_path / "s.db"
    sid = _seed_session(store_path)
    app = make_app(server_config(server.base_url), store_path=store_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SessionsScreen))
        await pilot.press("ctrl+e")
        out = duet_home / "exports" / f"session-{sid}.md"
        await wait_for(pilot, out.exists)
    text = out.read_text()
    assert "Use an LRU cache." in text and "<details>" in text and "TRACE-IN-STORE." in text


async def test_first_run_lists_what_discovery_found_and_enter_starts_the_demo(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    gguf = home / "models" / "tiny-coder.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    from app.config import demo_config

    app = make_app(demo_config(), first_run=True, config_path=tmp_path / "cfg" / "config.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, FirstRunScreen))
        await wait_for(pilot, lambda: "tiny-coder" in screen_text(app), timeout=15)
        screen = screen_text(app)
        assert "Start now on the demo models" in screen and str(gguf) in screen and "Step 1 of 2" in screen
        await pilot.press("enter")  # the first option: the demo, at once
        from app.tui.first_run import DemoWelcome

        await wait_for(pilot, lambda: isinstance(app.screen, DemoWelcome))  # what to try, on the sample project
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat is not None and app.screen is app.chat)
        await pilot.pause()
        await wait_text(pilot, app, "duet-demo-reasoner (demo)")
    assert not (tmp_path / "cfg" / "config.toml").exists()  # the demo needs no config file


async def test_first_run_writes_the_picked_models_to_a_config_file_and_starts_on_it(tmp_path, server, ws):
    from app.config import demo_config, load_config
    from urllib.parse import urlparse

    from app.discovery import Found, probe_servers

    server.enqueue(text_reply("Hello from the picked server."))
    port = urlparse(server.base_url).port
    found = [Found("gguf", "some-model.gguf", str(tmp_path / "some-model.gguf"), "GGUF, 0.0 GB")]
    found += probe_servers({port: "Ollama"})  # the real probe of the real loopback server
    path = tmp_path / "cfg" / "config.toml"
    app = make_app(demo_config(), first_run=True, workspace=ws, config_path=path, discover=lambda: found)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_text(pilot, app, "Step 1 of 2", "scripted-model")
        await pilot.press("down", "down", "enter")  # past the demo and the GGUF: the server, as reasoner
        await wait_text(pilot, app, "Step 2 of 2")
        await pilot.press("up", "enter")  # the last option wrapped to: the demo coder
        await wait_text(pilot, app, "Wrote", str(path))
        text = path.read_text(encoding="utf-8")
        assert f'url = "{server.base_url}"' in text and 'model = "scripted-model"' in text
        assert "[coder]" in text and "coder.gguf" in text  # the demo's coder, by its packaged path
        assert "[reasoner]" in screen_text(app)  # the file is shown before Duet starts on it
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat is not None and app.screen is app.chat)
        await type_and_send(pilot, "/think hello")
        await wait_text(pilot, app, "Hello from the picked server.")
    config = load_config(path)  # what was written is a valid config, and the app runs on it
    assert config.reasoner.backend == "openai" and config.reasoner.url == server.base_url
    assert config.coder.backend == "llama.cpp" and config.coder.sampling.temperature == 0.0
    assert app.config.reasoner.url == server.base_url
    assert "hello" in sent_messages(server)[-1]["content"]


async def test_first_run_never_overwrites_a_config_file_that_appeared_meanwhile(tmp_path, ws):
    from app.config import demo_config

    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    app = make_app(demo_config(), first_run=True, workspace=ws, config_path=path, discover=lambda: [])
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_text(pilot, app, "found no models")
        await pilot.press("down", "enter", "enter")  # the demo reasoner, then the demo coder
        await wait_text(pilot, app, "Could not write the config", "not overwriting")
        assert isinstance(app.screen, FirstRunScreen)
    assert path.read_text() == "# mine\n"


async def test_rejected_blocks_go_back_to_the_coder_and_the_fixed_round_reaches_the_preview(server, ws):
    bad = "src/calc.py\n<<<<<<< SEARCH\n    return a * b\n=======\n    return a + b\n>>>>>>> REPLACE\n"
    good = "src/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n"
    server.enqueue(text_reply(bad), text_reply(good))
    app = make_app(server_config(server.base_url), workspace=ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/edit fix add")
        await wait_for(pilot, lambda: isinstance(app.screen, DiffPreview), timeout=15)
        assert len(replies(app)) == 2  # the user saw the retry round as its own reply
        authors = [str(u.render()).split("\n")[0] for u in app.chat.conversation.query(UserItem)]
        assert authors == ["you", "duet → coder · retry 1 of 3"]  # Duet wrote the retry, not the user
        feedback = sent_messages(server)[-1]["content"]
        assert "could not be applied" in feedback and "src/calc.py" in feedback and "return a - b" in feedback
        await pilot.press("a", "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, DiffPreview))
    assert (ws.root / "src" / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"


async def test_copy_keys_put_the_answer_and_its_last_code_block_on_the_clipboard(server):
    server.set_script(text_reply("Here:\n\n```python\nprint('one')\n```\n\nand\n\n```sh\necho two\n```\n"))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/code show code")
        item = await wait_reply(pilot, app)
        await pilot.press("f8")
        assert app.clipboard == item.answer
        await pilot.press("f9")
        assert app.clipboard == "echo two\n"


async def test_f5_regenerates_and_ctrl_n_starts_a_new_session(server, tmp_path):
    server.enqueue(text_reply("first answer"), text_reply("second answer"))
    app = make_app(server_config(server.base_url), store_path=tmp_path / "s.db")
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/code say something")
        await wait_reply(pilot, app)
        await pilot.press("f5")
        again = await wait_reply(pilot, app, 2)
        assert again.answer == "second answer"
        chats = [r for r in server.requests if r.path.endswith("/chat/completions")]
        assert "first answer" not in repr(chats[-1].json["messages"])  # the replaced answer is not history
        first_session = app.chat.session_id
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: not replies(app))
        await type_and_send(pilot, "/code again")
        await wait_reply(pilot, app)
        assert app.chat.session_id not in (None, first_session)
        assert len(app.store.list_sessions()) == 2


async def test_files_too_large_for_the_window_go_as_their_outline(server, ws):
    body = "".join(f"def function_{i}(x):\n    return x + {i}  # BODY-{i}\n\n" for i in range(400))
    (ws.root / "src" / "big.py").write_text(body)
    ws.context.add("src/big.py")
    app = make_app(server_config(server.base_url), workspace=ws)  # a 4,096-token window
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan restructure big.py")
        await wait_reply(pilot, app)
        sent = sent_messages(server)[-1]["content"]
        assert "src/big.py" in sent and "function_0" in sent  # paths and symbols...
        assert "BODY-1" not in sent  # ...not the bodies


async def test_the_reasoner_also_sees_the_files_in_context(server, ws):
    ws.context.add("src/calc.py")
    app = make_app(server_config(server.base_url), workspace=ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan make add faster")
        await wait_reply(pilot, app)
        assert "return a - b" in sent_messages(server)[-1]["content"]


async def test_a_reply_another_live_process_is_still_writing_is_shown_as_such(server, tmp_path):
    store_path = tmp_path / "s.db"
    writer = SessionStore.open(store_path)  # this process stays alive: its reply is "streaming"
    sid = writer.create_session("busy elsewhere")
    writer.add_user_message(sid, "long task")
    rec = writer.begin_reply(sid, role="coder", model="m")
    rec.add(AnswerDelta("so far"))
    rec.flush()
    app = make_app(server_config(server.base_url), store_path=store_path, resume=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: replies(app) and replies(app)[0].answer == "so far")
        await pilot.pause()
        assert replies(app)[0].status == "elsewhere"
        await wait_text(pilot, app, "still streaming in another Duet window")
    rec.finish()
    writer.close()
