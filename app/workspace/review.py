"""What ``/review`` hands the reasoner.

With files in context: those files, with line numbers so the review can point
at lines. With none: the workspace's uncommitted changes (``git diff HEAD``,
plus the names of untracked files), and the message says so.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from app.workspace.context import FileContext, number_lines

MAX_DIFF_CHARS = 200_000


@dataclass(frozen=True)
class Review:
    """``kind``: "files", "diff" or "none"; ``note`` one line for the user; ``text`` for the prompt."""

    kind: str
    note: str
    text: str
    files: tuple[str, ...] = ()


def review_material(context: FileContext) -> Review:
    if context.files:
        parts, shown = [], []
        for rel in context.files:
            text = context.read(rel)
            if text is None:
                continue
            shown.append(rel)
            parts.append(f"{rel}\n```\n{number_lines(text)}\n```")
        note = f"Reviewing {len(shown)} file{'s' if len(shown) != 1 else ''} in context: {', '.join(shown)}"
        return Review("files", note, "\n\n".join(parts), tuple(shown))
    return uncommitted_changes(context.root)


def uncommitted_changes(root: Path) -> Review:
    """The uncommitted changes of the git repository at ``root``."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=30, check=False)

    try:
        if git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
            return Review("none", f"Nothing to review: no files in context and {root} is not a git repository.", "")
        has_head = git("rev-parse", "--verify", "-q", "HEAD").returncode == 0
        diff = git("diff", "HEAD", "--", ".") if has_head else git("diff", "--cached", "--", ".")
        untracked = git("ls-files", "--others", "--exclude-standard", "--", ".").stdout.split("\n")
    except (OSError, subprocess.SubprocessError) as exc:
        return Review("none", f"Nothing to review: git failed ({exc}).", "")
    untracked = [u for u in untracked if u]
    text = diff.stdout
    if not text.strip() and not untracked:
        return Review("none", "Nothing to review: no files in context and no uncommitted changes "
                              "(git diff HEAD is empty).", "")
    if len(text) > MAX_DIFF_CHARS:
        text = text[:MAX_DIFF_CHARS] + f"\n... (diff cut at {MAX_DIFF_CHARS:,} characters)\n"
    if untracked:
        text += "\nUntracked files (not shown): " + ", ".join(untracked[:50]) + "\n"
    changed = [line[6:] for line in diff.stdout.split("\n") if line.startswith("+++ b/")]
    base = "HEAD" if has_head else "--cached"
    note = (f"No files in context, so reviewing the uncommitted changes (git diff {base}): "
            f"{len(changed)} file{'s' if len(changed) != 1 else ''} changed"
            + (f", {len(untracked)} untracked" if untracked else ""))
    return Review("diff", note, text, tuple(changed))
