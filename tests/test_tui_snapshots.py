"""SVG snapshots of the main screens (pytest-textual-snapshot); run with --snapshot-update to accept."""

from __future__ import annotations

import re


from vocab.events import AnswerDelta, Done, ThinkingDelta, Usage
from app.config import Config, RoleConfig, Sampling
from app.discovery import Found
from app.store import SessionStore
from app.tui.app import DuetApp

PLAN = """## Plan

1. Keep sessions in an **LRU** cache keyed by id.
2. Evict on write when the cache is full.

```python
from functools import lru_cache

@lru_cache(maxsize=128)
def load(session_id: int) -> Session:
    return db.read(session_id)
```
"""
THINKING = "The user wants a cache.\n\nReads dominate, so LRU fits; size 128 covers the working set."


def config() -> Config:
    def role(name: str, model: str) -> RoleConfig:
        return RoleConfig(role=name, backend="openai", url="http://127.0.0.1:9/v1", model=model, context=32768,
                          sampling=Sampling())

    return Config(reasoner=role("reasoner", "deepseek-r1"), coder=role("coder", "qwen2.5-coder"))


def seeded_app(tmp_path, **kw) -> DuetApp:
    store = SessionStore.open(tmp_path / "s.db")
    sid = store.create_session("Session cache")
    store.add_user_message(sid, "/plan a cache for the session list")
    with store.begin_reply(sid, role="reasoner", model="deepseek-r1", intent="design",
                           why="/plan prefix → reasoner") as rec:
        deltas = [ThinkingDelta(w) for w in re.findall(r"\s*\S+\s*", THINKING)]  # about a token each, as servers send them
        for e in (*deltas, AnswerDelta(PLAN), Usage(812, 2310), Done("stop", 1.2, 41.0)):
            rec.add(e)
    store.add_user_message(sid, "/code write step 1 [bold]literally[/bold] 中文")
    with store.begin_reply(sid, role="coder", model="qwen2.5-coder", intent="implement",
                           why="/code prefix → coder") as rec:
        for e in (AnswerDelta("Added the cache in `store.py`."), Usage(1400, 90), Done("stop", 0.3, 2.1)):
            rec.add(e)
    return DuetApp(config(), store=store, load_models=False, resume=True, **kw)


async def _settle(pilot, timeout: float) -> None:
    frames, waited = [], 0.0
    while waited < timeout:
        for widget in pilot.app.screen.query("Input, TextArea"):
            widget.cursor_blink = False  # a blinking cursor never settles: keep it shown
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.05)
        waited += 0.05
        frames = [*frames[-2:], pilot.app.export_screenshot()]
        if len(frames) == 3 and frames[0] == frames[1] == frames[2]:
            return
    raise AssertionError(f"the screen was still changing after {timeout} s")


def settled(*keys: str, timeout: float = 10.0):
    """A run_before that waits until the screen stops changing (three equal frames in a row),
    presses ``keys`` and waits again, so a loaded machine cannot change what the snapshot sees."""
    async def run(pilot) -> None:
        await _settle(pilot, timeout)
        if keys:
            await pilot.press(*keys)
            await _settle(pilot, timeout)
    return run


def test_snapshot_chat_with_a_resumed_session(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), terminal_size=(120, 40), run_before=settled())


def test_snapshot_chat_on_a_narrow_terminal(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), terminal_size=(80, 40), run_before=settled())


def test_snapshot_expanded_trace_with_the_pane_hidden(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), terminal_size=(100, 40), run_before=settled("f2", "f2", "ctrl+t"))


def test_snapshot_hand_off_plan_editor(snap_compare, tmp_path):
    assert snap_compare(seeded_app(tmp_path), terminal_size=(100, 30), run_before=settled("ctrl+o"))


def test_snapshot_first_run(snap_compare, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", "/home/me/.config")
    found = [Found("gguf", "qwen2.5-coder-7b-instruct-q4_k_m", "/home/me/models/qwen2.5-coder-7b-q4_k_m.gguf", "4.4 GB"),
             Found("server", "deepseek-r1:14b", "http://127.0.0.1:11434/v1", "Ollama")]
    app = DuetApp(config(), store=SessionStore.open(tmp_path / "s.db"), first_run=True, load_models=False,
                  discover=lambda: found)

    async def found_shown(pilot) -> None:
        from textual.widgets import OptionList

        while not app.screen.query(OptionList) or app.screen.query_one(OptionList).option_count < 3:
            await pilot.pause(0.02)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=found_shown)
