"""The CLI and configuration surface, from outside: the real `duet` command in a subprocess, fed
a wide table of bad input. Each must be exit 2 (as the contract says) with exactly one line on
stderr that names the file and key, or the option, and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD_URL = "http://127.0.0.1:9/v1"  # loopback, nothing listens: the config is valid, no server is needed
OPENAI = f'backend = "openai"\nurl = "{GOOD_URL}"\nmodel = "m"\n'


@pytest.fixture
def env(tmp_path) -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DUET_HOME=str(tmp_path / "home"),
             XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    e.pop("DUET_CONFIG", None)
    return e


def duet(env: dict, *args: str, cwd=None, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          env=dict(env, **extra), cwd=cwd or env["DUET_HOME"].rsplit("/", 1)[0], timeout=120)


def one_line_error(result: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """Exit ``code``, exactly one line on stderr starting "duet:", holding each of ``words``."""
    err = result.stderr
    assert result.returncode == code, (result.returncode, err, result.stdout)
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("duet: "), err
    for word in words:
        assert word in err, (word, err)
    return err


def write_config(tmp_path: Path, text: str | bytes, name: str = "config.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ bad config files: file and key

def role(body: str, name: str = "reasoner") -> str:
    return f"[{name}]\n{OPENAI}{body}"


def sampling(body: str, name: str = "reasoner") -> str:
    return f"[{name}]\n{OPENAI}[{name}.sampling]\n{body}"


BAD_CONFIGS = [
    # tables where values belong, values where tables belong
    ("reasoner = 3\n", "reasoner", "table"),
    ('coder = "x"\n', "coder", "table"),
    ("ui = 1\n", "ui", "table"),
    ("workspace = []\n", "workspace", "table"),
    ("[[reasoner]]\nbackend = \"openai\"\n", "reasoner", "table"),
    (role("sampling = 0.5\n"), "reasoner.sampling", "table"),
    ('[ui]\nkeymap = "f6"\n', "ui.keymap", "table"),
    ('[ui.keymap]\n"chat.hand_off" = 6\n', "ui.keymap.chat.hand_off", "string"),
    (role("[reasoner.context]\nsize = 1\n"), "reasoner.context", "integer"),
    ("[reasoner.backend]\nname = \"openai\"\n", "reasoner.backend", "string"),
    ("[workspace.test]\ncmd = \"pytest\"\n", "workspace.test", "string"),
    (sampling("[reasoner.sampling.temperature]\nv = 1\n"), "reasoner.sampling.temperature", "number"),
    # wrong types, every key
    ("[reasoner]\nbackend = 1\n", "reasoner.backend", "string"),
    ('[reasoner]\nbackend = "openai"\nurl = 8000\n', "reasoner.url", "string"),
    (role("model = 1\n").replace('model = "m"\n', ""), "reasoner.model", "string"),
    (role("api_key_env = 1\n"), "reasoner.api_key_env", "string"),
    ('[coder]\nbackend = "llama.cpp"\npath = 1\n', "coder.path", "string"),
    (role("quant = 8\n"), "reasoner.quant", "string"),
    (role("device = 0\n"), "reasoner.device", "string"),
    (role("dtype = 16\n"), "reasoner.dtype", "string"),
    (role("speculative = true\n"), "reasoner.speculative", "string"),
    (role('context = "big"\n'), "reasoner.context", "integer"),
    (role("context = 1.5\n"), "reasoner.context", "integer"),
    (role("context = true\n"), "reasoner.context", "integer"),
    (role('threads = "2"\n'), "reasoner.threads", "integer"),
    (role('gpu_layers = "all"\n'), "reasoner.gpu_layers", "integer"),
    (role("system_prompt = 1\n"), "reasoner.system_prompt", "string"),
    (role('history = "no"\n'), "reasoner.history", "true or false"),
    (role("history = 0\n"), "reasoner.history", "true or false"),
    (role('timeout = "10"\n'), "reasoner.timeout", "number"),
    (role("constrain_edits = 1\n"), "reasoner.constrain_edits", "true or false"),
    (role('exact_quotes = "yes"\n'), "reasoner.exact_quotes", "true or false"),
    (role("known_names = 0\n"), "reasoner.known_names", "true or false"),
    (role('plan_lines = "x"\n'), "reasoner.plan_lines", "true or false"),
    (sampling('temperature = "hot"\n'), "reasoner.sampling.temperature", "number"),
    (sampling("temperature = true\n"), "reasoner.sampling.temperature", "number"),
    (sampling('top_p = "0.9"\n', "coder"), "coder.sampling.top_p", "number"),
    (sampling('max_tokens = "many"\n'), "reasoner.sampling.max_tokens", "integer"),
    (sampling("max_tokens = 1.5\n"), "reasoner.sampling.max_tokens", "integer"),
    (sampling("max_tokens = [1]\n"), "reasoner.sampling.max_tokens", "integer"),
    ('[ui]\nresume_last = "yes"\n', "ui.resume_last", "true or false"),
    ("[ui]\nthinking_pane = 1\n", "ui.thinking_pane", "string"),
    ("[workspace]\nauto_commit = 1\n", "workspace.auto_commit", "true or false"),
    ('[workspace]\ncheck_syntax = "yes"\n', "workspace.check_syntax", "true or false"),
    ('[workspace]\nmax_file_bytes = "1MB"\n', "workspace.max_file_bytes", "integer"),
    ('[workspace]\ntest = ["pytest"]\n', "workspace.test", "string"),
    ("[workspace]\ntest = 1\n", "workspace.test", "string"),
    ('[workspace]\ntest_timeout = "5"\n', "workspace.test_timeout", "number"),
    ("[workspace]\ntest_timeout = 1979-05-27\n", "workspace.test_timeout", "number"),
    ("[workspace]\ntest_first = 1\n", "workspace.test_first", "true or false"),
    ('[workspace]\nreplans = "4"\n', "workspace.replans", "integer"),
    ("[workspace]\nreplans = 1.5\n", "workspace.replans", "integer"),
    # numbers out of range
    (role("context = 0\n"), "reasoner.context", "positive"),
    (role("context = -4096\n"), "reasoner.context", "positive"),
    (role("threads = 0\n"), "reasoner.threads", "positive"),
    (role("gpu_layers = -2\n"), "reasoner.gpu_layers", "-1"),
    (role("timeout = 0\n"), "reasoner.timeout", "positive"),
    (role("timeout = -1.5\n"), "reasoner.timeout", "positive"),
    (role("timeout = nan\n"), "reasoner.timeout", "positive"),
    (sampling("max_tokens = 0\n"), "reasoner.sampling.max_tokens", "positive"),
    (sampling("max_tokens = -5\n", "coder"), "coder.sampling.max_tokens", "positive"),
    (sampling("temperature = -0.1\n"), "reasoner.sampling.temperature", ">= 0"),
    (sampling("temperature = nan\n"), "reasoner.sampling.temperature", ">= 0"),
    (sampling("temperature = inf\n"), "reasoner.sampling.temperature", ">= 0"),
    (sampling("top_p = 0\n"), "reasoner.sampling.top_p", "(0, 1]"),
    (sampling("top_p = 1.5\n"), "reasoner.sampling.top_p", "(0, 1]"),
    (sampling("top_p = -1\n"), "reasoner.sampling.top_p", "(0, 1]"),
    (sampling("top_p = nan\n"), "reasoner.sampling.top_p", "(0, 1]"),
    ("[workspace]\ntest_timeout = 0\n", "workspace.test_timeout", "positive"),
    ("[workspace]\ntest_timeout = -3\n", "workspace.test_timeout", "positive"),
    ("[workspace]\ntest_timeout = nan\n", "workspace.test_timeout", "positive"),
    ("[workspace]\ntest_timeout = inf\n", "workspace.test_timeout", "positive"),
    ("[workspace]\nmax_file_bytes = 0\n", "workspace.max_file_bytes", "positive"),
    ("[workspace]\nmax_file_bytes = -1\n", "workspace.max_file_bytes", "positive"),
    ("[workspace]\nreplans = -1\n", "workspace.replans", "0 or more"),
    # unknown keys, each level
    ("foo = 1\n", "foo", "unknown key"),
    ("[models]\nx = 1\n", "models", "unknown key"),
    ('[resoner]\nbackend = "openai"\n', "resoner", 'did you mean "reasoner"'),
    (role("bakend = 1\n"), "reasoner.bakend", 'did you mean "backend"'),
    (role("temperature = 0.3\n"), "reasoner.temperature", "unknown key"),
    (sampling("seed = 1\n"), "reasoner.sampling.seed", "unknown key"),
    (sampling("temprature = 0.3\n", "coder"), "coder.sampling.temprature", 'did you mean "temperature"'),
    ('[ui]\ntheme = "dark"\n', "ui.theme", "unknown key"),
    ('[workspace]\ntests = "pytest"\n', "workspace.tests", 'did you mean "test"'),
    # values outside their choices
    ('[reasoner]\nbackend = "vllm"\n', "reasoner.backend", "unknown backend"),
    ('[reasoner]\nbackend = ""\n', "reasoner.backend", "unknown backend"),
    ('[coder]\nbackend = "llamacpp"\n', "coder.backend", 'did you mean "llama.cpp"'),
    ('[reasoner]\nurl = "http://x/v1"\n', "reasoner.backend", "missing"),
    (role('quant = "int3"\n'), "reasoner.quant", "int8"),
    (role('quant = "fp8"\n'), "reasoner.quant", "int4"),
    (role('device = "gpu"\n'), "reasoner.device", "cuda"),
    (role('dtype = "int8"\n'), "reasoner.dtype", "bfloat16"),
    (role('speculative = "eagle"\n'), "reasoner.speculative", '"mtp" or "off"'),
    ('[ui]\nthinking_pane = "left"\n', "ui.thinking_pane", "side"),
    # openai urls
    ('[reasoner]\nbackend = "openai"\n', "reasoner.url", "missing"),
    ('[reasoner]\nbackend = "openai"\nurl = ""\n', "reasoner.url", "missing"),
    ('[reasoner]\nbackend = "openai"\nurl = "localhost:8000"\n', "reasoner.url", "http(s)"),
    ('[reasoner]\nbackend = "openai"\nurl = "ftp://127.0.0.1/v1"\n', "reasoner.url", "http(s)"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://"\n', "reasoner.url", "http(s)"),
    ('[reasoner]\nbackend = "openai"\nurl = "https:///v1"\n', "reasoner.url", "http(s)"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://:8000/v1"\n', "reasoner.url", "http(s)"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://127.0.0.1:99999/v1"\n', "reasoner.url", "port"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://127.0.0.1:abc/v1"\n', "reasoner.url", "port"),
    # cross-key rules
    (role("exact_quotes = true\n"), "reasoner.exact_quotes", "local backend"),
    (role("known_names = true\n"), "reasoner.known_names", "exact_quotes"),
    (role("plan_lines = true\n"), "reasoner.plan_lines", "constrain_edits"),
]


@pytest.mark.parametrize("text, key, words", BAD_CONFIGS, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_CONFIGS)])
def test_a_bad_config_is_exit_2_in_one_line_naming_file_and_key(tmp_path, env, text, key, words):
    path = write_config(tmp_path, text)
    err = one_line_error(duet(env, "--config", str(path), "ask", "hi"), f"{path}: {key}: ", words)
    assert "\n" not in err.rstrip("\n")


@pytest.mark.parametrize("command", [[], ["tui"], ["ask", "hi"], ["run", "hi"], ["doctor"], ["route", "hi"],
                                     ["export-traces", "--out", "x.jsonl"], ["serve", "--port", "0"]])
@pytest.mark.parametrize("via", ["flag", "env"])
def test_every_command_rejects_a_bad_config_given_by_flag_or_env(tmp_path, env, command, via):
    path = write_config(tmp_path, role("context = -1\n"))
    if via == "flag":
        result = duet(env, "--config", str(path), *command)
    else:
        result = duet(env, *command, DUET_CONFIG=str(path))
    one_line_error(result, str(path), "reasoner.context")
    assert not (tmp_path / "x.jsonl").exists()


def test_a_bad_platform_config_file_is_found_and_named(tmp_path, env):
    path = tmp_path / "xdg" / "duet" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[coder]\nbackend = "llama.cpp"\npath = "gone.gguf"\n')
    one_line_error(duet(env, "ask", "hi"), str(path), "coder.path", "gone.gguf")


# ------------------------------------------------------------------ unreadable config files

@pytest.mark.parametrize("text, line", [
    ("[reasoner\nbackend = 1\n", "line 1"),
    ('[ui]\nresume_last = true\nthinking_pane = \n', "line 3"),
    ('[ui]\nresume_last = true\nresume_last = false\n', "line 3"),
    ('[reasoner]\nbackend = "openai\n', "line 2"),
    ("\n\n\n[workspace]\ntest = 'a' 'b'\n", "line 5"),
])
def test_invalid_toml_names_the_file_and_the_line(tmp_path, env, text, line):
    path = write_config(tmp_path, text)
    one_line_error(duet(env, "--config", str(path), "ask", "hi"), str(path), "TOML", line)


def test_a_config_that_is_not_utf8_names_the_file_and_line(tmp_path, env):
    path = write_config(tmp_path, b'[ui]\nthinking_pane = "s\xffde"\n')
    one_line_error(duet(env, "--config", str(path), "doctor"), str(path), "UTF-8", "line 2")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "\ufeff[ui]\nresume_last = false\n"],
                         ids=["empty", "blank", "comment", "byte-order-mark"])
def test_an_empty_or_bom_config_is_read_as_defaults(tmp_path, env, text):
    path = write_config(tmp_path, text)
    result = duet(env, "--config", str(path), "route", "--json", "design a cache")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["role"] == "reasoner"


@pytest.mark.parametrize("via", ["flag", "env"])
def test_a_config_path_that_is_missing_or_a_folder_is_exit_2(tmp_path, env, via):
    missing, folder = tmp_path / "nope.toml", tmp_path / "conf.d"
    folder.mkdir()
    for path, words in ((missing, "not found"), (folder, "folder")):
        if via == "flag":
            result = duet(env, "--config", str(path), "doctor")
        else:
            result = duet(env, "doctor", DUET_CONFIG=str(path))
        one_line_error(result, str(path), words)


# ------------------------------------------------------------------ model paths

def test_model_paths_that_do_not_fit_their_backend(tmp_path, env):
    (tmp_path / "folder").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "not-gguf.gguf").write_text("hello")
    cases = [
        ('[coder]\nbackend = "local"\npath = "missing"\n', "coder.path", "no such folder"),
        ('[coder]\nbackend = "local"\npath = "weights.bin"\n', "coder.path", "not a model folder"),
        ('[coder]\nbackend = "local"\npath = "folder"\n', "coder.path", "no config.json"),
        ('[coder]\nbackend = "local"\n', "coder.path", "missing"),
        ('[coder]\nbackend = "llama.cpp"\npath = "folder"\n', "coder.path", "folder"),
        ('[coder]\nbackend = "llama.cpp"\npath = "missing.gguf"\n', "coder.path", "no such file"),
        ('[coder]\nbackend = "llama.cpp"\npath = ""\n', "coder.path", "missing"),
    ]
    for text, key, words in cases:
        path = write_config(tmp_path, text)
        one_line_error(duet(env, "--config", str(path), "ask", "hi"), f"{path}: {key}: ", words)


def test_a_llama_cpp_file_that_is_not_gguf_is_exit_2_naming_file_and_key(tmp_path, env):
    (tmp_path / "model.bin").write_text("this is not a model\n")
    path = write_config(tmp_path, '[coder]\nbackend = "llama.cpp"\npath = "model.bin"\n')
    one_line_error(duet(env, "--config", str(path), "ask", "--role", "coder", "--no-save", "hi"),
                   str(path), "coder.path", "model.bin")
    doctor = duet(env, "--config", str(path), "doctor")  # doctor says what is wrong in its table
    assert doctor.returncode == 2 and "not a GGUF file" in doctor.stdout and "Traceback" not in doctor.stderr


# ------------------------------------------------------------------ api_key_env

def test_an_api_key_env_naming_an_unset_variable_is_exit_2(tmp_path, env):
    env.pop("DUET_SUITE_UNSET_KEY", None)
    path = write_config(tmp_path, role('api_key_env = "DUET_SUITE_UNSET_KEY"\n'))
    for command in (["ask", "hi"], ["ask", "--role", "reasoner", "hi"], ["run", "hi"]):
        one_line_error(duet(env, "--config", str(path), *command), str(path), "reasoner.api_key_env",
                       "DUET_SUITE_UNSET_KEY")
    doctor = duet(env, "--config", str(path), "doctor")
    assert doctor.returncode == 2 and "DUET_SUITE_UNSET_KEY is not set" in doctor.stdout
    # set, the key is no longer the culprit: the (closed) loopback server is
    result = duet(env, "--config", str(path), "ask", "--role", "reasoner", "--no-save", "hi",
                  DUET_SUITE_UNSET_KEY="sk-test")
    one_line_error(result, str(path), "reasoner.url")
    # a role that does not use the key is not held to it
    two = write_config(tmp_path, role('api_key_env = "DUET_SUITE_UNSET_KEY"\n') + "[coder]\n" + OPENAI, "two.toml")
    one_line_error(duet(env, "--config", str(two), "ask", "--role", "coder", "--no-save", "hi"), "coder.url")


# ------------------------------------------------------------------ options and arguments

@pytest.mark.parametrize("args, words", [
    (["frobnicate"], ["invalid choice", "frobnicate"]),
    (["--frobnicate", "route", "x"], ["--frobnicate"]),
    (["route", "--frobnicate", "x"], ["--frobnicate"]),
    (["ask", "--role", "poet", "hi"], ["--role", "poet"]),
    (["ask"], ["PROMPT"]),
    (["run"], ["REQUEST"]),
    (["route"], ["TEXT"]),
    (["export-traces"], ["--out"]),
    (["run", "--rounds", "abc", "x"], ["--rounds", "abc"]),
    (["run", "--rounds", "0", "x"], ["--rounds", "0"]),
    (["run", "--rounds", "-1", "x"], ["--rounds", "-1"]),
    (["run", "--replans", "-1", "x"], ["--replans", "-1"]),
    (["serve", "--port", "70000"], ["--port", "70000"]),
    (["serve", "--port", "-1"], ["--port", "-1"]),
    (["ask", ""], ["prompt", "empty"]),
    (["ask", "  ", " "], ["prompt", "empty"]),
    (["run", ""], ["request", "empty"]),
    (["route", ""], ["text", "empty"]),
    (["export-traces", "--out", "x.jsonl", "--since", "yesterday"], ["--since", "yesterday"]),
    (["export-traces", "--out", "x.jsonl", "--min-reasoning-tokens", "-1"], ["--min-reasoning-tokens"]),
    (["export-traces", "--out", "x.jsonl", "--format", "csv"], ["--format", "csv"]),
])
def test_bad_usage_is_exit_2_in_one_line_naming_the_option(env, args, words):
    # no config file: the built-in demo would say what discovery found; bad usage is said alone
    one_line_error(duet(env, *args), *words)


def test_bad_usage_with_demo_keeps_the_earlier_demo_project(env):
    """`--demo` replaces its sample project with a fresh copy; a command refused for bad usage must not."""
    mine = Path(env["DUET_HOME"]) / "demo-project" / "my-notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my edits")
    for args in (["run", "--rounds", "0", "x"], ["ask", " "], ["--workspace", "nowhere", "run", "x"]):
        one_line_error(duet(env, "--demo", *args))
        assert mine.read_text() == "my edits"


@pytest.mark.parametrize("command", [["ask", "hi"], ["run", "hi"], ["doctor"], ["route", "hi"],
                                     ["export-traces", "--out", "x.jsonl"]])
def test_a_workspace_that_is_missing_or_a_file_is_exit_2(tmp_path, env, command):
    (tmp_path / "a-file").write_text("x")
    config = write_config(tmp_path, role(""))
    for ws, words in (("no-such-dir", "no such folder"), ("a-file", "not a folder")):
        result = duet(env, "--config", str(config), "--workspace", str(tmp_path / ws), *command)
        one_line_error(result, "--workspace", ws, words)


def test_a_data_dir_that_is_a_file_is_exit_2_naming_duet_home(tmp_path, env):
    (tmp_path / "home-file").write_text("x")
    env["DUET_HOME"] = str(tmp_path / "home-file")
    one_line_error(duet(env, "export-traces", "--out", str(tmp_path / "x.jsonl"), cwd=tmp_path), "$DUET_HOME",
                   "home-file")


# ------------------------------------------------------------------ export-traces --out

def test_export_traces_to_places_it_cannot_write_is_exit_2(tmp_path, env):
    (tmp_path / "a-file").write_text("keep me")
    (tmp_path / "a-dir").mkdir()
    cases = [
        ("/proc/duet-suite.jsonl", "/proc/duet-suite.jsonl"),  # no file can be made there, even by root
        (str(tmp_path / "no-such-dir" / "x.jsonl"), "does not exist"),
        (str(tmp_path / "a-dir"), "directory"),
        (str(tmp_path / "a-file" / "x.jsonl"), "not a folder"),
    ]
    for out, words in cases:
        one_line_error(duet(env, "export-traces", "--out", out, cwd=tmp_path), "--out", words)
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_export_traces_writes_an_empty_dataset(tmp_path, env):
    out = tmp_path / "traces.jsonl"
    result = duet(env, "export-traces", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "" and "wrote 0 reasoner turns" in result.stdout


# ------------------------------------------------------------------ duet route

@pytest.mark.parametrize("text, role_, intent", [
    ("design a cache for the API", "reasoner", "design"),
    ("fix the typo in utils.py", "coder", "edit"),
    ("帮我设计一个缓存方案", "reasoner", "design"),
    ("写一个单元测试", "coder", "test"),
])
def test_route_json_has_role_intent_and_why(env, text, role_, intent):
    result = duet(env, "route", "--json", text)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == {"role", "intent", "why"}
    assert (out["role"], out["intent"]) == (role_, intent)
    assert isinstance(out["why"], str) and out["why"].strip()
    if not text.isascii():  # Chinese stays readable (ensure_ascii=False) and the cue is quoted
        assert "\\u" not in lines[0] and any(ord(c) > 127 for c in out["why"])
    plain = duet(env, "route", text)
    assert plain.returncode == 0 and plain.stdout.startswith(f"{role_} · {intent}")


# ------------------------------------------------------------------ start-up stays light

HEAVY = ("torch", "llama_cpp", "transformers")


@pytest.mark.parametrize("args", [["--help"], ["route", "design a cache"], ["route", "--json", "帮我设计一个缓存方案"],
                                  ["ask", ""], ["run", "--rounds", "0", "x"]])
def test_light_commands_import_neither_torch_nor_llama_cpp(tmp_path, env, args):
    report = tmp_path / "modules.json"
    probe = ("import json, runpy, sys\n"
             f"sys.argv = ['duet', *{args!r}]\n"
             "try:\n    runpy.run_module('app', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             f"open({str(report)!r}, 'w').write(json.dumps({{'code': code, 'mods': sorted(sys.modules)}}))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    data = json.loads(report.read_text())
    assert data["code"] == (0 if args[0] in ("--help", "route") else 2), result.stderr
    mods = set(data["mods"])
    assert "app.cli" in mods
    assert not [m for m in mods if m.split(".")[0] in HEAVY]
