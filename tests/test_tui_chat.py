"""The chat screen driven by real keystrokes against the openai backend on a real loopback SSE server."""

from __future__ import annotations

import re
import time

import pytest
from rich.cells import cell_len

from app.tui.dialogs import PlanEditor
from app.tui.thinking import ThinkingPane
from tests.sse_server import ScriptedServer, error_reply, reasoner_reply, text_reply
from tests.tui_support import (make_app, replies, screen_text, sent_messages, server_config, type_and_send, wait_for,
                               wait_reply, wait_text)

THINKING = "First I consider the cache keys.\n\nThen the eviction policy: LRU fits.\n\nSECRET-TRACE-MARKER."
PLAN = "## Plan\n\n1. Add an LRU cache in `cache.py`.\n2. Wire it into `server.py`."


@pytest.fixture
def server():
    with ScriptedServer(reasoner_reply(THINKING, PLAN, placement="reasoning_content")) as s:
        yield s


async def test_a_design_request_is_routed_to_the_reasoner_and_shows_model_and_why(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "design a cache for the session list")
        item = await wait_reply(pilot, app)
        assert item.role == "reasoner" and item.status == "done"
        assert item.answer == PLAN and item.thinking == THINKING
        screen = screen_text(app)
        assert "reasoner · scripted-model · design" in screen
        assert item.why.startswith("design request") and "design request (\"design\")" in screen


async def test_an_implementation_request_goes_to_the_coder(server):
    server.set_script(text_reply("def search(xs, x): ..."))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "implement binary search in Go")
        item = await wait_reply(pilot, app)
        assert item.role == "coder"
        await wait_text(pilot, app, "coder · scripted-model · implement")


async def test_ctrl_r_forces_the_reasoner_and_ctrl_g_forces_the_coder(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "implement binary search in Go", key="ctrl+r")
        first = await wait_reply(pilot, app)
        await type_and_send(pilot, "design a cache", key="ctrl+g")
        second = await wait_reply(pilot, app, 2)
        assert (first.role, second.role) == ("reasoner", "coder")
        assert "--role reasoner" in first.why


async def test_the_thinking_pane_fills_live_before_the_answer_starts(server):
    thinking = "".join(f"Thought number {i}.\n\n" for i in range(40))
    server.set_script(reasoner_reply(thinking, "Done.", chunk_size=8, delay=0.02))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/think why is the sky blue")
        pane = app.chat.query_one(ThinkingPane)
        await wait_for(pilot, lambda: len(pane.text) > 40)
        item = replies(app)[0]
        assert item.status == "streaming" and item.answer == ""  # the trace arrives first, live
        seen_midway = len(pane.text)
        assert 40 < seen_midway < len(thinking)
        await wait_text(pilot, app, "thinking…")  # the message's one-liner while it thinks
        await wait_reply(pilot, app)
        assert pane.text == item.thinking and pane.text.rstrip() == thinking.rstrip()
        await wait_text(pilot, app, "Thought number 39.")


async def test_the_trace_stays_collapsed_to_one_line_and_expands_on_ctrl_t(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 50)) as pilot:
        await type_and_send(pilot, "/plan a cache")
        item = await wait_reply(pilot, app)
        await pilot.press("f2", "f2")  # hide the pane so only the message can show the trace
        await pilot.pause()
        screen = screen_text(app)
        assert re.search(r"▸ thought for \d+ s · \d+ tokens", screen)
        assert "SECRET-TRACE-MARKER" not in screen
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: "SECRET-TRACE-MARKER" in screen_text(app))
        assert item.expanded and "▾ thought for" in screen_text(app)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert not item.expanded and "SECRET-TRACE-MARKER" not in screen_text(app)


async def test_hand_off_sends_the_edited_plan_and_the_files_but_never_the_trace(server, tmp_path):
    from app.workspace import Workspace

    root = tmp_path / "proj"
    root.mkdir()
    (root / "cache.py").write_text("CACHE_SIZE = 128\n")
    ws = Workspace(root)
    ws.context.add("cache.py")
    app = make_app(server_config(server.base_url), workspace=ws)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan a cache")
        await wait_reply(pilot, app)
        server.set_script(text_reply("I would write the code now."))
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, PlanEditor))
        await pilot.press("ctrl+end", *"\n3. EDITED-STEP: add tests.")
        await pilot.press("ctrl+s")
        coder = await wait_reply(pilot, app, 2)
        assert coder.role == "coder"
        messages = sent_messages(server)
        wire = repr(messages)
        assert "SECRET-TRACE-MARKER" not in wire and "eviction policy" not in wire
        last = messages[-1]["content"]
        assert "EDITED-STEP" in last and "Add an LRU cache" in last
        assert "CACHE_SIZE = 128" in last and "cache.py" in last


async def test_handing_the_same_plan_off_again_samples_the_coder(server):
    """A greedy coder given the same plan twice would write the same edits: the second hand-off
    from the plan editor is sampled with a fresh seed."""
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan a cache")
        await wait_reply(pilot, app)
        server.set_script(text_reply("I would write the code now."))
        for n in (2, 3):
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, PlanEditor))
            await pilot.press("ctrl+s")
            await wait_reply(pilot, app, n)
        first, again = [r.json for r in server.requests if r.path.endswith("/chat/completions")][-2:]
        assert first["messages"][-1]["content"] == again["messages"][-1]["content"]
        assert first.get("temperature", 0) == 0 and "seed" not in first
        assert again["temperature"] == 0.7 and again["seed"] == 1


async def test_a_code_request_after_a_plan_carries_the_plan(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan a cache")
        await wait_reply(pilot, app)
        server.set_script(text_reply("ok"))
        await type_and_send(pilot, "/code write step 1")
        item = await wait_reply(pilot, app, 2)
        assert item.role == "coder"
        last = sent_messages(server)[-1]["content"]
        assert "Add an LRU cache" in last and "SECRET-TRACE-MARKER" not in repr(sent_messages(server))


async def test_an_auto_routed_coder_request_after_a_plan_carries_the_plan(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan a cache")
        await wait_reply(pilot, app)
        server.set_script(text_reply("ok"))
        await type_and_send(pilot, "now implement it")
        item = await wait_reply(pilot, app, 2)
        assert item.role == "coder" and not item.forced
        messages = sent_messages(server)
        assert "Add an LRU cache" in messages[-1]["content"] and "SECRET-TRACE-MARKER" not in repr(messages)


async def test_escape_cancels_within_a_fraction_of_a_second_and_keeps_the_partial_answer(server):
    answer = "".join(f"word{i} " for i in range(400))
    server.set_script(reasoner_reply("", answer, placement="answer_only", chunk_size=6, delay=0.02))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "tell me a long story")
        await wait_for(pilot, lambda: replies(app) and len(replies(app)[0].answer) > 30)
        pressed = time.monotonic()
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.chat.current is None, timeout=5)
        took = time.monotonic() - pressed
        item = replies(app)[0]
        assert item.status == "cancelled"
        assert len(item.answer) > 30 and answer.startswith(item.answer) and item.answer != answer
        assert took < 1.0, f"cancel took {took:.2f} s"
        await wait_text(pilot, app, "cancelled — partial answer kept")
        chats = [r for r in server.requests if r.path.endswith("/chat/completions")]
        await wait_for(pilot, chats[-1].client_gone.is_set, timeout=5)  # the connection was released


async def test_markup_and_ansi_escapes_in_model_output_are_shown_literally(server):
    answer = "Use [bold]this[/bold] and [link=http://evil.example]click[/link] \x1b[31mred\x1b[0m here."
    server.set_script(reasoner_reply("[italic]thinking[/italic] \x1b[2J", answer))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(140, 40)) as pilot:
        await type_and_send(pilot, "/think show markup")
        await wait_reply(pilot, app)
        screen = screen_text(app)
        assert "[bold]this[/bold]" in screen
        assert "[link=http://evil.example]click[/link]" in screen
        assert "␛[31mred␛[0m" in screen
        assert "[italic]thinking[/italic] ␛[2J" in screen  # the pane too


async def test_edit_blocks_and_numbered_code_in_a_trace_show_line_by_line_as_written(server):
    trace = "calc.py has 1 function.\n 1 | def add(a, b):\n 2 |     return a - b\nLine 2 uses `-`."
    answer = "calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n\nFixed `add`."
    server.set_script(reasoner_reply(trace, answer))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(140, 40)) as pilot:
        await type_and_send(pilot, "/think fix add")
        await wait_reply(pilot, app)
        lines = [line.strip(" ▌▏│") for line in screen_text(app).splitlines()]
        for want in ("<<<<<<< SEARCH", "=======", ">>>>>>> REPLACE", "return a + b", "Fixed add."):
            assert any(line.endswith(want) or line.startswith(want) for line in lines), (want, lines)
        assert any("2 |     return a - b" in line for line in lines)  # the pane: indentation kept


async def test_cjk_input_and_output_render_with_double_width_cells(server):
    server.set_script(text_reply("你好，世界！这是中文回答。"))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "解释一下这段代码")
        await wait_reply(pilot, app)
        lines = screen_text(app).splitlines()
        cjk = [line for line in lines if "你好，世界！这是中文回答。" in line]
        typed = [line for line in lines if "解释一下这段代码" in line]
        assert cjk and typed
        # The pane's border sits in the same terminal column on CJK lines as on ASCII lines.
        ascii_line = next(line for line in lines if "▏" in line and line.isascii() is False and "你" not in line)
        column = cell_len(ascii_line[: ascii_line.index("▏")])
        for line in cjk + typed:
            assert cell_len(line[: line.index("▏")]) == column


async def test_a_narrow_terminal_puts_the_thinking_pane_below_the_conversation(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(80, 40)) as pilot:
        await pilot.pause()
        conv, pane = app.chat.conversation.region, app.chat.pane.region
        assert pane.y > conv.y and pane.width == conv.width
        await pilot.resize_terminal(140, 40)
        await pilot.pause()
        conv, pane = app.chat.conversation.region, app.chat.pane.region
        assert pane.x > conv.x and pane.y == conv.y


async def test_f2_hides_the_pane_and_f3_widens_it(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        width = app.chat.pane.region.width
        await pilot.press("f3")
        await pilot.pause()
        assert app.chat.pane.region.width > width
        await pilot.press("f2", "f2")
        await pilot.pause()
        assert not app.chat.pane.display and app.chat.conversation.region.width == 140


async def test_a_backend_error_shows_inline_and_f5_retries(server):
    server.enqueue(error_reply(500, "the GPU caught fire"))
    server.set_script(text_reply("Recovered."))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "implement a queue")
        item = await wait_reply(pilot, app)
        assert item.status == "failed"
        screen = screen_text(app)
        assert "the GPU caught fire" in screen and "F5 retry" in screen
        await pilot.press("f5")
        again = await wait_reply(pilot, app, 2)
        assert again.status == "done" and again.answer == "Recovered."


async def test_an_unreachable_model_shows_failed_with_its_reason_in_the_status_bar(server, free_port):
    config = server_config(server.base_url, coder_url=f"http://127.0.0.1:{free_port}/v1")
    app = make_app(config, load_models=True)
    async with app.run_test(size=(160, 40)) as pilot:
        status = app.chat.status_bar
        await wait_for(pilot, lambda: status.role("coder").state == "failed")
        await wait_for(pilot, lambda: status.role("reasoner").state == "ready")
        await wait_text(pilot, app, "coder: scripted-model · failed (")
        await type_and_send(pilot, "/think still usable?")  # the other model still answers
        assert (await wait_reply(pilot, app)).status == "done"


async def test_enter_sends_ctrl_j_adds_a_newline_and_up_recalls_history(server):
    server.set_script(text_reply("ok"))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        prompt = app.chat.query_one("#prompt")
        await pilot.press(*"/pl", "tab")
        assert prompt.text == "/plan "
        await pilot.press("ctrl+a", "ctrl+k")
        await pilot.press(*"line one", "ctrl+j", *"line two")
        assert prompt.text == "line one\nline two"
        await pilot.press("enter")
        await wait_reply(pilot, app)
        assert prompt.text == ""
        assert any("line one\nline two" in m["content"] for m in sent_messages(server))
        await pilot.press("up")
        assert prompt.text == "line one\nline two"


async def test_the_command_palette_lists_the_chat_commands(server):
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"hand off")
        await wait_for(pilot, lambda: "Hand off the plan to the coder" in screen_text(app))


async def test_a_reasoner_reply_without_any_thinking_finishes_and_the_ui_stays_responsive(server):
    server.set_script(text_reply("Just an answer."))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/think quick one")
        item = await wait_reply(pilot, app)
        assert item.status == "done" and item.answer == "Just an answer." and not item.thinking
        await pilot.press(*"still typing")
        assert app.chat.query_one("#prompt").text == "still typing"


async def test_escape_right_after_sending_to_the_reasoner_cancels_cleanly(server):
    server.set_script(reasoner_reply("slow " * 200, "never shown", chunk_size=4, delay=0.05))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/think take your time")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.chat.current is None, timeout=5)
        item = replies(app)[0]
        assert item.status == "cancelled" and "never shown" not in item.answer
        await pilot.press(*"next")
        assert app.chat.query_one("#prompt").text == "next"


async def test_the_conversation_follows_the_stream_only_while_the_user_stays_at_the_bottom(server):
    from textual import events

    answer = "".join(f"Line {i} of a long answer.\n\n" for i in range(100))
    server.enqueue(reasoner_reply("", answer, placement="answer_only", chunk_size=20, delay=0.01))
    server.set_script(text_reply("Short.\n\n" * 40))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(100, 30)) as pilot:
        conv = app.chat.conversation
        await type_and_send(pilot, "/code a long one")
        await wait_for(pilot, lambda: conv.max_scroll_y > 20)
        await wait_for(pilot, lambda: conv.max_scroll_y - conv.scroll_y <= 1)  # following
        for _ in range(5):  # the user scrolls up with the wheel
            conv.post_message(events.MouseScrollUp(conv, 5, 5, 0, -1, 0, False, False, False))
        await pilot.pause(0.1)
        held = conv.scroll_y
        await wait_for(pilot, lambda: app.chat.current is None, timeout=15)
        await pilot.pause()
        assert conv.scroll_y == held < conv.max_scroll_y - 5  # stayed where the user put it
        await type_and_send(pilot, "/code again")  # a new request follows again
        await wait_reply(pilot, app, 2, timeout=15)
        await pilot.pause(0.2)
        assert conv.max_scroll_y - conv.scroll_y <= 1


async def test_bindings_have_ids_so_a_keymap_can_move_them(server):
    from dataclasses import replace
    from types import SimpleNamespace

    config = server_config(server.base_url)
    ui = SimpleNamespace(resume_last=False, thinking_pane="side", keymap={"chat.force_coder": "f10"})
    app = make_app(replace(config, ui=ui))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "design a cache", key="f10")
        assert (await wait_reply(pilot, app)).role == "coder"


class _LingeringBackend:
    """Sends its answer and Done, then takes a while to end the stream (as a server closing slowly)."""

    label = "lingering"

    def stream(self, messages, sampling, *, cancel=None, grammar=None, quotes_from=None, output=None):
        from vocab.events import AnswerDelta, Done

        yield AnswerDelta("All done.")
        yield Done("stop", 0.01, 0.02)
        time.sleep(0.3)  # the UI drains Done long before the stream closes

    def close(self):
        pass


async def test_a_stream_that_lingers_after_done_still_reads_as_done(server):
    app = make_app(server_config(server.base_url), backend=_LingeringBackend())
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/code anything")
        item = await wait_reply(pilot, app)
        assert item.status == "done" and item.answer == "All done."


async def test_a_model_that_takes_long_to_load_shows_loading_and_never_freezes_the_ui(server):
    import socket

    with socket.socket() as silent:  # accepts connections, never answers: the probe waits
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        config = server_config(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", coder_url=server.base_url)
        app = make_app(config, load_models=True)
        async with app.run_test(size=(140, 40)) as pilot:
            status = app.chat.status_bar
            await wait_for(pilot, lambda: status.role("reasoner").state == "loading")
            await pilot.press(*"typing while it loads")
            assert app.chat.query_one("#prompt").text == "typing while it loads"
            assert status.role("reasoner").state == "loading"
            await wait_text(pilot, app, "reasoner: scripted-model · loading")
            await wait_for(pilot, lambda: status.role("reasoner").state == "failed", timeout=10)
            await wait_for(pilot, lambda: status.role("coder").state == "ready", timeout=10)


async def test_clicking_an_older_trace_line_expands_it_and_shows_it_in_the_pane(server):
    from app.tui.messages import TraceSummary

    server.enqueue(reasoner_reply("OLDER-TRACE thinking.", "first plan"), reasoner_reply("NEWER-TRACE.", "second plan"))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(140, 50)) as pilot:
        await type_and_send(pilot, "/plan one")
        await wait_reply(pilot, app)
        await type_and_send(pilot, "/plan two")
        await wait_reply(pilot, app, 2)
        assert "NEWER-TRACE" in app.chat.pane.text
        first = replies(app)[0]
        await pilot.click(first.query_one(TraceSummary))
        await wait_for(pilot, lambda: first.expanded and "OLDER-TRACE" in app.chat.pane.text)
        assert not replies(app)[1].expanded


async def test_quitting_mid_reply_stops_the_backend_and_keeps_the_partial_answer_saved(server, tmp_path):
    from app.store import SessionStore

    answer = "".join(f"word{i} " for i in range(400))
    server.set_script(reasoner_reply("", answer, placement="answer_only", chunk_size=6, delay=0.02))
    app = make_app(server_config(server.base_url), store_path=tmp_path / "s.db")
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/code a long one")
        await wait_for(pilot, lambda: replies(app) and len(replies(app)[0].answer) > 30)
        await pilot.press("ctrl+q")
    chat = [r for r in server.requests if r.path.endswith("/chat/completions")][-1]
    assert chat.client_gone.wait(5)  # the connection was released
    deadline = time.monotonic() + 5
    while True:
        with SessionStore.open(tmp_path / "s.db") as store:
            reply = store.messages(store.last_session_id())[-1]
        if reply.status != "streaming" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert reply.status == "cancelled" and reply.answer and answer.startswith(reply.answer)
