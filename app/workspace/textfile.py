"""A text file as lines with their own endings, so untouched bytes stay untouched.

Edits replace whole lines; new lines take the file's dominant ending (CRLF or
LF), and a file that had no final newline still has none when its last line
is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.workspace import safety
from app.workspace.edit_blocks import Match


@dataclass
class TextFile:
    bodies: list[str]  # each line without its ending
    endings: list[str]  # "\n", "\r\n" or "" (only the last line may have "")
    bom: bool = False

    @classmethod
    def decode(cls, data: bytes, max_bytes: int) -> "TextFile":
        text, bom = safety.decode_text(data, max_bytes)
        bodies, endings = [], []
        for part in text.split("\n"):
            bodies.append(part)
            endings.append("\n")
        endings[-1] = ""
        if bodies[-1] == "":  # text ended with a newline (or is empty)
            bodies.pop()
            endings.pop()
        for i, body in enumerate(bodies):
            if endings[i] and body.endswith("\r"):
                bodies[i], endings[i] = body[:-1], "\r\n"
        return cls(bodies, endings, bom)

    @classmethod
    def new(cls, lines: tuple[str, ...]) -> "TextFile":
        return cls(list(lines), ["\n"] * len(lines))

    def copy(self) -> "TextFile":
        return TextFile(list(self.bodies), list(self.endings), self.bom)

    @property
    def newline(self) -> str:
        crlf = sum(1 for e in self.endings if e == "\r\n")
        return "\r\n" if crlf > len(self.endings) - crlf - (self.endings[-1:] == [""]) else "\n"

    def replace(self, match: Match) -> None:
        nl = self.newline
        was_last = match.end == len(self.bodies) and match.end > match.start
        keep_final = not (was_last and self.endings[-1] == "")
        new_endings = [nl] * len(match.lines)
        if new_endings and not keep_final:
            new_endings[-1] = ""
        self.bodies[match.start:match.end] = list(match.lines)
        self.endings[match.start:match.end] = new_endings
        if self.endings and self.endings[-1] == "" and len(self.endings) > 1:
            for i in range(len(self.endings) - 1):  # only the last line may lack an ending
                if not self.endings[i]:
                    self.endings[i] = nl

    def encode(self, max_bytes: int) -> bytes:
        text = "".join(b + e for b, e in zip(self.bodies, self.endings))
        return safety.encode_text(text, self.bom, max_bytes)
