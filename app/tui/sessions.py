"""The session list: switch, search every message (FTS), rename, delete (confirmed), export."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from app.tui.dialogs import Ask, Confirm


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class SessionsScreen(ModalScreen[int | None]):
    """Dismisses with the chosen session id, or None."""

    CSS_PATH = "sessions.tcss"
    BINDINGS = [
        Binding("escape", "close", "Close", id="sessions.close"),
        Binding("ctrl+r", "rename", "Rename", id="sessions.rename", priority=True),
        Binding("ctrl+d", "delete", "Delete", id="sessions.delete", priority=True),
        Binding("ctrl+e", "export", "Export .md", id="sessions.export", priority=True),
    ]

    def __init__(self, store, *, current: int | None = None):
        super().__init__()
        self.store = store
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="sessions"):
            yield Static(Content.assemble(("Sessions", "bold"), "  ·  type to search all messages, Enter opens"),
                         markup=False)
            yield Input(placeholder="search (English, 中文 …)", id="session-query")
            yield OptionList(id="session-list")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_list("")

    @on(Input.Changed, "#session-query")
    def _changed(self, event: Input.Changed) -> None:
        self.refresh_list(event.value)

    def refresh_list(self, query: str) -> None:
        options = self.query_one("#session-list", OptionList)
        options.clear_options()
        if query.strip():
            seen = set()
            for hit in self.store.search(query):
                if hit.session_id in seen:
                    continue
                seen.add(hit.session_id)
                options.add_option(Option(Content.assemble((hit.session_title, "bold"), "\n  ", (hit.snippet, "dim")),
                                          id=str(hit.session_id)))
        else:
            for info in reversed(sorted(self.store.list_sessions(), key=lambda s: s.updated)):
                mark = "● " if info.id == self.current else "  "
                options.add_option(Option(Content.assemble(mark, (info.title, "bold"),
                                                           (f"  {info.message_count} messages · {_when(info.updated)}", "dim")),
                                          id=str(info.id)))
        if options.option_count:
            options.highlighted = 0

    def _selected_id(self) -> int | None:
        options = self.query_one("#session-list", OptionList)
        if options.highlighted is None:
            return None
        return int(options.get_option_at_index(options.highlighted).id)

    @on(Input.Submitted, "#session-query")
    def _submit(self) -> None:
        sid = self._selected_id()
        if sid is not None:
            self.dismiss(sid)

    @on(OptionList.OptionSelected, "#session-list")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def on_key(self, event) -> None:
        if event.key in ("down", "up") and self.query_one("#session-query", Input).has_focus:
            options = self.query_one("#session-list", OptionList)
            options.action_cursor_down() if event.key == "down" else options.action_cursor_up()
            event.stop()

    def action_rename(self) -> None:
        sid = self._selected_id()
        if sid is None:
            return
        info = self.store.session(sid)

        def done(title: str | None) -> None:
            if title and title.strip():
                self.store.rename(sid, title.strip())
                self.refresh_list(self.query_one("#session-query", Input).value)

        self.app.push_screen(Ask("New title:", info.title if info else ""), done)

    def action_delete(self) -> None:
        sid = self._selected_id()
        if sid is None:
            return
        info = self.store.session(sid)

        def done(yes: bool | None) -> None:
            if yes:
                self.store.delete(sid)
                self.refresh_list(self.query_one("#session-query", Input).value)
                self.notify("Session deleted.")

        self.app.push_screen(Confirm(f"Delete “{info.title if info else sid}” and all its messages?"), done)

    def action_export(self) -> None:
        from app.paths import data_dir

        sid = self._selected_id()
        if sid is None:
            return
        out = data_dir() / "exports" / f"session-{sid}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.store.export_markdown(sid), encoding="utf-8")
        self.notify(f"Exported to {out}", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
