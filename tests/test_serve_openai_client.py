"""`duet serve` as other OpenAI-compatible servers are checked (vLLM's and llama.cpp server's
suites): the official `openai` client, and raw HTTP where the client hides the wire. The
response objects' fields, content parts and system/developer roles, stop as a string or a
list, usage in a stream only when asked for, parameters the server cannot honour refused
with a 400 naming them, malformed bodies, and clients that leave while queued or waiting.
Real models throughout: the Gemma 3 270M GGUF (llama.cpp) and a tiny random R1 checkpoint
(our own engine)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")

from tests.serve_support import DuetServe, llama_config, local_config  # noqa: E402

MODEL = "gemma-3-270m-q4_k_m"  # the file's stem
ASK = [{"role": "user", "content": "Name three colours."}]
OTHER = [{"role": "user", "content": "Say hi."}]
LONG = [{"role": "user", "content": "Write a long story about the sea, with many chapters."}]


@pytest.fixture(scope="module")
def server(gemma_gguf, tmp_path_factory):
    serve = DuetServe(llama_config(gemma_gguf), tmp_path_factory.mktemp("serve-client"))
    yield serve
    assert serve.interrupt() == 0


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)


def greedy(client, messages=ASK, *, model=MODEL, **kw):
    """A greedy answer, asked right after an unrelated prompt: llama.cpp's numbers for a prompt
    token depend a little on how much of the prompt the cache held (see test_serve_api.py), so
    answers compared with each other start from the same cache state (for prompts that share
    only the chat template's head with OTHER)."""
    kw.setdefault("max_tokens", 12)
    client.chat.completions.create(model=MODEL, messages=OTHER, temperature=0, max_tokens=1)
    return client.chat.completions.create(model=model, messages=messages, temperature=0, **kw)


def streamed(client, messages=ASK, **kw):
    kw.setdefault("max_tokens", 12)
    client.chat.completions.create(model=MODEL, messages=OTHER, temperature=0, max_tokens=1)
    return list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stream=True, **kw))


def text_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def reasons_of(chunks) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def log_lines(server, needle: str) -> int:
    return sum(needle in line for line in server.stderr().splitlines())


# -- the objects ---------------------------------------------------------------------------


def test_the_model_can_be_retrieved_by_every_name_a_request_may_use(client):
    assert client.models.retrieve(MODEL).id == MODEL
    # a chat request may name the model by its role; looking it up by that name finds it too
    assert greedy(client, model="reasoner", max_tokens=2).model == MODEL
    card = client.models.retrieve("reasoner")
    assert (card.id, card.object, card.owned_by) == (MODEL, "model", "duet")
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("coder")  # the role it does not serve
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["code"] == "model_not_found"


def test_a_whole_response_has_openais_fields_and_consistent_usage(client):
    before = int(time.time())
    r = greedy(client, max_tokens=5)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert before - 1 <= r.created <= int(time.time()) + 1
    [choice] = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content and choice.logprobs is None
    u = r.usage
    assert u.completion_tokens == 5 and u.total_tokens == u.prompt_tokens + 5
    assert 0 <= u.prompt_tokens_details.cached_tokens < u.prompt_tokens
    assert greedy(client).id != r.id  # one id per completion


def test_every_chunk_of_a_stream_shares_the_completions_id_created_and_model(client):
    chunks = streamed(client, max_tokens=6, stream_options={"include_usage": False})
    assert len({(c.id, c.created, c.model, c.object) for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].object == "chat.completion.chunk"
    assert chunks[0].model == MODEL and chunks[0].choices[0].delta.role == "assistant"
    assert reasons_of(chunks) == ["length"] and chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks) and all(len(c.choices) == 1 for c in chunks)  # no usage chunk
    assert text_of(chunks) == greedy(client, max_tokens=6).choices[0].message.content


def test_max_completion_tokens_wins_over_max_tokens(client):
    r = greedy(client, max_tokens=9, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


# -- what the messages may look like -------------------------------------------------------


def test_text_parts_read_as_the_plain_text_they_hold(client):
    def answer(messages):
        r = greedy(client, messages)
        return r.choices[0].message.content, r.usage.prompt_tokens

    history = [{"role": "user", "content": "List two rivers."}, {"role": "assistant", "content": "Nile, Rhine."}, *ASK]
    as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in history]
    assert answer(as_parts) == answer(history)
    assert answer(as_parts)[1] > answer(ASK)[1]  # every part was read into the prompt


def test_a_stop_given_as_a_string_or_a_list_cuts_the_answer_the_same_way(client):
    full = greedy(client, max_tokens=16).choices[0].message.content
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    for given in (stop, [stop], ["never-appears", stop]):
        r = greedy(client, max_tokens=16, stop=given)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (cut, "stop")
        assert r.usage.completion_tokens < 16
    r = greedy(client, max_tokens=16, stop=["never-appears"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (full, "length")


def test_a_stop_at_the_very_start_gives_empty_content_and_finish_reason_stop(client):
    full = greedy(client, max_tokens=4).choices[0].message.content
    r = greedy(client, max_tokens=4, stop=full[:2])
    assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "stop"
    chunks = streamed(client, max_tokens=4, stop=full[:2], stream_options={"include_usage": True})
    assert text_of(chunks) == "" and reasons_of(chunks) == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


# -- requests the server will not serve ----------------------------------------------------


@pytest.mark.parametrize("fields, param", [
    ({"messages": []}, "messages"),
    ({"n": 2}, "n"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"logprobs": True}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}},
     "response_format.json_schema.schema"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream=True
    ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"frequency_penalty": -0.5}, "frequency_penalty"),
    ({"logit_bias": {"1": 100}}, "logit_bias"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"seed": 2 ** 64}, "seed"),
    ({"seed": -(2 ** 63) - 1}, "seed"),
    ({"temperature": 2.5}, "temperature"),
    ({"stop": [1]}, "stop"),
    ({"extra_body": {"grammar": 'root ::= "yes"', "response_format": {"type": "json_object"}}}, "grammar"),  # two rules
    ({"extra_body": {"json_schema": {"type": "object"}}}, "json_schema"),  # llama.cpp's own field: response_format
    ({"extra_body": {"guided_json": {"type": "object"}}}, "guided_json"),  # vLLM's
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages[0].role"),
    ({"messages": [*OTHER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[1].tool_calls"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "messages[0].content[0]"),
])
def test_a_parameter_the_server_cannot_honour_is_a_400_naming_it(client, fields, param):
    kw = {"model": MODEL, "messages": OTHER, "max_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kw)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"
    assert err.value.body["message"]


def test_parameters_that_ask_for_nothing_extra_are_served(client):
    r = client.chat.completions.create(
        model=MODEL, messages=OTHER, max_tokens=2, n=1, presence_penalty=0, frequency_penalty=0.0, logit_bias={},
        tools=[], tool_choice="none", logprobs=False, response_format={"type": "text"}, modalities=["text"],
        user="u1", seed=2 ** 64 - 1, stream_options=None, stop=[], parallel_tool_calls=False)
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model=MODEL, messages=OTHER, max_tokens=2, seed=-(2 ** 63))
    assert r.choices[0].message.content


def test_malformed_bodies_are_400s_and_a_request_without_a_model_is_served_by_the_one_model(server):
    url = f"{server.base}/chat/completions"
    for raw in (b"[" * 100_000 + b"]" * 100_000,  # nesting too deep to parse: still the client's fault
                b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2',  # cut short
                b'{"messages": [{"role": "user", "content": "\xff"}]}',  # not UTF-8
                # valid JSON, but a lone surrogate is no text a tokenizer can encode
                b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
                b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": true, '
                b'"stop": "\\udfff"}'):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400, (raw[:40], r.text[:200])
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, json={"messages": OTHER, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["model"] == MODEL
    r = httpx.post(url, json={"model": "gpt-4o", "messages": OTHER}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# -- clients that leave --------------------------------------------------------------------


def test_a_client_that_gives_up_on_a_whole_answer_stops_its_generation(server, client):
    before = log_lines(server, "its generation stopped after")
    body = {"model": MODEL, "messages": LONG, "temperature": 0, "max_tokens": 600}
    try:
        httpx.post(f"{server.base}/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.5))
    except httpx.ReadTimeout:
        pass  # the client gave up mid-generation: the case under test
    else:
        pytest.skip("the whole answer came back before the client gave up (a machine this fast needs a longer one)")
    assert greedy(client, max_tokens=2).choices[0].message.content  # served after it
    stopped = [line for line in server.stderr().splitlines() if "its generation stopped after" in line]
    assert len(stopped) == before + 1, server.stderr()
    assert int(stopped[-1].split("after ")[1].split()[0]) < 600


def test_a_stream_whose_client_leaves_while_queued_is_never_started(server, client):
    before = log_lines(server, "cancelled before its turn")
    first = {"model": MODEL, "messages": LONG, "temperature": 0, "max_tokens": 600, "stream": True}
    with httpx.stream("POST", f"{server.base}/chat/completions", json=first, timeout=120) as running:
        lines = running.iter_lines()
        assert any(line.startswith("data: {") for line, _ in zip(lines, range(6)))
        queued = {**first, "messages": OTHER}
        # behind a running generation the stream has not begun: the client gives up waiting
        try:
            httpx.post(f"{server.base}/chat/completions", json=queued, timeout=httpx.Timeout(30, read=1.0))
        except httpx.ReadTimeout:
            pass  # it gave up while queued: the case under test
        else:
            pytest.skip("the running generation ended before the queued client gave up (a machine this fast)")
    # one worker takes requests in order, so once this one is answered the queued one was dealt with
    assert greedy(client, max_tokens=2).choices[0].message.content
    assert log_lines(server, "cancelled before its turn") == before + 1, server.stderr()


def test_concurrent_streams_and_whole_answers_each_end_once_with_their_own_id(server):
    results: dict[int, object] = {}

    def ask(i):
        c = openai.OpenAI(base_url=server.base, api_key="x", max_retries=0, timeout=300)
        if i % 2:
            results[i] = list(c.chat.completions.create(model=MODEL, messages=OTHER, max_tokens=4, stream=True,
                                                        stream_options={"include_usage": True}))
        else:
            results[i] = c.chat.completions.create(model=MODEL, messages=OTHER, max_tokens=4)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ids = set()
    for i in range(4):
        if i % 2:
            chunks = results[i]
            assert reasons_of(chunks) == ["length"] and chunks[-1].usage.completion_tokens == 4
            ids |= {c.id for c in chunks}
        else:
            assert results[i].choices[0].finish_reason == "length" and results[i].usage.completion_tokens == 4
            ids.add(results[i].id)
    assert len(ids) == 4


# -- our own engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.tiny_checkpoints import write_tiny_v3

    checkpoint = write_tiny_v3(tmp_path_factory.mktemp("tiny") / "r1", r1=True)
    serve = DuetServe(local_config(checkpoint), tmp_path_factory.mktemp("serve-client-local"))
    yield serve
    assert serve.interrupt() == 0


def test_any_64_bit_seed_samples_on_our_engine_and_a_larger_one_is_a_400(local_server):
    c = openai.OpenAI(base_url=local_server.base, api_key="x", max_retries=0, timeout=120)
    answers = {}
    for seed in (-(2 ** 63), 2 ** 64 - 1, 5, 5):
        r = c.chat.completions.create(model="r1", messages=OTHER, max_tokens=6, temperature=1.0, seed=seed)
        assert r.usage.completion_tokens >= 1 and r.choices[0].message.reasoning_content
        answers.setdefault(seed, []).append(r.choices[0].message.reasoning_content)
    assert answers[5][0] == answers[5][1]
    for seed in (2 ** 64, -(2 ** 63) - 1):
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="r1", messages=OTHER, max_tokens=2, temperature=1.0, seed=seed)
        assert err.value.body["param"] == "seed"


def test_a_reasoners_stream_and_whole_answer_agree_with_text_parts_and_a_developer_message(local_server):
    c = openai.OpenAI(base_url=local_server.base, api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "Plan a cache."}]}]
    whole = c.chat.completions.create(model="r1", messages=messages, max_tokens=8, temperature=0)
    chunks = list(c.chat.completions.create(model="r1", messages=messages, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    thinking = "".join(getattr(ch.choices[0].delta, "reasoning_content", None) or "" for ch in chunks if ch.choices)
    assert thinking and thinking == whole.choices[0].message.reasoning_content
    assert text_of(chunks) == (whole.choices[0].message.content or "")
    assert thinking not in text_of(chunks)
    assert reasons_of(chunks) == [whole.choices[0].finish_reason]
    assert json.loads(chunks[-1].usage.model_dump_json())["completion_tokens"] == whole.usage.completion_tokens
    # a developer message is read as a system message (this template keeps those, unlike Gemma's fallback)
    as_system = [{"role": "system", "content": "Be brief."}, *messages[1:]]
    prompt = c.chat.completions.create(model="r1", messages=as_system, max_tokens=1).usage.prompt_tokens
    assert prompt == whole.usage.prompt_tokens
    assert prompt > c.chat.completions.create(model="r1", messages=messages[1:], max_tokens=1).usage.prompt_tokens
