"""The TUI over the conversation core: test rounds after an apply, /test and its cancel,
rewind (and after a restart), one undo for every round, and one routing decision on screen."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from app.config import WorkspaceConfig
from app.router import route
from app.store import SessionStore
from app.tui.dialogs import Confirm
from app.tui.diff_preview import DiffPreview
from app.tui.messages import ReplyItem, TestItem, UserItem
from app.workspace import Workspace
from tests.sse_server import ScriptedServer, reasoner_reply, text_reply
from tests.tui_support import make_app, replies, server_config, type_and_send, wait_for, wait_reply, wait_text

BROKEN = "def add(a, b):\n    return a - b\n"
TEST_CMD = f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py"


def edit(search: str, replace: str) -> str:
    return f"calc.py\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


@pytest.fixture
def server():
    with ScriptedServer(reasoner_reply("TRACE", "1. Fix add.\n2. Test it.")) as s:
        yield s


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "calc.py").write_text(BROKEN)
    (root / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    ws = Workspace(root)
    ws.context.add("calc.py")
    return ws


def with_tests(config, command: str = TEST_CMD):
    return dataclasses.replace(config, workspace=WorkspaceConfig(test=command))


async def accept_diff(pilot, app) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, DiffPreview), timeout=15)
    await pilot.press("a", "enter")
    await wait_for(pilot, lambda: not isinstance(app.screen, DiffPreview))


async def test_a_failing_test_round_goes_back_to_the_coder_and_each_round_shows(server, ws, tmp_path):
    server.enqueue(text_reply(edit("    return a - b", "    return a * b")),
                   text_reply(edit("    return a * b", "    return a + b")))
    app = make_app(with_tests(server_config(server.base_url)), workspace=ws, store_path=tmp_path / "s.db")
    async with app.run_test(size=(120, 50)) as pilot:
        await type_and_send(pilot, "/code fix add in calc.py")
        await accept_diff(pilot, app)
        # The failed round goes straight back to the coder, whose diff preview can cover the
        # conversation before a screen poll sees it: wait on the round's state, read the screen after.
        await wait_for(pilot, lambda: [t.status for t in app.chat.conversation.query(TestItem)] == ["failed"],
                       timeout=30)
        await accept_diff(pilot, app)  # the fix round's own review
        await wait_for(pilot, lambda: not app.chat.busy, timeout=30)
        await wait_text(pilot, app, "round 2 of 3", "✓ passed")
        tests = list(app.chat.conversation.query(TestItem))
        assert [t.status for t in tests] == ["failed", "passed"]
        first = str(tests[0].render())
        assert "round 1 of 3" in first and "✗ failed" in first
        authors = [str(u.render()).split("\n")[0] for u in app.chat.conversation.query(UserItem)]
        assert authors == ["you", "duet → coder · test fix 1 of 2"]
        assert "assert 6 == 5" in server.requests[-1].json["messages"][-1]["content"]
        assert (ws.root / "calc.py").read_text().endswith("a + b\n")
        await pilot.press("f12")  # one undo takes back both rounds
        await pilot.pause()
        assert (ws.root / "calc.py").read_text() == BROKEN
    with SessionStore.open(tmp_path / "s.db") as store:
        sid = store.last_session_id()
        assert [(r.round, r.status) for r in store.test_runs(sid)] == [(1, "failed"), (2, "passed")]
    # Reopened, the session shows each test round after the reply whose edits it tested.
    app = make_app(server_config(server.base_url), workspace=ws, store_path=tmp_path / "s.db", resume=True)
    async with app.run_test(size=(120, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.chat.conversation.query(TestItem)) == 2)
        kinds = [type(w).__name__ for w in app.chat.conversation.children]
        assert kinds == ["UserItem", "ReplyItem", "TestItem", "UserItem", "ReplyItem", "TestItem"]
        assert [t.status for t in app.chat.conversation.query(TestItem)] == ["failed", "passed"]
        authors = [str(u.render()).split("\n")[0] for u in app.chat.conversation.query(UserItem)]
        assert authors == ["you", "duet → coder · test fix 1 of 2"]  # who asked, kept in the store


async def test_slash_test_runs_the_given_command_and_escape_stops_it(server, ws):
    app = make_app(server_config(server.base_url), workspace=ws)
    async with app.run_test(size=(120, 40)) as pilot:
        marker = ws.root / "started"
        await type_and_send(pilot, f"/test touch {marker} && sleep 30")
        await wait_for(pilot, lambda: marker.exists() and app.chat.conversation.query(TestItem), timeout=10)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.chat.busy, timeout=10)
        assert app.chat.conversation.query(TestItem).last().status == "cancelled"
        assert app.chat.conv.test_command.endswith("sleep 30")  # /test CMD set it for later rounds


async def test_a_test_command_that_finds_no_test_says_so_not_failed(server, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    app = make_app(server_config(server.base_url), workspace=Workspace(root))
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, f"/test {sys.executable} -m pytest -q -p no:cacheprovider")
        await wait_for(pilot, lambda: not app.chat.busy and app.chat.conversation.query(TestItem), timeout=30)
        item = app.chat.conversation.query(TestItem).last()
        assert item.status == "no_tests" and item.has_class("no_tests")
        shown = str(item.render())
        assert "no tests ran (exit 5)" in shown and "✗" not in shown


async def test_rewind_forgets_the_last_request_and_stays_forgotten_after_a_restart(server, tmp_path):
    store_path = tmp_path / "s.db"
    app = make_app(server_config(server.base_url), store_path=store_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan first")
        await wait_reply(pilot, app)
        await type_and_send(pilot, "/plan second")
        await wait_reply(pilot, app, 2)
        await pilot.press("ctrl+b")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(replies(app)) == 1 and len(app.chat.history) == 2)
        assert [u.text for u in app.chat.conversation.query(UserItem)] == ["/plan first"]
    app = make_app(server_config(server.base_url), store_path=store_path, resume=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: replies(app) and replies(app)[0].answer)
        assert [u.text for u in app.chat.conversation.query(UserItem)] == ["/plan first"]
        await type_and_send(pilot, "/code go")
        await wait_reply(pilot, app, 2)
        sent = [m["content"] for m in server.requests[-1].json["messages"]]
        assert not any("second" in m for m in sent)


async def test_after_a_plan_the_screen_the_store_and_the_prompt_share_one_routing_decision(server, tmp_path):
    store_path = tmp_path / "s.db"
    app = make_app(server_config(server.base_url), store_path=store_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await type_and_send(pilot, "/plan a cache")
        await wait_reply(pilot, app)
        await type_and_send(pilot, "plan?")
        item: ReplyItem = await wait_reply(pilot, app, 2)
        expected = route("plan?", after_plan=True)
        assert (item.role, item.intent) == (expected.role, expected.intent) == ("reasoner", "analysis")
        sent = server.requests[-1].json["messages"][-1]["content"]
    with SessionStore.open(store_path) as store:
        stored = store.message(item.message_id)
        assert stored.intent == "analysis" and stored.prompt == sent


STEPS = "## Plan\n\n1. Fix add in calc.py.\n2. Add a docstring to add.\n3. Run the tests."


async def test_the_hand_off_checklist_sends_one_step_and_ticks_it_off_when_its_tests_pass(ws, tmp_path):
    from app.tui.dialogs import PlanEditor

    with ScriptedServer(reasoner_reply("TRACE", STEPS)) as server:
        app = make_app(with_tests(server_config(server.base_url)), workspace=ws)
        async with app.run_test(size=(120, 50)) as pilot:
            await type_and_send(pilot, "/plan fix calc")
            await wait_reply(pilot, app)
            server.set_script(text_reply(edit("    return a - b", "    return a + b")))
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, PlanEditor))
            await wait_text(pilot, app, "☐ 1. Fix add in calc.py.", "☐ 3. Run the tests.")
            await pilot.press("tab", "enter")  # the checklist; its first open step, alone
            await accept_diff(pilot, app)
            await wait_for(pilot, lambda: not app.chat.busy, timeout=30)
            prompt = server.requests[-1].json["messages"][-1]["content"]
            assert "Implement step 1 of the plan only:\n\nFix add in calc.py." in prompt and "TRACE" not in prompt
            assert app.chat.conversation.query(TestItem).last().status == "passed"
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, PlanEditor))
            await wait_text(pilot, app, "☑ 1. Fix add in calc.py.", "☐ 2. Add a docstring to add.")
            assert app.screen.query_one("#plan-steps").highlighted == 1  # the next open step


async def test_steps_can_be_skipped_and_reordered_before_handing_off_all(server, tmp_path):
    from app.tui.dialogs import PlanEditor

    server.set_script(reasoner_reply("TRACE", STEPS))
    app = make_app(server_config(server.base_url))
    async with app.run_test(size=(120, 50)) as pilot:
        await type_and_send(pilot, "/plan fix calc")
        await wait_reply(pilot, app)
        server.set_script(text_reply("ok"))
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, PlanEditor))
        await pilot.press("tab", "space", "down", "alt+down")
        await wait_text(pilot, app, "⊘ 1. Fix add in calc.py.", "2. Run the tests.", "3. Add a docstring to add.")
        await pilot.press("ctrl+s")
        await wait_reply(pilot, app, 2)
        prompt = server.requests[-1].json["messages"][-1]["content"]
        assert "1. Run the tests.\n2. Add a docstring to add." in prompt and "Fix add in calc.py" not in prompt


async def test_replan_undoes_the_failed_change_and_asks_the_reasoner_again_told_what_failed(ws, tmp_path):
    """/replan after a plan whose change failed its tests (undone by F12 here; /replan undoes it
    itself otherwise, as `duet run --replans` does): the reasoner gets the request with the plan
    tried and the failing assertion, on the conversation as it was before that plan (not the
    coder's turns), sampled; its new plan is the one Ctrl+O hands off."""
    with ScriptedServer(reasoner_reply("TRACE", "1. Multiply in add.")) as reasoner, \
            ScriptedServer(text_reply(edit("    return a - b", "    return a * b"))) as coder:
        reasoner.enqueue(reasoner_reply("TRACE", "1. Multiply in add."), reasoner_reply("TRACE 2", "1. Add in add."))
        coder.enqueue(text_reply(edit("    return a - b", "    return a * b")), text_reply("I have no other fix."))
        config = with_tests(server_config(reasoner.base_url, coder_url=coder.base_url))
        app = make_app(config, workspace=ws, store_path=tmp_path / "s.db")
        async with app.run_test(size=(120, 50)) as pilot:
            await type_and_send(pilot, "/replan")  # nothing to re-plan yet: a notice, no request
            await pilot.pause()
            assert not replies(app) and not reasoner.requests
            await type_and_send(pilot, "/plan fix add in calc.py")
            await wait_reply(pilot, app)
            await type_and_send(pilot, "/code do it")
            await accept_diff(pilot, app)
            await wait_for(pilot, lambda: not app.chat.busy and app.chat.conversation.query(TestItem), timeout=30)
            assert (ws.root / "calc.py").read_text().endswith("a * b\n")
            await pilot.press("f12")  # the user undoes it first: /replan then has nothing left to undo
            await wait_for(pilot, lambda: (ws.root / "calc.py").read_text() == BROKEN)
            await type_and_send(pilot, "/replan")
            await wait_for(pilot, lambda: len(replies(app)) == 4 and app.chat.current is None, timeout=15)
            assert (ws.root / "calc.py").read_text() == BROKEN  # the failed change undone
            asks = [r.json for r in reasoner.requests if r.path.endswith("/chat/completions")]
            assert len(asks) == 2 and asks[1]["messages"][:-1] == asks[0]["messages"][:-1]  # the same conversation
            again = asks[1]["messages"][-1]["content"]
            assert "fix add in calc.py" in again and "- 1. Multiply in add." in again and "assert 6 == 5" in again
            assert asks[1]["temperature"] > 0 and asks[1]["seed"] == 1
            authors = [str(u.render()).split("\n")[0] for u in app.chat.conversation.query(UserItem)]
            assert authors[-1] == "duet → reasoner · re-plan"
            assert app.chat.conv.plan.text == "1. Add in add." and app.chat.last_plan is replies(app)[-1]
            assert app.chat.conv.attempts.tried == ["1. Multiply in add.", "1. Add in add."]


async def test_with_test_first_a_plan_shows_its_test_run_before_the_reply(server, ws, tmp_path):
    """``[workspace] test_first``: /plan runs the tests first; their item, "before the plan",
    stands between the request and the reasoner's reply, and the failure went with the request."""
    config = dataclasses.replace(server_config(server.base_url),
                                 workspace=WorkspaceConfig(test=TEST_CMD, test_first=True))
    app = make_app(config, workspace=ws, store_path=tmp_path / "s.db")
    async with app.run_test(size=(120, 50)) as pilot:
        await type_and_send(pilot, "/plan fix add in calc.py")
        await wait_for(pilot, lambda: not app.chat.busy, timeout=30)
        items = [w for w in app.chat.conversation.children if isinstance(w, (UserItem, TestItem, ReplyItem))]
        assert [type(w).__name__ for w in items] == ["UserItem", "TestItem", "ReplyItem"]
        head = str(items[1].render())
        assert "before the plan" in head and "✗ failed" in head and "round" not in head.split("\n")[0]
        asked = server.requests[-1].json["messages"][-1]["content"]
        assert "fix add in calc.py" in asked and "fails now" in asked and "assert add(2, 3) == 5" in asked
    with SessionStore.open(tmp_path / "s.db") as store:  # stored with the reply it came before
        sid = store.last_session_id()
        reply_id = [m.id for m in store.messages(sid) if m.kind != "user"][0]
        assert [(r.round, r.status, r.message_id) for r in store.test_runs(sid)] == [(0, "failed", reply_id)]
    app = make_app(config, workspace=ws, store_path=tmp_path / "s.db", resume=True)  # reopened: in its place
    async with app.run_test(size=(120, 50)) as pilot:
        await wait_for(pilot, lambda: len(app.chat.conversation.query(TestItem)) == 1)
        kinds = [type(w).__name__ for w in app.chat.conversation.children]
        assert kinds == ["UserItem", "TestItem", "ReplyItem"]
        assert "before the plan" in str(app.chat.conversation.query_one(TestItem).render())


async def test_escape_during_the_run_before_the_plan_stops_it_and_asks_nothing(server, ws, tmp_path):
    """Esc while the tests run before the plan: their process stops, the reply ends cancelled,
    the reasoner is never asked, and the screen is free for the next request."""
    marker = ws.root / "started"
    config = dataclasses.replace(server_config(server.base_url),
                                 workspace=WorkspaceConfig(test=f"touch {marker} && sleep 30", test_first=True))
    app = make_app(config, workspace=ws, store_path=tmp_path / "s.db")
    async with app.run_test(size=(120, 50)) as pilot:
        await type_and_send(pilot, "/plan fix add in calc.py")
        await wait_for(pilot, lambda: marker.exists() and app.chat.conversation.query(TestItem), timeout=10)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.chat.busy, timeout=10)
        assert app.chat.conversation.query_one(TestItem).status == "cancelled"
        assert [r for r in server.requests if r.path.endswith("/chat/completions")] == []
        assert app.chat.conversation.query_one(ReplyItem).status != "streaming"


@pytest.mark.parametrize("command, shown", [
    ("/venv/bin/python /site/app/plain_tests.py stats.py", "python plain_tests.py stats.py"),
    ("'/my venv/bin/python' -m pytest -q", "'/my venv/bin/python' -m pytest -q"),  # a quoted space: as written
    ("touch /tmp/started && sleep 30", "touch started && sleep 30"),
    ("cd / && pytest -q tests/", "cd / && pytest -q tests/"),
    ('python -c "import a/b"', 'python -c "import a/b"'),
])
def test_a_test_item_heads_with_the_command_s_file_names_and_keeps_it_whole_in_its_tooltip(command, shown):
    item = TestItem(1, command)
    assert f" · {shown} · " in str(item.render()) and item.tooltip == command
