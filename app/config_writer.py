"""First run: turn what discovery found (or the demo) into a config file, per role.

UI-free: the first-run screen asks which model plays each role and calls `write_config`; the
CLI uses `discovery_note` to say what was found when there is no config file at all.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from app.config import DEMO_SAMPLING, Config, parse_config
from app.discovery import Found, toml_str
from app.errors import DuetError

KIND = {"gguf": "GGUF file", "hf": "HF folder", "server": "server"}


@dataclass(frozen=True)
class Choice:
    """One option for a role: a found model, or the demo's model for that role (found is None)."""

    found: Found | None

    @property
    def is_demo(self) -> bool:
        return self.found is None

    def title(self, role: str) -> str:
        if self.found is None:
            return f"the demo {role} (trained in this repository; one small task only)"
        return f"{KIND.get(self.found.kind, self.found.kind)}: {self.found.label}"

    def detail(self) -> str:
        if self.found is None:
            return ""
        return f"{self.found.location}" + (f" — {self.found.detail}" if self.found.detail else "")

    def table(self, role: str) -> str:
        """The [role] table that uses this choice."""
        if self.found is not None:
            return self.found.config_snippet(role)
        from app import demo

        return demo_table(role, demo.reasoner_path() if role == "reasoner" else demo.coder_path())


def demo_table(role: str, path: Path) -> str:
    """The [role] table that runs a demo-style model as `duet --demo` does: the reasoner on our
    engine (int8) with the lines it reads back and the names it writes in inline code held to the
    files', the coder on llama.cpp with its edits and the names it writes held to the files in
    context (and the plan's), its first reply to a plan's lines, both greedy and each request alone (small models, one format,
    single turns)."""
    sampling = DEMO_SAMPLING[role]
    greedy = f"[{role}.sampling]\ntemperature = {sampling.temperature}\nmax_tokens = {sampling.max_tokens}\n"
    alone = "history = false\n"  # trained on single turns
    if role == "reasoner":
        return (f'[reasoner]\nbackend = "local"\npath = {toml_str(str(path))}\nquant = "int8"\ncontext = 2048\n'
                'exact_quotes = true\nknown_names = true\n' + alone + greedy)
    return (f'[coder]\nbackend = "llama.cpp"\npath = {toml_str(str(path))}\ncontext = 2048\n'
            'constrain_edits = true\nknown_names = true\nplan_lines = true\n' + alone + greedy)


def choices(found: list[Found]) -> list[Choice]:
    """What a role can be: each found model or server, then the demo's model."""
    return [Choice(f) for f in found] + [Choice(None)]


def config_text(reasoner: Choice, coder: Choice) -> str:
    stamp = time.strftime("%Y-%m-%d")
    return (f"# Written by Duet's first-run setup on {stamp}. Edit freely: the README's Configuration\n"
            "# section lists every key; `duet doctor` checks the file.\n\n"
            f"{reasoner.table('reasoner')}\n{coder.table('coder')}")


def write_config(path: Path, reasoner: Choice, coder: Choice) -> tuple[Config, str]:
    """Validate, then write the config for these choices; never overwrites an existing file.
    Returns the parsed config and the text written."""
    text = config_text(reasoner, coder)
    path = Path(path).expanduser()
    config = parse_config(tomllib.loads(text), source=str(path), base=path.parent)  # ConfigError: nothing written
    if path.exists():
        raise DuetError(f"{path}: a config file already exists there; not overwriting it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise DuetError(f"{path}: could not write the config file ({exc.strerror or exc})") from None
    return config, text


def discovery_note(found: list[Found], config_path: Path) -> str:
    """What to tell a user who ran a command without a config file: Duet uses the demo models,
    and here is what it found that they could use instead."""
    head = f"no config file ({config_path}): using the built-in demo models."
    if not found:
        return head + " Discovery found no models or local servers in the usual places."
    lines = [head + f" Discovery found {len(found)}; to use one, run `duet` and pick it, or write its lines "
                    f"to {config_path}:"]
    for f in found:
        lines.append(f"  {KIND.get(f.kind, f.kind)}: {f.label}  {f.location}" + (f"  ({f.detail})" if f.detail else ""))
    return "\n".join(lines)
