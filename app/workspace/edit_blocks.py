"""SEARCH/REPLACE blocks: parsing the coder's reply and finding where each applies.

The format (CONTRACT.md)::

    path/relative/to/root.py
    <<<<<<< SEARCH
    exact existing lines
    =======
    replacement lines
    >>>>>>> REPLACE

Tolerated, because models do it: code fences around blocks, the path in
backticks/quotes/bold or followed by a colon, a path on the fence line
(```` ```python path.py ````), several blocks after one path line, trailing
spaces, a missing final newline, indentation that differs only in leading
whitespace (consistently across the block), and a block with no path line after an
earlier block (often after a ``...`` line, a sentence, or a word such as "and" set apart by a
blank line, which a file name without a dot or slash must not be): it edits that block's file. A path
line with spaces in it is prose unless it names a file that exists (``is_file``). Never guessed:
a SEARCH that matches zero or several places is refused with a reason the coder can act on, and
so is a block whose ======= lines leave unclear where SEARCH ends. A malformed block still
names its file for a following block with no path line, and never hides the next block's path
line. Trailing spaces are ignored in SEARCH and kept in REPLACE.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

SEARCH = re.compile(r"^\s*(<{5,9})\s*SEARCH>?\s*$")  # "SEARCH>" too, as aider reads it
DIVIDER = re.compile(r"^\s*={5,9}\s*$")
REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
REPLACE_WITH_TEXT = re.compile(r"^\s*>{5,9}\s*REPLACE\b")  # a marker not alone on its line
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(\S*)\s*(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    """One SEARCH/REPLACE block: ``search``/``replace`` are lists of lines without endings."""

    path: str
    search: tuple[str, ...]
    replace: tuple[str, ...]
    line: int  # 1-based line of the SEARCH marker in the coder's reply


@dataclass(frozen=True)
class Problem:
    """A malformed part of the reply (no usable block came out of it)."""

    path: str
    reason: str


class NoMatch(Exception):
    """The block does not apply; ``str(exc)`` tells the coder why and what to do."""


def parse(reply: str, *, is_file: Callable[[str], bool] | None = None) -> tuple[list[Block], list[Problem]]:
    """All blocks in ``reply`` in order, and the problems found on the way. ``is_file`` says
    whether a path names a file that exists: a path line with spaces is that file's."""

    def names_path(text: str) -> bool:
        return looks_like_path(text) or (is_file is not None and bool(text) and is_file(text))

    lines = reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[Block] = []
    problems: list[Problem] = []
    candidate: str | None = None  # the last line that could name a path
    apart = False  # a blank line came between that line and here
    last_path: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if SEARCH.match(line):
            start = i
            path = candidate if candidate is not None else last_path
            if last_path is not None and path is not None and (
                    not names_path(path) or (apart and "." not in path and "/" not in path
                                             and not (is_file is not None and is_file(path)))):
                path = last_path  # prose between two blocks ("and", then a blank line): the previous file
            bad_path = path is not None and not names_path(path)
            body, i, closed = _collect(lines, i + 1, REPLACE)
            dividers = [k for k, text in enumerate(body) if DIVIDER.match(text)]
            split = _divider(body, dividers, len(SEARCH.match(line).group(1)))
            ok_div, ok_rep = bool(dividers), closed
            if not closed:  # cut short by the next block (or the end): read its lines again for that
                i = start  # block's path line, as if this one were not there
            if path is None:
                problems.append(Problem("", f"block at line {start + 1} has no file path "
                                            "on the line before <<<<<<< SEARCH"))
            elif bad_path:
                problems.append(Problem("", f"block at line {start + 1}: the line before <<<<<<< SEARCH must be "
                                            f"the file path alone, got {path[:60]!r}"))
            elif not ok_div:
                problems.append(Problem(path, f"block at line {start + 1} has no ======= line"))
            elif not ok_rep:
                loose = next((start + 2 + k for k, text in enumerate(body) if REPLACE_WITH_TEXT.match(text)), None)
                extra = f" (line {loose} has text after REPLACE; put the marker alone on its line)" if loose else ""
                problems.append(Problem(path, f"block at line {start + 1} has no >>>>>>> REPLACE line{extra}"))
            elif split is None:
                problems.append(Problem(path, f"block at line {start + 1} has {len(dividers)} ======= lines, so "
                                              "where SEARCH ends is unclear; mark the block with a length the "
                                              "text has no ======= line of (e.g. <<<<<<<< SEARCH, ======== and "
                                              ">>>>>>>> REPLACE: eight each)"))
            else:
                # trailing spaces are dropped from SEARCH (matching tolerates them), never from
                # REPLACE: they are the file's own (a Markdown line break, a string's contents)
                blocks.append(Block(path, _trim(body[:split]), tuple(body[split + 1:]), start + 1))
            if path is not None and not bad_path:
                last_path = path  # a block with no path line after this one edits this file, even if
                # this one is malformed (not the file of some earlier block)
            candidate, apart = None, False
            i += 1
            continue
        if REPLACE.match(line):  # (a stray ======= may be a heading underline in prose)
            problems.append(Problem(last_path or "", f"stray >>>>>>> REPLACE at line {i + 1}: "
                                                     "a block needs <<<<<<< SEARCH, ======= and >>>>>>> REPLACE"))
        elif not DIVIDER.match(line):
            fence = FENCE.match(line)
            if fence:
                # ```lang path  or  ```path.py : a path on the fence line
                word = fence.group(3) or fence.group(2)
                if word and ("." in word or "/" in word):
                    candidate, apart = clean_path(word), False
            elif line.strip() and any(c.isalnum() for c in line):  # "..." or "---" names no file
                candidate, apart = clean_path(line), False
            elif not line.strip():
                apart = True
        i += 1
    return blocks, problems


def clean_path(line: str) -> str:
    """The path a path line names, with the usual decoration removed."""
    text = line.strip().rstrip(":").strip()
    for prefix in ("File:", "file:", "Path:", "path:", "Filename:", "filename:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    text = text.lstrip("#").strip() if text.startswith("#") and " " in text else text
    for wrap in ("**", "`", '"', "'", "*"):
        if len(text) > 2 * len(wrap) and text.startswith(wrap) and text.endswith(wrap):
            text = text[len(wrap):-len(wrap)].strip()
    return text.rstrip(":").strip()


def looks_like_path(text: str) -> bool:
    """A path line has no inner whitespace and does not end like a sentence."""
    return bool(text) and not any(c.isspace() for c in text) and not text.endswith((",", ";", "!", "?"))


def _collect(lines: list[str], i: int, end: re.Pattern) -> tuple[list[str], int, bool]:
    out: list[str] = []
    while i < len(lines):
        if end.match(lines[i]):
            return out, i, True
        if SEARCH.match(lines[i]):
            return out, i - 1, False
        out.append(lines[i])
        i += 1
    return out, i, False


def _divider(body: list[str], dividers: list[int], marker: int) -> int | None:
    """Which of the ======= lines in a block's ``body`` ends SEARCH (None: several could).

    One is the divider. Of several (a heading underline in the text), the first right after
    the SEARCH marker (an empty SEARCH), else the only one with as many ``=`` as the marker
    has ``<``; a guess could replace the wrong lines, so there is none."""
    if len(dividers) <= 1 or dividers[0] == 0:
        return dividers[0] if dividers else None
    same = [k for k in dividers if body[k].strip().count("=") == marker]
    return same[0] if len(same) == 1 else None


def _trim(lines: list[str]) -> tuple[str, ...]:
    return tuple(line.rstrip() for line in lines)


# ---- matching -------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """Where a block applies: file lines ``[start, end)`` become ``lines``."""

    start: int
    end: int
    lines: tuple[str, ...]


def locate(file_lines: list[str], block: Block) -> Match:
    """The one place ``block`` applies in ``file_lines`` (bodies without endings).

    Tries exact lines, then lines ignoring trailing whitespace, then lines that
    differ only by a consistent leading-whitespace offset (the replacement is
    re-indented by the same offset); if none fits, the same again without blank
    lines at the edges of SEARCH (and as many at the edges of REPLACE). Zero or
    several places raise NoMatch.
    """
    search, replace = list(block.search), list(block.replace)
    if not any(line.strip() for line in search):
        raise NoMatch("SEARCH is empty but the file exists; quote the lines to change")
    variants = [(search, replace)]
    trimmed = _trim_blank_edges(search, replace)
    if trimmed[0] != search:
        variants.append(trimmed)
    for search, replace in variants:
        n = len(search)
        for tier in ("exact", "trailing", "indent"):
            hits: list[tuple[int, str]] = []
            for start in range(len(file_lines) - n + 1):
                shift = _compare(file_lines[start:start + n], search, tier)
                if shift is not None:
                    hits.append((start, shift))
            if len(hits) == 1:
                start, shift = hits[0]
                return Match(start, start + n, _reindent(tuple(replace), shift))
            if len(hits) > 1:
                where = ", ".join(str(s + 1) for s, _ in hits[:5])
                raise NoMatch(
                    f"SEARCH matches {len(hits)} places (lines {where}); "
                    "include more surrounding lines so it matches exactly one")
    raise NoMatch(_did_you_mean(file_lines, variants[-1][0]))


def _trim_blank_edges(search: list[str], replace: list[str]) -> tuple[list[str], list[str]]:
    """SEARCH without blank lines at its edges; REPLACE without as many at the same edges."""
    def blanks(lines: list[str]) -> int:
        return next((i for i, line in enumerate(lines) if line.strip()), len(lines))

    lead, trail = blanks(search), blanks(search[::-1])
    r_lead = min(lead, blanks(replace))
    replace = replace[r_lead:]
    r_trail = min(trail, blanks(replace[::-1]))
    return search[lead:len(search) - trail], replace[:len(replace) - r_trail]


def _compare(window: list[str], search: list[str], tier: str) -> str | None:
    """None if no match; else the indentation shift ('' or '+ws' or '-ws')."""
    if tier == "exact":
        return "" if window == search else None
    if tier == "trailing":
        return "" if all(a.rstrip() == b.rstrip() for a, b in zip(window, search)) else None
    shift: str | None = None
    for a, b in zip(window, search):
        a, b = a.rstrip(), b.rstrip()
        if not a and not b:
            continue
        if a.lstrip() != b.lstrip() or not a.strip():
            return None
        ia, ib = a[:len(a) - len(a.lstrip())], b[:len(b) - len(b.lstrip())]
        if ia.endswith(ib):
            this = "+" + ia[:len(ia) - len(ib)]
        elif ib.endswith(ia):
            this = "-" + ib[:len(ib) - len(ia)]
        else:
            return None
        if this == "-":
            this = "+"
        if shift is None:
            shift = this
        elif shift != this:
            return None
    return shift if shift is not None else ""


def _reindent(lines: tuple[str, ...], shift: str) -> tuple[str, ...]:
    if not shift or shift == "+":
        return lines
    pad = shift[1:]
    if shift[0] == "+":
        return tuple(pad + line if line.strip() else line for line in lines)
    return tuple(line[len(pad):] if line.startswith(pad) else line.lstrip() if not line.strip() else line
                 for line in lines)


def _did_you_mean(file_lines: list[str], search: list[str]) -> str:
    head = "SEARCH does not match the file exactly"
    n = len(search)
    if not file_lines:
        return f"{head}: the file is empty"
    best, best_at = 0.5, None  # only windows at least this similar are worth showing
    target = "\n".join(s.strip() for s in search)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    step = max(1, (len(file_lines) - n + 1) // 50_000)  # bound the work on huge files
    for start in range(0, max(1, len(file_lines) - n + 1), step):
        matcher.set_seq1("\n".join(s.strip() for s in file_lines[start:start + n]))
        if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
            continue
        ratio = matcher.ratio()
        if ratio > best:
            best, best_at = ratio, start
    if best_at is None:
        return f"{head} and no similar lines were found; re-read the file and copy the lines exactly"
    shown = "\n".join(file_lines[best_at:best_at + n])
    return (f"{head}. Did you mean these lines ({best_at + 1}-{best_at + min(n, len(file_lines) - best_at)})?\n"
            f"{shown}\nCopy them exactly into SEARCH.")
