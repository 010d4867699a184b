"""The local backend: our engine on a tiny random DeepSeek-V3 checkpoint, in process."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("torch")

from app.backends import close_all, make_backend  # noqa: E402
from vocab.messages import ChatMessage  # noqa: E402
from vocab.events import AnswerDelta, Done, Failed, ThinkingDelta  # noqa: E402
from app.config import RoleConfig, Sampling  # noqa: E402
from vocab.reasoning import split_text  # noqa: E402
from tests.backend_helpers import collect  # noqa: E402
from tests.tiny_checkpoints import write_tiny_v3  # noqa: E402

GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=24)
ASK = [ChatMessage("user", "Plan a cache.")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"r1": write_tiny_v3(root / "r1", r1=True), "plain": write_tiny_v3(root / "plain", r1=False)}


@pytest.fixture
def local_role(checkpoints):
    close_all()
    yield lambda kind="r1", role="reasoner", **kw: RoleConfig(role=role, backend="local", path=checkpoints[kind],
                                                             dtype="float32", context=kw.pop("context", 256), **kw)
    close_all()


def expected_split(backend, messages, opened):
    """What the engine itself generates for this prompt, split by the shared parser."""
    engine = backend.model.load()
    ids = engine.chat_prompt([{"role": m.role, "content": m.content} for m in messages])
    out = list(engine.generate(ids, max_new_tokens=GREEDY.max_tokens, temperature=0.0))
    return split_text(engine.tokenizer.decode(out), opened=opened), len(ids), len(out)


def test_an_r1_checkpoint_streams_inside_its_think_block(local_role):
    backend = make_backend(local_role("r1"))
    r = collect(backend.stream(ASK, GREEDY))
    (thinking, answer), n_prompt, n_out = expected_split(backend, ASK, opened=True)
    assert isinstance(r.end, Done) and (r.thinking, r.answer) == (thinking, answer)
    assert r.thinking  # the template opened <think>: the first words are thinking
    assert any(isinstance(e, ThinkingDelta) for e in r.events)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_out)


def test_a_plain_checkpoint_streams_an_answer(local_role):
    backend = make_backend(local_role("plain", role="coder"))
    r = collect(backend.stream(ASK, GREEDY))
    (thinking, answer), _, _ = expected_split(backend, ASK, opened=False)
    assert isinstance(r.end, Done) and (r.thinking, r.answer) == (thinking, answer)
    assert any(isinstance(e, AnswerDelta) for e in r.events)


def test_two_roles_on_one_folder_share_one_engine(local_role):
    reasoner, coder = make_backend(local_role("r1")), make_backend(local_role("r1", role="coder"))
    assert reasoner.model is coder.model
    collect(reasoner.stream(ASK, GREEDY))
    engine = reasoner.model.engine
    collect(coder.stream(ASK, GREEDY))
    assert coder.model.engine is engine


def test_cancel_stops_between_tokens(local_role):
    backend = make_backend(local_role("r1"))
    cancel = threading.Event()
    stamp = {}

    def on_event(event, result):
        if not cancel.is_set() and isinstance(event, (ThinkingDelta, AnswerDelta)):
            stamp["t"] = time.monotonic()
            cancel.set()

    r = collect(backend.stream(ASK, Sampling(0.0, 1.0, 200), cancel=cancel), on_event)
    assert time.monotonic() - stamp["t"] < 0.5
    assert isinstance(r.end, Done) and r.end.finish_reason == "cancelled"


def test_a_prompt_longer_than_the_context_fails_naming_the_key(local_role):
    r = collect(make_backend(local_role("r1", context=16)).stream([ChatMessage("user", "cache " * 50)], GREEDY))
    assert isinstance(r.end, Failed) and "reasoner.context" in r.end.message


def test_request_fields_meant_for_a_server_are_refused_naming_them(local_role):
    r = collect(make_backend(local_role("r1")).stream(ASK, GREEDY, output={"grammar": "root ::= \"x\""}))
    assert isinstance(r.end, Failed) and r.events == [r.end] and "grammar" in r.end.message


def test_duet_ask_json_runs_the_local_engine(checkpoints, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[reasoner]\nbackend = "local"\npath = "{checkpoints["r1"]}"\ndtype = "float32"\ncontext = 256\n\n'
                   f'[reasoner.sampling]\ntemperature = 0.0\nmax_tokens = 12\n', encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "app", "--config", str(cfg), "ask", "--json", "--role", "reasoner",
                        "Plan a cache."], capture_output=True, text=True, timeout=300, cwd=root,
                       env=dict(os.environ, PYTHONPATH=str(root)))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["role"] == "reasoner" and out["model"] == "r1" and out["thinking"]
    assert 0 < out["usage"]["completion_tokens"] <= 12 and out["usage"]["prompt_tokens"] > 0
    assert 0 < out["timings"]["first_token_s"] <= out["timings"]["total_s"]


def test_loading_reports_progress_layer_by_layer_up_to_one(local_role):
    backend = make_backend(local_role())
    heard = []
    backend.model.load(heard.append)
    layers = backend.model.engine.args.num_hidden_layers
    assert len(heard) == layers and heard == sorted(heard) and heard[-1] == 1.0
    backend.model.load(heard.append)  # already loaded: nothing more to report
    assert len(heard) == layers


async def test_the_status_bar_shows_a_local_model_loading_as_a_fraction(checkpoints):
    from textual.widgets import ProgressBar

    from app.config import Config
    from tests.tui_support import make_app, wait_for

    close_all()
    role = lambda name: RoleConfig(role=name, backend="local", path=checkpoints["r1"], dtype="float32",  # noqa: E731
                                   context=256)
    app = make_app(Config(reasoner=role("reasoner"), coder=role("coder")), load_models=True)
    async with app.run_test(size=(140, 40)) as pilot:
        status = app.chat.status_bar
        await wait_for(pilot, lambda: status.role("reasoner").state == "ready", timeout=60)
        bar = status.role("reasoner").query_one(ProgressBar)
        assert bar.total == 1.0 and bar.progress == 1.0  # a determinate bar filled layer by layer
    close_all()


def test_speculative_off_decodes_plainly_and_mtp_drafts_with_the_same_answer(tmp_path):
    from vocab.events import Usage

    folder = write_tiny_v3(tmp_path / "mtp", mtp="copy", num_hidden_layers=1, first_k_dense_replace=0, seed=12)
    answers, drafted = {}, {}
    for mode in ("off", "mtp"):
        close_all()
        rc = RoleConfig(role="coder", backend="local", path=folder, dtype="float32", context=256, sampling=GREEDY,
                        speculative=mode)
        result = collect(make_backend(rc).stream(ASK, GREEDY))
        assert isinstance(result.end, Done)
        answers[mode] = "".join(e.text for e in result.events if isinstance(e, (AnswerDelta, ThinkingDelta)))
        drafted[mode] = sum(e.drafted for e in result.events if isinstance(e, Usage))
    close_all()
    assert answers["off"] == answers["mtp"] and answers["off"]
    assert drafted["off"] == 0 < drafted["mtp"]


async def test_a_load_that_outlasts_the_status_bar_s_parts_updates_nothing_and_does_not_fail():
    """A model still loading when the app closes reports to a status whose parts are gone."""
    from textual.app import App

    from app.tui.status import ModelStatus, StatusBar

    class One(App):
        def compose(self):
            yield StatusBar("r1", "coder")

    app = One()
    async with app.run_test() as pilot:
        status = app.query_one("#status-reasoner", ModelStatus)
        status.set_state("loading", "", 0.5)
        await status.remove_children()
        await pilot.pause()
        status.set_state("loading", "", 0.75)  # what the loader's last report does meanwhile
        status.set_state("ready")
        assert status.state == "ready" and not status.children


def _make_echo_model(folder):
    """A checkpoint that writes its input's last token again and again: every layer's output
    projection zeroed (the residual stream stays the token's embedding), unit-norm embeddings,
    the output head those embeddings (a row's best match is itself)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    for name, w in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.zeros_like(w)
    emb = torch.nn.functional.normalize(torch.randn(weights["model.embed_tokens.weight"].shape,
                                                    generator=torch.Generator().manual_seed(0)), dim=-1)
    weights["model.embed_tokens.weight"], weights["lm_head.weight"] = emb, emb.clone() * 50
    weights["model.norm.weight"] = torch.ones_like(weights["model.norm.weight"])
    save_file(weights, str(path), metadata={"format": "pt"})
    return folder


def test_a_reply_ends_where_the_model_starts_a_turn_of_its_own(tmp_path):
    from local_engine import Engine

    folder = _make_echo_model(write_tiny_v3(tmp_path / "echo", r1=False))
    engine = Engine.load(folder, dtype="float32", max_seq_len=128)
    ids = engine.chat_prompt([{"role": "user", "content": "Plan a cache."}])
    assistant = engine.tokenizer.encode("<｜Assistant｜>")
    assert ids[-1:] == assistant and len(assistant) == 1
    # the model alone writes the turn marker it was shown, to the last token
    assert list(engine.generate(ids, max_new_tokens=5, temperature=0.0)) == assistant * 5
    close_all()
    rc = RoleConfig(role="coder", backend="local", path=folder, dtype="float32", context=128)
    r = collect(make_backend(rc).stream(ASK, GREEDY))
    assert isinstance(r.end, Done) and r.end.finish_reason == "stop"
    assert r.answer == "" and "<｜Assistant｜>" not in r.answer
    assert r.usage.completion_tokens == 0
    close_all()
