"""Re-planning: when a plan's change did not work, the reasoner is asked for another plan.

`Attempts` keeps, for the request the latest plan answers, the conversation as it was before
the first plan, every plan tried, and how the latest one went (its change applied, its last
test run). A re-plan asks the reasoner again on that earlier conversation (the failed attempts'
turns are not in it) with the request followed by the plans tried and the last failure
(``app.prompts.replan_request``), or with the request alone where the reasoner's ``history``
is off (a small model trained on single requests, which other text only leads astray). A
reasoner that decodes greedily would give the same plan again, so a re-plan samples it; for the
same reason a plan handed to the coder again gets a sampled reply (`Conversation.prepare`).
Sampled, it could still draw a fix that already failed: each change a plan stated ("from `X` to
`Y`") whose line the applied edits wrote and the tests then failed is kept (``failed``), and a
re-plan's `exact_quotes` do not let its finding name it again.
`duet run --replans` and the TUI's ``/replan`` both go through `Conversation.prepare_replan`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from app.config import Sampling
from app.conversation.verify import TestResult, failure_summary
from app.exact_quotes import line_code, stated_changes
from app.prompts import replan_request
from app.workspace.changeset import ChangeSet
from vocab.messages import ChatMessage

RETRY_TEMPERATURE = 0.7  # a retry (re-plan, hand-off again, test retry) of a greedy model (top-p 0.95)
REPLAN_OUTPUT_CHARS = 1_500  # the failing test output a re-plan shows (a small model's window holds the files too)
NOT_KEPT = "its change was not kept"


@dataclass
class Attempts:
    """The plans tried for one request."""

    request: str  # what the plans answer (as routed: without its /prefix)
    intent: str
    history: list[ChatMessage]  # the conversation before the first plan
    tried: list[str] = field(default_factory=list)  # each plan's answer, in order, once
    test: TestResult | None = None  # the latest plan's last test run
    applied: bool = False  # the latest plan's change is in the files
    repeated: bool = False  # the latest re-plan gave a plan already tried
    written: frozenset[str] = frozenset()  # the lines (code, stripped) the latest plan's applied edits wrote
    failed: set[tuple[str, str]] = field(default_factory=set)  # changes (X, Y) the plans stated, applied, failed
    latest: str = field(init=False)  # the plan tried last (a new one, or one tried before)

    def __post_init__(self) -> None:
        self.latest = self.tried[-1] if self.tried else ""

    def add(self, plan: str) -> None:
        """A re-plan's answer: a new plan, or one already tried (listed once; it is tried again)."""
        words = " ".join(plan.split())
        self.repeated = any(" ".join(t.split()) == words for t in self.tried)
        if not self.repeated:
            self.tried.append(plan)
        self.latest, self.test, self.applied, self.written = plan, None, False, frozenset()

    def applied_edits(self, changes: ChangeSet) -> None:
        """The latest plan's change is in the files: ``changes``, as applied."""
        self.applied = True
        self.written |= {line_code(line) for e in changes.edits
                         for line in set(e.after.decode("utf-8", "replace").splitlines())
                         - set((e.before or b"").decode("utf-8", "replace").splitlines())}

    def tested(self, result: TestResult) -> None:
        """The latest plan's tests ran: where they failed, each change its plan stated whose new
        line its applied edits wrote is one that does not work (``failed``: a re-plan's finding
        does not name it again, `app.exact_quotes.ChangeFollowsFinding`)."""
        self.test = result
        if result.status == "failed" and self.applied:
            self.failed |= {(line_code(x), line_code(y)) for x, y in stated_changes(self.latest)
                            if line_code(y) in self.written}

    def request_text(self, with_history: bool, reasons=()) -> str:
        """What the re-plan asks: the request alone without history; else the request, the plans
        tried and the latest one's failing test output (or ``reasons``: why it never got there)."""
        if not with_history or not self.tried:  # nothing to tell (the last answer held no plan)
            return self.request
        if self.test is not None and not self.test.passed:
            return replan_request(self.request, self.tried, command=self.test.command,
                                  output=failure_summary(self.test.output, limit=REPLAN_OUTPUT_CHARS))
        return replan_request(self.request, self.tried, reasons=list(reasons) or [NOT_KEPT])


def retry_sampling(sampling: Sampling, *, seed: int) -> Sampling:
    """A retry's sampling (a re-plan, a plan handed off again): the model's own with another
    seed; sampled where it is greedy."""
    if sampling.temperature > 0:
        return dataclasses.replace(sampling, seed=seed)
    return dataclasses.replace(sampling, temperature=RETRY_TEMPERATURE, top_p=0.95, seed=seed)
