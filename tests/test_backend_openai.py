"""The openai backend against a real scripted HTTP server: every provider format, every fault."""

from __future__ import annotations

import threading
import time

import pytest

from vocab.events import AnswerDelta, Done, Failed, RequestRefused, ServerUnreachable, Usage
from vocab.messages import ChatMessage
from app.backends.openai import OpenAIBackend
from app.backends.probe import probe
from app.config import RoleConfig, Sampling
from tests.backend_helpers import collect
from tests.sse_server import (
    DONE, RESET, STALL, Reply, ScriptedServer, chunk, context_overflow_reply, error_reply, reasoner_reply, text_reply,
    with_fault)

THINKING = "The user wants 2+3.\nAdding: 5. 思考完毕。"
ANSWER = "2 + 3 = **5**.\n\n```python\nprint(2 + 3)\n```"
SAMPLING = Sampling(temperature=0.6, top_p=0.95, max_tokens=256)
ASK = [ChatMessage("user", "What is 2+3?")]


@pytest.fixture(scope="module")
def server():
    with ScriptedServer() as s:
        yield s


def role(server, name="reasoner", **kw) -> RoleConfig:
    return RoleConfig(role=name, backend="openai", url=server.base_url, model="scripted-model",
                      timeout=kw.pop("timeout", 5.0), **kw)


def ask(server, reply, name="reasoner", messages=ASK, cancel=None, on_event=None, **kw):
    server.set_script(reply)
    backend = OpenAIBackend(role(server, name, **kw))
    try:
        return collect(backend.stream(messages, SAMPLING, cancel=cancel), on_event)
    finally:
        backend.close()


@pytest.mark.parametrize("placement", ["reasoning_content", "reasoning", "inline", "inline_no_open"])
def test_each_provider_reasoning_placement_splits_into_thinking_and_answer(server, placement):
    r = ask(server, reasoner_reply(THINKING, ANSWER, placement=placement))
    assert (r.thinking, r.answer) == (THINKING, ANSWER)
    assert r.usage == Usage(12, 34)
    assert isinstance(r.end, Done) and r.end.finish_reason == "stop"
    assert r.end.first_token_s is not None and r.end.total_s >= r.end.first_token_s


@pytest.mark.parametrize("placement", ["reasoning_content", "reasoning", "inline"])
def test_a_coder_role_splits_tagged_or_field_reasoning_too(server, placement):
    r = ask(server, reasoner_reply(THINKING, ANSWER, placement=placement), name="coder")
    assert (r.thinking, r.answer) == (THINKING, ANSWER)


def test_a_plain_model_answer_is_all_answer_for_either_role(server):
    for name in ("reasoner", "coder"):
        r = ask(server, text_reply(ANSWER))
        assert (r.thinking, r.answer) == ("", ANSWER), name


def test_inline_tags_split_at_every_offset_give_the_same_split(server):
    text_len = len(f"<think>\n{THINKING}\n</think>\n\n{ANSWER}")
    for placement in ("inline", "inline_no_open"):
        for cut in range(1, text_len):
            r = ask(server, reasoner_reply(THINKING, ANSWER, placement=placement, cuts=[cut, cut + 1, cut + 7]))
            assert (r.thinking, r.answer) == (THINKING, ANSWER), (placement, cut)


@pytest.mark.parametrize("split_bytes", [1, 5, 13])
def test_sse_lines_and_utf8_characters_cut_on_the_wire_are_reassembled(server, split_bytes):
    r = ask(server, reasoner_reply(THINKING, ANSWER, placement="inline", split_bytes=split_bytes))
    assert (r.thinking, r.answer) == (THINKING, ANSWER)


def test_thinking_is_never_sent_back_and_usage_is_asked_for(server):
    history = [ChatMessage("user", "Plan a cache."), ChatMessage("assistant", "Use an LRU.", thinking="SECRET TRACE"),
               ChatMessage("user", "Now in Go.")]
    ask(server, text_reply("ok"), messages=history)
    body = server.requests[-1].json
    assert body["messages"] == [{"role": "user", "content": "Plan a cache."},
                                {"role": "assistant", "content": "Use an LRU."},
                                {"role": "user", "content": "Now in Go."}]
    assert "SECRET TRACE" not in str(body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("scripted-model", 256, 0.6)


def test_the_bearer_key_comes_from_the_named_env_var_and_never_shows_in_events(server, monkeypatch):
    monkeypatch.setenv("DUET_TEST_KEY", "sk-test-123")
    r = ask(server, error_reply(401, "invalid api key"), api_key_env="DUET_TEST_KEY")
    assert server.requests[-1].headers.get("Authorization") == "Bearer sk-test-123"
    assert isinstance(r.end, Failed) and "sk-test-123" not in r.end.message
    assert "HTTP 401" in r.end.message and "$DUET_TEST_KEY" in r.end.message


def test_an_unreachable_server_is_one_failed_event_marked_unreachable(free_port):
    rc = RoleConfig(role="reasoner", backend="openai", url=f"http://127.0.0.1:{free_port}/v1", model="m")
    r = collect(OpenAIBackend(rc).stream(ASK, SAMPLING))
    assert isinstance(r.end, ServerUnreachable) and r.events == [r.end]
    assert f"127.0.0.1:{free_port}" in r.end.message and "refused" in r.end.message


@pytest.mark.parametrize("style", ["openai", "vllm", "llama", "ollama", "text"])
def test_http_errors_carry_the_server_message_in_one_line(server, style):
    r = ask(server, error_reply(500, "CUDA out of memory.\nTried to allocate 2 GiB", style=style))
    assert isinstance(r.end, RequestRefused) and r.end.status == 500  # (what `duet serve` in front of it tells by)
    assert "HTTP 500" in r.end.message and "CUDA out of memory. Tried to allocate 2 GiB" in r.end.message


def test_an_unknown_model_names_the_config_key_to_fix(server):
    server.set_script(text_reply("never"))
    backend = OpenAIBackend(RoleConfig(role="coder", backend="openai", url=server.base_url, model="no-such-model"))
    r = collect(backend.stream(ASK, SAMPLING))
    assert isinstance(r.end, Failed)
    assert "no-such-model" in r.end.message and "HTTP 404" in r.end.message and "coder.model" in r.end.message


@pytest.mark.parametrize("style", ["openai", "llama"])
def test_context_overflow_says_the_conversation_is_too_long(server, style):
    r = ask(server, context_overflow_reply(style))
    assert isinstance(r.end, Failed) and "maximum context length is 1024" in r.end.message
    assert "longer than the model's context" in r.end.message


def _partial_then(fault, after=None):
    reply = reasoner_reply(THINKING, ANSWER, placement="reasoning_content", chunk_size=4)
    n_thinking = -(-len(THINKING) // 4)
    return with_fault(reply, fault, after=after or 1 + n_thinking + 2)  # role chunk, thinking, 2 answer chunks


@pytest.mark.parametrize("fault, words", [
    (RESET, "lost the connection"),
    ("data: {\"choices\": [{\"delta\": {\"content\": \"x\"\n\n", "malformed stream line"),
    ({"error": {"message": "engine died: KV cache exhausted", "code": 500}}, "KV cache exhausted"),
])
def test_a_fault_mid_stream_keeps_the_streamed_text_and_ends_in_one_failed(server, fault, words):
    r = ask(server, _partial_then(fault))
    assert isinstance(r.end, Failed) and words in r.end.message
    assert r.thinking == THINKING and r.answer == ANSWER[:8]


def test_a_stream_that_stops_without_finishing_is_a_failure_not_an_answer(server):
    reply = reasoner_reply(THINKING, ANSWER, usage=None, done=False)
    reply.events = [e for e in reply.events if not (isinstance(e, dict) and e["choices"]
                                                    and e["choices"][0]["finish_reason"])]
    r = ask(server, reply)
    assert isinstance(r.end, Failed) and "ended before the answer was finished" in r.end.message
    assert r.answer == ANSWER


def test_a_stalled_server_fails_after_the_timeout_with_the_key_to_raise(server):
    started = time.monotonic()
    r = ask(server, _partial_then(STALL), timeout=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(r.end, Failed) and "stalled" in r.end.message and "reasoner.timeout" in r.end.message
    assert r.answer == ANSWER[:8]


def test_a_server_that_rejects_stream_options_is_asked_again_without_them(server):
    server.enqueue(error_reply(400, "Unrecognized request argument supplied: stream_options"))
    r = ask(server, reasoner_reply(THINKING, ANSWER, usage=None))
    assert (r.thinking, r.answer) == (THINKING, ANSWER) and isinstance(r.end, Done)
    assert "stream_options" in server.requests[-2].json and "stream_options" not in server.requests[-1].json


@pytest.mark.parametrize("placement", ["reasoning_content", "inline_no_open"])
def test_a_server_that_ignores_stream_and_sends_one_json_body_still_gives_the_split(server, placement):
    reply = reasoner_reply(THINKING, ANSWER, placement=placement)
    reply.ignore_stream = True
    r = ask(server, reply)
    assert (r.thinking, r.answer) == (THINKING, ANSWER) and r.usage == Usage(12, 34) and isinstance(r.end, Done)


def test_a_200_that_is_not_an_openai_answer_is_one_failed(server):
    server.set_script(Reply(status=200, body="<html>captive portal</html>", ignore_stream=True))
    backend = OpenAIBackend(role(server))
    r = collect(backend.stream(ASK, SAMPLING))
    assert isinstance(r.end, Failed) and "OpenAI-compatible" in r.end.message


def test_a_length_cut_reports_length(server):
    r = ask(server, reasoner_reply(THINKING, ANSWER, finish_reason="length"))
    assert r.end.finish_reason == "length"


def test_cancel_mid_answer_returns_promptly_keeps_the_text_and_hangs_up(server):
    cancel = threading.Event()
    seen = {}

    def on_event(event, result):
        if isinstance(event, AnswerDelta) and not cancel.is_set():
            seen["t"] = time.monotonic()
            cancel.set()

    r = ask(server, reasoner_reply(THINKING, ANSWER * 20, delay=0.05), cancel=cancel, on_event=on_event)
    assert time.monotonic() - seen["t"] < 0.5
    assert isinstance(r.end, Done) and r.end.finish_reason == "cancelled"
    assert r.thinking == THINKING and 0 < len(r.answer) < len(ANSWER * 20)
    assert server.requests[-1].client_gone.wait(3), "the server should see the client hang up"


def test_cancel_while_the_server_is_silent_returns_promptly(server):
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    r = ask(server, _partial_then(STALL), cancel=cancel, timeout=30)
    assert time.monotonic() - started < 1.5
    assert isinstance(r.end, Done) and r.end.finish_reason == "cancelled" and r.answer == ANSWER[:8]


def test_undecided_text_of_a_reasoner_cut_off_counts_as_thinking(server):
    """R1 whose template opened <think>, stopped before </think>: what came is thinking."""
    r = ask(server, with_fault(reasoner_reply(THINKING, ANSWER, placement="inline_no_open"), RESET, after=4))
    assert isinstance(r.end, Failed) and r.answer == "" and THINKING.startswith(r.thinking) and r.thinking


@pytest.mark.parametrize("placement, expected", [("reasoning_content", "field"), ("reasoning", "field"),
                                                 ("inline", "inline"), ("inline_no_open", "inline"),
                                                 ("answer_only", "none")])
def test_probe_tells_where_the_server_puts_reasoning(server, placement, expected):
    server.set_script(reasoner_reply(THINKING, ANSWER, placement=placement))
    result = probe(role(server))
    assert result.reachable and result.model_ok and result.reasoning == expected
    if expected != "field":
        assert "--reasoning-parser" in result.message


def test_probe_says_which_models_a_server_has_when_ours_is_missing(server):
    result = probe(RoleConfig(role="coder", backend="openai", url=server.base_url, model="gpt-9"))
    assert result.reachable and not result.model_ok and "scripted-model" in result.message


def test_events_after_done_never_arrive_even_with_trailing_garbage(server):
    reply = reasoner_reply(THINKING, ANSWER)
    reply.events += ["data: {garbage after done\n\n", chunk({"content": "late"})]
    r = ask(server, reply)
    assert isinstance(r.end, Done) and r.answer == ANSWER
    assert DONE in reply.events
