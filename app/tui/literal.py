"""Model text is untrusted: make it safe to show exactly as typed.

Markdown is rendered (that is the point of a chat view), but nothing in model text may
style the terminal: control characters such as ESC (ANSI escapes) are shown as visible
symbols (U+2400 block), so ``\\x1b[31m`` reads as ``␛[31m``. Rich markup such as
``[bold]`` is never interpreted anywhere in the TUI (every widget showing model text uses
``Content``/``markup=False`` or Textual's Markdown, which does not parse markup).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def visible(text: str) -> str:
    """``text`` with control characters (other than newline and tab) made visible; CR dropped."""
    if "\r" in text:
        text = text.replace("\r", "")
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: "␡" if m.group() == "\x7f" else chr(0x2400 + ord(m.group())), text)


# ---- Markdown that shows model text as written ---------------------------------------------------
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LISTING = re.compile(r"^\s*\d+ \| ")  # a numbered code line, as Duet's prompts number files


def _outside_fences(text: str, change) -> str:
    """``change(lines) -> lines`` applied to each run of lines outside fenced code blocks."""
    out, run, fence = [], [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            out += change(run) + [line]
            run, fence = [], m.group(1)
        elif fence is not None:
            out.append(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(" `~"):
                fence = None
        else:
            run.append(line)
    return "\n".join(out + change(run))


def _fenced(lines: list[str]) -> list[str]:
    longest = max((len(r) for line in lines for r in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence] + lines + [fence]


def answer_markdown(text: str) -> str:
    """An answer for Markdown: SEARCH/REPLACE edit blocks outside code fences are fenced (with
    their path line), so they show line by line as written, not as quotes and headings."""
    if "<<<<<<< SEARCH" not in text:
        return text
    lines, out, fence, i = text.split("\n"), [], None, 0
    while i < len(lines):
        line = lines[i]
        if fence is None and line.rstrip() == "<<<<<<< SEARCH":
            end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == ">>>>>>> REPLACE"), None)
            if end is not None:  # (the block may hold fences of its own: they are its text)
                # the path line goes in too (not a blank line, nor a fence that closed a block)
                start = i - 1 if out and out[-1].strip() and not _FENCE.match(out[-1]) else i
                if start < i:
                    out.pop()
                out += _fenced(lines[start:end + 1])
                i = end + 1
                continue
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                and not line.strip(" `~"):
            fence = None
        out.append(line)
        i += 1
    return "\n".join(out)


def _trace_lines(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        j = i
        while j < len(lines) and _LISTING.match(lines[j]):
            j += 1
        if j - i >= 2:  # numbered code lines read back: as code, indentation kept
            out += _fenced(lines[i:j])
            i = j
            continue
        out.append(lines[i] + ("  " if lines[i].strip() and i + 1 < len(lines) and lines[i + 1].strip() else ""))
        i += 1
    return out


def trace_markdown(text: str) -> str:
    """A thinking trace for Markdown: its line breaks kept (a trace is written line by line),
    and runs of numbered code lines shown as code."""
    return _outside_fences(text, _trace_lines)
