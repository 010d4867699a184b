"""Tokenizer, chat template, sampling and streaming of the local engine (tiny random models)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from local_engine import Engine
from local_engine.errors import InputError, ModelError
from vocab.reasoning import split_text
from local_engine.tokenizer import IncrementalDecoder, Tokenizer
from tests.tiny_checkpoints import EOS, write_tiny_v2, write_tiny_v3

ROOT = Path(__file__).resolve().parents[1]
CHINESE = "深度求索发布了推理模型，中文能力更强。混合专家！"


@pytest.fixture(scope="session")
def r1(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("gen") / "r1", r1=True)


@pytest.fixture(scope="session")
def plain(tmp_path_factory):
    return write_tiny_v2(tmp_path_factory.mktemp("gen") / "v2", r1=False)


@pytest.fixture(scope="session")
def engine(r1):
    return Engine.load(r1, dtype="float32", max_seq_len=96)


def test_tokenizer_round_trips_english_chinese_and_special_tokens(r1):
    tok = Tokenizer(r1)
    text = f"<｜User｜>Hello {CHINESE} def f(x): return x<｜Assistant｜>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] == tok._tok.token_to_id("<｜User｜>")  # special tokens are single ids
    assert tok.eos_token_id == tok._tok.token_to_id(EOS) == 1


def test_incremental_decoding_never_emits_a_broken_character(r1):
    tok = Tokenizer(r1)
    ids = tok.encode(CHINESE + " ok 你好")
    assert len(ids) > len(CHINESE) // 2  # byte-level BPE: characters span several tokens
    dec = IncrementalDecoder(tok)
    pieces = [dec.add(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == CHINESE + " ok 你好"
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 0  # some tokens were partial characters, held back


def test_r1_chat_template_renders_special_tokens_and_opens_thinking(r1):
    tok = Tokenizer(r1)
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd</think>4"},
            {"role": "user", "content": "3+3?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜><｜User｜>3+3?<｜Assistant｜><think>\n"
    assert not tok.apply_chat_template(msgs[:1], add_generation_prompt=False).endswith("<think>\n")


def test_non_reasoning_template_does_not_open_thinking(plain):
    text = Tokenizer(plain).apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.endswith("<｜Assistant｜>")


def test_chat_template_runs_sandboxed(r1, tmp_path):
    import json
    import shutil

    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(r1 / f, tmp_path / f)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="chat_template failed.*SecurityError"):
        Tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])


def test_sampling_is_reproducible_with_a_seed_and_varies_without(engine):
    prompt = engine.chat_prompt([{"role": "user", "content": "hello"}])
    run = lambda seed: list(engine.generate(prompt, max_new_tokens=24, temperature=1.0, top_p=0.95, seed=seed))
    a, b, c = run(7), run(7), run(8)
    assert a == b and len(a) > 0
    assert a != c


def test_tiny_top_p_is_greedy(engine):
    prompt = engine.chat_prompt([{"role": "user", "content": "hello"}])
    greedy = list(engine.generate(prompt, max_new_tokens=20, temperature=0))
    nucleus = list(engine.generate(prompt, max_new_tokens=20, temperature=0.8, top_p=1e-6, seed=3))
    assert nucleus == greedy


def _long_greedy(engine, n=10):
    """A prompt whose greedy continuation runs at least n tokens before EOS (random model)."""
    for start in range(2, 300, 7):
        prompt = [start, start + 1, start + 2]
        greedy = list(engine.generate(prompt, max_new_tokens=30, temperature=0))
        if len(greedy) >= n:
            return prompt, greedy
    raise AssertionError("no prompt runs long enough")


def test_generation_stops_before_a_stop_id(engine):
    prompt, greedy = _long_greedy(engine)
    stop = greedy[6]
    got = list(engine.generate(prompt, max_new_tokens=30, temperature=0, stop_ids=[stop]))
    assert got == greedy[: greedy.index(stop)]


def test_generation_stops_at_eos(engine):
    prompt, greedy = _long_greedy(engine)
    # make the model's next choice after 3 tokens be EOS by treating that token as EOS
    engine.args.eos_token_id.append(greedy[3])
    try:
        assert list(engine.generate(prompt, max_new_tokens=30, temperature=0)) == greedy[: greedy.index(greedy[3])]
    finally:
        engine.args.eos_token_id.pop()


def test_cancel_stops_between_tokens(engine):
    cancel = threading.Event()
    got = []
    prompt, _ = _long_greedy(engine)
    for tok in engine.generate(prompt, max_new_tokens=50, temperature=0, cancel=cancel, stop_ids=[]):
        got.append(tok)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3


def test_generation_ends_at_the_context_limit(engine):
    got = list(engine.generate(list(range(2, 92)), max_new_tokens=50, temperature=0, stop_ids=[]))
    assert len(got) <= 96 - 90 + 1
    with pytest.raises(InputError, match="max_seq_len"):
        list(engine.generate(list(range(2, 100)), max_new_tokens=5, temperature=0))


def test_cli_generate_streams_the_greedy_answer(r1, engine):
    prompt_ids = engine.chat_prompt([{"role": "user", "content": "你好"}])
    ids = list(engine.generate(prompt_ids, max_new_tokens=40, temperature=0))
    thinking, answer = split_text(engine.tokenizer.decode(ids), opened=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "local_engine", "generate", "--model", str(r1), "--dtype", "float32",
                        "--max-seq-len", "96", "--temperature", "0", "--max-new-tokens", "40", "你好"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert thinking or answer
    assert r.stdout.strip() == answer.strip()
    assert thinking.strip() in r.stderr
