"""The status bar: both models and their state (loading with progress, ready, busy, failed)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import ProgressBar, Static

STATE_MARK = {"loading": "◌", "ready": "●", "busy": "◉", "failed": "✖"}


class ModelStatus(Horizontal):
    """One role: its model and state; a progress bar while it loads."""

    state: reactive[str] = reactive("loading")

    def __init__(self, role: str, model: str, **kw):
        super().__init__(classes="model-status", **kw)
        self.role, self.model = role, model
        self.reason = ""

    def compose(self) -> ComposeResult:
        yield Static(self._label(), classes="model-label", markup=False)
        yield ProgressBar(total=None, show_eta=False, show_percentage=False, classes="model-progress")

    def set_state(self, state: str, reason: str = "", progress: float | None = None) -> None:
        self.reason = reason
        self.state = state
        if progress is not None:
            for bar in self.query(ProgressBar):  # none once the app is closing (a load outlasts it)
                bar.update(total=1.0, progress=progress)
        self._refresh()

    def watch_state(self, state: str) -> None:
        for name in STATE_MARK:
            self.set_class(name == state, name)
        if self.is_mounted:
            self._refresh()

    def _refresh(self) -> None:
        """Show the state; nothing to show where the parts are gone (the app closing)."""
        for label in self.query(".model-label").results(Static):
            label.update(self._label())
        for bar in self.query(ProgressBar):
            bar.display = self.state == "loading"

    def _label(self) -> Content:
        text = f"{STATE_MARK.get(self.state, '?')} {self.role}: {self.model} · {self.state}"
        if self.reason:
            text += f" ({self.reason})"
        return Content(text)


class StatusBar(Horizontal):
    def __init__(self, reasoner_model: str, coder_model: str, **kw):
        super().__init__(**kw)
        self._models = (reasoner_model, coder_model)

    def compose(self) -> ComposeResult:
        yield ModelStatus("reasoner", self._models[0], id="status-reasoner")
        yield ModelStatus("coder", self._models[1], id="status-coder")
        yield Static("", id="status-context", markup=False)

    def role(self, name: str) -> ModelStatus:
        return self.query_one(f"#status-{name}", ModelStatus)

    def set_context(self, text: str) -> None:
        self.query_one("#status-context", Static).update(text)
