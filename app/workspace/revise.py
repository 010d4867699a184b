"""The retry loop — the only one: rejected blocks go back to the coder, up to three rounds.

Backend-agnostic. `revising` is the loop as a generator (the conversation core drives it,
each retry a streamed coder turn); `revise` drives it with a plain
``ask_coder(prompt) -> reply text``. Edits accepted in earlier rounds stay; later blocks
apply on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

from app.workspace.changeset import ChangeSet
from app.workspace.edit_blocks import parse
from app.workspace.workspace import Workspace

MAX_ROUNDS = 3


@dataclass(frozen=True)
class Round:
    """One retry: its number (1-based), the prompt sent, the reply, the merged result."""

    number: int
    prompt: str
    reply: str
    changeset: ChangeSet


def feedback_prompt(changeset: ChangeSet, lang: str = "en") -> str:
    """What the coder is told about its rejected blocks (``prompts/coder-retry.<lang>.md``)."""
    from app.prompts import render

    return render(f"coder-retry.{lang}", reasons=changeset.feedback())


def revising(workspace: Workspace, coder_output: str, ask_coder, *, rounds: int = MAX_ROUNDS, lang: str = "en",
             on_top_of: ChangeSet | None = None) -> Generator[object, None, ChangeSet]:
    """The loop itself, as a generator: propose ``coder_output``; while blocks are rejected,
    ``yield from ask_coder(prompt, number)`` (a generator that may yield events and returns the
    coder's reply, or None when there is none: cancelled, failed) and propose the reply on top.

    Yields what ``ask_coder`` yields plus one ``Round`` per retry; returns the merged ChangeSet
    (its ``rejected`` are those of the last round). Stops after ``rounds`` retries, when a round
    rejects nothing, or when a reply has no blocks at all (the coder gave up).
    """
    changes = workspace.propose(coder_output, on_top_of=on_top_of)
    for number in range(1, rounds + 1):
        if not changes.rejected:
            break
        prompt = feedback_prompt(changes, lang)
        reply = yield from ask_coder(prompt, number)
        if reply is None:
            break
        blocks, problems = parse(reply)
        gave_up = not blocks and not problems  # a reply with no edit blocks at all
        if not gave_up:
            changes = workspace.propose(reply, on_top_of=changes)
        yield Round(number, prompt, reply, changes)
        if gave_up:
            break
    return changes


def revise(workspace: Workspace, coder_output: str, ask_coder: Callable[[str], str], *,
           rounds: int = MAX_ROUNDS, on_round: Callable[[Round], None] | None = None, lang: str = "en") -> ChangeSet:
    """``revising`` driven by a plain ``ask_coder(prompt) -> reply text``; ``on_round`` hears each round."""
    def ask(prompt: str, number: int):
        return ask_coder(prompt)
        yield  # a generator that yields nothing

    loop = revising(workspace, coder_output, ask, rounds=rounds, lang=lang)
    while True:
        try:
            event = next(loop)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Round) and on_round is not None:
            on_round(event)
