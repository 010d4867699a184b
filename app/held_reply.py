"""A local reply held to ``exact_quotes`` (`app.exact_quotes.line_rules`), token by token, on our
engine, with one look back.

After failing tests the reading is focused on the functions they reach and may not read past
the last of them (`ReadingFocus`). A small model that reads past the line it doubted (it leaned
towards concluding there, but not past even odds) would then be made to conclude at that last
line, about a line it never doubted (``return total``). Decoding greedily, the reply is held
back while the reading goes through those functions; where the model was made to conclude at
their end and leaned further towards concluding after an earlier line of theirs, the reply
goes back to the end of that line and concludes there (`ReadingFocus.look_back`,
``conclude_at``): the reading it would have written up to there is the same, and what it
concludes is its own. Sampled, the reply is as drawn. The local backend and the demo's eval
both decode through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from app.exact_quotes import Quotes, line_rules


class HeldReply:
    """One reply: ``tokens`` yields its token ids as they stand (none it takes back);
    ``stats`` adds up the engine's drafted / accepted tokens over its runs."""

    def __init__(self, engine, ids: list[int], quotes: Quotes, *, thinking: bool, names: bool,
                 token_bytes: Sequence[bytes]):
        self.engine, self.ids, self.quotes = engine, list(ids), quotes
        self.thinking, self.names, self.token_bytes = thinking, names, token_bytes
        self.stats = {"cached_tokens": 0, "drafted": 0, "accepted": 0}

    def _constraint(self, conclude_at: int | None = None, written: Sequence[int] = ()):
        from local_engine.constraint import LineConstraint

        rules = line_rules(self.quotes, thinking=self.thinking, names=self.names, conclude_at=conclude_at)
        constraint = LineConstraint(self.token_bytes, rules)
        for token in written:  # the rules see the reply so far
            constraint.advance(token)
        return constraint, rules.focus

    def _count(self, first: bool) -> None:
        stats = self.engine.last_stats
        if first:
            self.stats["cached_tokens"] = int(stats.get("cached_tokens", 0))
        for key in ("drafted", "accepted"):
            self.stats[key] += int(stats.get(key, 0))

    def tokens(self, *, max_new_tokens: int, temperature: float, **generate) -> Iterator[int]:
        """``engine.generate``'s tokens under the rules (``generate``: its other arguments)."""
        constraint, focus = self._constraint()
        run = self.engine.generate(self.ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                   constraint=constraint, **generate)
        watch = focus is not None and temperature <= 0
        out: list[int] = []
        sent, lines, ends = 0, 0, {}  # ends: lines written -> tokens up to that newline (a token ending in it)
        back = None
        for token in run:
            out.append(token)
            piece = self.token_bytes[token]
            lines += piece.count(b"\n")
            if piece.endswith(b"\n"):
                ends[lines] = len(out)
            if watch and focus.look_back is not None:
                written, line = focus.look_back
                cut = ends.get(written)
                if cut is not None and cut >= sent:
                    back = (cut, line)
                    break
                watch = False  # no token boundary there, or already shown: the reply stands
            if not (watch and focus.reading):
                yield from out[sent:]
                sent = len(out)
        run.close()
        self._count(first=True)
        if back is None:
            yield from out[sent:]
            return
        cut, line = back
        yield from out[sent:cut]
        if max_new_tokens - cut <= 0:
            return
        constraint, _ = self._constraint(conclude_at=line, written=out[:cut])
        yield from self.engine.generate(self.ids + out[:cut], max_new_tokens=max_new_tokens - cut,
                                        temperature=temperature, constraint=constraint, **generate)
        self._count(first=False)
