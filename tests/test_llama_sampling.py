"""How Duet draws from llama.cpp under a grammar (app/backends/llama_sampling.py): the grammar
checked last, as llama-server does, against llama-cpp-python's own grammar-first chain, on real
models (the demo coder, 1,024 tokens; Gemma 3 270M, 262,144)."""

from __future__ import annotations

import ctypes
import itertools
import random

import jinja2
import numpy as np
import pytest

from app import demo
from app.backends.llama_sampling import SHORTLISTS, Grammar, drawing, require_sampler_chain
from app.errors import DuetError
from app.workspace.edit_grammar import edit_grammar
from training.render import answer, coder_prompt
from training.tasks import make_module

WORDS = 'root ::= [a-z]+ "\\n"'  # most of the demo coder's likely first tokens allowed (93% of their mass)
FEW_WORDS = 'root ::= [a-o] [a-z]* "\\n"'  # a few (11%): most first draws refused


@pytest.fixture(scope="module")
def coder():
    from llama_cpp import Llama

    llm = Llama(str(demo.coder_path()), n_ctx=2048, n_threads=1, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def gemma(gemma_gguf):
    from llama_cpp import Llama

    llm = Llama(str(gemma_gguf), n_ctx=1024, n_threads=1, verbose=False)
    yield llm
    llm.close()


def handoff(llm, seed: int):
    """A demo coder's real prompt (a module, the plan that fixes it) and the edit grammar for it."""
    m = make_module(random.Random(seed), "heldout", kind=random.Random(seed).choice(
        ["operator", "off_by_one", "comparison", "wrong_name", "accumulator", "swapped_args"]))
    prompt = coder_prompt(m, f"fix the bug in {m.path}", answer(m, "en"), "handoff")
    text = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"]).render(
        messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
        bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>")
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True), edit_grammar([(m.path, m.source)])


def complete(llm, tokens, grammar_text, *, last: bool, **kw):
    """One completion under the grammar: Duet's (checked last) or llama-cpp-python's (first)."""
    from llama_cpp import LlamaGrammar

    llm.reset()
    if last:
        with drawing(llm, Grammar(llm, grammar_text, "coder")) as sampler:
            out = llm.create_completion(tokens, **kw)
        return out, sampler
    return llm.create_completion(tokens, grammar=LlamaGrammar.from_string(grammar_text, verbose=False), **kw), None


@pytest.mark.parametrize("seed", range(4))
def test_greedy_under_the_edit_grammar_writes_what_the_grammar_first_writes(coder, seed):
    tokens, grammar = handoff(coder, seed)
    first, _ = complete(coder, tokens, grammar, last=False, max_tokens=200, temperature=0.0)
    last, sampler = complete(coder, tokens, grammar, last=True, max_tokens=200, temperature=0.0)
    assert last["choices"][0]["text"] == first["choices"][0]["text"]
    assert "<<<<<<< SEARCH" in last["choices"][0]["text"]
    assert sampler.drawn - last["usage"]["completion_tokens"] in (0, 1)  # llama-cpp-python leaves out the end token
    assert sampler.masked_all <= sampler.redrawn <= sampler.drawn


def test_a_large_vocabulary_is_masked_whole_only_where_the_likely_tokens_are_all_refused(gemma):
    """Gemma, a base model that never saw edit blocks, held to them greedily: the same text as
    the grammar first, with most tokens refused at first draw (the grammar's choice, not the
    model's) yet almost none masking the whole 262,144-token vocabulary."""
    tokens = gemma.tokenize(b"Fix the bug in mod.py.\n", add_bos=True)
    source = "".join(f"    v{i} = compute_{i % 50}(x, {i})\n" if i % 7 else "\n" for i in range(300))
    grammar = edit_grammar([("mod.py", source)])
    first, _ = complete(gemma, tokens, grammar, last=False, max_tokens=40, temperature=0.0)
    last, sampler = complete(gemma, tokens, grammar, last=True, max_tokens=40, temperature=0.0)
    assert last["choices"][0]["text"] == first["choices"][0]["text"]
    assert last["choices"][0]["text"].startswith("mod.py\n<<<<<<< SEARCH\n")
    assert sampler.drawn == 40 and sampler.redrawn >= 10
    assert sampler.masked_all <= sampler.drawn // 10


def allowed_distribution(llm, tokens, grammar_text, temperature: float, top_k: int) -> np.ndarray:
    """The exact distribution of the first token under the grammar: llama.cpp's logits, the
    tokens the grammar refuses removed, the top_k most likely of the rest (0: all), at the
    temperature."""
    import llama_cpp

    llm.reset()
    llm.eval(tokens)
    n = llm.n_vocab()
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n,)).astype(np.float64)
    grammar = Grammar(llm, grammar_text, "test")
    cur = (llama_cpp.llama_token_data * n)()
    view = np.ctypeslib.as_array(cur)
    view["id"], view["logit"], view["p"] = np.arange(n), logits, 0.0
    arr = llama_cpp.llama_token_data_array(ctypes.cast(cur, llama_cpp.llama_token_data_p), n, -1, False)
    llama_cpp.llama_sampler_apply(grammar.ptr, ctypes.byref(arr))
    allowed = np.zeros(n, bool)
    allowed[view["id"][view["logit"] != -np.inf]] = True
    z = np.where(allowed, logits / temperature, -np.inf)
    if top_k:
        z[np.argsort(-z)[top_k:]] = -np.inf
    p = np.exp(z - z.max())
    return p / p.sum()


def first_token(llm, tokens, grammar_text, *, last: bool, seed: int, **kw) -> tuple[int, int]:
    """The first token `Llama.generate` draws under the grammar, checked last or first, and
    (checked last) the sampler, which counts its draws."""
    from llama_cpp import LlamaGrammar

    llm.set_seed(seed)
    kw.update(top_p=1.0, min_p=0.0)
    if not last:
        return next(llm.generate(tokens, grammar=LlamaGrammar.from_string(grammar_text, verbose=False), **kw)), None
    with drawing(llm, Grammar(llm, grammar_text, "test")) as sampler:
        token = next(llm.generate(tokens, **kw))
    return token, sampler


@pytest.mark.parametrize("grammar,top_k", [(FEW_WORDS, 0), (FEW_WORDS, 40), (WORDS, 40)])
def test_sampled_under_a_grammar_the_first_token_follows_the_masked_distribution(coder, grammar, top_k):
    """The rule behind checking last (p(t) + (1 - A) p(t)/A = p(t)/A, exact without truncation;
    with top_k 40 the first draw's truncation before the mask shifts too little mass here to
    tell): 12,000 first tokens drawn at temperature 1.5, each seeded, against the distribution
    computed from the logits; llama-cpp-python's grammar-first chain measured the same way, as a
    yardstick."""
    tokens, _ = handoff(coder, 11)
    expected = allowed_distribution(coder, tokens, grammar, 1.5, top_k)
    assert expected.max() < 0.9 and (expected > 0.01).sum() >= 3  # a distribution worth testing
    tv, redrawn = {}, 0
    for last in (True, False):
        counts = np.zeros_like(expected)
        for seed in range(12000):
            token, sampler = first_token(coder, tokens, grammar, last=last, seed=seed, temp=1.5, top_k=top_k)
            counts[token] += 1
            redrawn += sampler.redrawn if sampler is not None else 0
        tv[last] = 0.5 * np.abs(counts / counts.sum() - expected).sum()
    assert tv[True] < 0.05 and tv[False] < 0.05, tv
    assert redrawn > (8000 if grammar == FEW_WORDS else 200)  # the second draw was exercised


@pytest.mark.parametrize("grammar,top_k,temp", [(WORDS, 40, 1.5), (FEW_WORDS, 40, 1.5), (WORDS, 200, 3.0),
                                                (FEW_WORDS, 200, 3.0), (WORDS, 1, 1.0), (FEW_WORDS, 40, 0.0)])
def test_the_short_lists_draw_what_the_whole_vocabulary_draws(coder, monkeypatch, grammar, top_k, temp):
    """Drawing from the most likely 64 (or 4,096) is the chain's draw over the whole vocabulary:
    the same token and the same random draw, seed by seed, for the first and the later tokens,
    first draws and second (top_k longer than the first list too, and greedy)."""
    from app.backends import llama_sampling

    tokens, _ = handoff(coder, 11)

    def replies(shortlists):
        monkeypatch.setattr(llama_sampling, "SHORTLISTS", shortlists)
        out, stats = [], [0, 0]
        for seed in range(150):
            coder.set_seed(seed)
            with drawing(coder, Grammar(coder, grammar, "test")) as sampler:
                out.append(list(itertools.islice(coder.generate(tokens, temp=temp, top_k=top_k, top_p=1.0, min_p=0.0),
                                                 6)))
            stats = [stats[0] + sampler.redrawn, stats[1] + sampler.masked_all]
        return out, stats

    short, (redrawn, masked_all) = replies((64, 4096))
    whole, _ = replies(())
    assert short == whole
    assert redrawn > 20 and masked_all < redrawn  # second draws, from the short lists


def test_a_grammar_llama_cpp_cannot_parse_is_a_one_line_error(coder):
    with pytest.raises(DuetError, match=r"^the coder's grammar: llama.cpp could not parse it"):
        Grammar(coder, 'root ::= ("unclosed"', "coder")


def test_the_short_lists_stop_at_the_whole_vocabulary_and_the_llm_is_left_as_it_was(coder):
    assert list(SHORTLISTS) == sorted(SHORTLISTS)
    tokens, grammar = handoff(coder, 2)
    with drawing(coder, Grammar(coder, grammar, "coder")):
        assert "_init_sampler" in vars(coder)
    assert "_init_sampler" not in vars(coder)  # back to llama-cpp-python's own
    out = coder.create_completion(tokens, max_tokens=5, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 5


def test_a_llama_cpp_python_without_the_sampler_chain_is_a_one_line_error(coder):
    require_sampler_chain(coder)  # this one has it

    class Older:  # what a llama-cpp-python from before the sampler chain (0.2.x) looks like here
        pass

    with pytest.raises(DuetError, match=r"^llama-cpp-python \S+ has no sampler chain Duet can draw with: pip install"):
        require_sampler_chain(Older())
