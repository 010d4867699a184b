"""The one event stream every backend yields, whatever the model behind it, and the
failures it can end with (`Failed` and its kinds)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThinkingDelta:
    """A piece of the reasoning trace."""

    text: str


@dataclass(frozen=True)
class AnswerDelta:
    """A piece of the answer."""

    text: str


@dataclass(frozen=True)
class Usage:
    """Token counts of a turn. ``cached_tokens``: prompt tokens served from a kept cache (not
    prefilled again); ``drafted``/``accepted``: speculative drafts tried and kept."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class Done:
    """The turn finished; ``finish_reason`` is "stop", "length" or "cancelled"."""

    finish_reason: str = "stop"
    first_token_s: float | None = None
    total_s: float = 0.0


@dataclass(frozen=True)
class Failed:
    """The turn failed; ``message`` is one line a person can act on."""

    message: str


@dataclass(frozen=True)
class ServerUnreachable(Failed):
    """Nothing was sent: the server refused the connection or never answered it."""


@dataclass(frozen=True)
class ModelUnusable(Failed):
    """The configured model could not be loaded: bad model input, not a passing fault."""


@dataclass(frozen=True)
class RequestRefused(Failed):
    """The server answered the request with an HTTP error (``status``) before any of the answer."""

    status: int = 0


Event = ThinkingDelta | AnswerDelta | Usage | Done | Failed


def piece_events(pieces) -> list[Event]:
    """``vocab.reasoning`` pieces, ``(kind, text)``, as events."""
    return [ThinkingDelta(text) if kind == "thinking" else AnswerDelta(text) for kind, text in pieces if text]


class Tally:
    """What an event stream has said so far: the text (kept in parts, since traces run
    long), usage, and how it ended. The one place that folds events into a reply."""

    def __init__(self) -> None:
        self.thinking_parts: list[str] = []
        self.answer_parts: list[str] = []
        self.usage: Usage | None = None
        self.done: Done | None = None
        self.failed: Failed | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, ThinkingDelta):
            self.thinking_parts.append(event.text)
        elif isinstance(event, AnswerDelta):
            self.answer_parts.append(event.text)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Done):
            self.done = event
        elif isinstance(event, Failed):
            self.failed = event
        else:
            raise TypeError(f"not a backend event: {event!r}")

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_parts)

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    @property
    def status(self) -> str:
        """done | failed | cancelled, or streaming while neither Done nor Failed came."""
        if self.failed is not None:
            return "failed"
        if self.done is not None:
            return "cancelled" if self.done.finish_reason == "cancelled" else "done"
        return "streaming"
