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
    """How many tokens to draft next, from the running acceptance rate.

    ``rate`` estimates the chance that a draft stands given the ones before it did (accepted
    drafts over drafts tried, the first rejected one counting as tried and the ones after it
    not), decayed so it follows the text (acceptance falls as the context grows). The k-th
    draft of a round pays off when all k stand often enough: k is the largest with
    rate**k >= ``gain``, within 1..``k_max``. When the rate falls below ``off`` drafting pauses
    for ``pause`` rounds (plain decoding), then one draft probes again."""

    def __init__(self, k_max: int = 3, *, gain: float = 0.35, off: float = 0.1, pause: int = 16,
                 decay: float = 0.9, prior: float = 0.7):
        self.k_max, self.gain, self.off, self.pause, self.decay = k_max, gain, off, pause, decay
        self.hits, self.tries = prior * 2, 2.0  # a prior worth two tries
        self.paused = 0

    @property
    def rate(self) -> float:
        return self.hits / self.tries

    def next(self) -> int:
        if self.k_max <= 0:
            return 0
        if self.paused > 0:
            self.paused -= 1
            return 0
        r = self.rate
        if r <= 0:
            return 1
        if r >= 1:
            return self.k_max
        return max(1, min(self.k_max, int(math.log(self.gain) / math.log(r))))

    def update(self, drafted: int, accepted: int) -> None:
        if drafted <= 0:
            return
        tried = accepted + (1 if accepted < drafted else 0)
        self.hits = self.decay * self.hits + accepted
        self.tries = self.decay * self.tries + tried
        if self.rate < self.off:
            self.paused = self.pause
