"""``Workspace(root)``: propose the coder's edits, apply them atomically, undo them.

Typical use (the TUI does this after each coder turn)::

    ws = Workspace(root)
    changes = ws.propose(coder_reply)        # writes nothing
    accepted = changes.select(files={"a.py"}, hunks={"b.py": {0}})  # or the diff preview
    ws.apply(accepted)                       # all files or none
    ws.undo()                                # exact previous bytes, even after a restart
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import DuetError, UsageError
from app.workspace import safety
from app.workspace.changeset import ChangeSet, Edit, Rejection
from app.workspace.context import FileContext
from app.workspace.edit_blocks import Block, Match, NoMatch, locate, parse
from app.workspace.history import History, Write, make_parents, remove_empty_dirs, write_all
from app.workspace.syntax import syntax_error
from app.workspace.textfile import TextFile


class ApplyError(DuetError):
    """Nothing was written; the message names the file and why."""


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: the files written, notes for the user, the auto-commit (if any)."""

    paths: tuple[str, ...]
    notes: tuple[str, ...] = ()
    commit: str | None = None


@dataclass
class _Pending:
    before: bytes | None
    file: TextFile | None
    blocks: list[Block] = field(default_factory=list)
    earlier: int = 0  # how many of ``blocks`` an earlier round's edit (``on_top_of``) brought
    start: bytes | None = None  # the file as this round found it (``file`` changes in place)


class Workspace:
    """The project folder the coder may edit, and the rules that guard it."""

    def __init__(self, root: str | Path, *, max_file_bytes: int = safety.DEFAULT_MAX_BYTES,
                 auto_commit: bool = False, check_syntax: bool = False):
        path = Path(root).expanduser()
        if not path.is_dir():
            raise UsageError(f"{root}: workspace root is not a folder")
        self.root = Path(os.path.realpath(path))
        self.max_file_bytes = max_file_bytes
        self.auto_commit = auto_commit
        # an edit that leaves a file that parsed unparsable is rejected (app.workspace.syntax): off
        # for a bare Workspace, on as Duet runs it ([workspace] check_syntax, on by default)
        self.check_syntax = check_syntax
        self.context = FileContext(self.root, max_file_bytes=max_file_bytes)  # files the coder sees
        self.history = History(self.root)
        self.warning: str | None = None  # for the user: an interrupted apply that could not be rolled back
        try:
            self.recovered = self.history.recover()  # an apply cut short by a crash is rolled back
        except (safety.Unsafe, OSError, DuetError) as exc:
            self.recovered = False
            self.warning = f"could not roll back an interrupted apply: {exc}"

    @classmethod
    def from_config(cls, root: str | Path, config) -> "Workspace":
        """A workspace with ``config.workspace``'s limits, auto-commit and syntax check settings."""
        ws = config.workspace
        return cls(root, max_file_bytes=ws.max_file_bytes, auto_commit=ws.auto_commit, check_syntax=ws.check_syntax)

    # ---- propose ------------------------------------------------------------
    def propose(self, coder_output: str, *, on_top_of: ChangeSet | None = None) -> ChangeSet:
        """Parse the coder's blocks into edits and rejections; writes nothing.

        With ``on_top_of`` (an earlier round's ChangeSet), the new blocks apply
        to that round's proposed contents and the result merges both rounds'
        edits; only the new round's rejections are kept.
        """
        blocks, problems = parse(coder_output, is_file=self._is_file)
        rejected = [Rejection(p.path, p.reason) for p in problems]
        pending: dict[str, _Pending] = {}
        for e in (on_top_of.edits if on_top_of else ()):
            pending[e.path] = _Pending(e.before, TextFile.decode(e.after, self.max_file_bytes), list(e.blocks),
                                       len(e.blocks), e.after)
        for block in blocks:
            try:
                named = self._by_base_name(block.path)
                if named != block.path:
                    block = dataclasses.replace(block, path=named)
                target = safety.resolve(self.root, block.path)
                state = pending.get(target.rel)
                if state is None:
                    before = safety.read_existing(target, self.max_file_bytes)
                    file = None if before is None else TextFile.decode(before, self.max_file_bytes)
                    state = pending[target.rel] = _Pending(before, file, start=before)
                state.file = _apply_block(state.file, block)
                state.blocks.append(block)
            except (safety.Unsafe, NoMatch) as exc:
                rejected.append(Rejection(block.path, f"{exc}", block))
        edits = []
        for rel, state in pending.items():
            if state.file is None:
                continue
            try:
                after = state.file.encode(self.max_file_bytes)
            except safety.Unsafe as exc:
                rejected.append(Rejection(rel, str(exc)))
                continue
            if self._breaks_syntax(rel, state, after):
                state = self._parsing_blocks(rel, state, rejected)
                after = state.file.encode(self.max_file_bytes)
            if after != state.before:
                edits.append(Edit.make(rel, state.before, after, state.blocks))
        return ChangeSet(tuple(edits), tuple(rejected))

    def _breaks_syntax(self, rel: str, state: _Pending, after: bytes) -> bool:
        """This round's blocks leave ``rel``, which parsed as the round found it, unparsable (a
        new file, one that did not parse, or a file in a language without a parser: False)."""
        base = state.start
        if not self.check_syntax or base is None or after == base:
            return False
        return syntax_error(rel, after) is not None and syntax_error(rel, base) is None

    def _parsing_blocks(self, rel: str, state: _Pending, rejected: list[Rejection]) -> _Pending:
        """Replay this round's blocks for ``rel`` in order from the file as the round found it,
        leaving out each block after which it no longer parses (rejected with the parser's line
        and message, for the coder to send again fixed)."""
        file, kept = TextFile.decode(state.start, self.max_file_bytes), state.blocks[:state.earlier]
        for block in state.blocks[state.earlier:]:
            try:
                candidate = _apply_block(file.copy(), block)
                error = syntax_error(rel, candidate.encode(self.max_file_bytes))
            except (safety.Unsafe, NoMatch) as exc:  # it built on a block left out
                rejected.append(Rejection(rel, f"{exc}", block))
                continue
            if error is not None:
                rejected.append(Rejection(rel, f"this block leaves {rel} unparsable, {error}; it was not applied",
                                          block))
                continue
            file, kept = candidate, kept + [block]
        return _Pending(state.before, file, kept, state.earlier, state.start)

    # ---- apply / undo -------------------------------------------------------
    def apply(self, changeset: ChangeSet, *, group: str | None = None) -> Applied:
        """Write every edit in ``changeset`` atomically: all files or none.

        Applies sharing a ``group`` (the rounds of one request) are undone together.

        A file that changed on disk since it was proposed is re-matched from the
        coder's blocks; if that fails (or only some hunks were accepted), nothing
        is written and ApplyError says which file. Pass ``changeset.select(...)``
        to apply only what the user accepted.
        """
        if not changeset.edits:
            return Applied(())
        writes: list[Write] = []
        notes: list[str] = []
        seen: set[object] = set()
        for e in changeset.edits:
            try:
                target = safety.resolve(self.root, e.path)
                current = safety.read_existing(target, self.max_file_bytes)
                safety.decode_text(e.after, self.max_file_bytes)  # an Edit made by hand is checked too
            except safety.Unsafe as exc:
                raise ApplyError(f"{e.path}: {exc}") from None
            key = _identity(target.real) or target.rel  # one file under two spellings (case, links)
            if key in seen:
                raise ApplyError(f"{e.path}: edited twice in one change set")
            seen.add(key)
            after = e.after
            if current != e.before:
                after = self._rematch(e, current)
                notes.append(f"{e.path} changed on disk since the edit was proposed; the edit was re-matched")
            writes.append(Write(target.rel, target.real, current, after))
        made: list[str] = []
        folder = None
        try:
            for w in writes:
                if w.before is None:
                    made += make_parents(self.root, w.real)
            folder = self.history.record(writes, made, changeset.summary(), group=group)
            write_all(writes)
        except OSError as exc:
            if folder is not None:
                self.history.drop(folder)
            remove_empty_dirs(self.root, made)
            raise ApplyError(f"nothing was written: {exc}") from None
        try:
            self.history.mark_applied(folder)
        except OSError as exc:  # the files are written; recovery only touches files still as written
            notes.append(f"undo history may be incomplete: {exc}")
        commit = None
        if self.auto_commit:
            commit, note = self._commit(writes, changeset)
            notes += [note] if note else []
        return Applied(tuple(w.rel for w in writes), tuple(notes), commit)

    def undo(self, *, force: bool = False) -> list[str]:
        """Put back the files of the last apply exactly (created files removed); an apply
        made in a group goes back with every apply of its group (all rounds of one request).

        Repeatable: each call undoes one earlier apply (or group). Refuses (HistoryError)
        when a file was changed since, unless ``force``.
        """
        from app.workspace.history import HistoryError

        last = self.history.last()
        if last is None:
            raise HistoryError("nothing to undo")
        group = last[1].get("group")
        paths: list[str] = []
        first = True
        while last is not None and (first or (group is not None and last[1].get("group") == group)):
            folder, info = last
            try:
                writes, dirs = self.history.undo_writes(folder, info, conflicts="overwrite" if force else "raise")
            except safety.Unsafe as exc:
                raise HistoryError(f"cannot undo: {exc}") from None
            write_all(writes)
            remove_empty_dirs(self.root, dirs)
            self.history.drop(folder)
            paths += [f["path"] for f in info["files"] if f["path"] not in paths]
            first = False
            last = self.history.last()
        return paths

    def review(self):
        """Material for ``/review``: the files in context, else the uncommitted git diff."""
        from app.workspace.review import review_material

        return review_material(self.context)

    @property
    def can_undo(self) -> bool:
        return self.history.depth() > 0

    # ---- helpers --------------------------------------------------------------
    def _is_file(self, path: str) -> bool:
        """Whether ``path`` names a file in the project that may be edited (a path line with
        spaces in it names a file only then)."""
        try:
            return safety.resolve(self.root, path).real.is_file()
        except safety.Unsafe:
            return False

    def _by_base_name(self, path: str) -> str:
        """A bare file name that is not at the root but names exactly one file in context is
        that file; several such files are refused, naming them."""
        if not path or "/" in path or "\\" in path or os.path.lexists(self.root / path):
            return path
        matches = [f for f in self.context.files if f.rsplit("/", 1)[-1] == path]
        if len(matches) > 1:
            raise NoMatch(f"{path} could be any of {len(matches)} files in context ({', '.join(matches)}); "
                          "give the path from the project root")
        return matches[0] if matches else path

    def _rematch(self, edit: Edit, current: bytes | None) -> bytes:
        stale = f"{edit.path} changed on disk since the edit was proposed"
        if edit.partial or not edit.blocks:
            raise ApplyError(f"{stale}; propose it again")
        try:
            file = None if current is None else TextFile.decode(current, self.max_file_bytes)
            for block in edit.blocks:
                file = _apply_block(file, block)
            return file.encode(self.max_file_bytes)
        except (safety.Unsafe, NoMatch) as exc:
            raise ApplyError(f"{stale} and the edit no longer applies: {str(exc).splitlines()[0]}") from None

    def _commit(self, writes: list[Write], changeset: ChangeSet) -> tuple[str | None, str | None]:
        """Commit just the written paths; returns (sha, note for the user)."""
        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", "-C", str(self.root), *args], capture_output=True, text=True,
                                  timeout=30, check=False)

        try:
            if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
                return None, None
            paths = [w.rel for w in writes]
            parts = []
            for w in writes:
                e = changeset.edit(w.rel)
                verb = "create" if w.before is None else "edit"
                parts.append(f"{verb} {w.rel}" + (f" (+{e.added} -{e.removed})" if e else ""))
            message = "duet: " + ", ".join(parts)
            done = git("add", "--", *paths)
            if done.returncode == 0:
                done = git("commit", "-q", "-m", message, "--", *paths)
            if done.returncode != 0:
                return None, f"auto-commit failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
            return git("rev-parse", "HEAD").stdout.strip(), None
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"auto-commit failed: {exc}"


def _identity(real: Path) -> tuple[int, int] | None:
    try:
        st = real.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _apply_block(file: TextFile | None, block: Block) -> TextFile:
    """``file`` with ``block`` applied (``None``: the file does not exist yet)."""
    creating = not any(line.strip() for line in block.search)
    if creating:
        if file is None:
            return TextFile.new(block.replace)
        if not file.bodies:
            file.replace(Match(0, 0, block.replace))
            return file
        raise NoMatch("SEARCH is empty but the file already exists; an empty SEARCH only creates "
                      "new files: quote the lines to change")
    if file is None:
        raise NoMatch("file does not exist; to create it, use an empty SEARCH section")
    file.replace(locate(file.bodies, block))
    return file
