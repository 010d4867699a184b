"""Generation held to a rule, token by token.

The engine asks the rule about the token it would pick and, while the rule refuses, about the
next (sampled again from what is left, or the next most likely); it then tells the rule which
token it took. So a rule changes only the tokens it refuses, and greedy output is the model's
own wherever the rule allows it.

``LineConstraint`` turns a rule on each line of text (``line_ok(line, complete)``, bytes) into a
rule on tokens: it keeps the bytes written since the last newline and checks every line a token
would finish and the one it would leave open; a rule with ``wrote(line)`` is told each line once
a token finishes it. A special token counts as the text it decodes to
(``</think>``), as the reader of the stream sees it. Its rule must refuse every line that begins
with one it refuses open (open or complete): then a refused prefix rules out every token that
starts with it, and ``allowed_tokens`` finds the tokens the rule allows by walking the sorted
vocabulary rather than asking about each of 100k+ tokens."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

RANKED_FIRST = 64  # greedy: the likeliest tokens asked about one by one before the allowed set is worked out


class TokenConstraint(Protocol):
    def allows(self, token_id: int) -> bool: ...

    def advance(self, token_id: int) -> None: ...


class SortedVocab:
    """A vocabulary's token bytes in byte order (``keys``) with their ids (``ids``): the tokens
    that start with given bytes are one range of it."""

    def __init__(self, token_bytes: Sequence[bytes]):
        self.ids = sorted(range(len(token_bytes)), key=token_bytes.__getitem__)
        self.keys = [token_bytes[i] for i in self.ids]


_SORTED: dict[int, tuple[Sequence[bytes], SortedVocab]] = {}  # id(token_bytes) -> (it, sorted); a few models


def sorted_vocab(token_bytes: Sequence[bytes]) -> SortedVocab:
    """``SortedVocab`` of ``token_bytes``, made once per list (a model's, kept by its loader)."""
    hit = _SORTED.get(id(token_bytes))
    if hit is None or hit[0] is not token_bytes:
        if len(_SORTED) >= 4:
            _SORTED.clear()
        hit = _SORTED[id(token_bytes)] = (token_bytes, SortedVocab(token_bytes))
    return hit[1]


class LineConstraint:
    def __init__(self, token_bytes: Sequence[bytes], line_ok: Callable[[bytes, bool], bool]):
        self.token_bytes, self.line_ok = token_bytes, line_ok
        self.line = b""  # written since the last newline

    def allows(self, token_id: int) -> bool:
        return self._holds(self.token_bytes[token_id])

    def advance(self, token_id: int) -> None:
        *done, self.line = (self.line + self.token_bytes[token_id]).split(b"\n")
        wrote = getattr(self.line_ok, "wrote", None)  # a rule that remembers what was written
        for line in done if wrote is not None else ():
            wrote(line)

    def observe(self, logits, pick: int) -> None:
        """The model's logits before a token and its own pick there (before the rule): told to a
        rule that watches them (``line_ok.observe(line, logits, pick, token_bytes)``)."""
        observe = getattr(self.line_ok, "observe", None)
        if observe is not None:
            observe(self.line, logits, pick, self.token_bytes)

    def _holds(self, more: bytes) -> bool:
        *done, last = (self.line + more).split(b"\n")
        return all(self.line_ok(line, True) for line in done) and self.line_ok(last, False)

    def allowed_tokens(self) -> list[int]:
        """Every token the rule allows now. Depth first over the sorted vocabulary: bytes the
        rule refuses after the text so far prune every token that starts with them, so a rule
        that allows little is asked a few hundred times, not once per token."""
        if not self._holds(b""):
            return []  # the line is already refused: so is everything that goes on from it
        vocab = sorted_vocab(self.token_bytes)
        keys, out = vocab.keys, []
        stack = [(b"", 0, len(keys))]
        while stack:
            prefix, lo, hi = stack.pop()
            n = len(prefix)
            i = lo
            while i < hi and len(keys[i]) == n:  # the tokens that are the prefix itself: allowed
                out.append(vocab.ids[i])
                i += 1
            while i < hi:  # one child per next byte
                byte = keys[i][n]
                end = bisect_left(keys, prefix + bytes([byte + 1]), i, hi) if byte < 255 else hi
                child = prefix + bytes([byte])
                if self._holds(child):
                    stack.append((child, i, end))
                i = end
        return out


def _allowed(constraint: TokenConstraint, vocab_size: int) -> list[int]:
    if hasattr(constraint, "allowed_tokens"):
        return constraint.allowed_tokens()
    return [t for t in range(vocab_size) if constraint.allows(t)]


def pick_allowed(logits: torch.Tensor, first: int, probs: torch.Tensor | None, gen: torch.Generator,
                 constraint: TokenConstraint, tries: int = 8) -> int:
    """The token to take when the rule refused ``first`` (the model's pick). Greedy (``probs``
    None): the most likely token the rule allows. Sampling: drawn again from ``probs`` (the
    sampling distribution) without the refused tokens, which samples the distribution cut to
    what the rule allows; after ``tries`` refusals, from the allowed part of the nucleus at
    once; with none allowed there, the most likely allowed token. If the rule allows no token
    at all, ``first``."""
    allowed = None
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
        allowed = sorted(_allowed(constraint, logits.shape[-1]))  # by id: the draw does not hang on the walk's order
        keep = [t for t in allowed if float(probs[t]) > 0.0]
        if keep:
            p = probs[keep]
            return keep[int(torch.multinomial(p / p.sum(), 1, generator=gen))]
    else:
        for t in _likeliest(logits.float(), RANKED_FIRST):
            if constraint.allows(t):
                return t
    allowed = sorted(_allowed(constraint, logits.shape[-1])) if allowed is None else allowed
    if not allowed:
        return first
    return allowed[int(torch.argmax(logits.float()[allowed]))]  # the first of equals: the lowest id, as argmax


def _likeliest(logits: torch.Tensor, k: int) -> list[int]:
    """The ``k`` likeliest token ids (and any tied with the last), likeliest first, equals by id."""
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[-1]
    ids = torch.nonzero(logits >= kth).flatten().tolist()
    values = logits[ids].tolist()
    return [t for _, t in sorted(zip((-v for v in values), ids))]
