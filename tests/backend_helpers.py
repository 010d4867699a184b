"""Shared by the backend tests: run a stream to its end and check its shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from vocab.events import AnswerDelta, Done, Failed, ThinkingDelta, Usage


@dataclass
class Result:
    events: list = field(default_factory=list)

    @property
    def thinking(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, ThinkingDelta))

    @property
    def answer(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, AnswerDelta))

    @property
    def end(self):
        return self.events[-1]

    @property
    def usage(self):
        return next((e for e in self.events if isinstance(e, Usage)), None)


def collect(stream, on_event=None) -> Result:
    """Drain a backend stream; assert it ends with exactly one Done or Failed."""
    result = Result()
    for event in stream:
        result.events.append(event)
        if on_event is not None:
            on_event(event, result)
    ends = [e for e in result.events if isinstance(e, (Done, Failed))]
    assert len(ends) == 1 and result.events[-1] is ends[0], f"stream must end with one Done/Failed: {result.events!r}"
    if isinstance(result.end, Failed):
        assert "\n" not in result.end.message and result.end.message.strip()
    return result
