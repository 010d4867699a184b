"""The plan a reasoner answer becomes, and its numbered steps as a checklist.

``parse_steps`` reads the top-level numbered items (``1.``, ``2)``, ``Step 3:``, ``**4.**``);
lines under an item (its sub-bullets, code) belong to it. A plan without numbered items is
one step: the whole plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

_ITEM = re.compile(r"^(?P<indent>[ \t]{0,3})(?:[*_]{0,2})(?:step\s+)?(?P<n>\d{1,3})(?:[.):]|[*_]{2}[.):]?)[*_]{0,2}\s+(?P<text>\S.*)$",
                   re.IGNORECASE)
_HEADING_ITEM = re.compile(r"^#{1,4}\s+(?:step\s+)?(?P<n>\d{1,3})[.):]?\s+(?P<text>\S.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Step:
    text: str  # the step as written (first line and the lines under it)
    done: bool = False
    skipped: bool = False

    @property
    def title(self) -> str:
        return self.text.split("\n", 1)[0].strip()


@dataclass(frozen=True)
class Plan:
    """A reasoner's answer handed to the coder: ``text`` (never the trace), its steps, and the
    message it came from (for the store's hand-off link)."""

    text: str
    message_id: int | None = None
    steps: tuple[Step, ...] = field(default=())

    @classmethod
    def from_answer(cls, text: str, message_id: int | None = None) -> "Plan":
        return cls(text, message_id, tuple(Step(s) for s in parse_steps(text)))

    def with_steps(self, steps) -> "Plan":
        return replace(self, steps=tuple(steps))

    def step_text(self, index: int) -> str:
        """What the coder gets for one step: that step, with the others as context."""
        step = self.steps[index]
        others = [f"{i + 1}. {s.title}" + (" (done)" if s.done else "") for i, s in enumerate(self.steps)
                  if i != index and not s.skipped]
        text = f"Implement step {index + 1} of the plan only:\n\n{step.text}"
        if others:
            text += "\n\nThe whole plan, for context:\n" + "\n".join(others)
        return text

    def as_text(self) -> str:
        """The steps still to do, numbered again (what "hand off all" sends after editing)."""
        live = [s for s in self.steps if not s.skipped and not s.done]
        if not live:
            return ""
        return "\n".join(f"{i + 1}. {_renumber(s.text)}" for i, s in enumerate(live))


def parse_steps(text: str) -> list[str]:
    """The plan's top-level numbered items, each with the lines under it."""
    steps: list[list[str]] = []
    in_fence = False
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else (_ITEM.match(line) or _HEADING_ITEM.match(line))
        if match:
            steps.append([match.group("text").strip()])
        elif steps:
            steps[-1].append(line)
    out = ["\n".join(lines).rstrip() for lines in steps]
    if len(out) < 2:
        return [text.strip()] if text.strip() else []
    return out


def _renumber(text: str) -> str:
    return text.strip()
