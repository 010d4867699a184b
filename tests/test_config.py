"""Configuration: every class of bad config is one line naming the file and the key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.config import load_config
from app.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def test_no_config_gives_the_demo_model_for_both_roles():
    config = load_config(None)
    assert config.is_demo
    # the demo models were trained on one format: they decode greedily
    assert config.reasoner.sampling.temperature == 0.0 and config.coder.sampling.temperature == 0.0
    assert config.reasoner.backend == "local" and config.coder.backend == "llama.cpp"
    assert config.reasoner.system_prompt is None
    # ... and on single turns: each request goes alone
    assert not config.reasoner.history and not config.coder.history


def test_full_openai_config_is_read_with_its_sampling(tmp_path):
    path = write(tmp_path, """
[reasoner]
backend = "openai"
url = "http://127.0.0.1:8000/v1"
model = "deepseek-r1"
api_key_env = "DEEPSEEK_API_KEY"
context = 32768

[reasoner.sampling]
temperature = 0.5
top_p = 0.9
max_tokens = 1000

[coder]
backend = "openai"
url = "http://127.0.0.1:8080/v1"
model = "qwen-coder"
""")
    config = load_config(path)
    assert config.reasoner.url == "http://127.0.0.1:8000/v1"
    assert config.reasoner.sampling.temperature == 0.5 and config.reasoner.sampling.max_tokens == 1000
    assert config.reasoner.context == 32768
    assert config.coder.model == "qwen-coder"
    assert config.coder.sampling.temperature == 0.2  # the coder's own default
    assert config.source == str(path)


def test_one_configured_role_serves_both_with_each_roles_sampling(tmp_path, gguf_file):
    config = load_config(write(tmp_path, f'[reasoner]\nbackend = "llama.cpp"\npath = "{gguf_file}"\n'))
    assert config.coder.path == gguf_file and config.coder.backend == "llama.cpp"
    assert config.coder.role == "coder" and config.reasoner.sampling.temperature == 0.6


def test_relative_model_path_is_relative_to_the_config_file(tmp_path, gguf_file):
    config = load_config(write(tmp_path, '[coder]\nbackend = "llama.cpp"\npath = "model.gguf"\n'))
    assert config.coder.path == gguf_file


@pytest.mark.parametrize("text, key, words", [
    ('[reasoner]\nbakend = "openai"\n', "reasoner.bakend", 'did you mean "backend"'),
    ('[resoner]\nbackend = "openai"\n', "resoner", 'did you mean "reasoner"'),
    ('[reasoner]\nbackend = "openai"\nurl = "http://x/v1"\n[reasoner.sampling]\ntemprature = 0.3\n',
     "reasoner.sampling.temprature", 'did you mean "temperature"'),
    ('[reasoner]\nbackend = "openai"\nurl = "http://x/v1"\ncontext = "big"\n', "reasoner.context", "must be an integer"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://x/v1"\ncontext = true\n', "reasoner.context", "must be an integer"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://x/v1"\n[reasoner.sampling]\ntemperature = "hot"\n',
     "reasoner.sampling.temperature", "must be a number"),
    ('[reasoner]\nbackend = "openai"\nurl = "http://x/v1"\n[reasoner.sampling]\ntop_p = 1.5\n',
     "reasoner.sampling.top_p", "(0, 1]"),
    ('[reasoner]\nbackend = "vllm"\n', "reasoner.backend", "unknown backend"),
    ('[reasoner]\nurl = "http://x/v1"\n', "reasoner.backend", "missing"),
    ('[reasoner]\nbackend = "openai"\n', "reasoner.url", "missing"),
    ('[reasoner]\nbackend = "openai"\nurl = "localhost:8000"\n', "reasoner.url", "not an http(s) url"),
    ('[coder]\nbackend = "llama.cpp"\npath = "/nonexistent/model.gguf"\n', "coder.path", "no such file"),
    ('[coder]\nbackend = "local"\npath = "/nonexistent/folder"\n', "coder.path", "no such folder"),
    ('[coder]\nbackend = "local"\npath = "/nonexistent/folder"\nquant = "int3"\n', "coder.quant", "int8"),
    ('[reasoner]\nbackend = "local"\npath = "/nonexistent/folder"\nspeculative = "eagle"\n', "reasoner.speculative",
     '"mtp" or "off"'),
    ('reasoner = 3\n', "reasoner", "must be a table"),
    ('[ui.keymap]\n"chat.hand_off" = 6\n', "ui.keymap.chat.hand_off", "must be a string"),
    ('[ui]\nthinking_pane = "left"\n', "ui.thinking_pane", "side"),
    ('[workspace]\ntest = ["pytest"]\n', "workspace.test", "must be"),
    ('[workspace]\ntest_timeout = 0\n', "workspace.test_timeout", "positive"),
    ('[workspace]\ntest_timout = 5\n', "workspace.test_timout", 'did you mean "test_timeout"'),
])
def test_bad_config_names_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message
    assert "\n" not in message


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[reasoner\nbackend = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def run_duet(*args, env_extra=None, cwd=None):
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_bad_config_exits_2_with_one_line_on_stderr(tmp_path):
    path = write(tmp_path, '[coder]\nbakend = "openai"\n')
    result = run_duet("--config", str(path), "doctor")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert str(path) in result.stderr and "coder.bakend" in result.stderr
    assert "Traceback" not in result.stderr


def test_duet_config_env_var_is_used_when_no_flag(tmp_path):
    path = write(tmp_path, '[coder]\nbackend = "llama.cpp"\npath = "missing.gguf"\n')
    result = run_duet("doctor", env_extra={"DUET_CONFIG": str(path)})
    assert result.returncode == 2 and "coder.path" in result.stderr


def test_missing_config_file_named_by_flag_is_exit_2(tmp_path):
    result = run_duet("--config", str(tmp_path / "nope.toml"), "doctor")
    assert result.returncode == 2 and "nope.toml" in result.stderr and "not found" in result.stderr


def test_platform_config_file_is_found(tmp_path):
    xdg = tmp_path / "xdg"
    (xdg / "duet").mkdir(parents=True)
    (xdg / "duet" / "config.toml").write_text('[coder]\nbackend = "llama.cpp"\npath = "gone.gguf"\n')
    result = run_duet("doctor", env_extra={"XDG_CONFIG_HOME": str(xdg)})
    assert result.returncode == 2 and "gone.gguf" in result.stderr


def test_ui_keymap_is_read_as_binding_ids_to_keys(tmp_path):
    config = load_config(write(tmp_path, '[ui.keymap]\n"chat.hand_off" = "f6"\n'))
    assert dict(config.ui.keymap) == {"chat.hand_off": "f6"}


def test_the_workspace_test_command_and_its_timeout_are_read(tmp_path):
    config = load_config(write(tmp_path, '[workspace]\ntest = "python -m pytest -q"\ntest_timeout = 90\n'))
    assert (config.workspace.test, config.workspace.test_timeout) == ("python -m pytest -q", 90.0)


def test_history_is_on_unless_a_role_turns_it_off_and_must_be_a_boolean(tmp_path):
    base = '[reasoner]\nbackend = "openai"\nurl = "http://127.0.0.1:8000/v1"\n'
    config = load_config(write(tmp_path, base + '[coder]\nbackend = "openai"\nurl = "http://127.0.0.1:8001/v1"\nhistory = false\n'))
    assert config.reasoner.history and not config.coder.history
    with pytest.raises(ConfigError, match="coder.history"):
        load_config(write(tmp_path, base + '[coder]\nbackend = "openai"\nurl = "http://127.0.0.1:8001/v1"\nhistory = "no"\n'))
