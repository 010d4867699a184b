"""apply writes all files or none, keeps bytes it did not mean to change; undo is exact."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from app.workspace import ApplyError, HistoryError, Workspace
from app.workspace.history import TEMP_PREFIX, History, Write, write_all


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


@pytest.fixture
def root(tmp_path) -> Path:
    """The project folder (the data dir is a sibling under tmp_path)."""
    folder = tmp_path / "proj"
    folder.mkdir()
    return folder


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def folders(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def test_apply_writes_the_edits_and_undo_restores_every_byte(root):
    (root / "a.py").write_text("one\ntwo\n")
    before, dirs = snapshot(root), folders(root)
    ws = Workspace(root)
    applied = ws.apply(ws.propose(block("a.py", "two\n", "2\n") + block("pkg/sub/new.py", "", "x = 1\n")))
    assert applied.paths == ("a.py", "pkg/sub/new.py")
    assert (root / "a.py").read_text() == "one\n2\n"
    assert (root / "pkg/sub/new.py").read_text() == "x = 1\n"
    assert ws.undo() == ["a.py", "pkg/sub/new.py"]
    assert snapshot(root) == before
    assert folders(root) == dirs  # created folders are removed too
    assert not ws.can_undo


def test_crlf_line_endings_and_a_missing_final_newline_are_kept(root):
    (root / "w.txt").write_bytes(b"alpha\r\nbeta\r\ngamma")
    ws = Workspace(root)
    ws.apply(ws.propose(block("w.txt", "beta\n", "BETA\nbeta2\n") + block("w.txt", "gamma\n", "GAMMA\n")))
    assert (root / "w.txt").read_bytes() == b"alpha\r\nBETA\r\nbeta2\r\nGAMMA"


def test_untouched_lines_of_a_mixed_line_ending_file_keep_their_bytes(root):
    (root / "m.txt").write_bytes(b"a\r\nb\nc\r\nd\n")
    ws = Workspace(root)
    ws.apply(ws.propose(block("m.txt", "d\n", "D\n")))
    assert (root / "m.txt").read_bytes().startswith(b"a\r\nb\nc\r\n")


def test_a_utf8_bom_and_non_ascii_text_are_kept(root):
    (root / "u.py").write_bytes(b"\xef\xbb\xbf# caf\xc3\xa9\nx = '\xe4\xbd\xa0\xe5\xa5\xbd'\n")
    ws = Workspace(root)
    ws.apply(ws.propose(block("u.py", "x = '你好'\n", "x = '再见'\n")))
    assert (root / "u.py").read_bytes() == "\ufeff# café\nx = '再见'\n".encode("utf-8")


def test_file_permissions_are_kept(root):
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o754)
    ws = Workspace(root)
    ws.apply(ws.propose(block("run.sh", "echo hi\n", "echo bye\n")))
    assert stat.S_IMODE(script.stat().st_mode) == 0o754
    ws.undo()
    assert stat.S_IMODE(script.stat().st_mode) == 0o754


def test_undo_walks_back_several_applies_in_order(root):
    (root / "n.txt").write_text("0\n")
    ws = Workspace(root)
    for i in range(3):
        ws.apply(ws.propose(block("n.txt", f"{i}\n", f"{i + 1}\n")))
    assert (root / "n.txt").read_text() == "3\n"
    for expected in ("2\n", "1\n", "0\n"):
        ws.undo()
        assert (root / "n.txt").read_text() == expected
    with pytest.raises(HistoryError, match="nothing to undo"):
        ws.undo()


def test_undo_works_after_a_restart_from_history_in_the_data_dir(root, duet_home):
    (root / "a.txt").write_bytes(b"keep me\n")
    first = Workspace(root)
    first.apply(first.propose(block("a.txt", "keep me\n", "changed\n")))
    del first
    assert any((duet_home / "undo").rglob("entry.json"))
    Workspace(root).undo()
    assert (root / "a.txt").read_bytes() == b"keep me\n"


def test_undo_refuses_to_lose_changes_made_after_the_apply_unless_forced(root):
    (root / "a.txt").write_text("v1\n")
    ws = Workspace(root)
    ws.apply(ws.propose(block("a.txt", "v1\n", "v2\n")))
    (root / "a.txt").write_text("v3 by the user\n")
    with pytest.raises(HistoryError, match="a.txt changed since"):
        ws.undo()
    assert (root / "a.txt").read_text() == "v3 by the user\n"
    ws.undo(force=True)
    assert (root / "a.txt").read_text() == "v1\n"


def test_a_file_changed_on_disk_since_propose_is_rematched_when_the_block_still_fits(root):
    (root / "a.py").write_text("x = 1\ny = 2\n")
    ws = Workspace(root)
    changes = ws.propose(block("a.py", "y = 2\n", "y = 3\n"))
    (root / "a.py").write_text("# header added meanwhile\nx = 1\ny = 2\n")
    applied = ws.apply(changes)
    assert (root / "a.py").read_text() == "# header added meanwhile\nx = 1\ny = 3\n"
    assert "re-matched" in applied.notes[0]


def test_a_file_changed_on_disk_so_the_block_no_longer_fits_stops_the_whole_apply(root):
    (root / "a.py").write_text("x = 1\n")
    (root / "b.py").write_text("y = 1\n")
    ws = Workspace(root)
    changes = ws.propose(block("b.py", "y = 1\n", "y = 2\n") + block("a.py", "x = 1\n", "x = 2\n"))
    (root / "a.py").write_text("x = 100\n")
    before = snapshot(root)
    with pytest.raises(ApplyError, match="a.py changed on disk"):
        ws.apply(changes)
    assert snapshot(root) == before
    assert not ws.can_undo


def test_selected_hunks_only_are_applied(root):
    lines = [f"line {i}\n" for i in range(40)]
    (root / "long.txt").write_text("".join(lines))
    ws = Workspace(root)
    changes = ws.propose(block("long.txt", "line 3\n", "LINE 3\n") + block("long.txt", "line 30\n", "LINE 30\n"))
    assert len(changes.edits[0].hunks) == 2
    ws.apply(changes.select(hunks={"long.txt": {1}}))
    text = (root / "long.txt").read_text()
    assert "line 3\n" in text and "LINE 30\n" in text


def test_selected_files_only_are_applied(root):
    ws = Workspace(root)
    changes = ws.propose(block("a.txt", "", "a\n") + block("b.txt", "", "b\n"))
    ws.apply(changes.select(files={"b.txt"}))
    assert not (root / "a.txt").exists() and (root / "b.txt").read_text() == "b\n"


def test_a_partial_selection_of_a_file_changed_on_disk_is_refused(root):
    (root / "t.txt").write_text("".join(f"l{i}\n" for i in range(30)))
    ws = Workspace(root)
    changes = ws.propose(block("t.txt", "l1\n", "L1\n") + block("t.txt", "l25\n", "L25\n"))
    (root / "t.txt").write_text("changed\n")
    with pytest.raises(ApplyError, match="propose it again"):
        ws.apply(changes.select(hunks={"t.txt": {0}}))


def test_a_rename_failing_part_way_puts_back_the_files_already_written(root):
    (root / "a.txt").write_bytes(b"old a\n")
    (root / "blocker").mkdir()
    (root / "blocker" / "inside").write_text("x")
    writes = [Write("a.txt", root / "a.txt", b"old a\n", b"new a\n"),
              Write("blocker", root / "blocker", None, b"cannot replace a folder\n")]
    with pytest.raises(OSError):
        write_all(writes)
    assert (root / "a.txt").read_bytes() == b"old a\n"
    assert not [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def test_an_apply_cut_short_by_a_crash_is_rolled_back_on_the_next_start(root):
    (root / "a.txt").write_bytes(b"original a\n")
    (root / "b.txt").write_bytes(b"original b\n")
    history = History(root)
    writes = [Write("a.txt", root / "a.txt", b"original a\n", b"new a\n"),
              Write("b.txt", root / "b.txt", b"original b\n", b"new b\n"),
              Write("c.txt", root / "c.txt", None, b"new c\n")]
    history.record(writes, [], "interrupted")
    write_all(writes[:1] + writes[2:])  # the crash happened before b.txt was renamed
    ws = Workspace(root)
    assert ws.recovered
    assert snapshot(root) == {"a.txt": b"original a\n", "b.txt": b"original b\n"}
    assert not ws.can_undo


def test_crash_recovery_leaves_alone_a_file_changed_after_the_crash(root):
    (root / "a.txt").write_bytes(b"original\n")
    writes = [Write("a.txt", root / "a.txt", b"original\n", b"new\n")]
    History(root).record(writes, [], "interrupted")
    write_all(writes)
    (root / "a.txt").write_bytes(b"typed by the user after the crash\n")
    Workspace(root)
    assert (root / "a.txt").read_bytes() == b"typed by the user after the crash\n"


def test_an_edit_made_by_hand_with_binary_content_is_refused_at_apply(root):
    from app.workspace import ChangeSet, Edit

    bad = ChangeSet((Edit.make("x.bin", None, b"\x00\x01"),))
    with pytest.raises(ApplyError, match="binary"):
        Workspace(root).apply(bad)
    assert not (root / "x.bin").exists()


def test_one_file_reached_under_two_names_is_not_written_twice(root):
    (root / "a.txt").write_text("x\n")
    os.link(root / "a.txt", root / "hard.txt")
    ws = Workspace(root)
    changes = ws.propose(block("a.txt", "x\n", "y\n") + block("hard.txt", "x\n", "z\n"))
    with pytest.raises(ApplyError, match="edited twice"):
        ws.apply(changes)
    assert (root / "a.txt").read_text() == "x\n"


def test_an_empty_changeset_writes_nothing_and_records_no_history(root):
    ws = Workspace(root)
    assert ws.apply(ws.propose("no blocks here")).paths == ()
    assert not ws.can_undo


def test_the_root_must_be_a_folder(root):
    from app.errors import UsageError

    with pytest.raises(UsageError, match="not a folder"):
        Workspace(root / "missing")


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_auto_commit_commits_only_the_applied_files_with_a_generated_message(root):
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "Test")
    (root / "a.py").write_text("x = 1\n")
    (root / "notes.txt").write_text("mine\n")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    (root / "notes.txt").write_text("mine, uncommitted\n")
    ws = Workspace(root, auto_commit=True)
    applied = ws.apply(ws.propose(block("a.py", "x = 1\n", "x = 2\n") + block("new.py", "", "y = 1\n")))
    assert applied.commit and applied.commit == git("rev-parse", "HEAD").strip()
    assert git("log", "-1", "--format=%s").strip() == "duet: edit a.py (+1 -1), create new.py (+1 -0)"
    assert git("show", "--name-only", "--format=", "HEAD").split() == ["a.py", "new.py"]
    assert "notes.txt" in git("status", "--porcelain")  # the user's own change stays uncommitted


def test_auto_commit_is_off_by_default_and_from_config(root):
    from app.config import parse_config

    assert Workspace(root).auto_commit is False
    config = parse_config({"workspace": {"auto_commit": True, "max_file_bytes": 1234}})
    ws = Workspace.from_config(root, config)
    assert ws.auto_commit is True and ws.max_file_bytes == 1234


def test_no_temp_files_are_left_behind_after_apply_and_undo(root):
    (root / "a.txt").write_text("1\n")
    ws = Workspace(root)
    ws.apply(ws.propose(block("a.txt", "1\n", "2\n")))
    ws.undo()
    assert [p.name for p in root.iterdir()] == ["a.txt"]
    assert os.listdir(root) == ["a.txt"]
