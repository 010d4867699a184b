"""`duet serve` holding a reply to JSON, a JSON schema or a GBNF grammar, through the official
`openai` client: `response_format` (json_object, json_schema) and llama.cpp's `grammar` field,
served by a real llama.cpp model (Gemma 3 270M, a base model that would not write JSON on its
own), or sent on to the server an openai backend proxies; refused with a 400 naming the field
where the reply cannot be held: our own engine, a reasoning model (its thinking comes first), a
grammar llama.cpp cannot parse, a schema its converter cannot turn into one, a proxied server's
refusal."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")

from tests.serve_support import DuetServe, llama_config, local_config  # noqa: E402

MODEL = "gemma-3-270m-q4_k_m"
ASK = [{"role": "user", "content": "What colour is the sky? Answer in one word."}]
COLOUR = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
          "required": ["colour"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(gemma_gguf, tmp_path_factory):
    serve = DuetServe(llama_config(gemma_gguf, role="coder"), tmp_path_factory.mktemp("serve-grammar"),
                      "--role", "coder")
    yield serve
    assert serve.interrupt() == 0


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)


def _schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "colour", "schema": schema, "strict": True}}


def test_a_json_schema_holds_the_reply_whole_and_streamed(client):
    for seed in (1, 2, 3):
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=1.0, seed=seed,
                                           response_format=_schema_format(COLOUR))
        assert r.choices[0].finish_reason == "stop"
        assert json.loads(r.choices[0].message.content)["colour"] in ("red", "green", "blue")
        assert set(json.loads(r.choices[0].message.content)) == {"colour"}
    chunks = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0, stream=True,
                                            response_format=_schema_format(COLOUR))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text)["colour"] in ("red", "green", "blue")


def test_json_object_mode_answers_json(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=120, temperature=0,
                                       response_format={"type": "json_object"})
    content = r.choices[0].message.content
    assert content.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":  # cut at max_tokens, the object may stay open
        assert isinstance(json.loads(content), dict)
    free = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20, temperature=0)
    assert not free.choices[0].message.content.lstrip().startswith("{")  # the model alone writes no JSON


def test_llama_cpp_s_grammar_field_holds_the_reply(client):
    for seed in range(4):
        r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=1.0, seed=seed,
                                           extra_body={"grammar": 'root ::= "yes" | "no"'})
        assert r.choices[0].message.content in ("yes", "no") and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("fields, param", [
    ({"extra_body": {"grammar": "root ::= ("}}, "grammar"),                     # llama.cpp cannot parse it
    ({"response_format": _schema_format({"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}})},
     "response_format"),                                                         # nor convert this schema
])
def test_a_rule_llama_cpp_cannot_use_is_a_400_naming_the_field(client, fields, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **fields)
    assert err.value.status_code == 400 and err.value.body["param"] == param
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, temperature=0)
    assert r.choices[0].message.content is not None  # and the server serves the next request


def test_a_proxied_server_is_sent_the_rule_and_its_refusal_is_a_400(server, tmp_path):
    """`duet serve` on the openai backend, in front of the llama.cpp `duet serve` above (as one
    in front of vLLM or llama-server): the client's `response_format` and `grammar` go on as they
    came, so the reply is held upstream; what the upstream refuses comes back a 400 naming the
    field, with the upstream's reason."""
    proxy = DuetServe(f'[coder]\nbackend = "openai"\nurl = "{server.base}"\nmodel = "{MODEL}"\n', tmp_path,
                      "--role", "coder")
    try:
        c = openai.OpenAI(base_url=proxy.base, api_key="x", max_retries=0, timeout=120)
        for seed in (1, 2):
            r = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=1.0, seed=seed,
                                          response_format=_schema_format(COLOUR))
            assert set(json.loads(r.choices[0].message.content)) == {"colour"}
        chunks = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=10, temperature=1.0, seed=3,
                                           stream=True, extra_body={"grammar": 'root ::= "yes" | "no"'})
        assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) in ("yes", "no")
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, extra_body={"grammar": "root ::= ("})
        assert err.value.body["param"] == "grammar" and "HTTP 400" in err.value.body["message"]
        free = c.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20, temperature=0)
        assert not free.choices[0].message.content.lstrip().startswith("{")  # the rule held it, not the model
    finally:
        assert proxy.interrupt() == 0


def test_our_engine_and_a_reasoning_model_refuse_a_rule_rather_than_ignore_it(tmp_path):
    from tests import gguf_helpers as H
    from tests.tiny_checkpoints import write_tiny_v3

    hf = write_tiny_v3(tmp_path / "r1", r1=True)
    local = DuetServe(local_config(hf), tmp_path / "local")
    try:
        c = openai.OpenAI(base_url=local.base, api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="r1", messages=ASK, max_tokens=5, response_format={"type": "json_object"})
        assert err.value.body["param"] == "response_format" and "llama.cpp" in err.value.body["message"]
    finally:
        assert local.interrupt() == 0
    gguf = H.write_gguf(hf, tmp_path / "r1.gguf")  # the same R1 model as a GGUF: R1's template
    served = DuetServe(llama_config(gguf), tmp_path / "gguf")
    try:
        c = openai.OpenAI(base_url=served.base, api_key="x", max_retries=0, timeout=120)
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="r1", messages=ASK, max_tokens=5, extra_body={"grammar": 'root ::= "a"'})
        assert err.value.body["param"] == "grammar" and "reasoning model" in err.value.body["message"]
        r = c.chat.completions.create(model="r1", messages=ASK, max_tokens=5, temperature=0)
        assert r.choices[0].finish_reason == "length"  # without a rule it is served, as before
    finally:
        assert served.interrupt() == 0
