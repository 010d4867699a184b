"""What the coder proposed: edits (with unified diffs and hunks) and rejections.

A ChangeSet is plain data; nothing here touches the disk. ``select`` picks the
subset the user accepted in the diff preview (whole files or single hunks).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace

from app.workspace.edit_blocks import Block

CONTEXT = 3


@dataclass(frozen=True)
class Hunk:
    """One hunk of an edit's diff: ``header`` (``@@ -a,b +c,d @@``) and ``lines``
    (each starting with ' ', '-' or '+'); ``ops`` are the difflib opcodes it owns."""

    header: str
    lines: tuple[str, ...]
    ops: tuple[tuple[str, int, int, int, int], ...]

    @property
    def text(self) -> str:
        return "\n".join((self.header, *self.lines))

    @property
    def added(self) -> int:
        return sum(1 for line in self.lines if line.startswith("+"))

    @property
    def removed(self) -> int:
        return sum(1 for line in self.lines if line.startswith("-"))


@dataclass(frozen=True)
class Edit:
    """A proposed change to one file.

    ``path`` is relative to the root; ``before`` is the file's bytes when it was
    read (None: the edit creates it); ``after`` the bytes to write. ``blocks``
    are the coder's blocks that produced it (used to re-match if the file
    changes on disk before apply); ``partial`` is set once hunks were dropped.
    """

    path: str
    before: bytes | None
    after: bytes
    blocks: tuple[Block, ...] = ()
    partial: bool = False
    hunks: tuple[Hunk, ...] = field(default=(), compare=False, repr=False)  # computed

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "hunks", make_hunks(self.before, self.after))

    @classmethod
    def make(cls, path: str, before: bytes | None, after: bytes, blocks=(), partial=False) -> "Edit":
        return cls(path, before, after, tuple(blocks), partial)

    @property
    def created(self) -> bool:
        return self.before is None

    @property
    def diff(self) -> str:
        """The unified diff (``--- a/path`` / ``+++ b/path`` and every hunk)."""
        old = "/dev/null" if self.created else f"a/{self.path}"
        head = [f"--- {old}", f"+++ b/{self.path}"]
        return "\n".join(head + [h.text for h in self.hunks]) + "\n"

    @property
    def added(self) -> int:
        return sum(h.added for h in self.hunks)

    @property
    def removed(self) -> int:
        return sum(h.removed for h in self.hunks)

    def keep_hunks(self, indexes: set[int]) -> "Edit | None":
        """This edit with only the hunks at ``indexes`` (None if none is kept)."""
        if not indexes:
            return None
        if indexes >= set(range(len(self.hunks))):
            return self
        if self.created:
            return None if 0 not in indexes else self  # a new file is one hunk
        old = _lines(self.before)
        new = _lines(self.after)
        chosen = {op for i in indexes for op in self.hunks[i].ops}
        out: list[bytes] = []
        for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
            tag, i1, i2, j1, j2 = op
            if tag == "equal" or op not in chosen:
                out.extend(old[i1:i2])
            else:
                out.extend(new[j1:j2])
        return Edit.make(self.path, self.before, b"".join(out), self.blocks, partial=True)


@dataclass(frozen=True)
class Rejection:
    """A block (or path) that was not turned into an edit, and why."""

    path: str
    reason: str
    block: Block | None = None


@dataclass(frozen=True)
class ChangeSet:
    """``edits`` to apply and ``rejected`` blocks, as the coder proposed them."""

    edits: tuple[Edit, ...] = ()
    rejected: tuple[Rejection, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.edits)

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.edits]

    def edit(self, path: str) -> Edit | None:
        return next((e for e in self.edits if e.path == path), None)

    def select(self, files: set[str] | None = None,
               hunks: dict[str, set[int]] | None = None) -> "ChangeSet":
        """The accepted subset: whole edits whose path is in ``files`` plus, per
        path in ``hunks``, only the hunks at those indexes (0-based, in diff order).

        ``select()`` with no arguments accepts nothing; rejections are kept.
        """
        files, hunks = files or set(), hunks or {}
        kept: list[Edit] = []
        for e in self.edits:
            if e.path in files:
                kept.append(e)
            elif e.path in hunks:
                part = e.keep_hunks(set(hunks[e.path]))
                if part is not None:
                    kept.append(part)
        return replace(self, edits=tuple(kept))

    def summary(self) -> str:
        """One line: files changed, lines added/removed, blocks rejected."""
        parts = [f"{len(self.edits)} file{'s' if len(self.edits) != 1 else ''} changed"]
        if self.edits:
            parts.append(f"+{sum(e.added for e in self.edits)} -{sum(e.removed for e in self.edits)}")
        if self.rejected:
            parts.append(f"{len(self.rejected)} block{'s' if len(self.rejected) != 1 else ''} rejected")
        return ", ".join(parts)

    def feedback(self) -> str:
        """The rejections as text the coder can act on (empty if none)."""
        out = []
        for r in self.rejected:
            where = f" (block at line {r.block.line} of your reply)" if r.block else ""
            out.append(f"- {r.path or '<no path>'}{where}: {r.reason}")
        return "\n".join(out)


def _lines(data: bytes | None) -> list[bytes]:
    """Lines with their endings, split on b'\\n' only (not bytes.splitlines' set)."""
    if not data:
        return []
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _show(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace")
    return text[:-1].rstrip("\r") if text.endswith("\n") else text


def make_hunks(before: bytes | None, after: bytes) -> tuple[Hunk, ...]:
    """The edit's hunks, each remembering the opcodes it owns (for ``select``)."""
    old, new = _lines(before), _lines(after)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    hunks = []
    for group in matcher.get_grouped_opcodes(CONTEXT):
        first, last = group[0], group[-1]
        header = "@@ -{} +{} @@".format(_range(first[1], last[2]), _range(first[3], last[4]))
        lines: list[str] = []
        ops = []
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                lines.extend(" " + _show(x) for x in old[i1:i2])
                continue
            ops.append((tag, i1, i2, j1, j2))
            lines.extend("-" + _show(x) for x in old[i1:i2])
            if i2 > i1 and not old[i2 - 1].endswith(b"\n"):
                lines.append("\\ No newline at end of file")
            lines.extend("+" + _show(x) for x in new[j1:j2])
            if j2 > j1 and not new[j2 - 1].endswith(b"\n"):
                lines.append("\\ No newline at end of file")
        hunks.append(Hunk(header, tuple(lines), tuple(ops)))
    return tuple(hunks)


def _range(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"
