"""First run (no config file): what Duet found on this machine, and the built-in demo model."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

KIND = {"gguf": "GGUF file", "hf": "HF folder", "server": "server"}


class FirstRunScreen(Screen[bool]):
    """Dismisses with True to start on the demo model, False to quit."""

    CSS_PATH = "first_run.tcss"
    BINDINGS = [
        Binding("enter,d", "demo", "Start with the demo model", id="first_run.demo"),
        Binding("q,escape", "quit_setup", "Quit", id="first_run.quit"),
    ]

    def __init__(self, discover=None):
        super().__init__()
        self._discover = discover  # a callable returning Found items (tests pass their own)

    def compose(self) -> ComposeResult:
        with Vertical(id="first-run"):
            yield Static(Content.assemble(("Welcome to Duet", "bold"), " — no config file yet."), markup=False)
            yield Static(Content(
                "Duet pairs a reasoning model (plans, reviews, thinks out loud) with a fast coder. "
                "Below is what it found on this machine; put one in a config file to use it. "
                "Or start right now on the built-in demo model."), classes="intro", markup=False)
            yield Static(Content.assemble(("▶ Enter: demo model", "bold"),
                                          " — Gemma 3 270M (GGUF, offline) for both roles. A demo: tiny, fast, "
                                          "not a real reasoner."), id="demo-offer", markup=False)
            yield Static(Content("Looking for models and local servers…"), id="found-title", markup=False)
            yield VerticalScroll(id="found")
        yield Footer()

    def on_mount(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True)
    def scan(self) -> None:
        if self._discover is None:
            from app.discovery import discover

            found = discover()
        else:
            found = self._discover()
        self.app.call_from_thread(self.show_found, found)

    def show_found(self, found: list) -> None:
        from app.paths import default_config_path

        title = self.query_one("#found-title", Static)
        box = self.query_one("#found", VerticalScroll)
        if not found:
            title.update(Content("Found no models or local servers in the usual places."))
            return
        title.update(Content(f"Found {len(found)} — to use one, put its lines in {default_config_path()}:"))
        for f in found:
            snippet = f.config_snippet("reasoner") if hasattr(f, "config_snippet") else ""
            box.mount(Static(Content.assemble((f"{KIND.get(f.kind, f.kind)}: {f.label}", "bold"),
                                              f"  {f.location}", (f"  {f.detail}" if f.detail else "", "dim"),
                                              ("\n" + snippet.rstrip() if snippet else "", "dim")),
                             classes="found-item", markup=False))

    def action_demo(self) -> None:
        self.dismiss(True)

    def action_quit_setup(self) -> None:
        self.dismiss(False)
