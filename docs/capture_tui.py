"""Capture the running TUI for the README: a real run of `duet --demo` on the trained demo models.

    python docs/capture_tui.py [REQUEST]   # writes docs/demo-1-plan.svg, -2-diff.svg, -3-test.svg

A Pilot drives the real app (the reasoner on our engine, int8; the coder on llama.cpp) on a
fresh copy of the sample project, as a user would: the request, the tests run before the plan
(the demo's ``test_first``), the reasoner's thinking and plan (1), Ctrl+O and Ctrl+S to hand
the plan to the coder, the diff review (2), `a` and Enter to apply, and the sample project's
tests run after the apply (3). Nothing is staged: whatever the models write is what the
pictures show. A fresh data dir, so no earlier session is resumed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REQUEST = "/plan fix the bug in stats.py"


async def until(pilot, condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"capture: timed out waiting for {what}")
        await pilot.pause(0.2)


async def capture(request: str, out: Path) -> None:
    from app.backends import close_all
    from app.config import demo_config
    from app.demo import fresh_sample_project
    from app.store import SessionStore
    from app.tui.app import DuetApp
    from app.tui.dialogs import PlanEditor
    from app.tui.diff_preview import DiffPreview
    from app.tui.messages import TestItem
    from app.workspace import Workspace

    config = demo_config()
    project = fresh_sample_project(Path(tempfile.mkdtemp(prefix="duet-sample-")) / "sample")
    app = DuetApp(config, workspace=Workspace.from_config(str(project), config), store=SessionStore.open(":memory:"),
                  resume=False)
    try:
        async with app.run_test(size=(130, 42)) as pilot:
            await pilot.press("enter")  # the demo's welcome
            await until(pilot, lambda: app.chat is not None and app.screen is app.chat, "the chat")
            status = app.chat.status_bar
            await until(pilot, lambda: all(status.role(r).state == "ready" for r in ("reasoner", "coder")),
                        "both models to load")
            await pilot.press(*request, "enter")
            await pilot.pause(0.5)
            await until(pilot, lambda: app.chat.current is None, "the reasoner's plan")
            await pilot.pause(0.5)
            app.save_screenshot("demo-1-plan.svg", path=str(out))
            await pilot.press("ctrl+o")
            await until(pilot, lambda: isinstance(app.screen, PlanEditor), "the hand-off editor")
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, DiffPreview), "the coder's diff", timeout=120)
            await pilot.pause(0.5)
            app.save_screenshot("demo-2-diff.svg", path=str(out))
            await pilot.press("a", "enter")
            await until(pilot, lambda: any(t.round >= 1 and t.status != "running" for t in app.chat.query(TestItem)),
                        "the test run after the apply", timeout=120)  # round 0: the run before the plan
            await pilot.pause(0.5)
            app.save_screenshot("demo-3-test.svg", path=str(out))
    finally:
        close_all()


def main() -> int:
    os.environ["DUET_HOME"] = tempfile.mkdtemp(prefix="duet-capture-")
    request = " ".join(sys.argv[1:]) or REQUEST
    asyncio.run(capture(request, ROOT / "docs"))
    print("wrote docs/demo-1-plan.svg, docs/demo-2-diff.svg, docs/demo-3-test.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
