"""The openai backend and `duet ask` against a real OpenAI-compatible server:
llama-cpp-python's own `llama_cpp.server` serving the Gemma GGUF on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from vocab.messages import ChatMessage
from vocab.events import AnswerDelta, Done
from app.backends.openai import OpenAIBackend
from app.backends.probe import probe
from app.config import RoleConfig, Sampling
from tests.backend_helpers import collect

pytest.importorskip("llama_cpp.server")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemma-270m"
GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=24)
ASK = [ChatMessage("user", "Name three colours.")]


@pytest.fixture(scope="module")
def llama_server(gemma_gguf, tmp_path_factory):
    yield from _serve(gemma_gguf, MODEL, tmp_path_factory, "--n_ctx", "1024", "--chat_format", "gemma")


@pytest.fixture(scope="module")
def coder_server(tmp_path_factory):
    """The demo coder's GGUF (its own chat template) behind llama_cpp.server."""
    from app import demo

    yield from _serve(demo.coder_path(), "duet-demo-coder", tmp_path_factory, "--n_ctx", "2048")


def _serve(gguf, alias: str, tmp_path_factory, *args: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("llama-server") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_threads", "1", "--model_alias", alias, *args],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"llama_cpp.server did not start:\n{log.read()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def role(base, **kw) -> RoleConfig:
    return RoleConfig(role=kw.pop("role", "coder"), backend="openai", url=base, model=MODEL, timeout=60, **kw)


def test_the_real_server_streams_real_tokens_through_the_openai_backend(llama_server):
    backend = OpenAIBackend(role(llama_server))
    r = collect(backend.stream(ASK, GREEDY))
    assert isinstance(r.end, Done) and r.end.finish_reason in ("stop", "length")
    assert len([e for e in r.events if isinstance(e, AnswerDelta)]) > 3 and r.answer.strip()
    again = collect(backend.stream(ASK, GREEDY))  # the pooled connection serves the next turn
    assert isinstance(again.end, Done) and again.answer.strip()
    backend.close()


def test_cancel_on_the_real_server_returns_promptly_and_the_server_serves_the_next_turn(llama_server):
    backend = OpenAIBackend(role(llama_server))
    cancel = threading.Event()
    stamp = {}

    def on_event(event, result):
        if isinstance(event, AnswerDelta) and not cancel.is_set():
            stamp["t"] = time.monotonic()
            cancel.set()

    r = collect(backend.stream(ASK, Sampling(0.0, 1.0, 400), cancel=cancel), on_event)
    assert time.monotonic() - stamp["t"] < 0.5 and r.end.finish_reason == "cancelled"
    again = collect(backend.stream(ASK, GREEDY))
    assert isinstance(again.end, Done) and again.answer
    backend.close()


def test_probe_sees_the_real_server_and_its_model(llama_server):
    result = probe(role(llama_server), check_reasoning=True)
    assert result.reachable and result.model_ok and MODEL in result.models
    assert result.reasoning == "none"  # Gemma does not reason: the probe says so


def test_duet_ask_json_against_the_real_server(llama_server, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[coder]\nbackend = "openai"\nurl = "{llama_server}"\nmodel = "{MODEL}"\n\n'
                   f'[coder.sampling]\ntemperature = 0.0\nmax_tokens = 24\n', encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "app", "--config", str(cfg), "ask", "--json", "--role", "coder",
                        "Name three colours."], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["role"], out["model"], out["thinking"]) == ("coder", MODEL, "") and out["answer"].strip()
    assert 0 < out["timings"]["first_token_s"] <= out["timings"]["total_s"]
    # llama_cpp.server sends no usage when streaming: unknown counts are null, never made up
    usage = list(out["usage"].values())
    assert usage == [None, None] or all(isinstance(n, int) and n > 0 for n in usage)


def test_constrain_edits_on_a_real_server_holds_sampled_replies_to_blocks_that_apply(coder_server, tmp_path):
    """The edit grammar sent as llama.cpp's `grammar` field: the demo coder sampled hot (temperature
    1.3, six seeds) behind llama_cpp.server writes blocks that apply to the file in context every
    time; the same requests without the grammar do not."""
    import dataclasses

    from app.config import Config
    from app.conversation import Conversation
    from app.workspace import Workspace

    root = tmp_path / "p"
    root.mkdir()
    source = ("def where_is(arr, needle):\n    \"\"\"Return where needle first is in arr, else -1.\"\"\"\n"
              "    for k in range(len(arr)):\n        if arr[k] != needle:\n            return k\n    return -1\n")
    (root / "finder.py").write_text(source)
    ws = Workspace(root)
    ws.context.add("finder.py")
    applied = {True: 0, False: 0}
    for constrained in (True, False):
        for seed in range(6):
            rc = RoleConfig(role="coder", backend="openai", url=coder_server, model="duet-demo-coder", timeout=60,
                            history=False, constrain_edits=constrained,
                            sampling=Sampling(temperature=1.3, top_p=1.0, max_tokens=300, seed=seed))
            conv = Conversation(Config(reasoner=dataclasses.replace(rc, role="reasoner"), coder=rc), workspace=ws, save=False)
            routed = conv.prepare("fix the bug in finder.py: where_is compares with != where it needs ==", "coder")
            list(routed.turn.events(threading.Event()))
            result = routed.turn.result
            assert result.status == "done", result.failed
            changes = ws.propose(result.answer)
            ok = bool(changes.edits) and not changes.rejected
            if constrained and result.done.finish_reason == "stop":
                assert ok, (result.answer, [r.reason for r in changes.rejected])
            applied[constrained] += ok
    assert applied[True] >= 4 and applied[False] < applied[True]  # the grammar is what holds them
