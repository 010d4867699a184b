"""`duet serve` on our own engine: a tiny random R1-style DeepSeek checkpoint behind the API,
checked with the official `openai` client and with Duet's own openai backend. The R1 template
starts the model inside its think block, so what it writes is reasoning: it must come back in
`reasoning_content`, never in `content`."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
openai = pytest.importorskip("openai")

from app.backends.base import ChatMessage  # noqa: E402
from vocab.events import AnswerDelta, Done, ThinkingDelta  # noqa: E402
from app.backends.openai import OpenAIBackend  # noqa: E402
from app.config import RoleConfig, Sampling  # noqa: E402
from vocab.reasoning import split_text  # noqa: E402
from tests.backend_helpers import collect  # noqa: E402
from tests.serve_support import DuetServe, local_config  # noqa: E402
from tests.tiny_checkpoints import write_tiny_v3  # noqa: E402

N = 12
ASK = [{"role": "user", "content": "Plan a cache."}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("tiny") / "r1", r1=True)


@pytest.fixture(scope="module")
def engine(checkpoint):
    from local_engine import Engine

    return Engine.load(str(checkpoint), dtype="float32", max_seq_len=256)


def expected(engine, messages, max_tokens=N):
    """(thinking, answer, prompt tokens, completion tokens) of the engine itself, greedy."""
    ids = engine.chat_prompt(messages)
    out = list(engine.generate(ids, max_new_tokens=max_tokens, temperature=0.0))
    thinking, answer = split_text(engine.tokenizer.decode(out), opened=True)
    return thinking, answer, len(ids), len(out)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    serve = DuetServe(local_config(checkpoint), tmp_path_factory.mktemp("serve-local"))
    yield serve
    assert serve.interrupt() == 0 and "duet serve: stopped" in serve.stderr()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)


def test_a_reasoners_thinking_comes_back_in_reasoning_content_not_content(client, engine):
    thinking, answer, n_prompt, n_out = expected(engine, ASK)
    r = client.chat.completions.create(model="r1", messages=ASK, max_tokens=N, temperature=0)
    message = r.choices[0].message
    assert thinking and message.reasoning_content == thinking
    assert message.content == answer and thinking not in (message.content or "")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, n_out, n_prompt + n_out)
    assert r.choices[0].finish_reason == ("length" if n_out == N else "stop")
    assert r.model == "r1" and r.object == "chat.completion"


def test_a_stream_sends_the_thinking_as_reasoning_content_deltas_and_usage_at_the_end(client, engine):
    thinking, answer, n_prompt, n_out = expected(engine, ASK)
    chunks = list(client.chat.completions.create(model="r1", messages=ASK, max_tokens=N, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [getattr(d, "reasoning_content", None) for d in deltas]
    assert len([r for r in reasoning if r]) > 1  # streamed piece by piece, not in one lump
    assert "".join(r or "" for r in reasoning) == thinking
    assert "".join(d.content or "" for d in deltas) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        ["length" if n_out == N else "stop"]
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == \
        (n_prompt, n_out)


def test_duets_own_openai_backend_gets_thinking_and_answer_apart_from_duet_serve(server, engine):
    thinking, answer, n_prompt, n_out = expected(engine, ASK)
    backend = OpenAIBackend(RoleConfig(role="coder", backend="openai", url=server.base, model="r1", timeout=120))
    try:
        r = collect(backend.stream([ChatMessage("user", ASK[0]["content"])], Sampling(0.0, 1.0, N)))
    finally:
        backend.close()
    assert isinstance(r.end, Done) and (r.thinking, r.answer) == (thinking, answer)
    assert any(isinstance(e, ThinkingDelta) for e in r.events)  # a coder role still sees a field as thinking
    assert not any(isinstance(e, AnswerDelta) and thinking[:8] in e.text for e in r.events)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_out)


def test_duets_own_client_with_no_model_configured_gets_the_one_duet_serve_serves(server, engine):
    """A config with no `model` sends none (the server's own), not a made-up name the server 404s."""
    backend = OpenAIBackend(RoleConfig(role="reasoner", backend="openai", url=server.base, timeout=120))
    try:
        assert "model" not in backend.request_body([ChatMessage("user", "hi")], Sampling(0.0, 1.0, 4))
        r = collect(backend.stream([ChatMessage("user", ASK[0]["content"])], Sampling(0.0, 1.0, 4)))
    finally:
        backend.close()
    assert isinstance(r.end, Done), r.end


def test_a_follow_up_turn_reports_the_prompt_tokens_served_from_the_kept_cache(client, engine):
    first = client.chat.completions.create(model="r1", messages=ASK, max_tokens=4, temperature=0)
    probe_ids = engine.chat_prompt(ASK)
    list(engine.generate(probe_ids, max_new_tokens=1, temperature=0.0))
    list(engine.generate(probe_ids + [9, 10], max_new_tokens=1, temperature=0.0))
    stats = getattr(engine, "last_stats", None)
    if not stats or not stats.get("cached_tokens"):
        pytest.skip("this engine does not reuse its cache across calls yet (issue 13's prefix reuse)")
    follow = ASK + [{"role": "assistant", "content": first.choices[0].message.content or "ok"},
                    {"role": "user", "content": "And then?"}]
    r = client.chat.completions.create(model="r1", messages=follow, max_tokens=4, temperature=0)
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens // 2 < cached < r.usage.prompt_tokens


def test_concurrent_clients_each_get_what_the_engine_gives_them_alone(server, engine):
    import threading

    prompts = [[{"role": "user", "content": f"Plan step {n}."}] for n in range(4)]
    alone = [expected(engine, p, max_tokens=8)[0] for p in prompts]
    together: dict[int, str] = {}

    def ask(i):
        c = openai.OpenAI(base_url=server.base, api_key="x", max_retries=0, timeout=300)
        if i % 2:
            chunks = c.chat.completions.create(model="r1", messages=prompts[i], max_tokens=8, temperature=0, stream=True)
            together[i] = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or ""
                                  for ch in chunks if ch.choices)
        else:
            r = c.chat.completions.create(model="r1", messages=prompts[i], max_tokens=8, temperature=0)
            together[i] = r.choices[0].message.reasoning_content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [together.get(i) for i in range(4)] == alone


def test_a_client_that_hangs_up_mid_stream_stops_the_engine_and_the_next_is_served(server, client, engine):
    import httpx

    body = {"model": "r1", "messages": ASK, "temperature": 0, "max_tokens": 220, "stream": True}
    with httpx.stream("POST", f"{server.base}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        got = [line for line, _ in zip(response.iter_lines(), range(10)) if line.startswith("data: {")]
        assert len(got) >= 4  # it was streaming; now we hang up
    thinking, _, _, _ = expected(engine, ASK, max_tokens=3)
    r = client.chat.completions.create(model="r1", messages=ASK, max_tokens=3, temperature=0)
    assert r.choices[0].message.reasoning_content == thinking  # the next request, served in full
    stopped = [line for line in server.stderr().splitlines() if "its generation stopped after" in line]
    assert stopped, server.stderr()
    assert int(stopped[-1].split("after ")[1].split()[0]) < 150  # of the 220 asked for
