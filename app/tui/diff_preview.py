"""The diff preview: a ChangeSet as colored unified diffs, accepted from the keyboard.

Push it after a coder turn and apply what comes back::

    def done(accepted: ChangeSet) -> None:
        if accepted.edits:
            workspace.apply(accepted)
    app.push_screen(DiffPreview(changes), done)

Keys: ``a`` accept all, ``r``/``escape`` reject all, ``space`` toggle the hunk
under the cursor, ``f`` toggle its whole file, ``j``/``k`` (or arrows) move
between hunks, ``n``/``p`` between files, ``enter`` apply the selection. The screen always dismisses
with a ChangeSet: the accepted subset (``changeset.select(...)``), whose
``edits`` are empty when nothing was accepted. Model output is rendered
literally (``Content``, never markup).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Static

from app.workspace import ChangeSet, Edit

LINE_STYLES = {"+": "green", "-": "red", "@": "bold cyan", "\\": "dim"}


def diff_content(lines: list[str]) -> Content:
    """Diff lines as literal text, colored by their first character."""
    parts = []
    for i, line in enumerate(lines):
        style = LINE_STYLES.get(line[:1], "")
        parts.append((line + ("\n" if i < len(lines) - 1 else ""), style))
    return Content.assemble(*parts)


class FileHeader(Static):
    """A file's path, its +/- counts and how much of it is accepted."""

    def __init__(self, edit: Edit):
        super().__init__(markup=False, classes="file-header")
        self.edit = edit

    def show(self, accepted: int, total: int) -> None:
        verb = "new file" if self.edit.created else "edit"
        state = "accepted" if accepted == total else "rejected" if accepted == 0 else f"{accepted}/{total} hunks"
        self.set_class(accepted == 0, "rejected")
        self.update(Content.assemble((self.edit.path, "bold"),
                                     f"  {verb}  +{self.edit.added} -{self.edit.removed}  [{state}]"))


class HunkView(Static, can_focus=True):
    """One hunk; focused to move the cursor, toggled with space."""

    accepted: reactive[bool] = reactive(True)

    def __init__(self, edit: Edit, index: int):
        super().__init__(markup=False, classes="hunk")
        self.edit = edit
        self.index = index
        hunk = edit.hunks[index] if index < len(edit.hunks) else None
        self.update(diff_content([hunk.header, *hunk.lines]) if hunk else Content("(new empty file)"))

    def watch_accepted(self, accepted: bool) -> None:
        self.set_class(not accepted, "rejected")


class DiffPreview(Screen[ChangeSet]):
    """Review the coder's ChangeSet; dismisses with the accepted subset."""

    CSS_PATH = "diff_preview.tcss"
    BINDINGS = [
        Binding("a", "accept_all", "Accept all", id="diff.accept_all"),
        Binding("r,escape", "reject_all", "Reject all", id="diff.reject_all"),
        Binding("space", "toggle_hunk", "Toggle hunk", id="diff.toggle_hunk"),
        Binding("f", "toggle_file", "Toggle file", id="diff.toggle_file"),
        Binding("j,down", "move(1)", "Next", id="diff.next", show=False),
        Binding("k,up", "move(-1)", "Previous", id="diff.previous", show=False),
        Binding("n", "move_file(1)", "Next file", id="diff.next_file", show=False),
        Binding("p", "move_file(-1)", "Previous file", id="diff.previous_file", show=False),
        Binding("enter", "confirm", "Apply selected", id="diff.confirm", priority=True),
    ]

    def __init__(self, changeset: ChangeSet, *, title: str = "Proposed changes"):
        super().__init__()
        self.changeset = changeset
        self.heading = title

    def compose(self) -> ComposeResult:
        yield Static(Content.assemble((self.heading, "bold"), "  " + self.changeset.summary()),
                     markup=False, id="summary")
        with VerticalScroll(id="diffs"):
            for edit in self.changeset.edits:
                yield FileHeader(edit)
                for i in range(max(1, len(edit.hunks))):
                    yield HunkView(edit, i)
            for r in self.changeset.rejected:
                yield Static(Content.assemble(("rejected ", "bold red"), (r.path or "<no path>", "bold"),
                                              ": " + r.reason), markup=False, classes="rejection")
            if not self.changeset.edits:
                yield Static("No edits to apply.", markup=False, classes="empty")
        yield Footer()

    def on_mount(self) -> None:
        self._refresh_headers()
        hunks = self.hunks
        if hunks:
            hunks[0].focus()

    @property
    def hunks(self) -> list[HunkView]:
        return list(self.query(HunkView))

    @property
    def current(self) -> HunkView | None:
        focused = self.focused
        if isinstance(focused, HunkView):
            return focused
        hunks = self.hunks
        return hunks[0] if hunks else None

    def selection(self) -> ChangeSet:
        """The ChangeSet with only the accepted hunks."""
        chosen: dict[str, set[int]] = {}
        for h in self.hunks:
            if h.accepted:
                chosen.setdefault(h.edit.path, set()).add(h.index)
        return self.changeset.select(hunks=chosen)

    def _refresh_headers(self) -> None:
        for header in self.query(FileHeader):
            mine = [h for h in self.hunks if h.edit is header.edit]
            header.show(sum(h.accepted for h in mine), len(mine))

    # ---- actions --------------------------------------------------------------
    def action_accept_all(self) -> None:
        self.dismiss(self.changeset)

    def action_reject_all(self) -> None:
        self.dismiss(self.changeset.select())

    def action_confirm(self) -> None:
        self.dismiss(self.selection())

    def action_toggle_hunk(self) -> None:
        hunk = self.current
        if hunk is not None:
            hunk.accepted = not hunk.accepted
            self._refresh_headers()

    def action_toggle_file(self) -> None:
        hunk = self.current
        if hunk is None:
            return
        mine = [h for h in self.hunks if h.edit is hunk.edit]
        accept = not all(h.accepted for h in mine)
        for h in mine:
            h.accepted = accept
        self._refresh_headers()

    def action_move(self, step: int) -> None:
        hunks = self.hunks
        if not hunks:
            return
        current = self.current
        at = hunks.index(current) if current in hunks else 0
        self._go(hunks[max(0, min(len(hunks) - 1, at + step))])

    def action_move_file(self, step: int) -> None:
        current = self.current
        if current is None:
            return
        edits = list(self.changeset.edits)
        at = max(0, min(len(edits) - 1, edits.index(current.edit) + step))
        self._go(next(h for h in self.hunks if h.edit is edits[at]))

    def _go(self, hunk: HunkView) -> None:
        hunk.focus()
        hunk.scroll_visible()
