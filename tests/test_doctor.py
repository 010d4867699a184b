"""`duet doctor` against real files and a real loopback server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.config import load_config
from app.doctor import check_role

ROOT = Path(__file__).resolve().parent.parent


class ModelsHandler(BaseHTTPRequestHandler):
    models = ["deepseek-r1"]
    reasoning_inline = True

    def do_GET(self):
        if self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        else:
            self.send_error(404)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        message = ({"role": "assistant", "content": "<think>\n2+3 is"} if self.reasoning_inline
                   else {"role": "assistant", "content": "", "reasoning_content": "2+3 is"})
        self._json({"choices": [{"index": 0, "message": message, "finish_reason": "length"}]})

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ModelsHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def config_file(tmp_path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


def run_doctor(config: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "app", "--config", str(config), "doctor"],
                          capture_output=True, text=True, env=env, timeout=120)


def test_doctor_reports_reasoning_inline_and_names_the_parser_flag(tmp_path, server):
    path = config_file(tmp_path, f'[reasoner]\nbackend = "openai"\nurl = "{server}"\nmodel = "deepseek-r1"\n')
    check = check_role(load_config(path).reasoner, str(path))
    assert check.ok
    assert "inline" in check.detail and "--reasoning-parser" in check.detail


def test_doctor_sees_reasoning_in_its_own_field(tmp_path, server, monkeypatch):
    monkeypatch.setattr(ModelsHandler, "reasoning_inline", False)
    path = config_file(tmp_path, f'[reasoner]\nbackend = "openai"\nurl = "{server}"\nmodel = "deepseek-r1"\n')
    check = check_role(load_config(path).reasoner, str(path))
    assert check.ok and "own field" in check.detail


def test_doctor_unknown_model_lists_what_the_server_serves(tmp_path, server):
    path = config_file(tmp_path, f'[coder]\nbackend = "openai"\nurl = "{server}"\nmodel = "qwen"\n')
    result = run_doctor(path)
    assert result.returncode == 2
    assert "qwen" in result.stdout and "deepseek-r1" in result.stdout and "coder.model" in result.stdout


def test_doctor_unreachable_server_is_exit_2_naming_the_key(tmp_path, free_port):
    path = config_file(tmp_path, f'[coder]\nbackend = "openai"\nurl = "http://127.0.0.1:{free_port}/v1"\n')
    result = run_doctor(path)
    assert result.returncode == 2
    assert "unreachable" in result.stdout and "coder.url" in result.stdout and str(path) in result.stdout


def test_doctor_rejects_a_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    result = run_doctor(config_file(tmp_path, f'[coder]\nbackend = "llama.cpp"\npath = "{fake}"\n'))
    assert result.returncode == 2 and "not a GGUF file" in result.stdout


def test_doctor_reads_the_context_length_of_a_real_gguf(tmp_path, gemma_gguf):
    result = run_doctor(config_file(tmp_path, f'[coder]\nbackend = "llama.cpp"\npath = "{gemma_gguf}"\n'))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "32768" in result.stdout  # gemma3.context_length in the file's header


def test_doctor_checks_a_local_folder_architecture(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    result = run_doctor(config_file(tmp_path, f'[coder]\nbackend = "local"\npath = "{model}"\n'))
    assert result.returncode == 2 and "not supported" in result.stdout


def test_doctor_on_the_demo_model_passes():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "app", "--demo", "doctor"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo" in result.stdout


def no_config_env(tmp_path) -> dict:
    """A home with one planted GGUF in ~/models and no config file anywhere."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "my-coder.Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    env = {k: v for k, v in os.environ.items() if k not in ("DUET_CONFIG", "HF_HOME", "HF_HUB_CACHE")}
    return dict(env, PYTHONPATH=str(ROOT), HOME=str(home), XDG_CONFIG_HOME=str(tmp_path / "xdg"),
                DUET_HOME=str(tmp_path / "duet-home"))


def test_doctor_without_a_config_says_what_discovery_found_and_that_it_checks_the_demo(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app", "doctor"], capture_output=True, text=True,
                            env=no_config_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "no config file" in out and str(tmp_path / "xdg" / "duet" / "config.toml") in out
    assert "using the built-in demo models" in out
    assert str(tmp_path / "home" / "models" / "my-coder.Q4_K_M.gguf") in out  # what the user has instead
    assert out.index("Discovery found") < out.index("role")  # said before the checks


def test_ask_without_a_config_says_on_stderr_what_discovery_found(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app", "ask", "--role", "coder", "--no-save", "hi"],
                            capture_output=True, text=True, env=no_config_env(tmp_path), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no config file" in result.stderr and "my-coder.Q4_K_M.gguf" in result.stderr
    assert "no config file" not in result.stdout  # stdout stays the answer alone
