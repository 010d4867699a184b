"""Small modal screens: edit the plan before hand-off, pick files, confirm, ask for a name."""

from __future__ import annotations

from dataclasses import dataclass, replace

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from app.conversation.steps import Step, parse_steps


@dataclass(frozen=True)
class HandOff:
    """What the hand-off dialog decided: the plan text to send (edited, skipped steps left out,
    in the chosen order), its steps, and ``only``: the one step to implement (None: all)."""

    text: str
    steps: tuple[Step, ...]
    only: int | None = None


class PlanEditor(ModalScreen[HandOff | None]):
    """The last plan (answer only, never its trace), editable before it goes to the coder, with
    its numbered steps as a checklist: Tab moves between the text and the list; in the list,
    Space skips a step, Alt+Up/Down moves it, Enter hands off that step alone; Ctrl+S hands off
    every step not skipped or done; Esc cancels. ☑ marks steps already done (their tests passed)."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("ctrl+s", "send", "Send to coder", id="plan.send", priority=True),
        Binding("escape", "close", "Cancel", id="plan.cancel"),
        Binding("space", "skip", "Skip step", id="plan.skip", show=False),
        Binding("alt+up", "move(-1)", "Move up", id="plan.move_up", show=False),
        Binding("alt+down", "move(1)", "Move down", id="plan.move_down", show=False),
    ]

    def __init__(self, plan: str, files: list[str], steps: tuple[Step, ...] = ()):
        super().__init__()
        self.plan, self.files = plan, files
        self.steps: list[Step] = list(steps) or [Step(t) for t in parse_steps(plan)]
        self.edited = False  # the steps were skipped or moved: the text is rebuilt from them

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            files = ", ".join(self.files) if self.files else "no files in context (Ctrl+F adds some)"
            yield Static(Content.assemble(("Hand off to the coder", "bold"), "  ·  edit the plan, Ctrl+S sends, Esc cancels"),
                         markup=False)
            yield Static(Content(f"files: {files}"), classes="dim", markup=False)
            yield TextArea(self.plan, id="plan-text", soft_wrap=True)
            yield Static(Content("steps · Tab here, Space skips, Alt+↑/↓ moves, Enter sends one step"),
                         classes="dim", markup=False)
            yield OptionList(id="plan-steps")

    def on_mount(self) -> None:
        self.refresh_steps()
        first = next((i for i, s in enumerate(self.steps) if not s.done and not s.skipped), 0)
        if self.steps:
            self.query_one("#plan-steps", OptionList).highlighted = first

    def refresh_steps(self) -> None:
        options = self.query_one("#plan-steps", OptionList)
        highlighted = options.highlighted
        options.clear_options()
        for i, step in enumerate(self.steps):
            mark = "☑" if step.done else "⊘" if step.skipped else "☐"
            title = step.title if len(step.title) <= 100 else step.title[:99] + "…"
            options.add_option(Option(Content(f"{mark} {i + 1}. {title}"), id=str(i)))
        if options.option_count:
            options.highlighted = min(highlighted or 0, options.option_count - 1)

    @on(TextArea.Changed, "#plan-text")
    def _text_changed(self, event: TextArea.Changed) -> None:
        if getattr(self, "_rewriting", False):
            return
        old = {s.title: s for s in self.steps}
        self.steps = [Step(t, old[Step(t).title].done, old[Step(t).title].skipped) if Step(t).title in old else Step(t)
                      for t in parse_steps(event.text_area.text)]
        self.refresh_steps()

    def _step_list_focused(self) -> bool:
        return self.query_one("#plan-steps", OptionList).has_focus

    def action_skip(self) -> None:
        options = self.query_one("#plan-steps", OptionList)
        if not self._step_list_focused() or options.highlighted is None:
            return
        i = options.highlighted
        self.steps[i] = replace(self.steps[i], skipped=not self.steps[i].skipped)
        self.edited = True
        self.refresh_steps()

    def action_move(self, step: int) -> None:
        options = self.query_one("#plan-steps", OptionList)
        if not self._step_list_focused() or options.highlighted is None:
            return
        i, j = options.highlighted, options.highlighted + step
        if not 0 <= j < len(self.steps):
            return
        self.steps[i], self.steps[j] = self.steps[j], self.steps[i]
        self.edited = True
        self._rewriting = True
        self.query_one("#plan-text", TextArea).text = "\n".join(f"{k + 1}. {s.text}" for k, s in enumerate(self.steps))
        self.call_after_refresh(setattr, self, "_rewriting", False)
        self.refresh_steps()
        options.highlighted = j

    @on(OptionList.OptionSelected, "#plan-steps")
    def _one_step(self, event: OptionList.OptionSelected) -> None:
        index = int(event.option.id)
        if self.steps[index].skipped:
            self.notify("That step is skipped: Space takes it back.")
            return
        self.dismiss(HandOff(self.query_one("#plan-text", TextArea).text, tuple(self.steps), index))

    def action_send(self) -> None:
        text = self.query_one("#plan-text", TextArea).text
        if self.edited or any(s.done for s in self.steps):
            live = [s for s in self.steps if not s.skipped and not s.done]
            text = "\n".join(f"{k + 1}. {s.text}" for k, s in enumerate(live))
        self.dismiss(HandOff(text, tuple(self.steps)))

    def action_close(self) -> None:
        self.dismiss(None)


def fuzzy_score(query: str, candidate: str) -> int | None:
    """A subsequence match score (higher is better), or None when ``query`` is not a subsequence."""
    if not query:
        return 0
    q, c = query.lower(), candidate.lower()
    score, at, prev = 0, 0, -2
    for ch in q:
        found = c.find(ch, at)
        if found < 0:
            return None
        score += 3 if found == prev + 1 else 1  # runs count more
        if found == 0 or c[found - 1] in "/_.-":
            score += 2  # start of a path part or word
        prev, at = found, found + 1
    return score * 100 - len(c)


class FilePicker(ModalScreen[None]):
    """Fuzzy-find workspace files; Enter adds or drops the highlighted one (✓ = in context)."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("escape", "close", "Done", id="files.close")]
    LIMIT = 200

    def __init__(self, context):
        super().__init__()
        self.context = context  # app.workspace.FileContext
        self.all_files: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Content.assemble(("Files in context", "bold"), "  ·  type to filter, Enter adds/drops, Esc closes"),
                         markup=False)
            yield Input(placeholder="fuzzy filter, e.g. apptui", id="file-query")
            yield OptionList(id="file-list")
            yield Static("", id="file-budget", markup=False)

    def on_mount(self) -> None:
        self.all_files = self.context.walk()
        self.refresh_list("")

    @on(Input.Changed, "#file-query")
    def _changed(self, event: Input.Changed) -> None:
        self.refresh_list(event.value)

    def matches(self, query: str) -> list[str]:
        scored = [(s, f) for f in self.all_files if (s := fuzzy_score(query, f)) is not None]
        scored.sort(key=lambda x: (-x[0], x[1]))
        return [f for _, f in scored[: self.LIMIT]]

    def refresh_list(self, query: str) -> None:
        chosen = set(self.context.files)
        options = self.query_one("#file-list", OptionList)
        highlighted = options.highlighted
        options.clear_options()
        options.add_options([Option(Content(("✓ " if f in chosen else "  ") + f), id=f) for f in self.matches(query)])
        if options.option_count:
            options.highlighted = min(highlighted or 0, options.option_count - 1)
        budget = self.context.budget()
        self.query_one("#file-budget", Static).update(budget.describe())

    @on(Input.Submitted, "#file-query")
    def _submit(self) -> None:
        options = self.query_one("#file-list", OptionList)
        if options.highlighted is not None:
            self.toggle(options.get_option_at_index(options.highlighted).id)

    @on(OptionList.OptionSelected, "#file-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.toggle(event.option.id)

    def toggle(self, rel: str | None) -> None:
        if rel is None:
            return
        if rel in self.context.files:
            self.context.drop(rel)
        else:
            added = self.context.add(rel)
            for path, reason in added.skipped:
                self.notify(f"{path}: {reason}", severity="warning", markup=False)
        self.refresh_list(self.query_one("#file-query", Input).value)

    def on_key(self, event) -> None:
        if event.key in ("down", "up") and self.query_one("#file-query", Input).has_focus:
            options = self.query_one("#file-list", OptionList)
            options.action_cursor_down() if event.key == "down" else options.action_cursor_up()
            event.stop()

    def action_close(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question: y confirms, n or Esc declines."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small"):
            yield Static(Content(self.question), markup=False)
            yield Static(Content("y = yes · n = no"), classes="dim", markup=False)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class Ask(ModalScreen[str | None]):
    """One line of text (a new session title); Enter accepts, Esc cancels."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("escape", "close", "Cancel", id="ask.cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog small"):
            yield Static(Content(self.question), markup=False)
            yield Input(self.value, id="ask-input")

    @on(Input.Submitted)
    def _done(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_close(self) -> None:
        self.dismiss(None)
