"""The prompt templates in ``prompts/`` (installed as ``app.templates``), and the one place
that renders them.

A template is ``<role>-<intent>.<lang>.md`` (or a fragment such as ``edit-format.en.md``):
a header between ``---`` lines naming the variables it takes (``vars: a, b``), then the
text with ``{{a}}`` placeholders. Rendering is one pass: values are never re-expanded, a
missing or unexpected variable is an error, and a placeholder alone on its line whose
value is empty disappears with its line and one blank line after it.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from app.errors import UsageError

LANGS = ("en", "zh")
EDITING_INTENTS = ("implement", "edit", "test")  # coder intents that answer in SEARCH/REPLACE
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_ALONE = re.compile(r"^[ \t]*\{\{(\w+)\}\}[ \t]*\n(?:[ \t]*\n)?", re.M)


@dataclass(frozen=True)
class Template:
    name: str  # "reasoner-design.en"
    vars: tuple[str, ...]
    about: str
    body: str
    new_files: bool = False  # its edits may create files (header ``new_files: yes``)


# ---------------------------------------------------------------------------- loading

def template_dir():
    """The templates folder: the checkout's ``prompts/`` beside this ``app`` (a source tree, even
    one whose editable install points elsewhere), else the installed package ``app.templates``."""
    checkout = Path(__file__).resolve().parent.parent / "prompts"
    if (checkout / "labels.toml").is_file():
        return checkout
    try:
        from importlib.resources import files

        return files("app.templates")
    except ModuleNotFoundError:  # a source checkout: app.templates exists only once installed
        return Path(__file__).resolve().parent.parent / "prompts"


@functools.cache
def templates() -> dict[str, Template]:
    """Every template, by name, read once."""
    folder = template_dir()
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".md"):
            name = entry.name[: -len(".md")]
            found[name] = parse_template(name, entry.read_text(encoding="utf-8"))
    if not found:
        raise UsageError(f"{folder}: no prompt templates found")
    return found


@functools.cache
def labels() -> dict[str, dict[str, str]]:
    """Headings put around plans and files, per language (``labels.toml``)."""
    return tomllib.loads((template_dir() / "labels.toml").read_text(encoding="utf-8"))


def parse_template(name: str, text: str) -> Template:
    """Split the ``---`` header from the body; the header must list ``vars`` and match the body."""
    text = text.replace("\r\n", "\n")
    parts = text.split("---\n", 2)
    if len(parts) != 3 or parts[0].strip():
        raise UsageError(f"prompts/{name}.md: missing the '---' header listing its vars")
    header = dict(line.split(":", 1) for line in parts[1].splitlines() if ":" in line)
    if "vars" not in header:
        raise UsageError(f"prompts/{name}.md: header: missing 'vars:'")
    declared = tuple(v.strip() for v in header["vars"].split(",") if v.strip())
    used = set(_PLACEHOLDER.findall(parts[2]))
    if used != set(declared):
        raise UsageError(f"prompts/{name}.md: header vars {sorted(declared)} but body uses {sorted(used)}")
    return Template(name, declared, header.get("about", "").strip(), parts[2].strip() + "\n",
                    header.get("new_files", "").strip() == "yes")


def render(name: str, **values: str) -> str:
    """Fill template ``name`` (e.g. ``"reasoner-design.en"``); every declared var is required."""
    template = templates().get(name)
    if template is None:
        raise UsageError(f"prompts/{name}.md: no such template")
    missing = [v for v in template.vars if v not in values]
    extra = [v for v in values if v not in template.vars]
    if missing or extra:
        problem = f"missing {', '.join(missing)}" if missing else f"takes no {', '.join(extra)}"
        raise UsageError(f"prompts/{name}.md: {problem} (vars: {', '.join(template.vars) or 'none'})")
    for key, value in values.items():
        if not isinstance(value, str):
            raise UsageError(f"prompts/{name}.md: {key} must be text, not {type(value).__name__}")
    body = _ALONE.sub(lambda m: "" if not values[m.group(1)].strip() else m.group(0), template.body)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], body).strip() + "\n"


# ---------------------------------------------------------------------------- language

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_lang(text: str) -> str:
    """"zh" when Chinese carries a fair share of the prose (pasted code set aside), else "en"."""
    from app.router import split_request

    prose, _ = split_request(text or "")
    cjk = len(_CJK.findall(prose))
    latin = len(_LATIN.findall(prose))
    # One Chinese character says about as much as a short English word (~4 letters).
    return "zh" if cjk and cjk * 4 >= latin else "en"


# ---------------------------------------------------------------------------- material

_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_LANG_TAGS = {".py": "python", ".js": "javascript", ".ts": "typescript", ".tsx": "tsx", ".go": "go",
              ".rs": "rust", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c", ".cpp": "cpp",
              ".cs": "csharp", ".rb": "ruby", ".sh": "bash", ".sql": "sql", ".md": "markdown",
              ".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".html": "html",
              ".css": "css", ".tcss": "css"}


def strip_thinking(text: str) -> str:
    """The answer part only: drop ``<think>…</think>`` blocks, and anything before a stray
    ``</think>`` (templates that put the opening tag in the prompt leave only the closing one)."""
    text = text or ""
    if "</think>" in text.lower() and "<think>" not in text.lower().split("</think>", 1)[0]:
        text = text[text.lower().index("</think>") + len("</think>"):]
    return _THINK_BLOCK.sub("", text).strip()


def numbers_files(role: str) -> bool:
    """Whether this role's prompts number the lines of the files in them (`` 7 | text``)."""
    return role == "reasoner"


def numbered_lines(text: str) -> list[str]:
    """A file's lines as a prompt numbers them: line N is ``numbered_lines(text)[N - 1]``."""
    return text.replace("\r\n", "\n").rstrip("\n").split("\n")


def files_block(files: Iterable[tuple[str, str]], lang: str, *, numbered: bool) -> str:
    """Each file as a path line and a fence longer than any backtick run inside it."""
    files = list(files)
    if not files:
        return ""
    words = labels()[lang]
    out = [words["files"] + ("\n" + words["numbered"] if numbered else "")]
    for path, text in files:
        text = text.replace("\r\n", "\n")
        longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
        fence = "`" * max(3, longest + 1)
        body = text.rstrip("\n")
        if numbered:
            lines = numbered_lines(text)
            width = len(str(len(lines)))
            body = "\n".join(f"{n:>{width}} | {line}" for n, line in enumerate(lines, 1))
        tag = _LANG_TAGS.get(Path(path).suffix.lower(), "")
        out.append(f"{path}\n{fence}{tag}\n{body}\n{fence}")
    return "\n\n".join(out)


def _material(lang: str, *, plan: str | None, files, numbered: bool) -> str:
    parts = []
    answer = strip_thinking(plan) if plan else ""
    if answer:
        parts.append(f"{labels()[lang]['plan']}\n{answer}")
    block = files_block(files, lang, numbered=numbered)
    if block:
        parts.append(block)
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------- prompts

def template_name(role: str, intent: str, lang: str) -> str:
    """``<role>-<intent>.<lang>``, or the role's default intent when the role has no such template
    (e.g. the user forced the coder on a design request)."""
    from app.router import rules

    if role not in ("reasoner", "coder"):
        raise UsageError(f"role must be 'reasoner' or 'coder', not {role!r}")
    if lang not in LANGS:
        raise UsageError(f"lang must be one of {', '.join(LANGS)}, not {lang!r}")
    name = f"{role}-{intent}.{lang}"
    return name if name in templates() else f"{role}-{rules().role_default[role]}.{lang}"


def asks_for_edits(role: str, intent: str) -> str | None:
    """What the prompt for this role and intent asks for: None (no edit blocks), "edits" (of
    the files in context) or "edits and new files" (an implementation, tests)."""
    template = templates()[template_name(role, intent, "en")]
    if "edit_format" not in template.vars:
        return None
    return "edits and new files" if template.new_files else "edits"


def build_prompt(role: str, intent: str, request: str, *, plan: str | None = None,
                 files: Sequence[tuple[str, str]] = (), lang: str | None = None) -> str:
    """The user-message text for one turn. ``files``: ``(path, text)`` pairs; ``plan``: an earlier
    reasoner answer the coder should follow (any thinking trace in it is dropped)."""
    lang = lang or detect_lang(request)
    name = template_name(role, intent, lang)
    values = {
        "request": request.strip(),
        "material": _material(lang, plan=plan, files=files, numbered=numbers_files(role)),
    }
    if "edit_format" in templates()[name].vars:
        values["edit_format"] = render(f"edit-format.{lang}")
    return render(name, **values)


def handoff_brief(plan_answer: str, files: Sequence[tuple[str, str]] = (), request: str | None = None,
                  *, lang: str | None = None) -> str:
    """The coder's brief after a plan: the plan's answer (never its thinking trace), what to do
    now (``request``, e.g. "write the code for step 2"), the files, and the edit format."""
    plan = strip_thinking(plan_answer)
    if not plan:
        raise UsageError("hand-off: the plan is empty (nothing but a thinking trace?)")
    lang = lang or detect_lang(f"{request or ''}\n{plan}")
    focus = f"{labels()[lang]['focus']} {request.strip()}" if request and request.strip() else ""
    return render(f"coder-handoff.{lang}", plan=plan, focus=focus,
                  material=files_block(files, lang, numbered=False),
                  edit_format=render(f"edit-format.{lang}"))


def failing_tests_text(command: str, output: str, lang: str) -> str:
    """What a request is followed by when its tests fail before it is asked (`duet run` with
    ``test_first``): the command and its output (trimmed by the caller), fenced."""
    fenced = output.strip("\n").replace("```", "'''")
    return labels()[lang]["tests_fail_now"].format(command=command) + f"\n```\n{fenced}\n```"


REPLAN_PLAN_CHARS = 400  # each tried plan, as the re-plan request recalls it


def replan_request(request: str, tried: Sequence[str], *, command: str | None = None, output: str = "",
                   reasons: Sequence[str] = ()) -> str:
    """The request a re-plan sends the reasoner (`duet run --replans`) in place of the user's:
    the request, each plan already tried and undone (its answer, trimmed), and how the last one
    failed: the test command's output (trimmed by the caller), or why its edits did not apply."""
    lang = detect_lang(request)
    words = labels()[lang]
    listed = []
    for plan in tried:
        text = " ".join(strip_thinking(plan).split())
        listed.append("- " + (text if len(text) <= REPLAN_PLAN_CHARS else text[:REPLAN_PLAN_CHARS - 1] + "…"))
    if command is not None:
        fenced = output.strip("\n").replace("```", "'''")
        outcome = words["replan_tests"].format(command=command) + f"\n```\n{fenced}\n```"
    else:
        outcome = words["replan_unapplied"] + "".join(f"\n- {r}" for r in reasons)
    return render(f"reasoner-replan.{lang}", request=request.strip(), tried="\n".join(listed), outcome=outcome)
