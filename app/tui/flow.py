"""What the chat screen's worker and the screen share while a request runs: the diff-review
hand-shake (`Approval`) and the plan being worked through step by step (`StepRun`)."""

from __future__ import annotations

import dataclasses
import threading


class StepRun:
    """The plan being worked through step by step: which reply it came from, its steps (with
    their done/skipped marks), and the step being implemented now (None: all at once)."""

    def __init__(self, item, plan, index: int | None):
        self.item, self.plan, self.index = item, plan, index

    def tick(self) -> None:
        steps = list(self.plan.steps)
        steps[self.index] = dataclasses.replace(steps[self.index], done=True)
        self.plan = self.plan.with_steps(steps)


class Approval:
    """The worker thread asks, the screen answers: which proposed edits to write."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self._answered = threading.Event()
        self._value = None

    def wait(self, changes):
        """(worker thread) Block until the diff review answers or the flow is cancelled."""
        self._answered.clear()
        while not self._answered.wait(0.05):
            if self.cancel.is_set():
                return None
        return self._value

    def answer(self, value) -> None:
        self._value = value
        self._answered.set()
