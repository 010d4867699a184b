"""The Duet TUI: `run_tui(config, args)` starts it.

With no config file (and no --demo), a first-run screen shows what `app.discovery` found
and offers the built-in demo model; otherwise the chat screen opens at once, resuming the
last session when `ui.resume_last` is set. Models load in the background.
"""

from __future__ import annotations

import gc

from textual.app import App
from textual.binding import Binding

from app.config import Config
from app.tui.chat import ChatScreen
from app.tui.commands import DuetCommands


class DuetApp(App):
    """Holds the config, the session store and the workspace; screens do the work."""

    TITLE = "Duet"
    COMMANDS = App.COMMANDS | {DuetCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True, show=False)]

    def __init__(self, config: Config, *, workspace=None, first_run: bool = False,
                 store=None, backend=None, load_models: bool = True, resume: bool | None = None, discover=None,
                 config_path=None):
        super().__init__()
        self.config = config
        self.first_run = first_run
        self.store = store
        self.backend_override = backend
        self.load_models = load_models
        self.resume = config.ui.resume_last if resume is None else resume
        self.workspace = workspace  # an app.workspace.Workspace, or None
        self.discover = discover  # first run: a callable listing what was found (default app.discovery)
        self.config_path = config_path  # first run: where the picked config goes (default: the platform file)

    def on_mount(self) -> None:
        keymap = getattr(self.config.ui, "keymap", None)  # binding id -> keys, e.g. {"chat.hand_off": "f6"}
        if keymap:
            self.set_keymap(dict(keymap))
        if self.store is None:
            from app.store import SessionStore

            self.store = SessionStore.open()
        if self.store.warning:
            self.notify(self.store.warning, severity="warning", timeout=10, markup=False)
        if self.workspace is not None and self.workspace.warning:
            self.notify(self.workspace.warning, severity="warning", timeout=10, markup=False)
        if self.first_run:
            from app.tui.first_run import FirstRunScreen

            self.push_screen(FirstRunScreen(self.discover, self.config_path), self._first_run_done)
        else:
            self.open_chat()

    def on_ready(self) -> None:
        # Everything loaded at start-up (imports, widgets) lives as long as the app: move it out of
        # the collector's sight, so full collections while a long reply streams stay cheap (linear).
        gc.freeze()

    def on_unmount(self) -> None:
        gc.unfreeze()

    def _first_run_done(self, outcome) -> None:
        """FirstRunScreen's answer: "demo", the Config it wrote, or None (quit)."""
        if isinstance(outcome, Config):
            from app.workspace import Workspace

            self.config = outcome
            if self.workspace is not None:  # the same folder, under the new file's [workspace] settings
                self.workspace = Workspace.from_config(str(self.workspace.root), outcome)
            self.open_chat()
        elif outcome == "demo":
            from app.config import demo_config
            from app.demo import fresh_sample_project
            from app.workspace import Workspace

            self.config = demo_config()
            self.workspace = Workspace.from_config(str(fresh_sample_project()), self.config)  # not the user's folder
            self.open_chat()
        else:
            self.exit(0)

    def open_chat(self) -> None:
        sid = self.store.last_session_id() if self.resume else None
        self.push_screen(ChatScreen(self.config, store=self.store, workspace=self.workspace,
                                    backend=self.backend_override, session_id=sid, load_models=self.load_models))
        if self.config.is_demo and self.config.reasoner.path is not None:  # the trained demo: how to try it
            from app.tui.first_run import DemoWelcome

            root = getattr(self.workspace, "root", None)
            self.push_screen(DemoWelcome(str(root) if root is not None else None))

    @property
    def chat(self) -> ChatScreen | None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ChatScreen):
                return screen
        return None


def run_tui(config: Config, args) -> int:
    """`duet` (and `duet tui`): the app, on the first-run screen when there is no config."""
    from app.paths import find_config
    from app.workspace import Workspace

    first_run = not getattr(args, "demo", False) and find_config(getattr(args, "config", None)) is None
    workspace = Workspace.from_config(getattr(args, "workspace", None) or ".", config)  # UsageError: exit 2
    app = DuetApp(config, workspace=workspace, first_run=first_run)
    try:
        result = app.run()
    finally:
        from app.backends import close_all

        close_all()
    return result if isinstance(result, int) else 0
