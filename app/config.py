"""Duet's configuration: one TOML file, parsed once, validated once.

The schema is data (``SCHEMA`` below): each key with its type, so validation,
did-you-mean suggestions and the README's reference come from one place.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from app.errors import ConfigError

BUILTIN = "<built-in defaults>"
BACKENDS = ("local", "llama.cpp", "openai")
ROLES = ("reasoner", "coder")
QUANTS = ("int8", "int4")
DTYPES = ("bfloat16", "bf16", "float16", "fp16", "float32", "fp32")  # local_engine.engine.DTYPES

# key -> (python types accepted, description). Sections nest as dicts.
ROLE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "backend": ((str,), '"local" | "llama.cpp" | "openai"'),
    "url": ((str,), "openai: base url up to /v1"),
    "model": ((str,), "openai: model name sent to the server"),
    "api_key_env": ((str,), "openai: env var holding the API key"),
    "path": ((str,), "local: HF folder or deepseek2 .gguf file; llama.cpp: .gguf file"),
    "quant": ((str,), "local: int8 | int4"),
    "device": ((str,), "local/llama.cpp: cpu | cuda"),
    "dtype": ((str,), "local: bfloat16 | float32"),
    "speculative": ((str,), 'local: "mtp" (draft with the checkpoint\'s MTP module where it has one) | "off"'),
    "context": ((int,), "context window to use (tokens)"),
    "threads": ((int,), "llama.cpp/local: CPU threads"),
    "gpu_layers": ((int,), "llama.cpp: layers offloaded to the GPU"),
    "system_prompt": ((str,), "system prompt (R1 guidance: none)"),
    "history": ((bool,), "send the earlier turns' answers, tell a re-plan which plans failed, and send the coder the failing tests to fix forward (false: each request alone, as small models trained on single requests need; a coder's failed round is undone and its request asked again, sampled)"),
    "timeout": ((int, float), "openai: seconds to wait for the first byte"),
    "constrain_edits": ((bool,), "llama.cpp coder (or openai, on a server that takes llama.cpp's `grammar` field: llama-server, llama_cpp.server): sample edit blocks under a grammar (each SEARCH copied from a file in context; new files only where the prompt creates them)"),
    "exact_quotes": ((bool,), "local reasoner: a line it writes as the prompt numbers file lines (` 7 | text`) is held to line 7 of a file in context; after its thinking, its answer's inline code (`...`) restates code its thinking quoted or a file's line, name or path; a thinking's finding (\"Line K …\") says one of the demo reasoner's findings in their words, its `R` is of the kind its words name and not `W`, a change stated after it (\"Line K … `W` … `R`\") is line K with a W written R, a quoted docstring the named function's"),
    "known_names": ((bool,), "local reasoner, with exact_quotes: names in its inline code (`...`) are names the files' code has, or words of their paths, and a function it names (function `X`) is one they define; a coder, with constrain_edits: the names in its REPLACE code are the files' code's or the plan's inline code's"),
    "plan_lines": ((bool,), "coder, with constrain_edits: in its first reply to a plan, each line its REPLACE writes on a file in context is, past its indentation, a line of the files or code the plan quotes (inline or fenced), or blank, and not a line the plan says to change (\"from `X` to `Y`\"), and where the plan states one change, each SEARCH on the file with its X takes that line in; a retry (asked again, sampled) is free; off where the plan quotes no code"),
}
SAMPLING_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": ((int, float), "sampling temperature (0 = greedy)"),
    "top_p": ((int, float), "nucleus sampling mass"),
    "max_tokens": ((int,), "most tokens one answer may take"),
}
UI_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "resume_last": ((bool,), "reopen the last session on start"),
    "thinking_pane": ((str,), '"side" | "below" | "hidden"'),
}
WORKSPACE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "auto_commit": ((bool,), "git commit each applied change (off by default)"),
    "check_syntax": ((bool,), "reject an edit that leaves a file that parsed unparsable (on by default)"),
    "max_file_bytes": ((int,), "largest file the coder may edit"),
    "test": ((str,), "command run in the workspace root after an apply (duet run, /test)"),
    "test_timeout": ((int, float), "seconds the test command may run"),
    "test_first": ((bool,), "run the test command before the reasoner plans, reviews or analyses; a "
                            "failure goes with the request and focuses exact_quotes (off by default)"),
    "replans": ((int,), "when the tests still fail after a reasoner's plan, `duet run` undoes it and asks for "
                        "another, up to this many times (--replans overrides; 0 by default)"),
}
TOP_SECTIONS = ("reasoner", "coder", "ui", "workspace")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 8192
    seed: int | None = None  # per request (duet serve); not a config key


@dataclass(frozen=True)
class RoleConfig:
    role: str
    backend: str = "llama.cpp"
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    path: Path | None = None
    quant: str | None = None
    device: str = "cpu"
    dtype: str = "bfloat16"
    speculative: str = "mtp"
    context: int | None = None
    threads: int | None = None
    gpu_layers: int = 0
    system_prompt: str | None = None
    history: bool = True  # False: each request alone (its plan and files are in it anyway)
    constrain_edits: bool = False  # app/workspace/edit_grammar.py, for replies that ask for edits
    exact_quotes: bool = False  # app/exact_quotes.py, for prompts that number the files' lines
    known_names: bool = False  # with exact_quotes / constrain_edits: names held to the files' (app/exact_quotes.py, edit_grammar.py)
    plan_lines: bool = False  # with constrain_edits: REPLACE lines held to the files' and the plan's code (edit_grammar.py)
    timeout: float = 60.0
    sampling: Sampling = field(default_factory=Sampling)
    demo: bool = False  # the built-in Gemma 270M demo model

    @property
    def label(self) -> str:
        """A short name for the model, for status bars and transcripts."""
        if self.demo:
            return f"{self.model or 'gemma-3-270m'} (demo)"
        if self.model:
            return self.model
        if self.path is not None:
            return self.path.name
        return self.backend


@dataclass(frozen=True)
class UiConfig:
    resume_last: bool = True
    thinking_pane: str = "side"
    keymap: tuple[tuple[str, str], ...] = ()  # [ui.keymap]: binding id -> keys


@dataclass(frozen=True)
class WorkspaceConfig:
    auto_commit: bool = False
    check_syntax: bool = True
    max_file_bytes: int = 1_000_000
    test: str = ""  # "" : no test command
    test_timeout: float = 300.0
    test_first: bool = False  # run the tests before a reasoner's plan (Conversation.reproduce)
    replans: int = 0  # duet run's re-plans after a plan that fails its tests (app/run.py)


@dataclass(frozen=True)
class Config:
    reasoner: RoleConfig
    coder: RoleConfig
    ui: UiConfig = field(default_factory=UiConfig)
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)
    source: str = BUILTIN  # the file it came from, for error messages

    def role(self, name: str) -> RoleConfig:
        return self.reasoner if name == "reasoner" else self.coder

    @property
    def is_demo(self) -> bool:
        return self.reasoner.demo and self.coder.demo


DEFAULT_SAMPLING = {
    "reasoner": Sampling(temperature=0.6, top_p=0.95, max_tokens=8192),
    "coder": Sampling(temperature=0.2, top_p=0.95, max_tokens=4096),
}


DEMO_SAMPLING = {  # greedy: the demo models are small and trained on one format
    "reasoner": Sampling(temperature=0.0, top_p=1.0, max_tokens=1024),
    "coder": Sampling(temperature=0.0, top_p=1.0, max_tokens=512),
}


# `duet --demo run`'s re-plans: the demo reasoner's first plan is wrong on about one held-out
# module in four, and re-planned (sampled) it mostly finds the fix the tests want (README: Demo)
DEMO_REPLANS = 4


def demo_role(role: str) -> RoleConfig:
    """The built-in demo (app/demo.py): the reasoner trained in this repository on our own engine
    (local, int8), the lines it reads back held to the files' (``exact_quotes``) and the names
    in its inline code to theirs (``known_names``); the coder on
    llama.cpp from its GGUF, its edit blocks held to the files in context (``constrain_edits``)
    and the names of its REPLACE lines to theirs and the plan's (``known_names``), and its first
    reply to a plan's lines (``plan_lines``: the plan's change as stated, never the line it says
    to change written back; a retry after failing tests is its own, so it can still mend a plan
    that is slightly wrong).
    Both were trained on single turns, so each request goes alone (``history`` off: the plan
    and the files are in it)."""
    from app import demo

    if role == "reasoner":
        return RoleConfig(role=role, backend="local", path=demo.reasoner_path(), quant="int8", context=2048,
                          model="duet-demo-reasoner", demo=True, history=False, exact_quotes=True, known_names=True,
                          sampling=DEMO_SAMPLING[role])
    return RoleConfig(role=role, backend="llama.cpp", path=demo.coder_path(), context=2048,
                      model="duet-demo-coder", demo=True, history=False, constrain_edits=True, known_names=True,
                      plan_lines=True, sampling=DEMO_SAMPLING[role])


def gemma_demo_role(role: str) -> RoleConfig:
    """The optional Gemma 3 270M demo (``pip install 'duet[demo]'``) through llama.cpp."""
    return RoleConfig(role=role, backend="llama.cpp", context=2048, demo=True,
                      sampling=replace(DEFAULT_SAMPLING[role], max_tokens=256))


def demo_config() -> Config:
    from app import demo

    # the sample project's own test runner, run before a plan too (the failure focuses the demo
    # reasoner's reading); and the tests choose among the reasoner's plans (DEMO_REPLANS)
    ws = WorkspaceConfig(test=demo.test_command(), test_first=True, replans=DEMO_REPLANS)
    return Config(reasoner=demo_role("reasoner"), coder=demo_role("coder"), workspace=ws)


def load_config(path: str | Path | None) -> Config:
    """Read and validate ``path``; ``None`` gives the built-in demo defaults."""
    if path is None:
        return demo_config()
    file = Path(path).expanduser()
    name = str(file)
    if file.is_dir():
        raise ConfigError(name, "", "is a folder, not a config file")
    if not file.is_file():
        raise ConfigError(name, "", "config file not found")
    try:  # utf-8-sig: a byte-order mark (as some Windows editors write) is not an error
        data = tomllib.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[:exc.start].count(b"\n") + 1
        raise ConfigError(name, "", f"not UTF-8 text (line {line})") from None
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, "", f"invalid TOML: {exc}") from None
    return parse_config(data, source=name, base=file.parent)


def parse_config(data: dict, *, source: str = BUILTIN, base: Path | None = None) -> Config:
    """Validate a parsed TOML table and build the Config it describes."""
    _check_keys(data, {k: None for k in TOP_SECTIONS}, source, "")
    for section in TOP_SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(source, section, f"must be a table ([{section}]), got {_tname(data[section])}")
    roles: dict[str, RoleConfig] = {}
    for role in ROLES:
        if role in data:
            roles[role] = _parse_role(role, data[role], source, base or Path.cwd())
    if not roles:
        reasoner, coder = demo_role("reasoner"), demo_role("coder")
    else:
        # One configured role serves both, with each role's own sampling defaults.
        only = next(iter(roles.values()))
        reasoner = roles.get("reasoner") or replace(only, role="reasoner", sampling=DEFAULT_SAMPLING["reasoner"])
        coder = roles.get("coder") or replace(only, role="coder", sampling=DEFAULT_SAMPLING["coder"])
    ui_table = dict(data.get("ui", {}))
    keymap = ui_table.pop("keymap", {})
    if not isinstance(keymap, dict):
        raise ConfigError(source, "ui.keymap", f"must be a table of binding id = keys, got {_tname(keymap)}")
    for binding, keys in keymap.items():
        if not isinstance(keys, str):
            raise ConfigError(source, f"ui.keymap.{binding}", f'must be a string of keys like "f6" or "ctrl+k", got {_tname(keys)}')
    ui = UiConfig(**_parse_flat(ui_table, UI_KEYS, source, "ui"), keymap=tuple(keymap.items()))
    if ui.thinking_pane not in ("side", "below", "hidden"):
        raise ConfigError(source, "ui.thinking_pane", f'must be "side", "below" or "hidden", got "{ui.thinking_pane}"')
    ws = WorkspaceConfig(**_parse_flat(data.get("workspace", {}), WORKSPACE_KEYS, source, "workspace"))
    if not 0 < ws.test_timeout < math.inf:  # nan and inf too
        raise ConfigError(source, "workspace.test_timeout", f"must be a positive number of seconds, got {ws.test_timeout:g}")
    if ws.replans < 0:
        raise ConfigError(source, "workspace.replans", f"must be 0 or more, got {ws.replans}")
    if ws.max_file_bytes <= 0:
        raise ConfigError(source, "workspace.max_file_bytes", f"must be a positive number of bytes, got {ws.max_file_bytes}")
    return Config(reasoner=reasoner, coder=coder, ui=ui, workspace=ws, source=source)


def _parse_role(role: str, table: dict, source: str, base: Path) -> RoleConfig:
    sampling_table = table.get("sampling", {})
    flat = {k: v for k, v in table.items() if k != "sampling"}
    values = _parse_flat(flat, ROLE_KEYS, source, role)
    if "sampling" in table and not isinstance(sampling_table, dict):
        raise ConfigError(source, f"{role}.sampling", f"must be a table, got {_tname(sampling_table)}")
    sampling = replace(DEFAULT_SAMPLING[role], **_parse_flat(sampling_table, SAMPLING_KEYS, source, f"{role}.sampling"))
    _check_sampling(sampling, source, role)

    backend = values.get("backend")
    if backend is None:
        raise ConfigError(source, f"{role}.backend", f"missing; choose one of {', '.join(BACKENDS)}")
    if backend not in BACKENDS:
        hint = _did_you_mean(backend, BACKENDS)
        raise ConfigError(source, f"{role}.backend", f'unknown backend "{backend}"{hint}; choose one of {", ".join(BACKENDS)}')
    if "speculative" in values and values["speculative"] not in ("mtp", "off"):
        raise ConfigError(source, f"{role}.speculative", f'must be "mtp" or "off", got "{values["speculative"]}"')
    if "quant" in values and values["quant"] not in QUANTS:
        raise ConfigError(source, f"{role}.quant", f'must be "int8" or "int4", got "{values["quant"]}"')
    for key in ("context", "threads"):
        if key in values and values[key] <= 0:
            raise ConfigError(source, f"{role}.{key}", f"must be positive, got {values[key]}")
    if values.get("gpu_layers", 0) < -1:
        raise ConfigError(source, f"{role}.gpu_layers", f"must be -1 (all) or more, got {values['gpu_layers']}")
    if "timeout" in values and not 0 < values["timeout"] < math.inf:
        raise ConfigError(source, f"{role}.timeout", f"must be a positive number of seconds, got {values['timeout']:g}")
    if "device" in values and not re.fullmatch(r"cpu|cuda(:\d+)?", values["device"]):
        raise ConfigError(source, f"{role}.device", f'must be "cpu" or "cuda" (or "cuda:N"), got "{values["device"]}"')
    if "dtype" in values and values["dtype"] not in DTYPES:
        raise ConfigError(source, f"{role}.dtype", f'must be one of {", ".join(DTYPES)}, got "{values["dtype"]}"')
    if values.get("constrain_edits") and backend not in ("llama.cpp", "openai"):
        raise ConfigError(source, f"{role}.constrain_edits",
                          f'works with the llama.cpp backend (or an openai server that takes llama.cpp\'s grammar), not "{backend}"')
    if values.get("exact_quotes") and backend != "local":
        raise ConfigError(source, f"{role}.exact_quotes", f'works with the local backend only, not "{backend}"')
    if values.get("known_names") and not (values.get("exact_quotes") or values.get("constrain_edits")):
        raise ConfigError(source, f"{role}.known_names", "holds names to the files where exact_quotes (a local reasoner) "
                          "or constrain_edits (a llama.cpp coder) does; set one of them too")
    if values.get("plan_lines") and not values.get("constrain_edits"):
        raise ConfigError(source, f"{role}.plan_lines", "holds a coder's REPLACE lines where constrain_edits holds its "
                          "edit blocks; set constrain_edits = true too")

    if backend == "openai":
        url = values.get("url")
        if not url:
            raise ConfigError(source, f"{role}.url", "missing; the openai backend needs the server's base url, e.g. http://127.0.0.1:8000/v1")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(source, f"{role}.url", f'"{url}" is not an http(s) url with a host')
        try:
            parsed.port  # raises on a port that is not a number from 0 to 65535
        except ValueError:
            raise ConfigError(source, f"{role}.url", f'"{url}" has a bad port') from None
    else:
        raw = values.get("path")
        if not raw:
            what = "a HF model folder or a deepseek2 .gguf file" if backend == "local" else "a .gguf file"
            raise ConfigError(source, f"{role}.path", f"missing; the {backend} backend needs {what}")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base / path
        if backend == "local" and path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ConfigError(source, f"{role}.path", f"not a model folder or a .gguf file: {path}")
            if "quant" in values:
                raise ConfigError(source, f"{role}.quant", "a .gguf file runs its own quantized types; "
                                  "remove quant (it applies to HF folders)")
        elif backend == "local" and not (path / "config.json").is_file():
            problem = "no such folder or file" if not path.exists() else "no config.json in that folder"
            raise ConfigError(source, f"{role}.path", f"{problem}: {path}")
        if backend == "llama.cpp" and not path.is_file():
            problem = "a folder, not a .gguf file" if path.is_dir() else "no such file"
            raise ConfigError(source, f"{role}.path", f"{problem}: {path}")
        values["path"] = path
    return RoleConfig(role=role, sampling=sampling, **values)


def _check_sampling(s: Sampling, source: str, role: str) -> None:
    if not 0 <= s.temperature < math.inf:  # nan and inf too
        raise ConfigError(source, f"{role}.sampling.temperature", f"must be a finite number >= 0, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise ConfigError(source, f"{role}.sampling.top_p", f"must be in (0, 1], got {s.top_p}")
    if s.max_tokens <= 0:
        raise ConfigError(source, f"{role}.sampling.max_tokens", f"must be positive, got {s.max_tokens}")


def _parse_flat(table: dict, schema: dict, source: str, prefix: str) -> dict:
    _check_keys(table, schema, source, prefix)
    out = {}
    for key, value in table.items():
        types, _ = schema[key]
        # bool is an int in Python; TOML keeps them apart, so do we.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            want = "a number" if float in types else _TYPE_NAMES[types[0]]
            raise ConfigError(source, f"{prefix}.{key}", f"must be {want}, got {_tname(value)} {value!r}")
        out[key] = float(value) if float in types and not isinstance(value, bool) else value
    return out


def _check_keys(table: dict, schema: dict, source: str, prefix: str) -> None:
    allowed = list(schema) + (["sampling"] if prefix in ROLES else [])
    for key in table:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(source, where, f"unknown key{_did_you_mean(key, allowed)}")


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _tname(value) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", dict: "table", list: "array"}.get(type(value), type(value).__name__)
