"""Self-speculative decoding pieces: the sampling distribution, the accept/resample rule, and
how many tokens to draft.

Drafts come from the checkpoint's MTP module; the main model verifies them in one forward.
Greedy: a draft stands when it is the main model's argmax, so the output is the plain greedy
output. Sampled: the standard rejection rule (Leviathan et al. 2023, Chen et al. 2023) on the
distributions *after* temperature and top-p — accept draft d with probability
min(1, p(d)/q(d)), else draw from max(0, p − q) renormalised — so every emitted token has
exactly the distribution plain sampling gives it."""

from __future__ import annotations

import math

import torch


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """logits [vocab] -> float32 probabilities [vocab] (CPU) of what ``engine.sample`` draws from:
    softmax at ``temperature``, cut to the nucleus (the smallest head of the sorted
    distribution whose mass reaches ``top_p``; the first token always stays), renormalised."""
    probs = (logits.float().cpu() / temperature).softmax(-1)
    if top_p < 1.0:
        p, idx = probs.sort(descending=True)
        keep = (p.cumsum(-1) - p) < top_p
        keep[0] = True  # (top_p <= 0 too)
        probs = torch.zeros_like(probs).scatter_(0, idx, p * keep)
        probs /= probs.sum()
    return probs


def draw(probs: torch.Tensor, gen: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=gen))


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, draft: int, gen: torch.Generator) -> int | None:
    """One verification step for a draft drawn from q: None when the draft stands (probability
    min(1, p[d]/q[d])), else the replacement token drawn from max(0, p − q) renormalised.
    Together they emit a token distributed exactly as p."""
    pd, qd = float(p[draft]), float(q[draft])
    u = float(torch.rand((), generator=gen))
    if qd > 0 and u * qd < pd:  # u < p/q without dividing
        return None
    residual = (p - q).clamp_(min=0)
    total = float(residual.sum())
    if total <= 0:  # p == q up to rounding: nothing to correct
        return draw(p, gen)
    return draw(residual / total, gen)


class DraftLength:
    """How many tokens to draft next, from the running acceptance rate and, where the caller
    times its rounds, from what a committed token costs with drafts and without.

    ``rate`` estimates the chance that a draft stands given the ones before it did (accepted
    drafts over drafts tried, the first rejected one counting as tried and the ones after it
    not), decayed so it follows the text (acceptance falls as the context grows). The k-th
    draft of a round pays off when all k stand often enough: k is the largest with
    rate**k >= ``gain``, within 1..``k_max``. When the rate falls below ``off`` drafting pauses
    for ``pause`` rounds (plain decoding), then one draft probes again.

    Timed (``update(..., seconds=)``): drafts that stand still do not pay where checking them
    costs more than the tokens they save (a CPU whose one-token step is fused and whose
    several-token forward is not; a small model whose MTP module is a large share of it). So
    the seconds per committed token are kept for rounds with drafts and without (the first
    plain round comes after ``measure_after`` drafted ones); while drafting costs more, it
    pauses for ``slow_pause`` rounds, twice as long after each probe that confirms it (up to
    ``slow_pause_max``). Which tokens come out does not depend on this, only how fast (up to
    the last bit of a bf16 forward, which can differ between a drafted and a one-token step)."""

    def __init__(self, k_max: int = 3, *, gain: float = 0.35, off: float = 0.1, pause: int = 16,
                 decay: float = 0.9, prior: float = 0.7, measure_after: int = 2, slow_pause: int = 64,
                 slow_pause_max: int = 1024, timed: bool = True):
        self.k_max, self.gain, self.off, self.pause, self.decay = k_max, gain, off, pause, decay
        self.hits, self.tries = prior * 2, 2.0  # a prior worth two tries
        self.paused = 0
        self.timed, self.measure_after = timed, measure_after
        self.slow_pause, self.slow_pause_max = slow_pause, slow_pause_max
        self.next_slow_pause = slow_pause
        self.plain_s: float | None = None  # seconds per committed token: rounds without drafts ...
        self.draft_s: float | None = None  # ... and with them (decayed averages)
        self.drafted_rounds = 0

    @property
    def rate(self) -> float:
        return self.hits / self.tries

    def next(self) -> int:
        if self.k_max <= 0:
            return 0
        if self.paused > 0:
            self.paused -= 1
            return 0
        if self.timed and self.plain_s is None and self.draft_s is not None and self.drafted_rounds >= self.measure_after:
            return 0  # one plain round, to know what drafting is measured against
        r = self.rate
        if r <= 0:
            return 1
        if r >= 1:
            return self.k_max
        return max(1, min(self.k_max, int(math.log(self.gain) / math.log(r))))

    def update(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        """After a round that drafted ``drafted`` tokens, ``accepted`` of which stood, and took
        ``seconds`` of compute (None: untimed) to commit its ``accepted + 1`` tokens."""
        if seconds is not None and self.timed:
            per_token = seconds / (accepted + 1)
            if drafted <= 0:
                self.plain_s = per_token if self.plain_s is None else 0.5 * (self.plain_s + per_token)
            else:
                self.draft_s = per_token if self.draft_s is None else 0.5 * (self.draft_s + per_token)
        if drafted <= 0:
            return
        self.drafted_rounds += 1
        tried = accepted + (1 if accepted < drafted else 0)
        self.hits = self.decay * self.hits + accepted
        self.tries = self.decay * self.tries + tried
        if self.rate < self.off:
            self.paused = self.pause
        if self.plain_s is not None and self.draft_s is not None:
            if self.draft_s > self.plain_s:  # drafting costs time here: pause, longer each time
                self.paused = max(self.paused, self.next_slow_pause)
                self.next_slow_pause = min(2 * self.next_slow_pause, self.slow_pause_max)
            else:
                self.next_slow_pause = self.slow_pause
