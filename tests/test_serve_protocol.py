"""`duet serve`'s pure parts: stop sequences cut across deltas, and reading request bodies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vocab.events import Usage
from app.serve.protocol import ApiError, Completion, parse_chat_request, parse_json, usage_body
from app.serve.stops import StopCutter


def cut_whole(text: str, stops) -> tuple[str, bool]:
    """What a stop cut must give, read one character at a time: the text before the first
    stop sequence to complete."""
    for end in range(len(text) + 1):
        starts = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if starts:
            return text[: min(starts)], True
    return text, False


def feed_in_pieces(text: str, cuts: list[int], stops) -> tuple[str, bool]:
    cutter = StopCutter(stops)
    out, last = [], 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]:
        out.append(cutter.feed(text[last:cut]))
        last = cut
    out.append(cutter.flush())
    return "".join(out), cutter.hit


def test_a_stop_sequence_split_across_deltas_is_cut_and_nothing_after_it_passes():
    cutter = StopCutter(["\nEND"])
    assert cutter.feed("one two\n") == "one two"  # the newline may begin the stop: held
    assert cutter.feed("EN") == ""
    assert cutter.feed("D and more") == "" and cutter.hit
    assert cutter.feed("later text") == "" and cutter.flush() == ""


def test_held_text_that_turns_out_not_to_be_a_stop_is_passed_on():
    cutter = StopCutter(["STOP"])
    assert cutter.feed("a ST") == "a "
    assert cutter.feed("ART") == "START" and not cutter.hit
    assert cutter.feed("x ST") == "x "
    assert cutter.flush() == "ST"


def test_the_stop_sequence_that_completes_first_wins():
    cutter = StopCutter(["world", "lo w"])
    assert cutter.feed("hello world") == "hel" and cutter.hit
    cutter = StopCutter(["x", "axa"])  # "x" is complete before "axa" could be
    assert cutter.feed("axaa") == "a" and cutter.hit


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\nxy", max_size=40), stops=st.lists(st.text(alphabet="ab\nx", max_size=4), max_size=3),
       cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=12))
def test_the_cut_never_depends_on_where_the_deltas_broke(text, stops, cuts):
    assert feed_in_pieces(text, cuts, stops) == cut_whole(text, stops)


def body(**kw):
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


def test_a_full_request_is_read_with_every_field():
    req = parse_chat_request(body(stream=True, stream_options={"include_usage": True}, max_completion_tokens=7,
                                  temperature=0, top_p=0.5, seed=3, stop="\n", user="ignored", presence_penalty=0))
    assert (req.model, req.stream, req.include_usage, req.max_tokens) == ("m", True, True, 7)
    assert (req.temperature, req.top_p, req.seed, req.stop) == (0.0, 0.5, 3, ("\n",))
    assert [(m.role, m.content) for m in req.messages] == [("user", "hi")]


def test_text_parts_developer_messages_and_empty_assistant_content_are_accepted():
    req = parse_chat_request({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None}]})
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "a\nb"), ("assistant", "")]
    assert req.model is None and req.max_tokens is None and req.stop == ()


@pytest.mark.parametrize("fields, param", [
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_completion_tokens": 2.5}, "max_completion_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"seed": 1.5}, "seed"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": []}, "stream_options"),
    ({"model": 3}, "model"),
    ({"n": 2}, "n"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": 3}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": []}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": "json"}, "response_format"),
    ({"grammar": 5}, "grammar"),
    ({"grammar": "  "}, "grammar"),
    ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar"),
])
def test_a_bad_field_is_a_400_naming_it(fields, param):
    with pytest.raises(ApiError) as err:
        parse_chat_request(body(**fields))
    assert err.value.status == 400 and err.value.param == param
    assert err.value.body()["error"]["type"] == "invalid_request_error" and err.value.message


def test_a_json_format_or_a_grammar_becomes_the_one_rule_on_the_reply():
    from app.serve.protocol import OutputRule

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert parse_chat_request(body()).output is None
    assert parse_chat_request(body(response_format={"type": "text"})).output is None
    assert parse_chat_request(body(response_format={"type": "json_object"})).output == OutputRule(
        "json", None, "response_format", {"type": "json_object"})
    named = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    rule = parse_chat_request(body(response_format=named)).output
    assert rule == OutputRule("json_schema", schema, "response_format", named)
    assert rule.fields() == {"response_format": named}  # what a proxied server is sent: the field as it came
    # a json_schema without a schema asks for JSON, as OpenAI reads it
    bare = {"type": "json_schema", "json_schema": {"name": "a"}}
    assert parse_chat_request(body(response_format=bare)).output == OutputRule("json", None, "response_format", bare)
    rule = parse_chat_request(body(grammar='root ::= "yes" | "no"')).output
    assert rule == OutputRule("grammar", 'root ::= "yes" | "no"', "grammar", 'root ::= "yes" | "no"')
    assert rule.fields() == {"grammar": 'root ::= "yes" | "no"'}


def test_fields_that_ask_for_nothing_extra_are_accepted():
    req = parse_chat_request(body(logprobs=False, top_logprobs=0, response_format={"type": "text"}, tools=[],
                                  presence_penalty=0.0, user="u1"))
    assert req.messages


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    with pytest.raises(ApiError) as err:
        parse_json(raw)
    assert err.value.status == 400


def test_usage_counts_cached_prompt_tokens_and_the_total():
    assert usage_body(Usage(10, 4, cached_tokens=6)) == {
        "prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "prompt_tokens_details": {"cached_tokens": 6}}


def test_the_thinking_goes_in_reasoning_content_not_content():
    out = Completion("m").message(content="42", reasoning="add them", finish_reason="stop", usage=Usage(3, 2))
    message = out["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "42", "reasoning_content": "add them"}
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")


def test_serve_without_its_key_variable_set_exits_2_naming_it(capsys, monkeypatch):
    from app.cli import main

    monkeypatch.delenv("DUET_NO_SUCH_KEY", raising=False)
    assert main(["serve", "--port", "0", "--api-key-env", "DUET_NO_SUCH_KEY"]) == 2
    err = capsys.readouterr().err
    assert "$DUET_NO_SUCH_KEY" in err and "--api-key-env" in err and len(err.strip().splitlines()) == 1


def test_serve_on_a_taken_port_exits_2_naming_it(capsys):
    import socket

    from app.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}" in err and len(err.strip().splitlines()) == 1


def test_serve_rejects_a_port_out_of_range(capsys):
    from app.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
