"""Capture the TUI's test round for the README: a coder edit that fails the tests, the failure
going back to the coder, the fix passing. Scripted loopback servers stand in for the models,
so this runs anywhere in seconds; the test command is real pytest on a real temp project.

    python docs/capture_test_round.py        # writes docs/test-round.txt (and prints it)
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def edit(search: str, replace: str) -> str:
    return f"```python\ncalc.py\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```\n"


async def capture(tmp: Path) -> str:
    from app.config import RoleConfig, WorkspaceConfig
    from app.store import SessionStore
    from app.tui.app import DuetApp
    from app.tui.capture import screen_text
    from app.tui.diff_preview import DiffPreview
    from app.workspace import Workspace
    from tests.sse_server import ScriptedServer, text_reply
    from tests.tui_support import server_config

    root = tmp / "proj"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (root / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    ws = Workspace(root)
    ws.context.add("calc.py")
    with ScriptedServer(models=("qwen2.5-coder",)) as coder:
        coder.enqueue(text_reply("Swapped the operator.\n\n" + edit("    return a - b", "    return a * b")),
                      text_reply("The test wants the sum.\n\n" + edit("    return a * b", "    return a + b")))
        config = server_config(coder.base_url)
        role = dataclasses.replace(config.coder, model="qwen2.5-coder")
        config = dataclasses.replace(config, coder=role, reasoner=dataclasses.replace(role, role="reasoner"),
                                     workspace=WorkspaceConfig(test="python -m pytest -q test_calc.py"))
        assert isinstance(role, RoleConfig)
        app = DuetApp(config, store=SessionStore.open(tmp / "s.db"), workspace=ws, load_models=False, resume=False)
        async with app.run_test(size=(100, 80)) as pilot:
            await pilot.press("f2", "f2")  # the thinking pane hidden: the coder does not think
            for key in "/code fix add in calc.py":
                await pilot.press(key)
            await pilot.press("enter")
            for _ in range(2):
                while not isinstance(app.screen, DiffPreview):
                    await pilot.pause(0.05)
                await pilot.press("a", "enter")
                while isinstance(app.screen, DiffPreview):
                    await pilot.pause(0.05)
            while app.chat.busy:
                await pilot.pause(0.05)
            await pilot.pause(0.3)
            app.chat.conversation.scroll_home(animate=False)
            await pilot.pause(0.3)
            return screen_text(app)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DUET_HOME"] = str(Path(tmp) / "home")
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # this python
        text = asyncio.run(capture(Path(tmp)))
    out = ROOT / "docs" / "test-round.txt"
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
