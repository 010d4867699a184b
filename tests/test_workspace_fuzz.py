"""Random and adversarial coder output against a real temp tree.

Whatever the coder writes: proposing changes nothing; applying changes only
files inside the root, each either untouched or exactly its proposed bytes
(never half-written, no temp files left); undo restores every byte, mode and
folder; nothing outside the root or under .git/ ever changes.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.workspace import ApplyError, Workspace
from app.workspace.history import TEMP_PREFIX

LIMIT = 4096
FILES = {
    "a.py": b"def f():\n    return 1\n\n\ndef g():\n    return 2\n",
    "crlf.txt": b"alpha\r\nbeta\r\ngamma",
    "sub/b.md": b"# title\n\ntext here\ntext here\n",
    "bom.txt": b"\xef\xbb\xbfhello\n",
    "bin.dat": b"\x00\x01binary\n",
    "latin.txt": "café\n".encode("latin-1"),
    "big.txt": b"q\n" * (LIMIT // 2 + 10),
    "run.sh": b"#!/bin/sh\necho hi\n",
}
SNIPPETS = ["def f():\n    return 1\n", "    return 2\n", "beta\n", "gamma\n", "text here\n", "hello\n",
            "binary\n", "q\n", "echo hi\n", "  def g():\n      return 2\n", "alpha\nbeta\n", "café\n", ""]
PATHS = ["a.py", "./a.py", "crlf.txt", "sub/b.md", "sub\\b.md", "bom.txt", "bin.dat", "latin.txt", "big.txt",
         "run.sh", "new.py", "deep/er/new.txt", "sub/new.md", "`a.py`", "**sub/b.md**",
         "../escape.txt", "sub/../../escape.txt", "/tmp/abs.txt", "~/home.txt", "C:/drive.txt", "c:\\win.txt",
         ".git/config", ".git/hooks/x", "sub/.Git/x", "out/secret.txt", "out/new.txt", "secret_link.txt",
         "inner_link.py", "gitlink/config", "sub", "a.py/inner.txt", "CON", "nul.py", "\x00evil", "dir/./x.py"]

pieces = st.sampled_from(list("ab \t\n=<>`\\.#\r\x00é中") + ["<<<<<<< SEARCH\n", "=======\n",
                                                              ">>>>>>> REPLACE\n", "```\n", "a.py\n"])
texts = st.lists(pieces, max_size=40).map("".join)
GOOD = st.sampled_from(["a.py", "crlf.txt", "sub/b.md", "bom.txt", "run.sh", "new.py", "deep/er/new.txt",
                         "inner_link.py"])
paths = st.one_of(GOOD, GOOD, st.sampled_from(PATHS), st.text(max_size=20))
searches = st.one_of(st.sampled_from(SNIPPETS), st.sampled_from(SNIPPETS), texts)
FITTING = st.sampled_from([("a.py", "    return 2\n"), ("a.py", "  def g():\n      return 2\n"),
                           ("crlf.txt", "beta\n"), ("crlf.txt", "gamma\n"), ("sub/b.md", "# title\n"),
                           ("bom.txt", "hello\n"), ("run.sh", "echo hi\n"), ("new.py", ""),
                           ("deep/er/new.txt", ""), ("inner_link.py", "def f():\n    return 1\n")])
replaces = st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=30), texts)


@st.composite
def coder_outputs(draw) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            parts.append(draw(texts))
        if draw(st.booleans()):
            path, search = draw(FITTING)  # a block that applies, unless an earlier one changed the file
        else:
            path, search = draw(paths), draw(searches)
        replace = draw(replaces)
        fence = draw(st.booleans())
        block = (f"{path}\n" + ("```\n" if fence else "") + "<<<<<<< SEARCH\n" + search
                 + ("" if search.endswith("\n") or not search else "\n") + "=======\n" + replace
                 + ("" if replace.endswith("\n") or not replace else "\n") + ">>>>>>> REPLACE\n"
                 + ("```\n" if fence else ""))
        parts.append(block)
    if draw(st.booleans()):
        parts.append(draw(texts))
    return "\n".join(parts)


def make_tree(base: Path) -> Path:
    root = base / "root"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "run.sh").chmod(0o750)
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n")
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_text("secret\n")
    (root / "out").symlink_to(base / "outside", target_is_directory=True)
    (root / "secret_link.txt").symlink_to(base / "outside" / "secret.txt")
    (root / "gitlink").symlink_to(root / ".git", target_is_directory=True)
    (root / "inner_link.py").symlink_to(root / "a.py")
    return root


def snapshot(base: Path) -> dict[str, object]:
    """Every entry under ``base``: file bytes and mode, link targets, folders."""
    seen: dict[str, object] = {}
    for folder, dirs, names in os.walk(base):
        for name in dirs + names:
            path = Path(folder) / name
            rel = path.relative_to(base).as_posix()
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return seen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(output=coder_outputs(), take_first_hunks=st.booleans())
def test_adversarial_coder_output_never_escapes_the_root_or_half_writes_and_undo_is_exact(output, take_first_hunks):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = make_tree(base)
        original = snapshot(base)
        ws = Workspace(root, max_file_bytes=LIMIT)
        changes = ws.propose(output)
        assert snapshot(base) == original  # proposing writes nothing

        for edit in changes.edits:
            real = Path(os.path.realpath(root / edit.path))
            assert root.resolve() in real.parents
            assert ".git" not in [p.lower() for p in Path(edit.path).parts]
            assert len(edit.after) <= LIMIT
        if take_first_hunks:
            changes = changes.select(hunks={e.path: {0} for e in changes.edits})

        event(f"{len(changes.edits)} edits, {len(changes.rejected)} rejected")
        try:
            ws.apply(changes)
        except ApplyError:
            event("apply refused")
            assert snapshot(base) == original
            return
        after = snapshot(base)
        expected = {e.path: e.after for e in changes.edits}
        for rel, entry in after.items():
            assert TEMP_PREFIX not in rel
            if not rel.startswith("root/") or rel.startswith("root/.git/"):
                assert entry == original.get(rel), rel
                continue
            inner = rel[len("root/"):]
            if entry[0] == "file" and inner in expected:
                assert entry[1] == expected[inner], inner
                if rel in original:
                    assert entry[2] == original[rel][2], inner  # mode kept
            elif entry[0] == "dir" and rel not in original:
                assert any(p.startswith(inner + "/") for p in expected), inner  # a folder for a new file
            else:
                assert entry == original.get(rel), rel

        if changes.edits:
            ws.undo()
        assert snapshot(base) == original
