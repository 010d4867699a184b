"""``exact_quotes``: a line the model writes in the form its prompt numbers file lines
(`` 7 |     return total``, app.prompts.files_block) is held to line 7 of a file in context.

A small model that reads code back (the demo reasoner's trace reads each line before it judges
it) then cannot misquote it; which lines it quotes, when it stops and what it concludes stay
its own. The rule sees one line at a time, as bytes so far (``complete`` once its newline is
written); our engine applies it token by token (local_engine.constraint.LineConstraint). With
several files in context, line N of any of them will do."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from app.prompts import numbered_lines

NUMBERED = re.compile(rb"^ *(\d+) \| ")


def numbered_line_rule(files: Iterable[tuple[str, str]]) -> Callable[[bytes, bool], bool]:
    """``(path, text)`` files -> ``ok(line, complete)``: a line that starts like a numbered one
    (spaces, a number, `` | ``) goes on as line N of a file in context and ends where it does;
    there must be such a line N. Any other line is free."""
    by_number: dict[int, set[bytes]] = {}
    for _, text in files:
        for n, line in enumerate(numbered_lines(text), 1):
            by_number.setdefault(n, set()).add(line.encode("utf-8"))

    def ok(line: bytes, complete: bool) -> bool:
        m = NUMBERED.match(line)
        if m is None:
            return True
        said, quotes = line[m.end():], by_number.get(int(m.group(1)), ())
        if complete:
            return said in quotes
        return any(q.startswith(said) for q in quotes)

    return ok
