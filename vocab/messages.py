"""One message of a conversation, and the form chat APIs take it in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation. ``thinking`` is kept for the record, never sent to a model."""

    role: str  # "system" | "user" | "assistant"
    content: str
    thinking: str = ""


def wire_messages(messages: Iterable[ChatMessage]) -> list[dict]:
    """Messages as chat APIs and chat templates take them: role and content, no thinking."""
    return [{"role": m.role, "content": m.content} for m in messages]
