"""ThinkSplitter: the one parser that splits a reasoning model's output into thinking and answer.

Every backend feeds it: inline `<think>…</think>` in the text (GGUF chat, llama-server
`--reasoning-format none`, our engine), or reasoning that a server already put in its own
field (`reasoning_content` / `reasoning`). It works on text as it streams, in chunks of any
size, and the split never depends on where the chunks broke (tests prove it by property).

The rules, in order:
- One think block, at the start. `<think>` counts only as the first non-blank text; after
  `</think>` everything is answer, tags included (an answer may talk about tags).
- ``opened=True``: the prompt already opened the block (R1's template ends with `<think>`),
  so the output starts inside it; a leading `<think>` is swallowed all the same.
- ``opened=False``: no leading `<think>` means there is no thinking: all text is answer.
- ``opened=None``: unknown (a server's raw text). Without a leading `<think>` the text is
  held until `</think>` shows it was thinking, or the end shows it was the answer.
- Blank space at the start and end of the thinking, and at the start of the answer, is dropped.
- Reasoning fed through ``feed_reasoning`` is thinking; content after it is answer. One
  exception: content that opens with a whole `<think>…</think>` block after field reasoning
  (llama-server's deepseek-legacy sends the trace both ways) is thinking, dropped when it only
  repeats the field; an unclosed `<think>` there stays answer text.

Pure Python: no torch, nothing of ours (it sits in `vocab`, below `local_engine` and `app`). Pieces come back as ``("thinking" | "answer", text)``.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"

THINKING = "thinking"
ANSWER = "answer"

Piece = tuple[str, str]  # (THINKING | ANSWER, text)


class ThinkSplitter:
    """Feed text with ``feed``/``feed_reasoning``; call ``finish`` once at the end."""

    def __init__(self, opened: bool | None = False):
        self.opened = opened
        self._thinking_parts: list[str] = []  # all thinking emitted so far
        self._answer_parts: list[str] = []  # all answer emitted so far
        self.closed = False  # a `</think>` (or the end of field reasoning) was seen
        self._state = "start"  # start | hold | think | answer
        self._buf = ""  # content not yet emitted (short: a tag still arriving, blank space)
        self._held: list[str] = []  # "hold" state: undecided text, in parts (it may be long)
        self._tail = ""  # its last few characters, where a `</think>` may have begun
        self._held_ws = ""  # trailing blank space of the thinking, emitted only if more follows
        self._field = False  # reasoning came in its own field (``feed_reasoning``)

    @property
    def thinking(self) -> str:
        return "".join(self._thinking_parts)

    @property
    def answer(self) -> str:
        return "".join(self._answer_parts)

    def feed(self, text: str) -> list[Piece]:
        """Content text (may hold inline tags)."""
        if self._state == "hold":
            return self._hold(text)
        self._buf += text
        return self._drain(final=False)

    def feed_reasoning(self, text: str) -> list[Piece]:
        """Reasoning a server delivered in its own field; content from now on is answer."""
        out: list[Piece] = []
        if self._state == "hold":
            self._release("answer")  # content held so far was the answer
            out += self._drain(final=False)
        self._field = True  # content not yet begun is answer, or a `<think>` block repeating this
        return out + self._thinking(text)

    def finish(self, *, interrupted: bool = False) -> list[Piece]:
        """Flush what is held; the stream is over.

        ``interrupted``: it stopped early (cancelled, failed, cut at max_tokens). Text still
        undecided then counts as thinking: a reasoner cut off mid-thought has not reached
        `</think>` (content after field reasoning stays answer).
        """
        if interrupted and self._state == "hold" and not self._field:
            self._release("think")
        out = self._drain(final=True)
        self._held_ws = ""
        return out

    # -- internals -------------------------------------------------------------------

    def _drain(self, final: bool) -> list[Piece]:
        out: list[Piece] = []
        while True:
            if self._state == "start":
                head = self._buf.lstrip()
                if head.startswith(OPEN) and self._field:
                    self._state = "hold"  # answer, unless a `</think>` makes it a repeated trace
                    continue
                if head.startswith(OPEN):
                    self._buf = head[len(OPEN):]
                    self._state = "think"
                    continue
                if not final and (not head or OPEN.startswith(head)):
                    return out  # blank so far, or a tag still arriving
                self._state = "answer" if self._field else {True: "think", False: "answer", None: "hold"}[self.opened]
                continue
            if self._state == "hold":
                if self._buf:
                    text, self._buf = self._buf, ""
                    out += self._hold(text)
                    if self._state != "hold":
                        return out
                if final:
                    self._release("answer")
                    continue
                return out
            if self._state == "think":
                i = self._buf.find(CLOSE)
                if i >= 0:
                    out += self._thinking(self._buf[:i])
                    self._close()
                    self._buf = self._buf[i + len(CLOSE):]
                    continue
                keep = 0 if final else _partial_suffix(self._buf, CLOSE)
                body, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                out += self._thinking(body)
                return out
            # answer
            text, self._buf = self._buf, ""
            if not self._answer_parts:
                text = text.lstrip()
            if text:
                self._held_ws = ""
                self._answer_parts.append(text)
                out.append((ANSWER, text))
            return out

    def _hold(self, text: str) -> list[Piece]:
        """Keep undecided text until `</think>` arrives; scans only the new text (and the tail)."""
        window = self._tail + text
        i = window.find(CLOSE)
        if i < 0:
            self._held.append(text)
            self._tail = window[-(len(CLOSE) - 1):]
            return []
        held = "".join(self._held)
        thinking = held[: len(held) - len(self._tail)] + window[:i]
        self._held, self._tail = [], ""
        if self._field:  # `<think>…</think>` after field reasoning: the trace again, or more of it
            thinking = thinking.lstrip()[len(OPEN):].strip()
            thinking = "" if thinking == self.thinking else "\n\n" + thinking
            self._held_ws = ""  # the separator above stands for the field's trailing blank space
        out = self._thinking(thinking)
        self._close()
        self._buf = window[i + len(CLOSE):]
        return out + self._drain(final=False)

    def _release(self, state: str) -> None:
        """Leave the hold state: the held text goes back to the buffer, to be read as ``state``."""
        self._buf = "".join(self._held) + self._buf
        self._held, self._tail = [], ""
        self._state = state

    def _thinking(self, text: str) -> list[Piece]:
        """Emit thinking, holding trailing blank space until more thinking follows."""
        text = self._held_ws + text
        if not self._thinking_parts:
            text = text.lstrip()
        body = text.rstrip()
        self._held_ws = text[len(body):]
        if not body:
            return []
        self._thinking_parts.append(body)
        return [(THINKING, body)]

    def _close(self) -> None:
        self._held_ws = ""
        self.closed = True
        self._state = "answer"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def split_text(text: str, opened: bool | None = False) -> tuple[str, str]:
    """(thinking, answer) of a whole output at once."""
    splitter = ThinkSplitter(opened)
    splitter.feed(text)
    splitter.finish()
    return splitter.thinking, splitter.answer


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether a rendered chat prompt ends inside an open think block (R1's templates)."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN)
