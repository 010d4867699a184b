"""The one event stream every backend yields, whatever the model behind it."""

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
    prompt_tokens: int
    completion_tokens: int


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


Event = ThinkingDelta | AnswerDelta | Usage | Done | Failed
