"""Generation held to a rule, token by token.

The engine asks the rule about the token it would pick and, while the rule refuses, about the
next (sampled again from what is left, or the next most likely); it then tells the rule which
token it took. So a rule changes only the tokens it refuses, and greedy output is the model's
own wherever the rule allows it.

``LineConstraint`` turns a rule on each line of text (``line_ok(line, complete)``, bytes) into a
rule on tokens: it keeps the bytes written since the last newline and checks every line a token
would finish and the one it would leave open. A special token counts as the text it decodes to
(``</think>``), as the reader of the stream sees it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch


class TokenConstraint(Protocol):
    def allows(self, token_id: int) -> bool: ...

    def advance(self, token_id: int) -> None: ...


class LineConstraint:
    def __init__(self, token_bytes: Sequence[bytes], line_ok: Callable[[bytes, bool], bool]):
        self.token_bytes, self.line_ok = token_bytes, line_ok
        self.line = b""  # written since the last newline

    def allows(self, token_id: int) -> bool:
        *done, last = (self.line + self.token_bytes[token_id]).split(b"\n")
        return all(self.line_ok(line, True) for line in done) and self.line_ok(last, False)

    def advance(self, token_id: int) -> None:
        self.line = (self.line + self.token_bytes[token_id]).rsplit(b"\n", 1)[-1]


def pick_allowed(logits: torch.Tensor, first: int, probs: torch.Tensor | None, gen: torch.Generator,
                 constraint: TokenConstraint, tries: int = 8) -> int:
    """The token to take when the rule refused ``first`` (the model's pick). Greedy (``probs``
    None): the most likely token the rule allows. Sampling: drawn again from ``probs`` (the
    sampling distribution) without the refused tokens, which samples the distribution cut to
    what the rule allows; after ``tries`` refusals, from the allowed part of the nucleus at
    once; with none allowed there, the most likely allowed token. If the rule allows no token
    at all, ``first``."""
    if probs is not None:
        probs = probs.clone()
        tok = first
        for _ in range(tries):
            probs[tok] = 0.0
            if float(probs.sum()) <= 0.0:
                break
            tok = int(torch.multinomial(probs, 1, generator=gen))
            if constraint.allows(tok):
                return tok
        keep = [t for t in probs.nonzero().flatten().tolist() if constraint.allows(t)]
        if keep:
            p = probs[keep]
            return keep[int(torch.multinomial(p / p.sum(), 1, generator=gen))]
    for t in torch.argsort(logits.float(), descending=True).tolist():
        if constraint.allows(t):
            return t
    return first
