"""generate() reuses the latent cache for the prefix it shares with what the cache holds:
identical tokens to a fresh engine, only the new tokens prefilled, never a row of a token
that differs (tiny random checkpoints, float32)."""

import pytest
import torch

from local_engine import Engine
from tests.tiny_checkpoints import write_tiny_v3

NEW = 12



@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run op by op: on a shared, busy CPU a second intra-op thread only waits
    (measured here: 30x slower per token under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("prefix") / "v3", r1=True)


@pytest.fixture(scope="module")
def engine(folder):
    return Engine.load(folder, dtype="float32", max_seq_len=256)


@pytest.fixture(scope="module")
def fresh(folder):
    eng = Engine.load(folder, dtype="float32", max_seq_len=256)

    def run(ids, **kw):
        eng.reset()
        out = list(eng.generate(ids, max_new_tokens=kw.pop("max_new_tokens", NEW), temperature=0, **kw))
        assert eng.last_stats["cached_tokens"] == 0
        return out

    return run


def _ids(seed, n):
    return torch.randint(6, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _prefilled(engine):
    """Counts the tokens each forward of the main model runs (a real forward hook)."""
    seen = []
    handle = engine.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    return seen, handle


def test_a_growing_conversation_prefills_only_the_new_tokens_and_matches_a_fresh_engine(engine, fresh):
    engine.reset()
    history = _ids(1, 30)
    for turn in range(4):
        seen, handle = _prefilled(engine)
        try:
            out = list(engine.generate(history, max_new_tokens=NEW, temperature=0))
        finally:
            handle.remove()
        stats = engine.last_stats
        assert out == fresh(history)
        assert stats["prompt_tokens"] == len(history) and stats["generated"] == len(out) == NEW
        assert seen[0] == len(history) - stats["cached_tokens"]  # the prefill ran exactly the uncached tokens
        if turn:
            # everything the previous turn held: its prompt and the tokens fed back (all but the last one)
            assert stats["cached_tokens"] == previous - 1
        else:
            assert stats["cached_tokens"] == 0
        history = history + out + _ids(10 + turn, 7)  # the next user message
        previous = len(history) - 7


def test_a_prompt_that_differs_midway_reuses_only_the_rows_before_the_difference(engine, fresh):
    engine.reset()
    a = _ids(2, 40)
    list(engine.generate(a, max_new_tokens=4, temperature=0))
    b = a[:17] + [a[17] + 1] + a[18:]
    out = list(engine.generate(b, max_new_tokens=NEW, temperature=0))
    assert engine.last_stats["cached_tokens"] == 17
    assert out == fresh(b)


def test_the_same_prompt_again_still_prefills_one_token_for_its_logits(engine, fresh):
    engine.reset()
    a = _ids(3, 25)
    first = list(engine.generate(a, max_new_tokens=NEW, temperature=0))
    again = list(engine.generate(a, max_new_tokens=NEW, temperature=0))
    assert engine.last_stats["cached_tokens"] == len(a) - 1
    assert again == first == fresh(a)


def test_a_shorter_prompt_inside_the_cached_tokens_reuses_them(engine, fresh):
    engine.reset()
    a = _ids(4, 40)
    list(engine.generate(a, max_new_tokens=4, temperature=0))
    out = list(engine.generate(a[:22], max_new_tokens=NEW, temperature=0))
    assert engine.last_stats["cached_tokens"] == 21
    assert out == fresh(a[:22])


def test_reset_and_outside_forward_calls_are_remembered(engine, fresh):
    engine.reset()
    a = _ids(5, 30)
    list(engine.generate(a, max_new_tokens=4, temperature=0))
    engine.reset()
    list(engine.generate(a, max_new_tokens=4, temperature=0))
    assert engine.last_stats["cached_tokens"] == 0
    other = _ids(6, 10)
    engine.forward(torch.tensor([other]), 8)  # positions 8..17 now hold other tokens
    out = list(engine.generate(a, max_new_tokens=NEW, temperature=0))
    same = next((i for i, (x, y) in enumerate(zip(other, a[8:])) if x != y), len(other))
    assert engine.last_stats["cached_tokens"] == 8 + same
    assert out == fresh(a)
    engine.forward(torch.tensor([a[:5]]), 0)  # a forward from 0 leaves only its own tokens known
    list(engine.generate(a, max_new_tokens=2, temperature=0))
    assert engine.last_stats["cached_tokens"] == 5


def test_a_generation_abandoned_midway_leaves_a_consistent_cache(engine, fresh):
    engine.reset()
    a = _ids(7, 30)
    it = engine.generate(a, max_new_tokens=NEW, temperature=0)
    got = [next(it) for _ in range(5)]
    it.close()
    follow = a + got + _ids(8, 6)
    out = list(engine.generate(follow, max_new_tokens=NEW, temperature=0))
    assert engine.last_stats["cached_tokens"] == len(a) + 4  # the 5th token was never fed back
    assert out == fresh(follow)


def test_r1_follow_up_turn_drops_the_trace_and_reuses_the_cache_up_to_it(engine, fresh):
    tok = engine.tokenizer
    engine.reset()
    first = [{"role": "user", "content": "What is 2+2? Think first."}]
    ids1 = engine.chat_prompt(first)
    out1 = list(engine.generate(ids1, max_new_tokens=NEW, temperature=0))
    reply = "<think>\n" + tok.decode(out1) + "</think>The answer is 4."
    second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And 3+3?"}]
    text2 = tok.apply_chat_template(second, add_generation_prompt=True)
    assert "Think first.<｜Assistant｜>The answer is 4." in text2  # the trace is gone from the history
    ids2 = engine.chat_prompt(second)
    out2 = list(engine.generate(ids2, max_new_tokens=NEW, temperature=0))
    shared = next(i for i, (x, y) in enumerate(zip(ids1 + out1, ids2)) if x != y)
    assert engine.last_stats["cached_tokens"] == shared
    assert shared < len(ids1)  # the trace's rows (and the "<think>" the prompt opened) are not served
    assert ids2 == tok.encode(text2)  # the prompt is the one a fresh engine gets
    assert out2 == fresh(ids2)


def test_the_local_backend_keeps_the_cache_across_turns_and_reports_it(tmp_path):
    from app.backends import close_all, make_backend
    from app.backends.base import ChatMessage
    from vocab.events import Done
    from app.config import RoleConfig, Sampling
    from tests.backend_helpers import collect

    folder = write_tiny_v3(tmp_path / "mtp", r1=True, mtp="copy", num_hidden_layers=1, first_k_dense_replace=0)
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=16)
    close_all()
    try:
        backend = make_backend(RoleConfig(role="reasoner", backend="local", path=folder, dtype="float32", context=256))
        first = [ChatMessage("user", "Plan a cache.")]
        r1 = collect(backend.stream(first, greedy))
        assert isinstance(r1.end, Done) and r1.usage.cached_tokens == 0
        reply = "<think>\n" + r1.thinking + "</think>" + r1.answer if r1.answer else r1.thinking
        second = first + [ChatMessage("assistant", reply), ChatMessage("user", "Now test it.")]
        r2 = collect(backend.stream(second, greedy))
        engine = backend.model.load()
        ids1 = engine.chat_prompt([{"role": "user", "content": "Plan a cache."}])
        ids2 = engine.chat_prompt([{"role": m.role, "content": m.content} for m in second])
        assert r2.usage.prompt_tokens == len(ids2)
        shared = next(i for i, (x, y) in enumerate(zip(ids1, ids2)) if x != y)
        # up to the dropped trace; with MTP the row before it runs again too (the MTP module needs its
        # hidden state to pair it with the first new token)
        assert r2.usage.cached_tokens == shared - 1 > 0
        assert r1.usage.drafted > 0 and 0 <= r1.usage.accepted <= r1.usage.drafted  # MTP drafted
        fresh = Engine.load(folder, dtype="float32", max_seq_len=256)
        expected = list(fresh.generate(ids2, max_new_tokens=16, temperature=0))
        assert r2.usage.completion_tokens == len(expected)
        from vocab.reasoning import split_text

        assert (r2.thinking, r2.answer) == split_text(engine.tokenizer.decode(expected), opened=True)
    finally:
        close_all()
