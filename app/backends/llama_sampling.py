"""How Duet draws each token from llama.cpp: llama-cpp-python's sampler chain, with a grammar
checked last, as llama.cpp's own server does.

llama-cpp-python puts a grammar first in its chain, so at every token llama.cpp checks the whole
vocabulary against it (262,144 tokens for Gemma 3, 151,936 for Qwen2.5-Coder): under Duet's edit
grammar that halved a real model's decode speed. llama.cpp's own sampler (`common_sampler_sample`,
llama-server and llama-cli) draws from the chain first and checks only the token it drew; where
the grammar refuses that token it masks the whole vocabulary and draws again. A model that writes
what the grammar allows (a coder writing edit blocks) pays for one token's check.

Greedy, the token is the same either way (the most likely token, if the grammar allows it, is
the most likely allowed one). Sampled with no truncation (top_k 0, top_p 1, min_p 0) the
distribution is the same too: a token t the grammar allows is drawn with p(t) on the first draw
plus, when that draw is refused (probability 1 - A, A the allowed tokens' mass), p(t)/A on the
second: p(t) + (1 - A) p(t)/A = p(t)/A, the masked distribution. With truncation the first draw
truncates before the mask, as llama-server's does.

Neither draw needs the whole vocabulary: the chain keeps only the top_k most likely tokens
(llama-cpp-python's default 40; greedy, the one), so it draws from the most likely 64 (4,096
where top_k is longer), most likely first, and a refused draw's second from those of them the
grammar allows, where top_k of them are: the top_k the whole (masked) vocabulary would keep, in
the same order, so the same token and the same random draw (tested seed by seed). Only where
fewer are allowed (or the chain reorders the logits first: repetition penalties, mirostat, a
logits processor, or no top_k) is the whole vocabulary masked.
"""

from __future__ import annotations

import ctypes
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from app.errors import DuetError


class Grammar:
    """A GBNF grammar parsed by llama.cpp for one reply (its state follows the reply's tokens).
    llama.cpp aborts the process on a grammar it cannot parse once sampling starts, so it is
    parsed here, where a failure is a NULL and a one-line error."""

    def __init__(self, llm, text: str, role: str):
        import llama_cpp

        self.ptr = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, text.encode("utf-8"), b"root")
        if not self.ptr:
            raise DuetError(f"the {role}'s grammar: llama.cpp could not parse it (GBNF with a 'root' rule)")
        weakref.finalize(self, llama_cpp.llama_sampler_free, self.ptr)  # freed with this object


class Sampler:
    """The sampler of one completion (`Llama.generate` asks `_init_sampler` for it, and calls its
    ``sample``): llama-cpp-python's own chain for the settings it asks with, and ``grammar``
    checked last. ``drawn`` counts the tokens drawn; ``redrawn`` those the grammar refused at
    first, and ``masked_all`` those of these whose second draw masked the whole vocabulary."""

    def __init__(self, llm, grammar: Grammar | None = None):
        self.llm, self.grammar = llm, grammar
        self.chain = None
        self.drawn = self.redrawn = self.masked_all = 0
        self._cur = None
        self._keep = 0

    def _build(self, **settings):
        settings["grammar"] = None  # the chain without it: checked last, in sample()
        self.chain = type(self.llm)._init_sampler(self.llm, **settings)
        self._keep = _kept_by_chain(settings)
        if self.grammar is not None and self._cur is None:
            import llama_cpp
            import numpy as np

            n = llama_cpp.llama_vocab_n_tokens(self.llm._model.vocab)
            self._n = n
            self._ids = np.arange(n, dtype=np.int32)
            self._cur = (llama_cpp.llama_token_data * n)()
            self._view = np.ctypeslib.as_array(self._cur)  # fields id, logit, p
            self._one = (llama_cpp.llama_token_data * 1)()
        return self

    def sample(self, ctx, idx: int = -1) -> int:
        if self.grammar is None:
            token = self.chain.sample(ctx, idx)  # llama_sampler_sample: apply the chain, accept
        else:
            token = self._sample_checked(ctx, idx)
        self.drawn += 1
        return token

    def _sample_checked(self, ctx, idx: int) -> int:
        import llama_cpp
        import numpy as np

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, idx), shape=(self._n,))
        token = self._draw(logits, masked=False)
        one = self._one
        one[0].id, one[0].logit, one[0].p = token, 0.0, 0.0
        check = llama_cpp.llama_token_data_array(ctypes.cast(one, llama_cpp.llama_token_data_p), 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar.ptr, ctypes.byref(check))
        if one[0].logit == -math.inf:  # refused: mask the vocabulary and draw again
            self.redrawn += 1
            token = self._draw(logits, masked=True)
        llama_cpp.llama_sampler_accept(self.grammar.ptr, token)
        self.chain.accept(token)
        return token

    def _draw(self, logits, *, masked: bool) -> int:
        import llama_cpp
        import numpy as np

        if self._keep == 1 and not masked:
            return int(np.argmax(logits))  # greedy: the first most likely, as llama.cpp's greedy picks
        if self._keep:
            for most_likely in SHORTLISTS:
                token = self._draw_from_shortlist(logits, most_likely, masked)
                if token is not None:
                    return token
            self.masked_all += masked
        view = self._view
        view["id"], view["logit"], view["p"] = self._ids, logits, 0.0
        cur = llama_cpp.llama_token_data_array(ctypes.cast(self._cur, llama_cpp.llama_token_data_p), self._n, -1,
                                               False)
        if masked:
            llama_cpp.llama_sampler_apply(self.grammar.ptr, ctypes.byref(cur))
            if np.isneginf(view["logit"]).all():
                raise RuntimeError("the grammar allows no token here")
        return self._select(cur)

    def _draw_from_shortlist(self, logits, most_likely: int, masked: bool) -> int | None:
        """The chain's draw from the ``most_likely`` tokens (with ``masked``, those of them the
        grammar allows), or None where fewer than the chain keeps are allowed there."""
        import llama_cpp
        import numpy as np

        m = min(most_likely, self._n)
        if m < min(self._keep, self._n):
            return None  # fewer than the chain keeps
        top = np.argpartition(-logits, m - 1)[:m] if m < self._n else self._ids
        top = top[np.lexsort((top, -logits[top]))]  # most likely first; ties by id, as in the vocabulary
        view = self._view
        view["id"][:m], view["logit"][:m], view["p"][:m] = top, logits[top], 0.0
        ptr = ctypes.cast(self._cur, llama_cpp.llama_token_data_p)
        if masked:
            shortlist = llama_cpp.llama_token_data_array(ptr, m, -1, False)
            llama_cpp.llama_sampler_apply(self.grammar.ptr, ctypes.byref(shortlist))
            allowed = np.flatnonzero(view["logit"][:m] != -np.inf)
            if len(allowed) < min(self._keep, self._n):
                if m < self._n:
                    return None
                if not len(allowed):
                    raise RuntimeError("the grammar allows no token here")
            view[:len(allowed)] = view[:m][allowed].copy()  # still most likely first
            m = len(allowed)
        return self._select(llama_cpp.llama_token_data_array(ptr, m, -1, False))

    def _select(self, cur) -> int:
        import llama_cpp

        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(cur))
        if not 0 <= cur.selected < cur.size:
            raise RuntimeError("llama.cpp's sampler chain selected no token")
        return int(cur.data[cur.selected].id)


SHORTLISTS = (64, 4096)  # a refused draw's second: the grammar checks the most likely this many


def _kept_by_chain(settings: dict) -> int:
    """How many of the most likely tokens llama-cpp-python's chain for ``settings`` can draw from
    (1 greedy, top_k sampled), where it ranks them by their logits alone; 0 where it may not."""
    if settings.get("logits_processor") or settings.get("mirostat_mode", 0):
        return 0
    if (settings.get("repeat_penalty", 1.0) != 1.0 or settings.get("frequency_penalty", 0.0)
            or settings.get("presence_penalty", 0.0)):
        return 0
    temp = settings.get("temp", 0.8)
    if temp == 0.0:
        return 1
    top_k = settings.get("top_k", 40)
    return top_k if temp > 0.0 and top_k > 0 else 0


@contextmanager
def drawing(llm, grammar: Grammar | None = None) -> Iterator[Sampler]:
    """Inside this block, the completions `llm` generates draw with a `Sampler` (yielded): the
    caller passes no ``grammar`` to llama-cpp-python itself."""
    require_sampler_chain(llm)
    sampler = Sampler(llm, grammar)
    llm._init_sampler = sampler._build  # generate() builds its sampler here
    try:
        yield sampler
    finally:
        llm.__dict__.pop("_init_sampler", None)


def require_sampler_chain(llm) -> None:
    """DuetError unless this llama-cpp-python builds its sampler where `drawing` can stand in."""
    if not callable(getattr(type(llm), "_init_sampler", None)):
        raise DuetError(f"llama-cpp-python {_version()} has no sampler chain Duet can draw with: "
                        "pip install 'llama-cpp-python>=0.3.16'")


def _version() -> str:
    try:
        import llama_cpp

        return llama_cpp.__version__
    except Exception:
        return "(unknown)"
