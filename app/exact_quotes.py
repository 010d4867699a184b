"""``exact_quotes``: a line the model writes in the form its prompt numbers file lines
(`` 7 |     return total``, app.prompts.files_block) is held to line 7 of a file in context.

A small model that reads code back (the demo reasoner's trace reads each line before it judges
it) then cannot misquote it; which lines it quotes, when it stops and what it concludes stay
its own. The rule sees one line at a time, as bytes so far (``complete`` once its newline is
written); our engine applies it token by token (local_engine.constraint.LineConstraint). With
several files in context, line N of any of them will do.

``known_names`` adds a rule for names in inline code (between backticks on one line):
each is a name the files' code has, or, inside a path (`` `test_calc.py` ``), a word of the
files' paths or of their tests'. So a model that names a function it read (`` `summation` ``)
cannot write it from memory (`` `sumatiber` ``), nor name it after a file (`` `test_calc` ``);
and a span right after the word function (method, 函数, 方法) is a function the files define, so
"function `def`" or "function `needle`" cannot be written; which name it picks stays its own.

``AnswerCode`` holds the inline code of the answer after the thinking: each span is one the
thinking wrote between backticks, a line of a file (with or without its comment), a name of the
files' code or a file's path (or its test's). A small model that concluded `` Change `if e <
top:` to `if e > top:` `` in its thinking then restates that in the plan the coder gets, rather
than rewriting it from memory (`` `if e < elements:` ``); which span it restates, and where,
stays its own. Fenced code blocks and text outside backticks are free. A change it states is
held to make sense: in "from `X`" (also "change `X`", "第 K 行 `X`") X is code a file has now,
and in "`X` to `Y`" (改为) Y is not X; so a plan cannot swap the line as it is and as it should
be, nor change a line into itself. A thinking the prompt opened must say something before it
closes (else the answer would be held to nothing).

``ChangeFollowsFinding`` holds a change stated after the thinking's finding ("Line 7 uses `+`
where the docstring needs `-`") to the change that finding names: in "from `X` to `Y`", Y is X
with the one piece written as it should be, rather than the whole line written again from memory.
The finding itself quotes whole pieces of line K's code as W, and says a change of the kind its
words name (`finding_rights`): R is never W; after "wrong order" it is W with one call's
arguments in another order, after "uses `W`" or "compares with `W`" W with one piece written as
another of its kind (a name of the files' code, an operator of the same family, a number, a
string), after "off by one" W with one bound moved by one, after "starts … at `W`" W with its
start value written as another.

``DocstringQuote`` holds a docstring quoted after "docstring says" to the one the named
function has, rather than one written from memory.

``ReadingFocus`` is the rule of a reply asked after a failing test run (``Quotes.failing``):
the thinking's reading concludes only inside a function the failure reaches; decoding greedily,
a reading made to conclude at the last of them goes back to the line it leaned to
(app.held_reply). `line_rules` puts a reply's rules together."""

from __future__ import annotations

import ast
import io
import itertools
import keyword
import re
import tokenize
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath

from app.code_map import functions
from app.prompts import numbered_lines

NUMBERED = re.compile(rb"^ *(\d+) \|")
_DIGITS_SO_FAR = re.compile(rb" *(\d*) ?")  # a numbered line's start, before its " |"
LineRule = Callable[[bytes, bool], bool]  # may also have ``wrote(line)``: told each line once it is written
THINK, END_THINK = b"<think>", b"</think>"
_THINK_TAGS = re.compile(rb"(</?think>)")
# The words of a stated change, "from `X` to `Y`" ("Change `X` to `Y`", "把第 K 行 `X` 改为 `Y`"):
_FROM_WORDS = r"(?:\bfrom|\b[Cc]hange|行)"  # before X: the code as it is now
_TO_WORDS = r"[ ,]*(?:to|into|改为|改成|->|→) *"  # between X and Y: what it becomes
_FROM = re.compile((_FROM_WORDS + " ?$").encode("utf-8"))
_TO = re.compile(_TO_WORDS.encode("utf-8"))


def numbered_line_rule(files: Iterable[tuple[str, str]]) -> LineRule:
    """``(path, text)`` files -> ``ok(line, complete)``: a line that starts like a numbered one
    (spaces, a number, `` |``) goes on as line N of a file in context and ends where it does;
    there must be such a line N. Any other line is free."""
    by_number: dict[int, set[bytes]] = {}
    for _, text in files:
        for n, line in enumerate(numbered_lines(text), 1):
            by_number.setdefault(n, set()).add(b" " + line.encode("utf-8"))  # what follows "N |"

    def ok(line: bytes, complete: bool) -> bool:
        m = NUMBERED.match(line)
        if m is None:
            return True
        said, quotes = line[m.end():], by_number.get(int(m.group(1)), ())
        if complete:
            return said in quotes
        return any(q.startswith(said) for q in quotes)

    return ok


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IN_CODE = re.compile(r"(?<![0-9A-Za-z_])[A-Za-z_][A-Za-z0-9_]*")  # a name, not the tail of 0x1F
_TICKS = re.compile(rb"`+")
_RUN = re.compile(r"[A-Za-z0-9_./-]+")  # a name, a number, or a path (``src/calc.py``)
_IN_PATH = re.compile(r"[./][A-Za-z_]")  # what makes a run a path: a name after a dot or slash


def known_names(files: Iterable[tuple[str, str]]) -> set[str]:
    """The names the files' code has (Python's NAME tokens, so not the words of docstrings and
    comments; every word of a file Python cannot tokenize). ASCII names only."""
    names: set[str] = set()
    for _, text in files:
        try:
            names.update(t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.NAME)
        except (tokenize.TokenError, SyntaxError):
            names.update(_NAME.findall(text))
    return {n for n in names if _NAME.fullmatch(n)}


def defined_names(files: Iterable[tuple[str, str]]) -> set[str]:
    """The names the files' code defines with ``def`` or ``class`` (what "function `X`" can name)."""
    names: set[str] = set()
    for _, text in files:
        try:
            toks = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.NAME]
            names.update(b for a, b in zip(toks, toks[1:]) if a in ("def", "class"))
        except (tokenize.TokenError, SyntaxError):
            names.update(re.findall(r"\b(?:def|class)\s+([A-Za-z_][A-Za-z0-9_]*)", text))
    return {n for n in names if _NAME.fullmatch(n)}


def path_words(files: Iterable[tuple[str, str]]) -> set[str]:
    """The words of the files' paths and of their tests' (``test_<name>``): names inline code
    may use inside a path only."""
    words: set[str] = set()
    for path, _ in files:
        words.update(_NAME.findall(path) + _NAME.findall("test_" + PurePosixPath(path).name))
    return words


_FUNCTION_SPAN = re.compile("(?:\\b(?:function|method)|函数|方法) ?`([^`]*)(`)?".encode("utf-8"))
_LEAD = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*|")  # the name a span starts with (none: "")


def inline_names_rule(files: Iterable[tuple[str, str]]) -> LineRule:
    """``ok(line, complete)``: in inline code (a backtick run opens it, the next closes it) every
    name is one of ``known_names(files)``, or, in a path (a run of name characters, ``.``, ``/``
    and ``-`` where a name follows a ``.`` or ``/``), one of those or of ``path_words(files)``; the run
    still being written may become a path, and its last name may still go on. A span right after
    "function" ("method", "函数", "方法") starts with one of ``defined_names(files)`` (``add``,
    ``add(a, b)``), or is on its way to one. Inline code is
    ASCII (no way round the rule through other bytes). Lines in the numbered form (the other
    rule's) and fence lines (```` ```python ````) are free."""
    files = list(files)
    names = known_names(files)
    anywhere = names | path_words(files)
    starts = {name[:i] for name in anywhere for i in range(1, len(name) + 1)}
    defined = {name.encode("ascii") for name in defined_names(files)}

    def ok(line: bytes, complete: bool) -> bool:
        if NUMBERED.match(line) or line.lstrip().startswith(b"```"):
            return True
        if not _functions_named(line, complete, defined):  # "function `X`", "function `X(a, b)`": X is defined
            return False
        parts = _TICKS.split(line)
        for j in range(1, len(parts), 2):  # the odd parts are inside backticks
            if not parts[j].isascii():
                return False
            code = parts[j].decode("ascii")
            open_end = not complete and j == len(parts) - 1
            for run in _RUN.finditer(code):
                writing = open_end and run.end() == len(code)
                allowed = anywhere if writing or _IN_PATH.search(run.group()) else names
                for m in _IN_CODE.finditer(run.group()):
                    if m.group() not in (starts if writing and m.end() == len(run.group()) else allowed):
                        return False
        return True

    return ok


def _functions_named(line: bytes, complete: bool, allowed: set[bytes]) -> bool:
    """Each span right after "function" (method, 函数, 方法) in ``line`` starts with a name of
    ``allowed`` (``add``, ``add(a, b)``), or is on its way to one; none is left open at the end."""
    for m in _FUNCTION_SPAN.finditer(line):
        if m.group(2) is None and complete:
            return False  # a span left open at the line's end
        lead = _LEAD.match(m.group(1)).group()
        if m.group(2) is not None or len(lead) < len(m.group(1)):  # the name is written
            if lead not in allowed:
                return False
        elif not any(a.startswith(lead) for a in allowed):  # still being written
            return False
    return True


_DOC_QUOTE = re.compile('(?:\\bdocstring (?:says|reads|states)|文档字符串说) ?"'.encode("utf-8"))  # then the quote


class DocstringQuote:
    """The rule that a docstring quoted after "docstring says" (reads, states; 文档字符串说) in
    double quotes is a docstring of the files' functions, its first line as Python reads it:
    that of the function the line named last before it ("function `scale`", 函数 `scale`) where
    that one has a docstring, else any function's. So a small model that found the right
    function does not quote its docstring from memory ("Return sall numbers in numbers."); what
    it says of it stays its own. Files with no docstrings hold nothing."""

    def __init__(self, files: Iterable[tuple[str, str]]):
        self.docs: dict[bytes, set[bytes]] = {}  # function name -> its docstring's first line, closed
        for f in functions(files):
            first = f.doc.strip().split("\n", 1)[0].strip()
            if first and f.name.isascii():
                self.docs.setdefault(f.name.encode("ascii"), set()).add(first.encode("utf-8") + b'"')
        self.any = set().union(*self.docs.values())

    def __call__(self, line: bytes, complete: bool) -> bool:
        if not self.any:
            return True
        for m in _DOC_QUOTE.finditer(line):
            named = [_LEAD.match(f.group(1)).group() for f in _FUNCTION_SPAN.finditer(line, 0, m.start()) if f.group(2)]
            allowed = self.docs.get(named[-1], self.any) if named else self.any
            said = line[m.end():]
            if not any(said.startswith(doc) or (not complete and doc.startswith(said)) for doc in allowed):
                return False
        return True


class AnswerCode:
    """The rule on the answer (module docstring); the thinking, up to ``</think>``, is free and
    its backtick spans are remembered. ``thinking``: the output starts inside the thinking (the
    prompt opened it); else it is answer until a ``<think>`` the model writes itself. An answer
    with no thinking before it has nothing to restate: it is free. So a thinking the prompt
    opened may not close before it has said something (nor begin with a blank line): else a
    small model that skips it (``</think>`` first) would write an answer held to nothing."""

    def __init__(self, files: Iterable[tuple[str, str]], *, thinking: bool):
        files = list(files)
        self.thinking = self.thought = thinking  # in the thinking now; a thinking began
        self.said = False  # the thinking has written something (it may not close before)
        self.fenced = False  # inside a fenced code block of the answer
        lines = [line.encode("utf-8") for _, text in files for line in text.splitlines()]
        self.lines = lines
        self.by_number = lines_by_number(files)
        self.spans = {c for line in lines for c in _codes(line)}  # a line's code, with or without its comment
        self.spans.update(name.encode("ascii") for name in known_names(files))
        for path, _ in files:
            name = PurePosixPath(path).name
            for span in (path, name, "test_" + name, str(PurePosixPath(path).with_name("test_" + name))):
                self.spans.add(span.encode("utf-8"))
        self.sorted: list[bytes] | None = None  # the spans in order (made again when the thinking adds one)

    def wrote(self, line: bytes) -> None:
        thought, answer, self.thinking = self._split(line)
        self.thought = self.thought or THINK in line
        self.said = self.said or bool(thought.strip())
        parts = _TICKS.split(thought)
        if len(parts) > 2:
            self.spans.update(p for p in parts[1:len(parts) - 1:2] if p)
            self.spans.update(finding_changes(thought, self.by_number))  # the line it found, as it should be
            self.sorted = None
        if answer.lstrip().startswith(b"```"):
            self.fenced = not self.fenced

    def __call__(self, line: bytes, complete: bool) -> bool:
        if self.thinking and not self.said:  # a thinking says something before it closes, and
            before, tag, _ = line.partition(END_THINK)  # starts on its first line
            if (tag and not before.strip()) or (complete and not line.strip()):
                return False
        if not (self.thought or THINK in line):
            return True
        _, answer, _ = self._split(line)
        if b"`" not in answer or self.fenced or answer.lstrip().startswith(b"```") or NUMBERED.match(answer):
            return True
        if self.sorted is None:
            self.sorted = sorted(self.spans)
        parts = _TICKS.split(answer)
        for j in range(1, len(parts), 2):  # the odd parts are inside backticks
            span = parts[j]
            if _FROM.search(parts[j - 1]) and not any(span in line for line in self.lines):
                return False  # "from `X`": X is code a file has now
            was = _code(parts[j - 2]) if j >= 3 and _TO.fullmatch(parts[j - 1]) else None  # "`X` to `Y`": Y is not X
            if j == len(parts) - 1 and not complete:  # still being written: the start of a span
                if not self._starts_span(span, besides=was):
                    return False
            elif span not in self.spans or _code(span) == was:
                return False
        return True

    def _starts_span(self, start: bytes, besides: bytes | None) -> bool:
        """Some span whose code is not ``besides`` starts with ``start``."""
        i = bisect_left(self.sorted, start)
        while i < len(self.sorted) and self.sorted[i].startswith(start):
            if _code(self.sorted[i]) != besides:
                return True
            i += 1
        return False

    def _split(self, line: bytes) -> tuple[bytes, bytes, bool]:
        """``line``'s thinking and answer text, from the state it starts in, and whether it
        ends in the thinking: ``<think>`` opens it (a model that writes the tag itself),
        ``</think>`` closes it. Pieces of a kind are joined by a newline: a span across a tag matches none."""
        thinking, thought, answer = self.thinking, [], []
        for k, part in enumerate(_THINK_TAGS.split(line)):
            if k % 2:
                thinking = part == THINK
            else:
                (thought if thinking else answer).append(part)
        return b"\n".join(thought), b"\n".join(answer), thinking


def _code(span: bytes) -> bytes:
    """A span's code: without a ``#`` comment."""
    return span.split(b"#")[0].strip()


def _whole_in(span: bytes, text: bytes) -> bool:
    """``span`` is in ``text`` as whole pieces of code: not blank, and at none of its ends
    cutting a name or a number in two."""
    if not span.strip():
        return False
    i = text.find(span)
    while i >= 0:
        end = i + len(span)
        if not (i > 0 and _word_byte(text[i - 1:i]) and _word_byte(span[:1])) \
                and not (end < len(text) and _word_byte(text[end:end + 1]) and _word_byte(span[-1:])):
            return True
        i = text.find(span, i + 1)
    return False


def _starts_whole_in(span: bytes, text: bytes) -> bool:
    """``span`` is in ``text`` starting where a piece of code starts (not cutting a name or a
    number in two there): a span on its way to `_whole_in`."""
    i = text.find(span)
    while i >= 0:
        if not (i > 0 and _word_byte(text[i - 1:i]) and _word_byte(span[:1])):
            return True
        i = text.find(span, i + 1)
    return False


def _word_byte(c: bytes) -> bool:
    return c.isalnum() or c == b"_"


def _codes(line: bytes) -> set[bytes]:
    """A file line as inline code may quote it: stripped, with or without its comment."""
    return {c for c in (line.strip(), _code(line)) if c}


def line_code(line: str) -> str:
    """A line's code, as changes are compared: without its ``#`` comment and indent."""
    return line.split("#")[0].strip()


_FINDING = re.compile(rb"^Line (\d+)\b[^`]*`([^`]+)`[^`]*`([^`]+)`")  # "Line 7 uses `+` where the docstring needs `-`"
_FINDING_OPEN = re.compile(rb"^Line (\d+)\b[^`]*`([^`]*)(`?)")  # a finding's first span, open or closed
_CHANGE_FROM = re.compile((_FROM_WORDS + " `([^`]*)(`?)").encode("utf-8"))  # "from `X`", closed or on its way
_CHANGE_TO = re.compile((_TO_WORDS + "`([^`]*)(`?)").encode("utf-8"))  # then " to `Y`"


class ChangeFollowsFinding:
    """The rule that a change stated after a finding makes the change the finding names. A
    finding is a thinking line "Line K … `W` … `R`" (what is wrong, then what it should be:
    "Line 7 uses `+` where the docstring needs `-`"), and W is code that line K of a file has,
    where there is a line K; R is not W, and is of the kind the finding's words name
    (`finding_rights`). After it, a change stated as "from `X`" (also "Change `X`", "第 K
    行 `X`") is a change of line K: X is line K of a file (its code,
    with or without its comment, without the indent) that has W; and in "from `X` to `Y`" (改为)
    Y is X with one W written R. So a small model that finds the wrong operator but then
    writes the line again from memory (`return alpha + beta` to `return as_seconds * beta + 3`)
    states the change it found; which line, what is wrong and what it should be (among those
    its words allow) stay its own. A finding whose line K no file has with W in it holds
    nothing, and everything before a finding is free."""

    def __init__(self, files: Iterable[tuple[str, str]], *, thinking: bool,
                 failed: Iterable[tuple[str, str]] = ()):
        files = list(files)
        self.by_number = lines_by_number(files)
        self.failed = {(x.encode("utf-8"), y.encode("utf-8")) for x, y in failed}  # (X, Y: code) that failed the tests
        self.names = {name.encode("ascii") for name in known_names(files)}
        self.numbers = {n for _, text in files for n in re.findall(rb"\d+", text.encode("utf-8"))}
        self.numbers.update(str(n).encode("ascii") for n in range(11))
        self.thinking = thinking  # in the thinking now
        self.finding: tuple[set[bytes], bytes, bytes] | None = None  # line K's code (each file's), W, R

    def wrote(self, line: bytes) -> None:
        m = _FINDING.match(line)
        if self.thinking and m:
            wrong, right = m.group(2), m.group(3)
            lines = self.by_number.get(int(m.group(1)), [])
            code = {c for text in lines for c in _codes(text) if wrong in c}
            self.finding = (code, wrong, right) if code and wrong != right else None
        tags = _THINK_TAGS.findall(line)
        if tags:
            self.thinking = tags[-1] == THINK

    def __call__(self, line: bytes, complete: bool) -> bool:
        head = _FINDING_HEAD.match(line) if self.thinking else None
        if head and not _says_a_finding(line[head.end():], complete):
            return False  # a finding says one of the findings, in their words
        m = _FINDING_OPEN.match(line) if self.thinking else None
        if m:  # a finding: what is wrong (its first span) is on line K
            lines, wrong = self.by_number.get(int(m.group(1))), m.group(2)
            if lines and not any(_starts_whole_in(wrong, text) for text in lines):
                return False  # on its way: from the start of a piece of line K (not "p" of "exponent")
            if lines and (m.group(3) or complete) and not any(_whole_in(wrong, text) for text in lines):
                return False  # closed: code, and whole pieces of it (not "atches" of "matches", nor spaces)
            if lines and _ORDER.search(line[:m.start(2)]):  # "wrong order": W has a call to reorder
                spans = set().union(*(_reorderable_spans(text) for text in lines))
                if not any(s.startswith(wrong) for s in spans) or (m.group(3) or complete) and wrong not in spans:
                    return False
            said = _FINDING_RIGHT.match(line)
            if said and not self._right_ok(said, complete):
                return False
        if self.finding is None:
            return True
        code, wrong, right = self.finding
        for m in _CHANGE_FROM.finditer(line):
            was, closed = m.group(1), bool(m.group(2))
            if not any(c.startswith(was) for c in code):
                return False
            if not (closed or complete):
                continue  # X on its way
            if not closed or was not in code:
                return False
            to = _CHANGE_TO.match(line, m.end())
            if to is None:
                continue
            said, made = to.group(1), self._untried(was, _with_one_replaced(was, wrong, right))
            if to.group(2) or complete:
                if not to.group(2) or said not in made:
                    return False
            elif not any(change.startswith(said) for change in made):
                return False
        return True

    def _right_ok(self, said: re.Match, complete: bool) -> bool:
        """A finding's R (``_FINDING_RIGHT``), closed or on its way: not W, and where the
        finding's words say what kind of change it is, one of that kind (`finding_rights`)."""
        k, wrong, right, closed = int(said.group(1)), said.group(2), said.group(4), bool(said.group(5))
        rights = finding_rights(wrong, said.group(0)[:said.start(4)], self.names, self.numbers)
        if rights is not None and self.failed:  # (all of them failed: free, but for those)
            rights = {r for r in rights if not self._failed(k, wrong, r)} or None
        if closed or complete:
            return (closed and right != wrong and (rights is None or right in rights)
                    and not self._failed(k, wrong, right))
        return rights is None or any(r.startswith(right) for r in rights)

    def _untried(self, was: bytes, made: set[bytes]) -> set[bytes]:
        """Of the lines ``was`` may become, those no earlier plan changed it into and failed
        (all of them where each did)."""
        return {y for y in made if (_code(was), _code(y)) not in self.failed} or made

    def _failed(self, k: int, wrong: bytes, right: bytes) -> bool:
        """Every change a finding of line K (W, R) names is one that failed the tests."""
        if not self.failed:
            return False
        made = {(_code(c), _code(y)) for c in self.by_number.get(k, [])
                for y in _with_one_replaced(c.strip(), wrong, right)}
        return bool(made) and made <= self.failed


FINDING_WORDS = {  # what a finding says of line K, by kind: the demo reasoner's words (training.render)
    "operator": "uses `{wrong}` where the docstring needs `{right}`",
    "off_by_one": "is off by one: `{wrong}` should be `{right}`",
    "comparison": "compares with `{wrong}` where the docstring needs `{right}`",
    "wrong_name": "uses `{wrong}` where it should use `{right}`",
    "accumulator": "starts the accumulator at `{wrong}`; it must start at `{right}`",
    "swapped_args": "passes the arguments in the wrong order: `{wrong}` should be `{right}`",
}
_FINDING_HEAD = re.compile(rb"^Line \d+ ")
_FINDING_FORMS = [[None if part in ("{wrong}", "{right}") else part.encode("utf-8")
                   for part in re.split(r"(\{wrong\}|\{right\})", words) if part]
                  for words in FINDING_WORDS.values()]


def _says_a_finding(said: bytes, complete: bool) -> bool:
    """``said`` (a finding's words after "Line K ") begins as one of the findings
    (`FINDING_WORDS`), or is on its way to: its spans anything but a backtick, then free."""
    return any(_fits(form, said, complete) for form in _FINDING_FORMS)


def _fits(form: list[bytes | None], said: bytes, complete: bool) -> bool:
    pos = 0
    for part in form:
        if part is None:  # a span: up to its closing backtick
            end = said.find(b"`", pos)
            if end < 0:
                return not complete
            pos = end
        else:
            chunk = said[pos:pos + len(part)]
            if not part.startswith(chunk):
                return False
            if len(chunk) < len(part):
                return not complete
            pos += len(part)
    return True


_FINDING_RIGHT = re.compile(rb"^Line (\d+)\b[^`]*`([^`]+)`([^`]*)`([^`]*)(`?)")  # ... its second span, R
_ORDER = re.compile("\\border\\b|顺序".encode("utf-8"))  # "… in the wrong order: `W` should be `R`"
_ONE_PIECE = re.compile(rb"(?:\buses|\bcompares with) `[^`]*`[^`]*`$")  # "uses `W` where … `R`", "compares with `W` …"
_OFF_BY_ONE = re.compile(rb"\boff by one\b[^`]*`[^`]*`[^`]*`$")  # "… is off by one: `W` should be `R`"
_STARTS_AT = re.compile(rb"\bstarts [^`]*\bat `[^`]*`[^`]*`$")  # "… starts the accumulator at `W`; it must start at `R`"
_STARTS = [b"0", b"1", b'""', b"''", b"[]", b"{}", b"()", b"None"]  # what an accumulator starts at
_ONE = re.compile(rb" [-+] 1\b(?!\.)")  # a bound's " + 1" or " - 1"
_BOUND_END = re.compile(rb"(?:\b[A-Za-z_]\w*|[)\]])(?=[)\]:,])")  # an operand (not a number) before ) ] : or ,
_START_VALUE = re.compile(  # an accumulator's start: a literal (not an index, a call's parentheses, a name's digits)
    rb"(?<![\w\])])(?:\[[^\[\]]*\]|\(\))|\{\}|\"[^\"]*\"|'[^']*'|(?<![\w.])-?\d+(?![\w.])|\bNone\b")
_WHOLE_NUMBER = re.compile(rb"(?<![\w.])\d+(?![\w.])")
_FIRST_BOUND = re.compile(rb"\brange\(((?:0|1), )|\[((?:0|1)):")  # a start that may go: range(1, n), [1:n]
_PIECE = re.compile(rb"\d+|[A-Za-z_]\w*|\*\*|//=?|[-+*/%]=|[<>=!]=|[-+*/%<>]|\"[^\"]*\"|'[^']*'")
_OPERATORS = [{b"+", b"-", b"*", b"/", b"//", b"%", b"**"}, {b"<", b"<=", b">", b">=", b"==", b"!="},
              {b"+=", b"-=", b"*=", b"/=", b"//=", b"%="}]
_KEYWORDS = {k.encode("ascii") for k in keyword.kwlist}


def finding_rights(wrong: bytes, before: bytes, names: set[bytes], numbers: set[bytes]) -> set[bytes] | None:
    """What a finding may say the code ``wrong`` should be, from its words ``before`` its
    second span; None: anything but ``wrong``. "… wrong order: `W` should be `R`": R is W with
    the arguments of one of its calls in another order. "… off by one: `W` should be `R`": W
    with one bound moved by one (`_off_by_one`). "starts the accumulator at `W`; it must start
    at `R`": W with its start value (its last literal) written as another (0, 1, "", [] …).
    "uses `W` where … `R`", "compares with `W` …": R is W with one piece written as another of
    its kind (a name of the files' code, an operator of the same family, a number, a string)."""
    if _ORDER.search(before):
        return _reordered_calls(wrong) or None
    if _OFF_BY_ONE.search(before):
        return _off_by_one(wrong) or None
    if _STARTS_AT.search(before):
        values = list(_START_VALUE.finditer(wrong))  # the start it names: its last value
        m = values[-1] if values else None
        return {wrong[:m.start()] + start + wrong[m.end():] for start in _STARTS if start != m.group()} if m else None
    if not _ONE_PIECE.search(before):
        return None
    rights = set()
    for m in _PIECE.finditer(wrong):
        piece = m.group()
        if piece[:1].isdigit():
            others = numbers
        elif piece[:1] in (b'"', b"'"):
            others = {piece[:1] * 2, piece[:1] + b" " + piece[:1]}
        elif piece[:1].isalpha() or piece[:1] == b"_":
            others = set() if piece in _KEYWORDS else names - _KEYWORDS
        else:
            others = next((family for family in _OPERATORS if piece in family), set())
        rights.update(wrong[:m.start()] + other + wrong[m.end():] for other in others if other != piece)
    return rights or None


def _off_by_one(span: bytes) -> set[bytes]:
    """``span`` with one bound moved by one: a whole number one more or less (not below 0), a
    " + 1" or " - 1" taken off, one put after an operand inside brackets (before its ``)``,
    ``]``, ``:`` or ``,``), or a range's or slice's start of 0 or 1 dropped (``range(1, n)`` to
    ``range(n)``, ``[1:n]`` to ``[:n]``)."""
    made = set()
    for m in _WHOLE_NUMBER.finditer(span):
        n = int(m.group())
        low = 1 if span[:m.start()].endswith((b"+ ", b"- ")) else 0  # "n - 1" may become "n", not "n - 0"
        made.update(span[:m.start()] + str(k).encode("ascii") + span[m.end():] for k in (n - 1, n + 1) if k >= low)
    made.update(span[:m.start()] + span[m.end():] for m in _ONE.finditer(span))
    for m in _BOUND_END.finditer(span):
        inside = _innermost_bracket(span[:m.end()])
        if inside is not None and not inside.endswith(b"len("):  # a bound, not what len() measures
            made.update(span[:m.end()] + one + span[m.end():] for one in (b" + 1", b" - 1"))
    made.update(span[:m.start(m.lastindex)] + span[m.end(m.lastindex):] for m in _FIRST_BOUND.finditer(span))
    made.discard(span)
    return made


def _innermost_bracket(text: bytes) -> bytes | None:
    """``text`` up to and with the innermost bracket it leaves open (None: it leaves none)."""
    opened: list[int] = []
    for i, c in enumerate(text):
        if c in b"([":
            opened.append(i)
        elif c in b")]" and opened:
            opened.pop()
    return text[:opened[-1] + 1] if opened else None


def _reordered_calls(span: bytes) -> set[bytes]:
    """``span`` (one line of code) with the positional arguments of one of its calls in another order."""
    text = span.decode("utf-8", "replace").strip()
    for source, opened in ((text, 0), (text.rstrip(":") + ":\n    pass", 0), ("(" + text + ")", 1)):
        try:  # an expression or a statement (a block's first line too: `if f(a, b):`)
            tree = ast.parse(source)
            break
        except SyntaxError:
            continue
    else:
        return set()
    shift = span.find(text.encode("utf-8")) - opened  # from the source's offsets to the code's
    made = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or len(call.args) < 2 or call.keywords or call.lineno != 1 \
                or any(isinstance(a, ast.Starred) or a.end_lineno != 1 for a in call.args):
            continue
        spans = [(a.col_offset + shift, a.end_col_offset + shift) for a in call.args]  # UTF-8 offsets
        pieces = [span[a:b] for a, b in spans]
        for order in itertools.permutations(pieces):
            if list(order) == pieces:
                continue
            out, last = [], 0
            for (a, b), piece in zip(spans, order):
                out += [span[last:a], piece]
                last = b
            made.add(b"".join(out) + span[last:])
    return made


@lru_cache(maxsize=256)
def _reorderable_spans(text: bytes) -> frozenset[bytes]:
    """The spans of a line of code, whole pieces of it, that have a call whose arguments can be
    put in another order (`_reordered_calls`): what a "wrong order" finding may quote."""
    starts = [m.start() for m in _PIECE.finditer(text)]
    ends = [j for j in range(1, len(text) + 1) if not text[j - 1:j].isspace()
            and not (j < len(text) and _word_byte(text[j - 1:j]) and _word_byte(text[j:j + 1]))]
    return frozenset(text[i:j] for i in starts for j in ends if j > i and _reordered_calls(text[i:j]))


def lines_by_number(files: Iterable[tuple[str, str]]) -> dict[int, list[bytes]]:
    """Line N of each file (as the prompt numbers them), by N."""
    by_number: dict[int, list[bytes]] = {}
    for _, text in files:
        for n, line in enumerate(numbered_lines(text), 1):
            by_number.setdefault(n, []).append(line.encode("utf-8"))
    return by_number


def finding_changes(thought: bytes, by_number: dict[int, list[bytes]]) -> set[bytes]:
    """The code the thinking's findings ("Line K … `W` … `R`", one a line) say line K should
    be: its code (with or without its comment, without the indent) with one W written R."""
    made: set[bytes] = set()
    for line in thought.split(b"\n"):
        m = _FINDING.match(line)
        if m:
            for text in by_number.get(int(m.group(1)), []):
                for code in _codes(text):
                    made |= _with_one_replaced(code, m.group(2), m.group(3))
    return made


_STATED = re.compile(_FROM_WORDS + r" `([^`\n]+)`" + _TO_WORDS + r"`([^`\n]+)`")


def stated_changes(text: str) -> list[tuple[str, str]]:
    """The (X, Y) of each change ``text`` states whole: "from `X` to `Y`", "Change `X` to `Y`",
    "把第 K 行 `X` 改为 `Y`"."""
    return _STATED.findall(text)


def _with_one_replaced(text: bytes, old: bytes, new: bytes) -> set[bytes]:
    """``text`` with one of its ``old`` written ``new``, each way it can be (none: no ``old``)."""
    made, i = set(), text.find(old)
    while i >= 0:
        made.add(text[:i] + new + text[i + len(old):])
        i = text.find(old, i + 1)
    made.discard(text)
    return made


class _AllOf:
    def __init__(self, rules: tuple[LineRule, ...]):
        self.rules = rules

    def __call__(self, line: bytes, complete: bool) -> bool:
        return all(rule(line, complete) for rule in self.rules)

    def wrote(self, line: bytes) -> None:
        for rule in self.rules:
            if hasattr(rule, "wrote"):
                rule.wrote(line)

    def observe(self, line: bytes, logits, pick: int, token_bytes) -> None:
        for rule in self.rules:
            if hasattr(rule, "observe"):
                rule.observe(line, logits, pick, token_bytes)

    @property
    def focus(self) -> "ReadingFocus | None":
        return next((rule for rule in self.rules if isinstance(rule, ReadingFocus)), None)


def all_of(*rules: LineRule) -> LineRule:
    """A line rule that holds where each of ``rules`` does (and tells each the lines written)."""
    return _AllOf(rules)


class ReadingFocus:
    """The rule of a reply whose tests fail now (``Quotes.failing``: the functions the failure
    reaches). In the thinking, once it reads the files in the numbered form, the reading
    concludes (writes any other line, or closes) only right after a line of one of those
    functions, and reads no line past the last of them; everywhere, a span right after
    "function" (method, 函数, 方法) names one of them. So a small model whose reading would stop
    at a line that only looks wrong, in a function whose tests pass, reads on to the one the
    failure is in; which line there it finds, and what it says of it, stay its own. With
    several files in context their line numbers are taken together (line N of any of them);
    where a failing function's name is not ASCII (inline code is read as ASCII names), the
    names after "function" are left free.

    It also watches the reading (``observe``, from the engine's constraint): after each line of
    those functions, how likely the model was to conclude there rather than read on. Where it
    read to their last line and would still read on (the rule makes it conclude there), the
    line of their code (not a ``def`` or docstring line) it leaned furthest towards concluding
    after is ``look_back`` (a reply decoded by `app.held_reply` then concludes there instead);
    ``conclude_at`` holds the reading to conclude right after that line."""

    def __init__(self, files: Iterable[tuple[str, str]], failing: Iterable[str], *, thinking: bool,
                 conclude_at: int | None = None):
        failing = set(failing)
        reached = [f for f in functions(files) if f.name in failing]
        self.lines = {n for f in reached for n in range(f.first, f.last + 1)}
        self.code = {n for f in reached for n in range(f.code or f.first, f.last + 1)}  # after the docstrings
        self.end = max(self.lines, default=0)
        ascii_only = all(f.name.isascii() for f in reached)
        self.names = {f.name.encode("ascii") for f in reached} if ascii_only else None
        self.thinking = thinking  # in the thinking now
        self.last: int | None = None  # the numbered line the thinking read last
        self.conclude_at = conclude_at
        self.written = 0  # lines written (ended) so far
        self.read_at: dict[int, int] = {}  # numbered line -> how many lines were written with it
        self.leaning: dict[int, float] = {}  # line of the focus -> how likely the model was to conclude after it
        self.concluded = False  # the reading went on to another line (or the thinking closed)
        self.chose_to_conclude = False  # the model's own pick concluded it
        self.look_back: tuple[int, int] | None = None  # (lines written, line): where it would rather have concluded

    def wrote(self, line: bytes) -> None:
        self.written += 1
        m = NUMBERED.match(line)
        if m and self.thinking:
            self.last = int(m.group(1))
            self.read_at[self.last] = self.written
        elif self.last is not None and self.thinking:
            self.concluded = True
        tags = _THINK_TAGS.findall(line)
        if tags:
            self.thinking = tags[-1] == THINK
            self.concluded = self.concluded or not self.thinking

    @property
    def reading(self) -> bool:
        """Inside the focus, the reading not yet concluded: where `look_back` may still point."""
        return self.thinking and self.last in self.lines and not self.concluded and self.look_back is None

    def observe(self, line: bytes, logits, pick: int, token_bytes) -> None:
        """The model's logits before a token (``pick``: its own choice, before the rules), with
        ``line`` the text written since the last newline."""
        if line or not self.reading or self.conclude_at is not None:
            return
        on, on_set = _reads_on(token_bytes)
        self.leaning[self.last] = 1.0 - float(logits.float().softmax(-1)[on].sum())
        if pick not in on_set:
            self.chose_to_conclude = True
        elif self.last == self.end and not self.chose_to_conclude:  # made to conclude here
            best = max(sorted(self.leaning.keys() & self.code), key=lambda n: self.leaning[n], default=self.end)
            if best != self.end:
                self.look_back = (self.read_at[best], best)

    def __call__(self, line: bytes, complete: bool) -> bool:
        if self.names is not None and not _functions_named(line, complete, self.names):
            return False
        if not self.thinking or self.last is None:
            return True
        m = NUMBERED.match(line)
        end = self.end
        if self.conclude_at is not None:  # it reads on to that line, and concludes right after it
            end = min(end, self.conclude_at) if self.last < self.conclude_at else 0
        if m:
            return int(m.group(1)) <= end
        start = _DIGITS_SO_FAR.fullmatch(line)
        if start:  # on its way to a numbered line: one up to the last function's end
            digits = start.group(1).decode("ascii")
            return not complete and (not line or end > 0 and (not digits or any(str(n).startswith(digits)
                                                                                 for n in range(1, end + 1))))
        return self.last in self.lines


_READS_ON: dict[int, tuple[object, list[int], set[int]]] = {}  # by the vocabulary's id: (it, ids, set(ids))


def _starts_numbered(token: bytes) -> bool:
    """A token that begins a numbered line (`` 7 |``: spaces, digits, " |")."""
    head = token.split(b"\n")[0]
    return bool(head) and (_DIGITS_SO_FAR.fullmatch(head) is not None or NUMBERED.match(head) is not None)


def _reads_on(token_bytes) -> tuple[list[int], set[int]]:
    """The vocabulary's tokens that begin a numbered line: reading on (as a list and a set)."""
    hit = _READS_ON.get(id(token_bytes))
    if hit is None or hit[0] is not token_bytes:
        ids = [i for i, token in enumerate(token_bytes) if _starts_numbered(token)]
        if len(_READS_ON) >= 4:
            _READS_ON.clear()
        hit = _READS_ON[id(token_bytes)] = (token_bytes, ids, set(ids))
    return hit[1], hit[2]


@dataclass(frozen=True)
class Quotes:
    """What a reply's lines are held to (``exact_quotes``): the files its prompt numbers, and
    ``failing``, the functions a failing test run before it reaches (empty: none ran, or it
    reached none), on which its reading is focused (`ReadingFocus`); and ``failed``, the changes
    plans before it stated that were applied and failed the tests, which its finding does not
    name again (`ChangeFollowsFinding`)."""

    files: tuple[tuple[str, str], ...]
    failing: frozenset[str] = frozenset()
    failed: frozenset[tuple[str, str]] = frozenset()  # changes (X, Y: code) tried, that failed the tests


def line_rules(quotes: Quotes, *, thinking: bool, names: bool, conclude_at: int | None = None) -> LineRule:
    """The rules of ``exact_quotes`` for one reply: numbered lines, the answer's code, a stated
    change that makes the change its finding names, with
    ``names`` (``known_names``) the names in inline code, and the failing tests' focus (its
    reading concluding right after line ``conclude_at`` where given; the rules' ``focus``).
    ``thinking``: the prompt opened the thinking (the reply starts inside it)."""
    rules = [numbered_line_rule(quotes.files), AnswerCode(quotes.files, thinking=thinking),
             ChangeFollowsFinding(quotes.files, thinking=thinking, failed=quotes.failed), DocstringQuote(quotes.files)]
    if names:
        rules.append(inline_names_rule(quotes.files))
    focus = ReadingFocus(quotes.files, quotes.failing, thinking=thinking, conclude_at=conclude_at) \
        if quotes.failing else None
    if focus is not None and focus.lines:
        rules.append(focus)
    return all_of(*rules)
