"""The retry loop: rejected blocks go back to the coder, up to three rounds.

Backend-agnostic: ``ask_coder(prompt) -> reply text`` sends one feedback
message to the coder (in the same conversation) and returns its full reply.
Each round is reported through ``on_round`` so the UI can show it. Edits that
were accepted in earlier rounds stay; later blocks apply on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def revise(workspace: Workspace, coder_output: str, ask_coder: Callable[[str], str], *,
           rounds: int = MAX_ROUNDS, on_round: Callable[[Round], None] | None = None, lang: str = "en") -> ChangeSet:
    """Propose ``coder_output``; while blocks are rejected, ask the coder to fix them.

    Stops after ``rounds`` retries, or when a round rejects nothing, or when a
    reply contains no blocks at all (the coder gave up). Returns the merged
    ChangeSet; its ``rejected`` are those of the last round.
    """
    changes = workspace.propose(coder_output)
    for number in range(1, rounds + 1):
        if not changes.rejected:
            break
        prompt = feedback_prompt(changes, lang)
        reply = ask_coder(prompt)
        blocks, problems = parse(reply)
        gave_up = not blocks and not problems  # a reply with no edit blocks at all
        if not gave_up:
            changes = workspace.propose(reply, on_top_of=changes)
        if on_round is not None:
            on_round(Round(number, prompt, reply, changes))
        if gave_up:
            break
    return changes
