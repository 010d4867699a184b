"""`duet serve` on the real Gemma 3 270M GGUF (llama.cpp), checked with the official `openai`
client and plain HTTP: both kinds of response, stop, max_tokens, seed, cached prompt tokens,
concurrent clients, a client that hangs up, bad requests, and `duet doctor` / discovery
recognising the server."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")

from app.backends.probe import probe  # noqa: E402
from app.config import RoleConfig  # noqa: E402
from app.discovery import probe_servers  # noqa: E402
from app.doctor import check_role  # noqa: E402
from tests.serve_support import DuetServe, llama_config  # noqa: E402

MODEL = "gemma-3-270m-q4_k_m"  # the file's stem
ASK = [{"role": "user", "content": "Name three colours."}]
OTHER = [{"role": "user", "content": "Say hi."}]

# llama.cpp's numbers for a prompt token differ slightly between a token read in a batch
# and one read alone, so a greedy continuation can depend on how much of the prompt the
# cache already held (llama-server documents the same of cache_prompt). Requests compared
# with each other therefore start from the same cache state: right after a request whose
# prompt shares only the chat template's head with theirs (`fresh`).


@pytest.fixture(scope="module")
def server(gemma_gguf, tmp_path_factory):
    serve = DuetServe(llama_config(gemma_gguf), tmp_path_factory.mktemp("serve-gemma"))
    yield serve
    serve.interrupt()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)


def greedy(client, messages=ASK, *, fresh=True, **kw):
    kw.setdefault("max_tokens", 16)
    if fresh:
        client.chat.completions.create(model=MODEL, messages=OTHER, temperature=0, max_tokens=1)
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, **kw)


def streamed(client, messages=ASK, *, fresh=True, **kw):
    """(content pieces, finish reasons, chunks) of a greedy stream."""
    kw.setdefault("max_tokens", 16)
    if fresh:
        client.chat.completions.create(model=MODEL, messages=OTHER, temperature=0, max_tokens=1)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True, **kw))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return pieces, reasons, chunks


def test_the_model_list_names_the_gguf_and_says_it_is_duet(server, client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].owned_by == "duet"
    response = httpx.get(f"{server.base}/models")
    assert response.headers["server"].startswith("duet/")
    assert response.json()["data"][0]["max_model_len"] == 1024
    assert client.models.retrieve(MODEL).id == MODEL


def test_a_stream_and_a_whole_answer_carry_the_same_greedy_text(client):
    whole = greedy(client)
    pieces, reasons, chunks = streamed(client)
    assert len(pieces) > 3 and "".join(pieces) == whole.choices[0].message.content
    assert whole.choices[0].message.content.strip()
    assert getattr(whole.choices[0].message, "reasoning_content", None) is None  # Gemma does not think
    assert reasons == [whole.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks)  # no usage unless asked for


def test_max_tokens_ends_the_answer_with_finish_reason_length(client):
    r = greedy(client, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = greedy(client, max_completion_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_a_stop_sequence_split_across_deltas_ends_the_answer_before_it(client):
    pieces, _, _ = streamed(client, max_tokens=24)
    full = "".join(pieces)
    # a stop that straddles the boundary between the 3rd and 4th deltas
    at = len("".join(pieces[:3]))
    stop = full[at - 2: at + 2]
    assert len(stop) == 4 and stop not in full[: at - 2]
    cut = full[: full.index(stop)]
    r = greedy(client, max_tokens=24, stop=[stop, "never-appears"])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    pieces, reasons, _ = streamed(client, max_tokens=24, stop=stop)
    assert "".join(pieces) == cut and reasons == ["stop"]


def test_usage_arrives_in_the_stream_when_asked_for(client):
    whole = greedy(client)
    _, _, chunks = streamed(client, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_a_follow_up_turn_reports_its_earlier_prompt_as_cached(client):
    first = greedy(client, [{"role": "user", "content": "Write one line about rivers."}], max_tokens=8)
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens // 2  # after another prompt
    follow = [{"role": "user", "content": "Write one line about rivers."},
              {"role": "assistant", "content": first.choices[0].message.content},
              {"role": "user", "content": "Now one about hills."}]
    second = greedy(client, follow, max_tokens=8, fresh=False)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    again = greedy(client, follow, max_tokens=8, fresh=False)  # the same prompt again: all but its last token
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_the_same_seed_samples_the_same_answer(client):
    def sample(seed):
        client.chat.completions.create(model=MODEL, messages=OTHER, temperature=0, max_tokens=1)
        return client.chat.completions.create(model=MODEL, messages=ASK, temperature=1.0, top_p=1.0, seed=seed,
                                              max_tokens=12).choices[0].message.content

    a, b = sample(7), sample(7)
    assert a == b
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1  # and the seed does steer it


def test_concurrent_clients_each_get_what_they_would_get_alone(server):
    # prompts that differ from their first word: whatever order they are served in, each
    # finds only the template's head in the cache, as it does alone
    prompts = [[{"role": "user", "content": text}] for text in
               ("Count to five.", "List two rivers.", "Describe a cat.", "Why is the sky blue?")]
    solo = openai.OpenAI(base_url=server.base, api_key="x", max_retries=0, timeout=300)
    alone = [greedy(solo, p).choices[0].message.content for p in prompts]
    together: dict[int, str] = {}

    def ask(i):
        c = openai.OpenAI(base_url=server.base, api_key="x", max_retries=0, timeout=300)
        if i % 2:
            together[i] = "".join(streamed(c, prompts[i], fresh=False)[0])
        else:
            together[i] = greedy(c, prompts[i], fresh=False).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [together.get(i) for i in range(4)] == alone


def test_a_client_that_hangs_up_mid_stream_cancels_its_generation(server, client):
    long_ask = [{"role": "user", "content": "Write a long story about the sea, with many chapters."}]
    body = {"model": MODEL, "messages": long_ask, "temperature": 0, "max_tokens": 600, "stream": True}
    with httpx.stream("POST", f"{server.base}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        got = [line for line, _ in zip(lines, range(12)) if line.startswith("data: {")]
        assert len(got) >= 5  # it was streaming, then we hang up
    r = greedy(client, max_tokens=4)  # the next request is served
    assert r.choices[0].message.content
    log = server.stderr()
    stopped = [line for line in log.splitlines() if "its generation stopped after" in line]
    assert stopped, log
    produced = int(stopped[-1].split("after ")[1].split()[0])
    assert produced < 200  # far short of the 600 tokens asked for (greedy Gemma writes on)


def test_malformed_requests_get_openai_shaped_400s_and_the_server_stays_up(server, client):
    url = f"{server.base}/chat/completions"
    cases = [
        (b"{not json", "invalid_json"),
        (json.dumps({"model": MODEL}).encode(), None),  # no messages
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), None),
        (json.dumps({"model": MODEL, "messages": ASK, "max_tokens": "ten"}).encode(), None),
        (json.dumps({"model": MODEL, "messages": ASK, "temperature": [1]}).encode(), None),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": {"a": 1}}]}).encode(), None),
        (json.dumps([1, 2, 3]).encode(), None),
    ]
    for raw, code in cases:
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400, raw
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["message"] and (code is None or error["code"] == code)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=-1)
    r = httpx.get(f"{server.base}/nowhere", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"]
    assert greedy(client, max_tokens=2).choices[0].message.content  # still serving


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=ASK, max_tokens=2)
    assert err.value.body["code"] == "model_not_found" and MODEL in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


def test_a_prompt_longer_than_the_context_is_a_400_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError) as err:
        greedy(client, [{"role": "user", "content": "word " * 1500}], max_tokens=2)
    assert err.value.body["code"] == "context_length_exceeded" and "1024" in err.value.body["message"]


def test_doctor_and_discovery_recognise_a_duet_serve(server):
    port = int(server.base.rsplit(":", 1)[1].split("/")[0])
    found = probe_servers({port: "vLLM"}, timeout=5)
    assert [(f.label, f.location) for f in found] == [(MODEL, server.base)]
    assert found[0].detail == f"duet serve on port {port}"
    rc = RoleConfig(role="coder", backend="openai", url=server.base, model=MODEL)
    assert probe(rc).duet
    check = check_role(rc, "config.toml")
    assert check.ok and check.detail.startswith("duet serve (reasoner, llama.cpp): serves " + MODEL)


def test_a_key_is_required_when_the_server_has_one(gemma_gguf, tmp_path, monkeypatch):
    serve = DuetServe(llama_config(gemma_gguf), tmp_path / "keyed", "--api-key-env", "DUET_TEST_KEY",
                      env={"DUET_TEST_KEY": "s3cret"})
    try:
        for key in ("wrong", ""):
            with pytest.raises(openai.AuthenticationError) as err:
                openai.OpenAI(base_url=serve.base, api_key=key or "x", max_retries=0).models.list()
            assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
        assert httpx.post(f"{serve.base}/chat/completions", json={"messages": ASK}).status_code == 401
        good = openai.OpenAI(base_url=serve.base, api_key="s3cret", max_retries=0, timeout=120)
        assert greedy(good, max_tokens=2).choices[0].message.content
        rc = RoleConfig(role="coder", backend="openai", url=serve.base, model=MODEL, api_key_env="DUET_TEST_KEY")
        assert probe(rc).model_ok is False  # this process has no $DUET_TEST_KEY
        monkeypatch.setenv("DUET_TEST_KEY", "s3cret")
        assert probe(rc).model_ok
    finally:
        assert serve.interrupt() == 0


def test_ctrl_c_stops_a_busy_server_cleanly_with_exit_status_0(gemma_gguf, tmp_path):
    serve = DuetServe(llama_config(gemma_gguf), tmp_path / "busy")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "temperature": 0,
            "max_tokens": 900, "stream": True}
    with httpx.stream("POST", f"{serve.base}/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        assert any(line.startswith("data: {") for line, _ in zip(lines, range(6)))
        status = serve.interrupt(timeout=30)
    assert status == 0
    err = serve.stderr()
    assert "duet serve: stopped" in err and "Traceback" not in err
