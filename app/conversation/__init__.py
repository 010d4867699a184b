"""The conversation core: one object per conversation, no UI. The TUI, `duet ask` and
`duet run` are views over it (see `conversation.py`)."""

from app.conversation.conversation import DEFAULT_ROUNDS, HANDOFF_REQUEST, Conversation
from app.conversation.events import (Caution, ChangeApplied, ChangeDeclined, ChangeProposed, FlowEnded, Notice,
                                     PlanReady, Routed, TestFinished, TestStarted, TurnEnded)
from app.conversation.steps import Plan, Step, parse_steps
from app.conversation.verify import TestResult, failure_summary, run_tests

__all__ = ["Conversation", "DEFAULT_ROUNDS", "HANDOFF_REQUEST", "Caution", "ChangeApplied", "ChangeDeclined",
           "ChangeProposed", "FlowEnded", "Notice", "PlanReady", "Routed", "TestFinished", "TestStarted", "TurnEnded",
           "Plan", "Step", "parse_steps", "TestResult", "failure_summary", "run_tests"]
