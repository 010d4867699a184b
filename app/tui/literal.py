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
