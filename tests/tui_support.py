"""Shared pieces of the TUI tests: a config on the scripted server, an app, waiting for a reply."""

from __future__ import annotations

import time

from app.config import Config, RoleConfig, Sampling
from app.store import SessionStore
from app.tui.app import DuetApp
from app.tui.capture import screen_text
from app.tui.messages import ReplyItem


def server_config(url: str, *, coder_url: str | None = None, context: int = 4096) -> Config:
    def role(name: str, u: str) -> RoleConfig:
        return RoleConfig(role=name, backend="openai", url=u, model="scripted-model", context=context,
                          sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=256), timeout=5.0)

    return Config(reasoner=role("reasoner", url), coder=role("coder", coder_url or url))


def make_app(config: Config, *, store_path=None, workspace=None, load_models: bool = False, resume: bool = False,
             **kw) -> DuetApp:
    store = SessionStore.open(store_path) if store_path is not None else SessionStore.open()
    return DuetApp(config, store=store, workspace=workspace, load_models=load_models, resume=resume, **kw)


async def wait_for(pilot, condition, timeout: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        await pilot.pause(step)


async def wait_text(pilot, app, *texts: str, timeout: float = 10.0) -> str:
    """Wait until every one of ``texts`` is on screen (a repaint can lag the state it shows); the screen."""
    await wait_for(pilot, lambda: all(t in screen_text(app) for t in texts), timeout)
    return screen_text(app)


def replies(app) -> list[ReplyItem]:
    return list(app.chat.conversation.query(ReplyItem))


async def wait_reply(pilot, app, count: int = 1, timeout: float = 10.0) -> ReplyItem:
    """Wait until ``count`` replies exist and none is streaming; the last one."""
    await wait_for(pilot, lambda: len(replies(app)) >= count and app.chat.current is None, timeout)
    await pilot.pause()
    return replies(app)[-1]


async def type_and_send(pilot, text: str, key: str = "enter") -> None:
    await pilot.press(*text)
    await pilot.press(key)


def sent_messages(server) -> list[dict]:
    """The chat messages of the last chat request the server received."""
    chats = [r for r in server.requests if r.path.endswith("/chat/completions")]
    return chats[-1].json["messages"]


def text_of(app) -> str:
    return screen_text(app)


__all__ = ["make_app", "replies", "screen_text", "sent_messages", "server_config", "text_of", "wait_text",
           "type_and_send", "wait_for", "wait_reply"]
