"""ThinkSplitter: the thinking/answer split is right, and never depends on how text was chunked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vocab.reasoning import ANSWER, THINKING, ThinkSplitter, prompt_opens_thinking, split_text


def run_chunks(chunks, opened=False, fields=()):
    """Feed content chunks (and optional leading field-reasoning chunks); return (thinking, answer)."""
    s = ThinkSplitter(opened)
    pieces = []
    for text in fields:
        pieces += s.feed_reasoning(text)
    for text in chunks:
        pieces += s.feed(text)
    pieces += s.finish()
    thinking = "".join(t for kind, t in pieces if kind == THINKING)
    answer = "".join(t for kind, t in pieces if kind == ANSWER)
    assert (thinking, answer) == (s.thinking, s.answer)  # pieces and totals agree
    return thinking, answer


def chunked(text, cuts):
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def test_inline_think_block_is_split_from_the_answer():
    assert split_text("<think>\nLet me add.\n</think>\n\n2 + 3 = 5") == ("Let me add.", "2 + 3 = 5")


def test_missing_opening_tag_is_thinking_when_the_prompt_opened_it():
    assert split_text("Let me add.\n</think>\n\n5", opened=True) == ("Let me add.", "5")


def test_missing_opening_tag_is_found_by_the_closing_tag_when_unknown():
    assert split_text("Let me add.\n</think>\n\n5", opened=None) == ("Let me add.", "5")


def test_text_without_tags_is_all_answer_unless_the_prompt_opened_thinking():
    assert split_text("Plain answer.", opened=False) == ("", "Plain answer.")
    assert split_text("Plain answer.", opened=None) == ("", "Plain answer.")
    assert split_text("Cut off mid-thought", opened=True) == ("Cut off mid-thought", "")


def test_a_think_tag_after_the_answer_started_is_literal_answer_text():
    assert split_text("Use <think> tags like this.") == ("", "Use <think> tags like this.")
    assert split_text("<think>a</think>Write </think> or <think>.") == ("a", "Write </think> or <think>.")


def test_an_empty_think_block_gives_no_thinking():
    assert split_text("<think>\n\n</think>\n\nHello") == ("", "Hello")


def test_reasoning_in_a_field_is_thinking_and_content_is_answer_even_with_tags():
    assert run_chunks(["\n\n<think>not a tag here"], opened=None, fields=["\nStep 1.", " Step 2.\n"]) == (
        "Step 1. Step 2.", "<think>not a tag here")


def test_blank_space_inside_thinking_is_kept_but_not_at_its_ends():
    assert split_text("<think>\n a \n\n b \n</think>c") == ("a \n\n b", "c")


def test_a_lone_partial_tag_at_the_end_is_flushed_as_text():
    assert split_text("<think>abc</thi", opened=False) == ("abc</thi", "")
    assert split_text("<thi", opened=False) == ("", "<thi")


def test_tags_split_at_every_offset_give_the_same_split():
    text = "  <think>\nfirst </ thought\n</think>\n\nthe answer </think> stays"
    expected = split_text(text, opened=False)
    assert expected == ("first </ thought", "the answer </think> stays")
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert run_chunks([text[:i], text[i:j], text[j:]]) == expected, (i, j)


def test_one_character_chunks_give_the_same_split():
    for text, opened in [("<think>x</think>y", False), ("x</think>y", None), ("x</think>y", True)]:
        assert run_chunks(list(text), opened) == split_text(text, opened)


def test_render_of_an_r1_prompt_opens_thinking():
    assert prompt_opens_thinking("<｜User｜>hi<｜Assistant｜><think>\n")
    assert not prompt_opens_thinking("<start_of_turn>model\n")


pieces = st.sampled_from(["<think>", "</think>", "<", "</", "think>", "\n", " ", "a", "bc", "思考", "<thi", "nk>", "x</th"])
texts = st.lists(pieces, max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=200), max_size=12), st.sampled_from([True, False, None]))
def test_any_chunking_of_a_stream_gives_the_same_split(text, cuts, opened):
    assert run_chunks(chunked(text, cuts), opened) == split_text(text, opened)


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.lists(st.integers(min_value=0, max_value=200), max_size=8),
       st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_chunking_of_field_reasoning_gives_the_same_split(reasoning, content, cuts_r, cuts_c):
    whole = run_chunks([content], None, fields=[reasoning])
    assert run_chunks(chunked(content, cuts_c), None, fields=chunked(reasoning, cuts_r)) == whole
