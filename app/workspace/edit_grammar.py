"""A GBNF grammar that holds a coder's reply to edit blocks that apply (``constrain_edits``).

With it, llama.cpp samples only replies of this shape: one or more SEARCH/REPLACE blocks
(CONTRACT.md), then optionally a blank line and a note. Each block's path is one of the
files in context, and its SEARCH text is a run of consecutive whole lines of that file,
copied exactly, long enough to match only one place. So a block cannot name a file that
is not there (``phys.py`` for ``physics.py``), miss its SEARCH by a letter or match twice;
whether the REPLACE text is right is still the model's. Ruled out by design: prose before
the first block, and new files (a path outside the context, with an empty SEARCH).

The grammar grows with the files (one rule per line), so past ``MAX_LINES`` lines in all
there is none and the reply is sampled freely.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_LINES = 4000  # lines of all files together; each is one rule llama.cpp tracks while sampling SEARCH

_HEAD = r"""root ::= block+ ("\n" note)?
note ::= ([^<=>] | "<" [^<] | "=" [^=] | ">" [^>])*
replace ::= rline* ">>>>>>> REPLACE\n"
rline ::= ([^<=>\n] [^\n]* | [<=>] [^<=>\n] [^\n]* | [<=>])? "\n"
"""


def edit_grammar(files: Sequence[tuple[str, str]]) -> str | None:
    """The grammar for a reply that edits ``files`` (``(path, text)`` pairs, as the prompt shows
    them); None when no file has a line to quote or the files are too long to track."""
    named = [(path, _lines(text)) for path, text in files]
    if sum(len(lines) for _, lines in named) > MAX_LINES:
        return None
    blocks, rules = [], []
    for path, lines in named:
        where: dict[str, list[int]] = {}
        for i, line in enumerate(lines):
            where.setdefault(line, []).append(i)
        starts = {s: k for s in range(len(lines)) if (k := _shortest_unique(lines, s, where[lines[s]]))}
        if not starts:
            continue
        f = len(blocks)
        blocks.append(f"{_literal(path + chr(10) + '<<<<<<< SEARCH' + chr(10))} f{f} replace")
        rules.append(f"f{f} ::= " + " | ".join(f"f{f}s{s}" for s in starts))
        for s, k in starts.items():  # from line s, the first k lines are a must: fewer match elsewhere too
            rules.append(f"f{f}s{s} ::= " + " ".join(_literal(line + chr(10)) for line in lines[s:s + k - 1])
                         + f" f{f}l{s + k - 1}")
        for i, line in enumerate(lines):  # then line by line until the divider
            more = f" | f{f}l{i + 1}" if i + 1 < len(lines) else ""
            rules.append(f'f{f}l{i} ::= {_literal(line + chr(10))} ("=======\\n"{more})')
    if not blocks:
        return None
    return _HEAD + "block ::= " + " | ".join(blocks) + "\n" + "\n".join(rules) + "\n"


def _shortest_unique(lines: list[str], start: int, same: list[int]) -> int | None:
    """How many lines from ``start`` a SEARCH needs to match only there, with a line that is not
    blank (app.workspace.edit_blocks refuses the rest); None if no run from there does.
    ``same``: where the line at ``start`` occurs."""
    others = [p for p in same if p != start]
    for k in range(1, len(lines) - start + 1):
        last = lines[start + k - 1]
        if k > 1:
            others = [p for p in others if p + k - 1 < len(lines) and lines[p + k - 1] == last]
        if not others and any(line.strip() for line in lines[start:start + k]):
            return k
    return None


def _lines(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'
