"""First run (no config file): what Duet found on this machine, a pick per role that Duet
writes to a config file, or the built-in demo models straight away."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from app.config_writer import Choice, choices, write_config
from app.errors import DuetError

DEMO_NOW = "demo-now"
ROLE_JOB = {"reasoner": "plans, reviews and thinks out loud", "coder": "writes the edits"}


class FirstRunScreen(Screen):
    """Dismisses with "demo" (start on the demo models), a Config (written to `config_path`,
    start on it) or None (quit)."""

    CSS_PATH = "first_run.tcss"
    BINDINGS = [
        Binding("d", "demo", "Demo models now", id="first_run.demo"),
        Binding("escape", "back", "Back", id="first_run.back"),
        Binding("q", "quit_setup", "Quit", id="first_run.quit"),
    ]

    def __init__(self, discover=None, config_path: Path | None = None):
        super().__init__()
        self._discover = discover  # a callable returning Found items (tests pass their own)
        self._config_path = config_path
        self._choices: list[Choice] = []
        self._picked: dict[str, Choice] = {}
        self._written = None  # the Config once the file is written

    def compose(self) -> ComposeResult:
        with Vertical(id="first-run"):
            yield Static(Content.assemble(("Welcome to Duet", "bold"), " — no config file yet."), markup=False)
            yield Static(Content(
                "Duet pairs a reasoning model (plans, reviews, thinks out loud) with a fast coder. "
                "Pick a model for each role from what Duet found on this machine and it writes the config "
                "file for you, or start right now on the built-in demo models."), classes="intro", markup=False)
            yield Static(Content("Looking for models and local servers…"), id="step-title", markup=False)
            yield OptionList(id="picks")
            yield Static("", id="written", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#written", Static).display = False
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
        self._choices = choices(found)
        self._ask("reasoner")

    def _ask(self, role: str) -> None:
        self._role = role
        found = len(self._choices) - 1
        where = (f"Duet found {found} model{'s' if found != 1 else ''} or server{'s' if found != 1 else ''}"
                 if found else "Duet found no models or local servers in the usual places")
        step = "1 of 2" if role == "reasoner" else "2 of 2"
        title = self.query_one("#step-title", Static)
        title.update(Content.assemble((f"Step {step}: the {role}", "bold"), f" ({ROLE_JOB[role]}). {where}. "
                                      "↑/↓ to choose, Enter to pick."))
        picks = self.query_one("#picks", OptionList)
        picks.clear_options()
        options = []
        if role == "reasoner":
            options.append(Option(Content.assemble(("▶ Start now on the demo models", "bold"),
                                                   " — a small reasoner and coder trained in this repository for one "
                                                   "task (fix the planted bug in a small Python module), on a sample "
                                                   "project. A demo of the flow, not real models."), id=DEMO_NOW))
        for i, choice in enumerate(self._choices):
            detail = choice.detail()
            options.append(Option(Content.assemble((choice.title(role), "bold"),
                                                   ("\n  " + detail if detail else "", "dim")), id=str(i)))
        picks.add_options(options)
        picks.highlighted = 0
        picks.focus()

    @on(OptionList.OptionSelected, "#picks")
    def picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id == DEMO_NOW:
            self.dismiss("demo")
            return
        self._picked[self._role] = self._choices[int(event.option.id)]
        if self._role == "reasoner":
            self._ask("coder")
        else:
            self._write()

    def _write(self) -> None:
        from app.paths import default_config_path

        path = self._config_path or default_config_path()
        title = self.query_one("#step-title", Static)
        try:
            config, text = write_config(path, self._picked["reasoner"], self._picked["coder"])
        except DuetError as exc:  # ConfigError included: one line, nothing written
            title.update(Content.assemble(("Could not write the config: ", "bold"), str(exc),
                                          "  Esc: pick again · d: demo models · q: quit"))
            return
        self._written = config
        self.query_one("#picks", OptionList).display = False
        title.update(Content.assemble(("Wrote ", "bold"), (str(path), "bold"), " — Enter: start Duet on it."))
        written = self.query_one("#written", Static)
        written.update(Content(text))
        written.display = True

    def key_enter(self) -> None:
        if self._written is not None:
            self.dismiss(self._written)

    def action_back(self) -> None:
        if self._written is None and getattr(self, "_role", None) == "coder":
            self._ask("reasoner")

    def action_demo(self) -> None:
        self.dismiss("demo")

    def action_quit_setup(self) -> None:
        self.dismiss(None)


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
