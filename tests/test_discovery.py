"""First-run discovery on a temp home with planted model files and a real loopback server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from app.discovery import SERVER_PORTS, discover, find_model_files, model_folders, probe_servers


def plant(home):
    hub = home / ".cache" / "huggingface" / "hub" / "models--deepseek-ai--DeepSeek-V2-Lite-Chat" / "snapshots" / "abc"
    hub.mkdir(parents=True)
    (hub / "config.json").write_text("{}")
    (hub / "model-00001-of-00002.safetensors").write_bytes(b"x")
    lms = home / ".lmstudio" / "models" / "unsloth" / "R1-GGUF"
    lms.mkdir(parents=True)
    (lms / "r1-Q4_K_M-00001-of-00002.gguf").write_bytes(b"GGUF")
    (lms / "r1-Q4_K_M-00002-of-00002.gguf").write_bytes(b"GGUF")
    mine = home / "models"
    mine.mkdir()
    (mine / "coder.gguf").write_bytes(b"GGUF")
    (mine / "notes.txt").write_text("no model")


def test_planted_models_are_found_in_the_usual_places(tmp_path):
    plant(tmp_path)
    found = find_model_files(model_folders(tmp_path))
    by_kind = {(f.kind, f.label) for f in found}
    assert ("hf", "deepseek-ai/DeepSeek-V2-Lite-Chat") in by_kind
    assert ("gguf", "coder.gguf") in by_kind
    ggufs = [f for f in found if f.kind == "gguf"]
    assert len(ggufs) == 2  # the second shard of a split GGUF is not listed on its own
    assert any(f.location.endswith("00001-of-00002.gguf") for f in ggufs)


def test_empty_home_finds_nothing(tmp_path):
    assert find_model_files(model_folders(tmp_path)) == []


def test_config_snippet_for_a_found_model_is_valid_config(tmp_path):
    from app.config import parse_config
    import tomllib

    plant(tmp_path)
    for found in find_model_files(model_folders(tmp_path)):
        if found.kind == "gguf":
            config = parse_config(tomllib.loads(found.config_snippet("coder")))
            assert str(config.coder.path) == found.location


class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "qwen2.5-coder:7b"}, {"id": "deepseek-r1:14b"}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_real_loopback_server_is_found_with_its_models(tmp_path, free_port):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        found = discover(home=tmp_path, ports={port: "Ollama", free_port: "llama-server"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    servers = [f for f in found if f.kind == "server"]
    assert {f.label for f in servers} == {"qwen2.5-coder:7b", "deepseek-r1:14b"}
    assert all(f.location == f"http://127.0.0.1:{port}/v1" and "Ollama" in f.detail for f in servers)


def test_closed_ports_are_skipped(free_port):
    assert probe_servers({free_port: "vLLM"}, timeout=0.2) == []


def test_the_usual_ports_are_probed():
    assert set(SERVER_PORTS) == {11434, 8080, 1234, 8000, 30000}
