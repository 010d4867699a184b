"""What every backend shares: the protocol, the clock, and small helpers. The words they
speak (events, messages, the splitter) live in `vocab`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from app.config import Sampling
from vocab.events import Done, Event, Failed, ModelUnusable
from vocab.messages import ChatMessage

if TYPE_CHECKING:
    from app.exact_quotes import Quotes


def failed_from(exc: Exception) -> Failed:
    """The Failed event for a DuetError raised while loading or preparing a model."""
    from app.errors import ModelLoadError

    return (ModelUnusable if isinstance(exc, ModelLoadError) else Failed)(str(exc))


class Backend(Protocol):
    """Takes messages and sampling, yields events; ends with exactly one Done or Failed.

    Setting ``cancel`` stops generation promptly: the stream ends with
    Done(finish_reason="cancelled") and the model/connection is free for the next turn.
    ``grammar`` (GBNF, `app.workspace.edit_grammar`) holds the reply to its shape: llama.cpp
    samples under it, openai sends it as llama.cpp's ``grammar`` field (llama-server and
    llama_cpp.server take it), local answers it with Failed. ``quotes_from``
    (`app.exact_quotes.Quotes`: files, and the functions failing tests reach) holds the lines the
    reply writes in the prompt's numbered form to those files' lines; only the local backend
    does, the others answer it with Failed. ``output`` (request fields that hold the reply:
    `response_format`, llama.cpp's `grammar`, as `duet serve`'s client sent them) is sent on by
    openai; the in-process backends answer it with Failed (`duet serve` turns a client's output
    rule into a ``grammar`` for llama.cpp, and refuses it for the local backend).
    """

    label: str

    def stream(self, messages: list[ChatMessage], sampling: Sampling, *,
               cancel: threading.Event | None = None, grammar: str | None = None,
               quotes_from: Quotes | None = None, output: dict | None = None) -> Iterator[Event]: ...

    def close(self) -> None: ...


def no_grammar(backend: str, role: str) -> Failed:
    """What a backend that cannot sample under a grammar answers one with."""
    return Failed(f"{role}.constrain_edits: the {backend} backend cannot hold a reply to a grammar; "
                  "use llama.cpp (or a server that takes llama.cpp's grammar) or turn it off")


def no_exact_quotes(backend: str, role: str) -> Failed:
    """What a backend that cannot hold quotes to the files answers ``quotes_from`` with."""
    return Failed(f"{role}.exact_quotes: the {backend} backend cannot hold quoted lines to the files; use the local backend or turn it off")


def no_output_fields(backend: str, role: str) -> Failed:
    """What an in-process backend answers request fields meant for a server with."""
    return Failed(f"{role}: the {backend} backend takes no request fields for its output (response_format, "
                  "grammar); they go to a server (the openai backend)")


def one_line(text: str, limit: int = 300) -> str:
    """A server's message squeezed to one line a person can read."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Clock:
    """Time to first token and total time of one turn."""

    def __init__(self):
        self.start = time.monotonic()
        self.first: float | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.monotonic() - self.start

    def done(self, finish_reason: str) -> Done:
        return Done(finish_reason=finish_reason, first_token_s=self.first, total_s=time.monotonic() - self.start)


def cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()
