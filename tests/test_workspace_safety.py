"""Every safety rule, one test each, through propose/apply on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.workspace import ApplyError, Workspace
from app.workspace import safety


def create(path: str, text: str = "hello\n") -> str:
    return f"{path}\n<<<<<<< SEARCH\n=======\n{text}>>>>>>> REPLACE\n"


def edit(path: str, old: str, new: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n"


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "a.py").write_text("x = 1\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    return root


@pytest.mark.parametrize("path, why", [
    ("../escape.py", ".."),
    ("sub/../../escape.py", ".."),
    ("/etc/passwd", "absolute"),
    ("\\windows\\x.py", "absolute"),
    ("~/x.py", "~"),
    ("C:/x.py", "drive"),
    ("c:x.py", "drive"),
    (".git/config", ".git"),
    ("sub/.GIT/hooks/pre-commit", ".git"),
    ("a\x00b.py", "control"),
])
def test_paths_that_leave_the_root_or_enter_git_are_rejected_with_a_reason(tree, path, why):
    changes = Workspace(tree).propose(create(path))
    assert not changes.edits
    assert len(changes.rejected) == 1
    assert why.lower() in changes.rejected[0].reason.lower()


def test_a_symlink_leaving_the_root_is_not_written_through(tree):
    (tree / "link").symlink_to(tree.parent / "outside", target_is_directory=True)
    (tree / "file_link.txt").symlink_to(tree.parent / "outside" / "secret.txt")
    changes = Workspace(tree).propose(create("link/new.py") + edit("file_link.txt", "secret", "pwned"))
    assert not changes.edits
    assert all("symlink" in r.reason for r in changes.rejected)
    assert (tree.parent / "outside" / "secret.txt").read_text() == "secret\n"
    assert not (tree.parent / "outside" / "new.py").exists()


def test_a_symlink_inside_the_root_edits_its_target_and_stays_a_link(tree):
    (tree / "alias.py").symlink_to(tree / "a.py")
    ws = Workspace(tree)
    changes = ws.propose(edit("alias.py", "x = 1", "x = 2"))
    assert [e.path for e in changes.edits] == ["a.py"]
    ws.apply(changes)
    assert (tree / "alias.py").is_symlink()
    assert (tree / "a.py").read_text() == "x = 2\n"


def test_a_symlink_into_git_is_rejected(tree):
    (tree / "cfg").symlink_to(tree / ".git" / "config")
    changes = Workspace(tree).propose(edit("cfg", "[core]", "[evil]"))
    assert not changes.edits and ".git" in changes.rejected[0].reason


def test_binary_files_are_not_edited(tree):
    (tree / "img.png").write_bytes(b"\x89PNG\x00\x01x = 1\n")
    changes = Workspace(tree).propose(edit("img.png", "x = 1", "x = 2"))
    assert not changes.edits and "binary" in changes.rejected[0].reason


def test_non_utf8_files_are_not_edited(tree):
    (tree / "latin.txt").write_bytes("café = 1\n".encode("latin-1"))
    changes = Workspace(tree).propose(edit("latin.txt", "caf", "x"))
    assert not changes.edits and "UTF-8" in changes.rejected[0].reason


def test_files_over_the_size_limit_are_not_edited(tree):
    (tree / "big.txt").write_text("y\n" * 600)
    changes = Workspace(tree, max_file_bytes=1000).propose(edit("big.txt", "y", "z"))
    assert not changes.edits and "limit" in changes.rejected[0].reason


def test_a_result_over_the_size_limit_is_rejected(tree):
    changes = Workspace(tree, max_file_bytes=100).propose(create("huge.txt", "z" * 200 + "\n"))
    assert not changes.edits and "limit" in changes.rejected[0].reason


def test_a_folder_is_not_a_file_to_edit(tree):
    (tree / "pkg").mkdir()
    changes = Workspace(tree).propose(create("pkg"))
    assert not changes.edits and "folder" in changes.rejected[0].reason


def test_creating_a_file_below_an_existing_file_is_rejected(tree):
    changes = Workspace(tree).propose(create("a.py/inner.py"))
    assert not changes.edits and "not a folder" in changes.rejected[0].reason


def test_apply_rechecks_the_rules_when_a_symlink_appears_after_propose(tree):
    ws = Workspace(tree)
    changes = ws.propose(create("later/new.py"))
    (tree / "later").symlink_to(tree.parent / "outside", target_is_directory=True)
    with pytest.raises(ApplyError, match="symlink"):
        ws.apply(changes)
    assert sorted(os.listdir(tree.parent / "outside")) == ["secret.txt"]


def test_a_symlink_loop_is_rejected(tree):
    (tree / "loop").symlink_to(tree / "loop")
    changes = Workspace(tree).propose(create("loop"))
    assert not changes.edits and "loop" in changes.rejected[0].reason


def test_replacement_text_that_is_not_valid_unicode_is_rejected(tree):
    changes = Workspace(tree).propose(create("s.txt", "bad \udc80 surrogate\n"))
    assert not changes.edits and "Unicode" in changes.rejected[0].reason


@pytest.mark.skipif(os.name == "nt", reason="reserved device names are refused on Windows")
def test_names_reserved_only_on_windows_are_fine_elsewhere(tree):
    assert Workspace(tree).propose(create("aux.py")).paths == ["aux.py"]


def test_clean_relative_normalizes_harmless_spellings():
    assert safety.clean_relative("./src//a.py") == "src/a.py"
    assert safety.clean_relative("src\\pkg\\a.py") == "src/pkg/a.py"
