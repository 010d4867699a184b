"""The command palette (Ctrl+P): every chat command, by name, with its key."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (action on the chat screen, title, help) — the keys come from the screen's bindings.
COMMANDS = [
    ("send('auto')", "Send (auto-routed)", "Send the prompt; the router picks the model"),
    ("send('reasoner')", "Send to the reasoner", "Force the reasoning model"),
    ("send('coder')", "Send to the coder", "Force the coding model (carries the last plan)"),
    ("hand_off", "Hand off the plan to the coder", "Edit the last plan, then send it with the files in context"),
    ("cancel", "Cancel the reply", "Stop streaming; the partial answer is kept"),
    ("regenerate", "Regenerate / retry", "Run the last request again"),
    ("continue", "Continue an interrupted reply", "Ask the same model to go on from where it stopped"),
    ("toggle_thinking", "Toggle the thinking trace", "Expand or collapse the last reply's trace"),
    ("pane_mode", "Thinking pane: side / below / hidden", "Cycle where the thinking pane sits"),
    ("widen_pane", "Widen the thinking pane", "Cycle the pane's width"),
    ("copy_answer", "Copy the answer", "Copy the last answer to the clipboard"),
    ("copy_code", "Copy the last code block", "Copy the last fenced code block of the last answer"),
    ("undo_changes", "Undo the last applied edit", "Put the files back exactly as they were before it (all rounds of one request)"),
    ("replan", "Re-plan", "Undo the last plan's change and ask the reasoner for another plan, told what failed"),
    ("test", "Run the tests", "Run the test command ([workspace] test, or the last /test CMD) in the workspace"),
    ("rewind", "Rewind the conversation", "Forget the last request and its replies (files stay; F12 undoes edits)"),
    ("files", "Add or drop files", "Fuzzy-pick files for the coder's context"),
    ("new_session", "New session", "Start an empty conversation"),
    ("sessions", "Sessions: switch, search, rename, delete, export", "Open the session list"),
]


class DuetCommands(Provider):
    def _screen(self):
        return getattr(self.app, "chat", None)

    def _key(self, action: str) -> str:
        screen = self._screen()
        name = action.split("(")[0]
        for binding in getattr(screen, "BINDINGS", []):
            if getattr(binding, "action", "").split("(")[0] == name and (name != "send" or binding.action == action):
                return binding.key
        return "enter" if action == "send('auto')" else ""

    def _run(self, action: str) -> None:
        screen = self._screen()
        if screen is not None:
            self.app.call_later(screen.run_action, action)

    def _hits(self):
        for action, title, help_text in COMMANDS:
            key = self._key(action)
            yield action, (f"{title} · {key}" if key else title), help_text

    async def discover(self) -> Hits:
        for action, title, help_text in self._hits():
            yield DiscoveryHit(title, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action, title, help_text in self._hits():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, action), help=help_text)
