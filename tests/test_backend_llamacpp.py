"""The llama.cpp backend with the real Gemma 3 270M GGUF, in process."""

from __future__ import annotations

import threading
import time

import pytest

from app.backends import close_all, make_backend
from vocab.messages import ChatMessage
from vocab.events import AnswerDelta, Done, Failed, Usage
from app.config import RoleConfig, Sampling, gemma_demo_role
from tests.backend_helpers import collect

pytest.importorskip("llama_cpp")

GREEDY = Sampling(temperature=0.0, top_p=1.0, max_tokens=16)
ASK = [ChatMessage("user", "Write a haiku about the sea.")]


@pytest.fixture
def gguf_role(gemma_gguf):
    close_all()
    yield lambda role="coder", **kw: RoleConfig(role=role, backend="llama.cpp", path=gemma_gguf, context=kw.pop("context", 512),
                                                threads=1, **kw)
    close_all()


def test_the_real_gguf_streams_real_tokens_with_usage(gguf_role):
    r = collect(make_backend(gguf_role()).stream(ASK, GREEDY))
    deltas = [e for e in r.events if isinstance(e, AnswerDelta)]
    assert len(deltas) > 3 and r.answer.strip()
    assert r.thinking == ""  # Gemma's prompt opens no think block
    assert isinstance(r.end, Done) and r.end.finish_reason in ("stop", "length") and r.end.first_token_s > 0
    assert isinstance(r.usage, Usage) and r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 16


def test_the_model_loads_once_and_two_roles_on_the_same_file_share_it(gguf_role):
    coder, reasoner = make_backend(gguf_role("coder")), make_backend(gguf_role("reasoner"))
    assert coder is not reasoner and coder.model is reasoner.model
    first = collect(coder.stream(ASK, GREEDY))
    llm = coder.model._llm
    second = collect(reasoner.stream(ASK, GREEDY))
    assert coder.model._llm is llm  # not reloaded
    assert first.answer == second.answer  # greedy: the same prompt gives the same tokens


def test_thinking_history_is_not_part_of_the_prompt(gguf_role):
    backend = make_backend(gguf_role())
    with_trace = [ChatMessage("user", "hi"), ChatMessage("assistant", "hello", thinking="x " * 2000),
                  ChatMessage("user", "bye")]
    r = collect(backend.stream(with_trace, GREEDY))
    assert isinstance(r.end, Done) and r.usage.prompt_tokens < 60  # 2000 words of trace would not fit in 512


def test_cancel_stops_between_tokens_and_the_model_serves_the_next_turn(gguf_role):
    backend = make_backend(gguf_role())
    cancel = threading.Event()
    stamp = {}

    def on_event(event, result):
        if isinstance(event, AnswerDelta) and not cancel.is_set():
            stamp["t"] = time.monotonic()
            cancel.set()

    r = collect(backend.stream(ASK, Sampling(0.0, 1.0, 400), cancel=cancel), on_event)
    assert time.monotonic() - stamp["t"] < 0.5
    assert isinstance(r.end, Done) and r.end.finish_reason == "cancelled"
    assert len([e for e in r.events if isinstance(e, AnswerDelta)]) <= 3
    again = collect(backend.stream(ASK, GREEDY))
    assert isinstance(again.end, Done) and again.answer


def test_a_prompt_longer_than_the_context_fails_naming_the_key(gguf_role):
    r = collect(make_backend(gguf_role("reasoner", context=64)).stream([ChatMessage("user", "word " * 200)], GREEDY))
    assert isinstance(r.end, Failed) and "reasoner.context" in r.end.message and "64" in r.end.message


def test_request_fields_meant_for_a_server_are_refused_naming_them(gguf_role):
    """`duet serve` turns its client's output rule into a grammar for llama.cpp; the fields
    themselves are a server's (the openai backend's), refused here before anything runs."""
    r = collect(make_backend(gguf_role("coder")).stream(ASK, GREEDY, output={"response_format": {"type": "json_object"}}))
    assert isinstance(r.end, Failed) and r.events == [r.end] and "response_format" in r.end.message
    assert "coder" in r.end.message


def test_the_gemma_demo_role_uses_the_packaged_gemma(duet_home):
    close_all()
    try:
        r = collect(make_backend(gemma_demo_role("coder")).stream(ASK, GREEDY))
        assert isinstance(r.end, Done) and r.answer
        assert (duet_home / "models" / "gemma-3-270m-q4_k_m.gguf").is_file()
    finally:
        close_all()


THINK_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n<think>\n{% endif %}")


@pytest.fixture(scope="module")
def think_gguf(gemma_gguf, tmp_path_factory):
    """The Gemma GGUF with an R1-style chat template in its metadata: the prompt opens <think>."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("think") / "gemma-think.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(gemma_gguf), str(out),
                    "--chat-template", THINK_TEMPLATE], check=True, capture_output=True, timeout=300)
    return out


def test_the_ggufs_own_template_opening_think_makes_the_output_thinking(think_gguf):
    close_all()
    try:
        rc = RoleConfig(role="reasoner", backend="llama.cpp", path=think_gguf, context=512, threads=1)
        backend = make_backend(rc)
        r = collect(backend.stream(ASK, GREEDY))
        prompt, _, _ = backend.model.render([{"role": "user", "content": ASK[0].content}])
        assert prompt.endswith("<start_of_turn>model\n<think>\n")  # the GGUF's template, not a guess
        # Gemma never writes </think>: everything it says is the unfinished thought
        assert isinstance(r.end, Done) and r.thinking.strip() and r.answer == ""
    finally:
        close_all()


def test_cancel_during_a_long_prompt_stops_before_the_whole_prompt_is_read(gguf_role):
    backend = make_backend(gguf_role(context=1024))
    llm = backend.model.load()
    long_ask = [ChatMessage("user", "the sea, the waves, the salt; " * 110)]
    n_prompt = len(llm.tokenize(backend.model.render([{"role": "user", "content": long_ask[0].content}])[0].encode(),
                                add_bos=True, special=True))
    assert n_prompt > 600
    cancel = threading.Event()
    cancel.set()  # Esc before the first token
    r = collect(backend.stream(long_ask, GREEDY, cancel=cancel))
    assert r.events == [r.end] and r.end.finish_reason == "cancelled"
    assert llm.n_tokens < n_prompt  # it stopped reading the prompt
    r = collect(backend.stream(long_ask, GREEDY))  # and the next turn reads it all and answers
    assert isinstance(r.end, Done) and r.answer and r.usage.prompt_tokens == n_prompt


def test_a_follow_up_turn_reads_only_the_new_part_of_the_prompt(gguf_role):
    backend = make_backend(gguf_role())
    first = [ChatMessage("user", "Name a colour.")]
    one = collect(backend.stream(first, GREEDY))
    llm = backend.model.load()
    read = []
    real_eval = llm.eval
    llm.eval = lambda batch: (read.append(len(batch)), real_eval(batch))[1]  # count, then the real thing
    follow = first + [ChatMessage("assistant", one.answer), ChatMessage("user", "Another one.")]
    r = collect(backend.stream(follow, GREEDY))
    assert isinstance(r.end, Done) and r.answer
    prompt_read = sum(read) - (r.usage.completion_tokens - 1)  # decode steps go through eval too
    assert 0 < prompt_read < r.usage.prompt_tokens - 10  # the first turn's tokens came from the cache
