"""The thinking/answer split against the cases other projects' reasoning parsers are tested on
(vLLM's deepseek_r1 and qwen3 parsers, SGLang's reasoning detectors, llama-server's
``reasoning_format`` none / deepseek / deepseek-legacy), decided for Duet.

Duet's rules (vocab.reasoning): the thinking pane gets the trace, the answer pane the answer;
nothing the model wrote is lost (a tag that is not a real think block stays as text); the
answer, which becomes the plan handed on, never holds a trace that was recognised as one.
Where the public parsers differ, Duet follows the R1 reading: a leading `<think>` opens a
trace even if it never closes (cut off mid-thought), and once the answer has begun every tag
in it is literal text.

Every inline case is checked whole, streamed cut at every offset (two and three pieces), and
one character at a time: the streamed pieces joined must equal the whole split.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.backends.openai import OpenAIBackend
from app.config import RoleConfig, Sampling
from tests.backend_helpers import collect
from tests.sse_server import DONE, Reply, ScriptedServer, chunk
from vocab.events import Done
from vocab.messages import ChatMessage
from vocab.reasoning import ANSWER, CLOSE, OPEN, THINKING, ThinkSplitter, prompt_opens_thinking, split_text

ALL = (True, None, False)


def run(chunks, opened=False, fields=(), *, interrupted=False):
    """Feed field reasoning, then content, chunk by chunk; return (thinking, answer, pieces)."""
    s = ThinkSplitter(opened)
    out = []
    for text in fields:
        out += s.feed_reasoning(text)
    for text in chunks:
        out += s.feed(text)
    out += s.finish(interrupted=interrupted)
    thinking = "".join(t for kind, t in out if kind == THINKING)
    answer = "".join(t for kind, t in out if kind == ANSWER)
    assert all(t for _, t in out), out  # no empty pieces
    assert (thinking, answer) == (s.thinking, s.answer)  # what streamed is what it kept
    return thinking, answer, out


def cuttings(text):
    """Every way to cut ``text`` into two or three pieces, and into single characters."""
    n = len(text)
    yield [text]
    yield list(text)
    for i in range(n + 1):
        yield [text[:i], text[i:]]
    for i in range(1, n):
        for j in range(i + 1, n):
            yield [text[:i], text[i:j], text[j:]]


# (case id, model output, {opened: (thinking, answer)}); a single tuple means: the same for every `opened`.
INLINE = [
    # vLLM deepseek_r1 / SGLang DeepSeekR1Detector basics
    ("tagged", "<think>abc</think>def", ("abc", "def")),
    ("vllm_simple", "<think>This is a reasoning section</think>This is the rest",
     ("This is a reasoning section", "This is the rest")),
    ("vllm_multiline", "<think>This is a reasoning\nsection</think>This is the rest\nThat",
     ("This is a reasoning\nsection", "This is the rest\nThat")),
    ("newlines_trimmed", "<think>\nabc\n</think>\n\ndef", ("abc", "def")),
    ("blank_before_open", " \n\n<think>\nabc\n</think>\n\ndef", ("abc", "def")),
    ("unicode", "<think>\n思考：2+3=5。\n</think>\n\n答案是 **5**。", ("思考：2+3=5。", "答案是 **5**。")),
    # R1's template ends with `<think>\n`: the output starts inside the thinking, no opening tag
    ("no_open", "abc</think>def", {True: ("abc", "def"), None: ("abc", "def"), False: ("", "abc</think>def")}),
    ("no_open_newlines", "This is a reasoning section\n</think>\n\nThis is the rest",
     {True: ("This is a reasoning section", "This is the rest"),
      None: ("This is a reasoning section", "This is the rest"),
      False: ("", "This is a reasoning section\n</think>\n\nThis is the rest")}),
    # never closed: a trace cut off (R1 reading, as vLLM's deepseek_r1; Qwen3's parser would say content)
    ("unclosed", "<think>abc", ("abc", "")),
    ("unclosed_newlines", "<think>\nabc\n\n", ("abc", "")),
    ("unclosed_partial_close", "<think>abc</thi", ("abc</thi", "")),
    # no tags at all: thinking only when the prompt opened it (unknown waits and finds no `</think>`)
    ("no_tags", "abc def", {True: ("abc def", ""), None: ("", "abc def"), False: ("", "abc def")}),
    ("lone_partial_open", "<thi", {True: ("<thi", ""), None: ("", "<thi"), False: ("", "<thi")}),
    # empty thinking (R1 skipping its thought; Qwen3 with thinking off)
    ("empty_think", "<think></think>answer", ("", "answer")),
    ("empty_think_newlines", "<think>\n\n</think>\n\nanswer", ("", "answer")),
    ("empty_no_open", "</think>answer", {True: ("", "answer"), None: ("", "answer"), False: ("", "</think>answer")}),
    ("empty_no_open_newlines", "\n</think>\n\nanswer",
     {True: ("", "answer"), None: ("", "answer"), False: ("", "</think>\n\nanswer")}),
    # only thinking
    ("no_answer", "<think>abc</think>", ("abc", "")),
    ("no_answer_blank", "<think>abc</think>\n\n", ("abc", "")),
    # blank space: trimmed at the trace's ends and the answer's start, kept inside and at the answer's end
    ("inner_blank_kept", "<think>\n a \n\n b \n</think>c", ("a \n\n b", "c")),
    ("answer_end_kept", "<think>a</think>\n\nb \n", ("a", "b \n")),
    # once the answer started, tags are its text (an answer may talk about tags)
    ("second_think_literal", "<think>a</think>b<think>c</think>d", ("a", "b<think>c</think>d")),
    ("close_in_answer", "<think>a</think>\n\nWrite </think> to close.", ("a", "Write </think> to close.")),
    ("double_close", "<think>a</think></think>b", ("a", "</think>b")),
    # text before `<think>`: `<think>` counts only as the first non-blank text
    ("text_before_open", "Hello <think>abc</think>def",
     {True: ("Hello <think>abc", "def"), None: ("Hello <think>abc", "def"),
      False: ("", "Hello <think>abc</think>def")}),
    ("think_in_plain_answer", "Use <think> tags like this.",
     {True: ("Use <think> tags like this.", ""), None: ("", "Use <think> tags like this."),
      False: ("", "Use <think> tags like this.")}),
    # tags that only look similar are text
    ("thinking_close", "<think>abc</thinking>def", ("abc</thinking>def", "")),
    ("thinking_tags", "<thinking>abc</thinking>def",
     {True: ("<thinking>abc</thinking>def", ""), None: ("", "<thinking>abc</thinking>def"),
      False: ("", "<thinking>abc</thinking>def")}),
    ("open_with_space", "<think >abc</think>def",
     {True: ("<think >abc", "def"), None: ("<think >abc", "def"), False: ("", "<think >abc</think>def")}),
    ("close_with_space", "abc</think >def",
     {True: ("abc</think >def", ""), None: ("", "abc</think >def"), False: ("", "abc</think >def")}),
    ("close_spaced_slash", "<think>abc</ think>def", ("abc</ think>def", "")),
    ("upper_case", "<THINK>abc</THINK>def",
     {True: ("<THINK>abc</THINK>def", ""), None: ("", "<THINK>abc</THINK>def"),
      False: ("", "<THINK>abc</THINK>def")}),
    ("near_close_in_trace", "<think>a </th ink> b</think>c", ("a </th ink> b", "c")),
    ("lt_heavy", "<think><<</</thin</think>>>", ("<<</</thin", ">>")),
]

INLINE_CASES = [(cid, text, opened, exp if isinstance(exp, tuple) else exp[opened])
                for cid, text, exp in INLINE for opened in ALL]
INLINE_IDS = [f"{cid}-{opened}" for cid, _, opened, _ in INLINE_CASES]


@pytest.mark.parametrize("cid, text, opened, expected", INLINE_CASES, ids=INLINE_IDS)
def test_whole_output_splits_as_decided(cid, text, opened, expected):
    assert split_text(text, opened) == expected


@pytest.mark.parametrize("cid, text, opened, expected", INLINE_CASES, ids=INLINE_IDS)
def test_streamed_at_every_cut_equals_the_whole_split(cid, text, opened, expected):
    for chunks in cuttings(text):
        thinking, answer, out = run(chunks, opened)
        assert (thinking, answer) == expected, chunks
        kinds = [kind for kind, _ in out]  # the trace streams first, then the answer: never back again
        assert kinds == sorted(kinds, key=lambda k: k == ANSWER), (chunks, out)


def _squash(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("cid, text, opened, expected", INLINE_CASES, ids=INLINE_IDS)
def test_nothing_but_the_two_tags_and_blank_space_is_dropped(cid, text, opened, expected):
    thinking, answer = expected
    rebuilt = {_squash(o + thinking + c + answer) for o in ("", OPEN) for c in ("", CLOSE)}
    assert _squash(text) in rebuilt


def test_thinking_streams_before_its_close_and_a_partial_close_is_held_back():
    s = ThinkSplitter(opened=True)
    assert s.feed("Let me add") == [(THINKING, "Let me add")]
    assert s.feed(" 2 and 3.\n</th") == [(THINKING, " 2 and 3.")]  # `</th` and the newline wait
    assert s.feed("ink>\n\n5") == [(ANSWER, "5")]
    assert s.feed(" is it") == [(ANSWER, " is it")]
    assert s.finish() == []
    assert (s.thinking, s.answer) == ("Let me add 2 and 3.", "5 is it")


def test_a_partial_close_that_turns_out_not_to_be_one_is_thinking_text():
    s = ThinkSplitter(opened=False)
    assert s.feed("<think>a</thi") == [(THINKING, "a")]
    assert s.feed("nking>b") == [(THINKING, "</thinking>b")]
    assert s.finish() == []


def test_undecided_text_is_held_then_released_as_answer_when_no_close_comes():
    s = ThinkSplitter(opened=None)
    assert s.feed("Plain") == [] and s.feed(" answer.") == []
    assert s.finish() == [(ANSWER, "Plain answer.")]


@pytest.mark.parametrize("text, interrupted, expected", [
    ("a trace cut off", True, ("a trace cut off", "")),  # a reasoner stopped before `</think>`
    ("a plain answer", False, ("", "a plain answer")),
    ("<think>abc", True, ("abc", "")),
    ("abc</think>de", True, ("abc", "de")),  # decided before the stop: stays decided
])
def test_unknown_opening_and_an_interrupted_stream(text, interrupted, expected):
    for chunks in cuttings(text):
        assert run(chunks, None, interrupted=interrupted)[:2] == expected, chunks


# -- reasoning in its own field (`reasoning_content` / `reasoning`) -------------------------

# (case id, field reasoning, content, (thinking, answer)); opened does not matter once a field came
FIELD = [
    ("field_then_content", "abc", "def", ("abc", "def")),
    ("field_blank_trimmed", "\nabc\n\n", "\n\ndef", ("abc", "def")),
    ("field_only", "abc", "", ("abc", "")),
    ("content_tags_are_text", "abc", "Use </think> or <think>.", ("abc", "Use </think> or <think>.")),
    ("content_close_is_text", "abc", "def</think>ghi", ("abc", "def</think>ghi")),
    ("content_unclosed_open_is_text", "abc", "\n\n<think>not a tag here", ("abc", "<think>not a tag here")),
    # llama-server --reasoning-format deepseek-legacy: the trace in the field and again in tags in content
    ("legacy_repeat_dropped", "abc", "<think>abc</think>def", ("abc", "def")),
    ("legacy_repeat_blank", "Step 1.\nStep 2.", "<think>\nStep 1.\nStep 2.\n</think>\n\nThe plan.",
     ("Step 1.\nStep 2.", "The plan.")),
    ("content_block_that_differs_is_thinking", "abc", "<think>xyz</think>def", ("abc\n\nxyz", "def")),
    ("content_block_that_differs_blank", "abc\n", "\n<think>\nxyz\n</think>\n\ndef", ("abc\n\nxyz", "def")),
    ("content_empty_block", "abc", "<think></think>def", ("abc", "def")),
]
FIELD_IDS = [c[0] for c in FIELD]


@pytest.mark.parametrize("cid, reasoning, content, expected", FIELD, ids=FIELD_IDS)
@pytest.mark.parametrize("opened", ALL)
def test_field_reasoning_is_thinking_and_content_is_the_answer(cid, reasoning, content, expected, opened):
    for fields in ([reasoning], list(reasoning)):
        for chunks in cuttings(content):
            thinking, answer, out = run(chunks, opened, fields)
            assert (thinking, answer) == expected, (fields, chunks)
            kinds = [kind for kind, _ in out]
            assert kinds == sorted(kinds, key=lambda k: k == ANSWER), out


def test_field_reasoning_streams_at_once_and_content_after_it_streams_as_answer():
    s = ThinkSplitter(opened=None)
    assert s.feed("") == []
    assert s.feed_reasoning("Step 1.") == [(THINKING, "Step 1.")]
    assert s.feed_reasoning("\n") == []
    assert s.feed_reasoning("Step 2.") == [(THINKING, "\nStep 2.")]
    assert s.feed("\n\nThe") == [(ANSWER, "The")]  # not held back as "undecided"
    assert s.feed(" plan.") == [(ANSWER, " plan.")]
    assert s.finish() == []


def test_undecided_content_before_field_reasoning_was_the_answer():
    s = ThinkSplitter(opened=None)
    assert s.feed("Hello.") == []
    assert s.feed_reasoning("a thought") == [(ANSWER, "Hello."), (THINKING, "a thought")]


def test_an_unclosed_think_after_field_reasoning_stays_answer_even_when_interrupted():
    assert run(["<think>not a", " tag"], None, ["abc"], interrupted=True)[:2] == ("abc", "<think>not a tag")


# -- any text: streaming never changes the split, nothing is lost ----------------------------

ATOMS = st.sampled_from(["<think>", "</think>", "<", "</", "think>", "</thinking>", "<think >", "\n", " ",
                         "a", "bc", "思考", "<thi", "nk>", "x</th"])
TEXTS = st.lists(ATOMS, max_size=24).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.sampled_from(ALL))
def test_any_text_split_at_any_single_cut_matches_and_loses_nothing(text, opened):
    thinking, answer = split_text(text, opened)
    assert _squash(text) in {_squash(o + thinking + c + answer) for o in ("", OPEN) for c in ("", CLOSE)}
    assert thinking == thinking.strip() and answer == answer.lstrip()
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]], opened)[:2] == (thinking, answer), i


@settings(max_examples=200, deadline=None)
@given(TEXTS, TEXTS)
def test_any_field_reasoning_and_content_split_the_same_at_any_cut(reasoning, content):
    whole = run([content], None, [reasoning] if reasoning else [])[:2]  # backends feed no empty field
    for i in range(len(content) + 1):
        assert run([content[:i], content[i:]], None, list(reasoning))[:2] == whole, i


# -- where the prompt already opened the trace (local engine, llama.cpp GGUF) -----------------

@pytest.mark.parametrize("prompt, opens", [
    ("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n", True),  # R1 (2025-01 template on)
    ("<｜User｜>hi<｜Assistant｜><think>", True),
    ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n", True),  # QwQ
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", False),  # Qwen3 with thinking off: closed
    ("<｜User｜>hi<｜Assistant｜>", False),  # older R1 template: the model writes `<think>` itself
    ("<｜User｜>a<｜Assistant｜><think>x</think>y<｜end▁of▁sentence｜><｜User｜>b<｜Assistant｜>", False),
    ("<start_of_turn>model\n", False),
    ("", False),
    ("<think >\n", False),
])
def test_prompt_opens_thinking_only_when_it_ends_in_an_open_think(prompt, opens):
    assert prompt_opens_thinking(prompt) is opens


# -- through the openai backend, against a scripted OpenAI-compatible server on 127.0.0.1 -----

ROLE_OPENED = {"reasoner": None, "coder": False}  # what the openai backend tells the splitter


@pytest.fixture(scope="module")
def server():
    with ScriptedServer() as s:
        yield s


def stream_reply(deltas, finish="stop"):
    events = [chunk({"role": "assistant", "content": ""}), *[chunk(d) for d in deltas], chunk({}, finish), DONE]
    return Reply(events=events)


def whole_reply(message, finish="stop"):
    return Reply(ignore_stream=True, body={
        "id": "x", "object": "chat.completion", "created": 1, "model": "scripted-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]})


def ask(server, reply, role="reasoner"):
    server.set_script(reply)
    backend = OpenAIBackend(RoleConfig(role=role, backend="openai", url=server.base_url, model="scripted-model",
                                       timeout=5.0))
    try:
        return collect(backend.stream([ChatMessage("user", "2+3?")], Sampling(max_tokens=64)))
    finally:
        backend.close()


@pytest.mark.parametrize("role", sorted(ROLE_OPENED))
@pytest.mark.parametrize("cid, text, exp", INLINE, ids=[c[0] for c in INLINE])
def test_inline_tags_in_content_split_the_same_through_the_server(server, cid, text, exp, role):
    """llama-server --reasoning-format none, vLLM/SGLang without a reasoning parser."""
    expected = exp if isinstance(exp, tuple) else exp[ROLE_OPENED[role]]
    for size in (1, 4, len(text) or 1):
        r = ask(server, stream_reply([{"content": text[i:i + size]} for i in range(0, len(text), size)]), role)
        assert (r.thinking, r.answer) == expected, size
        assert isinstance(r.end, Done) and r.end.finish_reason == "stop"


@pytest.mark.parametrize("fields", [("reasoning_content",), ("reasoning",), ("reasoning_content", "reasoning")])
def test_reasoning_in_a_field_is_thinking_once_even_when_a_server_fills_two_fields(server, fields):
    trace, answer = "Add 2 and 3.\nThat is 5.", "2 + 3 = 5."
    deltas = [{**{f: trace[i:i + 3] for f in fields}, "content": None} for i in range(0, len(trace), 3)]
    deltas += [{"content": answer[i:i + 3]} for i in range(0, len(answer), 3)]
    for role in ROLE_OPENED:
        r = ask(server, stream_reply(deltas), role)
        assert (r.thinking, r.answer) == (trace, answer), role


def test_one_delta_that_ends_the_reasoning_and_starts_the_content(server):
    deltas = [{"reasoning_content": "Add them", "content": None},
              {"reasoning_content": ".\n", "content": "\n\nIt is"}, {"content": " 5."}]
    assert (lambda r: (r.thinking, r.answer))(ask(server, stream_reply(deltas))) == ("Add them.", "It is 5.")


@pytest.mark.parametrize("content", ["<think>\nAdd them.\n</think>\n\nIt is 5.", "<think>Add them.</think>It is 5."])
def test_a_server_sending_the_trace_in_a_field_and_in_tags_keeps_it_out_of_the_answer(server, content):
    """llama-server --reasoning-format deepseek-legacy: reasoning_content and `<think>` in content."""
    r = ask(server, whole_reply({"reasoning_content": "Add them.", "content": content}))
    assert (r.thinking, r.answer) == ("Add them.", "It is 5.")
    deltas = [{"reasoning_content": "Add them."}] + [{"content": content[i:i + 2]} for i in range(0, len(content), 2)]
    r = ask(server, stream_reply(deltas))
    assert (r.thinking, r.answer) == ("Add them.", "It is 5.")


def test_a_reasoner_cut_at_max_tokens_before_its_close_gives_a_trace_not_an_answer(server):
    """R1 whose template opened `<think>`, served without a parser, stopped by max_tokens."""
    trace = "Let me think about the cache.\nAn LRU would"
    r = ask(server, stream_reply([{"content": trace[i:i + 5]} for i in range(0, len(trace), 5)], finish="length"))
    assert (r.thinking, r.answer) == (trace, "") and r.end.finish_reason == "length"
    r = ask(server, whole_reply({"content": trace}, finish="length"))
    assert (r.thinking, r.answer) == (trace, "") and r.end.finish_reason == "length"


def test_a_coder_cut_at_max_tokens_keeps_its_untagged_text_as_the_answer(server):
    r = ask(server, stream_reply([{"content": "def f():\n    return"}], finish="length"), role="coder")
    assert (r.thinking, r.answer) == ("", "def f():\n    return")


def test_a_reasoner_cut_at_max_tokens_after_its_close_keeps_the_answer(server):
    r = ask(server, stream_reply([{"content": "Think.\n</think>\n\nUse an"}], finish="length"))
    assert (r.thinking, r.answer) == ("Think.", "Use an")
