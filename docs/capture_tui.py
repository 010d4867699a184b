"""Capture the running TUI for the README, on the real demo model (Gemma 3 270M via llama.cpp).

    python docs/capture_tui.py            # writes docs/screenshot.svg and docs/screen.txt

- docs/screenshot.svg: `app.save_screenshot()` from a Pilot run of the real app.
- docs/screen.txt: `tmux capture-pane` of `python -m app --demo` in a 120x40 tmux window
  (skipped when tmux is missing).
Both use a fresh data dir, so no earlier session is resumed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REQUEST = "what is a binary search? answer in two sentences"


async def svg(out: Path) -> None:
    from app.backends import close_all
    from app.config import demo_config
    from app.store import SessionStore
    from app.tui.app import DuetApp

    app = DuetApp(demo_config(), store=SessionStore.open(":memory:"), resume=False)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            status = app.chat.status_bar
            while status.role("coder").state != "ready":
                if status.role("coder").state == "failed":
                    raise SystemExit(f"the demo model failed to load: {status.role('coder').reason}")
                await pilot.pause(0.2)
            await pilot.press(*REQUEST, "enter")
            await pilot.pause(0.2)
            while app.chat.current is not None:
                await pilot.pause(0.1)
            await pilot.pause(0.3)
            app.save_screenshot(str(out.name), path=str(out.parent))
    finally:
        close_all()


def tmux(out: Path, home: str) -> bool:
    if shutil.which("tmux") is None:
        return False
    name = f"duet-capture-{os.getpid()}"
    env = f"DUET_HOME={home} PYTHONPATH={ROOT}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40"], check=True)
    try:
        subprocess.run(["tmux", "send-keys", "-t", name, f"cd {ROOT} && {env} {sys.executable} -m app --demo", "Enter"],
                       check=True)
        screen = ""
        for _ in range(300):  # until both models are ready
            time.sleep(0.2)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
            if screen.count("· ready") == 2:
                break
        subprocess.run(["tmux", "send-keys", "-t", name, "-l", REQUEST], check=True)
        subprocess.run(["tmux", "send-keys", "-t", name, "Enter"], check=True)
        for _ in range(600):  # until the reply's figures show and the coder is ready again
            time.sleep(0.2)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
            if "first token" in screen and screen.count("· ready") == 2:
                break
        time.sleep(0.5)
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout
        out.write_text(screen.rstrip() + "\n", encoding="utf-8")
        subprocess.run(["tmux", "send-keys", "-t", name, "C-q"])
        time.sleep(0.5)
        return True
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def main() -> int:
    home = tempfile.mkdtemp(prefix="duet-capture-")
    os.environ["DUET_HOME"] = home
    asyncio.run(svg(ROOT / "docs" / "screenshot.svg"))
    print("wrote docs/screenshot.svg")
    if tmux(ROOT / "docs" / "screen.txt", tempfile.mkdtemp(prefix="duet-capture-")):
        print("wrote docs/screen.txt")
    else:
        print("tmux not found: docs/screen.txt not written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
