"""Full-text search across every session's messages, in English and Chinese."""

from __future__ import annotations

import pytest

from vocab.events import AnswerDelta, ThinkingDelta
from app.store import SessionStore


@pytest.fixture
def store():
    with SessionStore.open() as s:
        a = s.create_session("Rust questions")
        s.add_user_message(a, "Why does the Borrow Checker reject this loop?")
        rec = s.begin_reply(a, role="reasoner", model="r1")
        rec.add(ThinkingDelta("The loop holds a mutable reference while reading."))
        rec.add(AnswerDelta("Clone the index first."))
        rec.finish()
        b = s.create_session("排序")
        s.add_user_message(b, "请用 Python 实现快速排序算法")
        rec = s.begin_reply(b, role="reasoner", model="r1")
        rec.add(ThinkingDelta("用户想要快速排序。先选一个基准元素。"))
        rec.add(AnswerDelta("def quicksort(xs): ..."))
        rec.finish()
        s.ids = (a, b)
        yield s


def _hits(store, query):
    return sorted((h.session_id, h.role) for h in store.search(query))


def test_english_words_are_found_case_insensitively_in_questions_and_thinking(store):
    a, b = store.ids
    assert _hits(store, "borrow checker") == [(a, "user")]
    assert _hits(store, "MUTABLE reference") == [(a, "reasoner")]
    assert _hits(store, "quicksort") == [(b, "reasoner")]
    assert _hits(store, "loop") == [(a, "reasoner"), (a, "user")]
    assert _hits(store, "loop clone") == [(a, "reasoner")]  # every term must appear


def test_chinese_substrings_are_found_without_word_boundaries(store):
    a, b = store.ids
    assert _hits(store, "快速排序") == [(b, "reasoner"), (b, "user")]
    assert _hits(store, "排序算法") == [(b, "user")]
    assert _hits(store, "基准元素") == [(b, "reasoner")]
    assert _hits(store, "排序") == [(b, "reasoner"), (b, "user")]  # two characters: too short for a trigram
    assert _hits(store, "基准 python") == []
    assert _hits(store, "实现 python") == [(b, "user")]


def test_hits_name_their_session_and_show_the_match(store):
    [hit] = store.search("基准元素")
    assert hit.session_title == "排序"
    assert "基准元素" in hit.snippet
    [hit] = store.search("clone the index")
    assert hit.session_title == "Rust questions" and hit.kind == "assistant"
    assert "Clone the index" in hit.snippet


def test_nothing_matches_what_was_never_said_and_odd_queries_do_not_break(store):
    assert store.search("kubernetes") == []
    assert store.search("") == []
    assert store.search('"quote * AND OR NEAR( ') == []
    assert store.search("100%") == []


def test_replies_become_searchable_when_they_end_and_vanish_with_their_session(store):
    a, b = store.ids
    rec = store.begin_reply(a, role="coder", model="c")
    rec.add(AnswerDelta("zygomorphic flowers"))
    rec.flush()
    assert store.search("zygomorphic") == []  # still streaming
    rec.finish("cancelled")
    assert [h.message_id for h in store.search("zygomorphic")] == [rec.message_id]
    store.delete(a)
    assert store.search("zygomorphic") == [] and store.search("borrow") == []
    assert _hits(store, "快速排序") == [(b, "reasoner"), (b, "user")]
