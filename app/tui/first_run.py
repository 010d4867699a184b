"""First run (no config file): what Duet found on this machine, and the built-in demo model."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen, Screen
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
            yield Static(Content.assemble(("▶ Enter: demo models", "bold"),
                                          " — a small reasoner and coder trained in this repository for one task "
                                          "(fix the planted bug in a small Python module), on a sample project. "
                                          "A demo of the flow, not real models."), id="demo-offer", markup=False)
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


class DemoWelcome(ModalScreen[None]):
    """Shown over the chat when Duet runs the built-in demo: what the demo models can do, requests
    that work on the sample project, and the keys of the flow."""

    CSS_PATH = "first_run.tcss"
    BINDINGS = [Binding("enter,escape", "close", "Start", id="demo_welcome.close")]

    def __init__(self, workspace_root: str | None = None):
        super().__init__()
        self._root = workspace_root

    def compose(self) -> ComposeResult:
        from app.demo import FLOW_STEPS, SUGGESTED_REQUESTS

        with Vertical(id="demo-welcome"):
            yield Static(Content.assemble(("Duet demo", "bold"), " — two small models trained in this repository"),
                         markup=False)
            yield Static(Content(
                "The reasoner (DeepSeek-V3 architecture, our own engine, int8) thinks out loud and plans; the coder "
                "(a small Llama on llama.cpp) writes the edit. They know one task only: find and fix the one "
                "planted bug in a small Python module. Point Duet at real models for real work."),
                classes="intro", markup=False)
            if self._root:
                yield Static(Content(f"Workspace: a fresh copy of the sample project, {self._root}"),
                             classes="intro", markup=False)
            yield Static(Content("Try:"), markup=False)
            for request in SUGGESTED_REQUESTS:
                yield Static(Content.assemble("  ", (request, "bold")), classes="suggestion", markup=False)
            yield Static(Content("The flow:"), markup=False)
            for n, (step, keys) in enumerate(FLOW_STEPS, 1):
                yield Static(Content.assemble(f"  {n}. {step}  ", (keys, "bold")), classes="flow-step", markup=False)
            yield Static(Content("Enter: start"), classes="intro", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
