"""A GBNF grammar that holds a coder's reply to edit blocks that apply (``constrain_edits``).

With it, llama.cpp samples only replies of this shape: one or more SEARCH/REPLACE blocks
(CONTRACT.md), then optionally a blank line and a note. Each block's path is one of the
files in context, and its SEARCH text is a run of consecutive whole lines of that file,
copied exactly, long enough to match only one place. So a block cannot name a file that
is not there (``phys.py`` for ``physics.py``), miss its SEARCH by a letter or match twice;
whether the REPLACE text is right is still the model's. Ruled out by design: prose before
the first block, and new files (a path outside the context, with an empty SEARCH) except
where the prompt creates them (``new_files``: any path, or the paths a plan names).

With ``names`` (``known_names`` on the coder) the REPLACE lines of a block on a file in context
are held too: each name in their code is one of ``names`` (the files' names and the plan's; see
``held_names``), so a small model cannot misspell the name it copies (``lineedle`` for
``needle``); numbers, strings (closed on their line) and ``#`` comments stay free, and a new
file's lines are not held. Which names it writes, and where, stays its own. Python-shaped: a
line that opens a string it closes on a later line cannot be written.

The grammar grows with the files (a few rules per line), so past ``MAX_LINES`` lines in
all there is none and the reply is sampled freely.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from app.exact_quotes import known_names, line_code, stated_changes

MAX_LINES = 20000  # lines of all files together (building the grammar takes about a second at this size)
MAX_RUN = 16  # the most lines a SEARCH may need before it matches one place only
PATH_CHARS = ((ord("a"), ord("z")), (ord("A"), ord("Z")), (ord("0"), ord("9")), (ord("_"), ord("_")),
              (ord("-"), ord("/")), (0x80, 0x10FFFF))  # a new file's path: "-", "." and "/"; letters of any script

_HEAD = r"""root ::= block+ ("\n" note)?
note ::= ([^<=>] | "<" [^<] | "=" [^=] | ">" [^>])*
replace ::= rline* ">>>>>>> REPLACE\n"
rline ::= ([^<=>\n] [^\n]* | [<=>] [^<=>\n] [^\n]* | [<=>])? "\n"
"""
# A REPLACE line whose names are held (``names``): a word (a held name, or a number) is followed by
# a character that cannot go on a name (nor open a string), or a comment, or the line's end; a
# string closes on its line; outside strings and comments the line is ASCII; it does not start
# with <, = or >.
_HELD = r"""hreplace ::= hline* ">>>>>>> REPLACE\n"
hline ::= (hfirst | hstring | hword hsep) hbody | hword? hcomment? "\n"
hbody ::= (hsep | hstring | hword hsep)* hword? hcomment? "\n"
hfirst ::= [\t !$-&(-/:;?@[-^`{-~]
hsep ::= [\t !$-&(-/:-@[-^`{-~]
hstring ::= ([rRbBfFuU] | [rR] [bBfF] | [bBfF] [rR])? ("\"" [^"\n]* "\"" | "'" [^'\n]* "'")
hcomment ::= "#" [^\n]*
hword ::= hnumber | hname
hnumber ::= [0-9] [0-9_]* ("." [0-9_]*)? ([eE] [+-]? [0-9_]+)? [jJ]? | "0" [xXoObB] [0-9a-fA-F_]+
"""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INLINE = re.compile(r"`+([^`\n]+)`+")  # a plan's inline code
_FENCED = re.compile(r"^ *```[^\n]*\n(.*?)^ *```", re.S | re.M)  # a plan's fenced blocks
_MARKERS = ("<<<<<<<", "=======", ">>>>>>>")


def held_names(files: Iterable[tuple[str, str]], plan: str | None = None) -> set[str]:
    """The names a held REPLACE may write: the files' code's (app.exact_quotes.known_names, its
    keywords among them) and those in the plan's inline code (the fix it quotes may bring one)."""
    names = known_names(files)
    for code in _INLINE.findall(plan or ""):
        names.update(_NAME.findall(code))
    return names


def plan_lines(files: Iterable[tuple[str, str]], plan: str | None) -> set[str] | None:
    """The lines a REPLACE may write under ``plan_lines``: the files' lines and the code the
    plan quotes (its inline code, its fenced blocks' lines), each stripped, but for a line the
    plan says to change ("from `X` to `Y`": X is not written back, so the block cannot leave it
    as it is); None when the plan quotes no code (nothing to hold a REPLACE to but the files: it
    could change nothing)."""
    quoted = [code.strip() for code in _INLINE.findall(plan or "")]
    quoted += [line.strip() for block in _FENCED.findall(plan or "") for line in block.split("\n")]
    if not any(quoted):
        return None
    changed = {x.strip() for x, y in stated_changes(plan or "") if x.strip() != y.strip()}
    return {line for line in quoted + [line.strip() for _, text in files for line in _lines(text)]
            if line and not line.startswith(_MARKERS) and line not in changed}


def plan_target(files: Iterable[tuple[str, str]], plan: str | None) -> str | None:
    """The line a plan's one stated change is about: the X of its "from `X` to `Y`" (its code:
    stripped, without a comment), where the plan states one X that is not its Y and one line of
    the files has that code; else None."""
    xs = {line_code(x) for x, y in stated_changes(plan or "") if line_code(x) != line_code(y)}
    if len(xs) != 1:
        return None
    x = xs.pop()
    hits = sum(line_code(line) == x for _, text in files for line in _lines(text))
    return x if hits == 1 else None


def edit_grammar(files: Sequence[tuple[str, str]], *, new_files: bool | Sequence[str] = False,
                 names: Iterable[str] | None = None, lines: Iterable[str] | None = None,
                 covers: str | None = None) -> str | None:
    """The grammar for a reply that edits ``files`` (``(path, text)`` pairs, as the prompt shows
    them) and creates files (an empty SEARCH): with ``new_files`` True under any other path,
    given paths under those alone (the ones a plan names); None when no file has a line to
    quote or the files are too long to track. With ``names``, the REPLACE lines of blocks on
    ``files`` name only those (``held_names``); with ``lines``, each of those REPLACE lines is,
    after its indentation, one of them (``plan_lines``) or blank; with ``covers`` (the code of
    one line of the files, ``plan_target``), each SEARCH on that line's file takes it in."""
    named = [(path, _lines(text)) for path, text in files]
    if sum(len(lines) for _, lines in named) > MAX_LINES:
        return None
    blocks, rules = [], []
    held = sorted({n for n in names if _NAME.fullmatch(n)}) if names is not None else []
    quoted = sorted({line.strip() for line in lines or ()} - {""})
    # a block on a file in context (a new file's is never held)
    replace = "lreplace" if quoted else "hreplace" if held else "replace"
    taken = [path for path, _ in files]
    fresh = [path for path in new_files if path not in taken] if not isinstance(new_files, bool) else []
    if new_files is True:
        rules += _other_path("new", taken)
    elif fresh:
        rules.append("new ::= " + " | ".join(_literal(path + "\n") for path in fresh))
    if new_files is True or fresh:
        blocks.append('new "<<<<<<< SEARCH\\n=======\\n" replace')
    for path, lines in named:
        starts = _starts(lines)
        target = next((i for i, line in enumerate(lines) if line_code(line) == covers), None) if covers else None
        if target is not None:  # a run that takes in the target line: it starts there or above
            starts = {s: k for s, k in starts.items() if s <= target}
        if not starts:
            continue
        f = f"f{len(blocks)}"
        blocks.append(f"{_literal(path + chr(10) + '<<<<<<< SEARCH' + chr(10))} {f} {replace}")
        first: dict[str, list[str]] = {}  # a SEARCH's first line -> what may follow it there
        for s, k in starts.items():  # from line s, the first k lines are a must: fewer match elsewhere too
            first.setdefault(lines[s] + "\n", []).append(f"{f}a{s}")
            rules.append(f"{f}a{s} ::= " + "".join(_literal(line + "\n") + " " for line in lines[s + 1:s + k])
                         + f"{f}t{s + k - 1}")
        rules += _prefix_tree(f, first)
        for i, line in enumerate(lines):  # then line by line until the divider (not before the target)
            end = ['"=======\\n"'] if target is None or i >= target else []
            rules.append(f"{f}t{i} ::= " + " | ".join(end + ([f"{f}l{i + 1}"] if i + 1 < len(lines) else [])))
            if i:
                rules.append(f"{f}l{i} ::= {_literal(line + chr(10))} {f}t{i}")
    if not blocks:
        return None
    if quoted:
        rules += ['lreplace ::= lline* ">>>>>>> REPLACE\\n"', 'lline ::= [ \\t]* (lquote | "\\n")', 'lend ::= ""']
        rules += _prefix_tree("lquote", {line + "\n": ["lend"] for line in quoted})
    elif held:
        rules += [_HELD.rstrip("\n"), "hname ::= " + " | ".join(_literal(n) for n in held)]
    return _HEAD + "block ::= " + " | ".join(blocks) + "\n" + "\n".join(rules) + "\n"


def _prefix_tree(name: str, entries: dict[str, list[str]]) -> list[str]:
    """Rules for ``name``: any key of ``entries``, then one of its rules, the keys merged where
    they share a beginning. llama.cpp keeps a stack per alternative it could be in, so a SEARCH
    that may start at any of 4,000 lines would otherwise cost 4,000 checks per token in the
    vocabulary; this way it is one per branch. Keys end with the only newline they hold."""
    rules, todo, count = [], [(name, sorted(entries.items()))], 0
    while todo:
        rule, items = todo.pop()
        by_char: dict[str, list[tuple[str, list[str]]]] = {}
        for key, targets in items:
            by_char.setdefault(key[0], []).append((key, targets))
        alts = []
        for group in by_char.values():
            if len(group) == 1:
                key, targets = group[0]
                alts.append(f"{_literal(key)} {_one_of(targets)}")
                continue
            shared = os.path.commonprefix([key for key, _ in group])
            count += 1
            child = f"{name}n{count}"
            todo.append((child, [(key[len(shared):], targets) for key, targets in group]))
            alts.append(f"{_literal(shared)} {child}")
        rules.append(f"{rule} ::= " + " | ".join(alts))
    return rules


def _other_path(name: str, taken: Sequence[str]) -> list[str]:
    """Rules for ``name``: a path line (up to its newline) that is none of ``taken``, made of
    ``PATH_CHARS`` only (so app.workspace.edit_blocks reads it as written: no quotes, spaces or
    colons to strip). A character trie of the taken paths whose every node may also leave them
    (a character no taken path has there) or, where it is no taken path itself, end."""
    rules, todo, count = [], [(name, "")], 0
    anything = f"{_char_class(PATH_CHARS)}* " + '"\\n"'
    while todo:
        rule, prefix = todo.pop()
        after = sorted({path[len(prefix)] for path in taken
                        if path.startswith(prefix) and len(path) > len(prefix) and _in(path[len(prefix)], PATH_CHARS)})
        alts = [f"{_char_class(PATH_CHARS, after)} {anything}"]
        if prefix and prefix not in taken:
            alts.append('"\\n"')
        for c in after:
            count += 1
            child = f"{name}{count}"
            todo.append((child, prefix + c))
            alts.append(f"{_literal(c)} {child}")
        rules.append(f"{rule} ::= " + " | ".join(alts))
    return rules


def _char_class(ranges, minus: Sequence[str] = ()) -> str:
    """A GBNF class of the code-point ``ranges`` less the characters ``minus``, each written by
    its code (llama.cpp knows few escapes)."""
    cut = sorted(ord(c) for c in minus)
    parts = []
    for lo, hi in ranges:
        for code in cut:
            if lo <= code <= hi:
                if lo < code:
                    parts.append((lo, code - 1))
                lo = code + 1
        if lo <= hi:
            parts.append((lo, hi))
    return "[" + "".join(_code(lo) if lo == hi else f"{_code(lo)}-{_code(hi)}" for lo, hi in parts) + "]"


def _in(c: str, ranges) -> bool:
    return any(lo <= ord(c) <= hi for lo, hi in ranges)


def _code(code: int) -> str:
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "(" + " | ".join(names) + ")"


def _starts(lines: list[str]) -> dict[int, int]:
    """Where a SEARCH may start, and how many lines it needs from there to match that place
    alone, with a line that is not blank (app.workspace.edit_blocks refuses the rest). A start
    that needs more than ``MAX_RUN`` lines is left out."""
    ids: dict[str, int] = {}
    row = [ids.setdefault(line, len(ids)) for line in lines]
    blank = [not line.strip() for line in lines]
    found: dict[int, int] = {}
    pending = set(range(len(lines)))
    for k in range(1, MAX_RUN + 1):
        if not pending:
            break
        seen = Counter(tuple(row[s:s + k]) for s in range(len(lines) - k + 1))
        for s in sorted(pending):
            if s + k > len(lines):
                pending.discard(s)  # runs from here reach the end and still match elsewhere
            elif seen[tuple(row[s:s + k])] == 1 and not all(blank[s:s + k]):
                found[s] = k
                pending.discard(s)
    return dict(sorted(found.items()))


def _lines(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'
