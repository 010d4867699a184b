"""The diff preview screen, driven from the keyboard with a real Textual Pilot."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.app import App

from app.tui.diff_preview import DiffPreview, FileHeader, HunkView
from app.workspace import ChangeSet, Workspace

LONG = "".join(f"line {i}\n" for i in range(40))


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


REPLY = (
    "Here are the changes.\n\n"
    + block("long.txt", "line 3\n", "LINE 3 [bold red]not markup[/]\n")
    + block("long.txt", "line 30\n", "LINE 30\n")
    + block("docs/new[1].md", "", "# [link=http://x]title[/link]\n")
    + block("long.txt", "no such line\n", "x\n")
)


class Host(App):
    """A minimal app that pushes the preview and keeps what it dismisses with."""

    def __init__(self, changes: ChangeSet):
        super().__init__()
        self.changes = changes
        self.result: ChangeSet | None = None

    def on_mount(self) -> None:
        self.push_screen(DiffPreview(self.changes), self.finished)

    def finished(self, accepted: ChangeSet) -> None:
        self.result = accepted


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "long.txt").write_text(LONG)
    return Workspace(root)


async def run_keys(changes: ChangeSet, *keys: str) -> Host:
    app = Host(changes)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
    return app


async def test_accept_all_returns_every_edit(ws):
    changes = ws.propose(REPLY)
    app = await run_keys(changes, "a")
    assert app.result == changes


async def test_reject_all_returns_no_edits(ws):
    app = await run_keys(ws.propose(REPLY), "r")
    assert app.result is not None and app.result.edits == ()


async def test_escape_rejects_all(ws):
    app = await run_keys(ws.propose(REPLY), "escape")
    assert app.result.edits == ()


async def test_space_rejects_the_hunk_under_the_cursor_and_enter_applies_the_rest(ws):
    app = await run_keys(ws.propose(REPLY), "space", "enter")
    edit = app.result.edit("long.txt")
    assert edit.partial and b"LINE 3 [" not in edit.after and b"LINE 30\n" in edit.after
    assert app.result.edit("docs/new[1].md") is not None


async def test_moving_down_then_toggling_a_file_drops_the_whole_file(ws):
    # hunks: long.txt #0, long.txt #1, docs/new[1].md #0 -> move to the new file and drop it
    app = await run_keys(ws.propose(REPLY), "j", "j", "f", "enter")
    assert app.result.paths == ["long.txt"]
    assert not app.result.edit("long.txt").partial


async def test_n_jumps_to_the_next_file_and_p_back(ws):
    app = await run_keys(ws.propose(REPLY), "n", "f", "p", "p", "space", "enter")
    assert app.result.paths == ["long.txt"]  # the new file dropped, then long.txt's first hunk
    assert b"LINE 3 [" not in app.result.edit("long.txt").after


async def test_toggling_twice_restores_the_hunk(ws):
    app = await run_keys(ws.propose(REPLY), "down", "space", "space", "enter")
    assert app.result.edit("long.txt") == ws.propose(REPLY).edit("long.txt")


async def test_model_text_is_shown_literally_never_as_markup(ws):
    app = Host(ws.propose(REPLY))
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.pause()
        hunks = app.screen.query(HunkView)
        shown = "\n".join(str(h.render()) for h in hunks)
        assert "+LINE 3 [bold red]not markup[/]" in shown
        assert "+# [link=http://x]title[/link]" in shown
        headers = " ".join(str(h.render()) for h in app.screen.query(FileHeader))
        assert "docs/new[1].md" in headers and "2 hunks" not in headers
        rejection = str(app.screen.query_one(".rejection").render())
        assert rejection.startswith("rejected long.txt: SEARCH does not match")


async def test_file_headers_show_how_much_is_accepted(ws):
    app = Host(ws.propose(REPLY))
    async with app.run_test(size=(120, 50)) as pilot:
        await pilot.pause()
        await pilot.press("space")
        await pilot.pause()
        header = next(h for h in app.screen.query(FileHeader) if h.edit.path == "long.txt")
        assert "[1/2 hunks]" in str(header.render())
        await pilot.press("space")
        await pilot.pause()
        assert "[accepted]" in str(header.render())


async def test_from_a_scripted_coder_reply_through_the_preview_to_files_on_disk(ws):
    root: Path = ws.root
    changes = ws.propose(REPLY)
    assert len(changes.rejected) == 1
    app = await run_keys(changes, "space", "enter")  # drop the first hunk, keep the rest
    applied = ws.apply(app.result)
    assert set(applied.paths) == {"long.txt", "docs/new[1].md"}
    text = (root / "long.txt").read_text()
    assert "line 3\n" in text and "LINE 30\n" in text and "LINE 3 " not in text
    assert (root / "docs" / "new[1].md").read_text() == "# [link=http://x]title[/link]\n"
    ws.undo()
    assert (root / "long.txt").read_text() == LONG
    assert not (root / "docs").exists()


async def test_an_empty_changeset_shows_a_message_and_enter_returns_nothing(ws):
    changes = ws.propose("no blocks at all")
    app = Host(changes)
    async with app.run_test() as pilot:
        await pilot.pause()
        assert "No edits to apply." in str(app.screen.query_one(".empty").render())
        await pilot.press("enter")
        await pilot.pause()
    assert app.result.edits == ()


def test_the_preview_looks_as_recorded(ws, snap_compare):
    """SVG snapshot (update with --snapshot-update after an intended change)."""
    assert snap_compare(Host(ws.propose(REPLY)), press=["down", "space"], terminal_size=(100, 40))
