"""The engine's public API at its edges, on tiny random checkpoints written with transformers:
Engine.load / forward / reset / cache_bytes_per_token / generate / last_stats / tokenizer, and
the one-line errors for bad input (local_engine.errors)."""

import json
import shutil

import pytest
import torch

from local_engine import Engine
from local_engine.errors import InputError, ModelError
from tests.tiny_checkpoints import ASSISTANT, load_reference, write_tiny_v2, write_tiny_v3
from tests.tiny_v32 import write_tiny_v32

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run op by op: on a shared CPU a second intra-op thread only waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    return {
        "v3": write_tiny_v3(root / "v3", seed=21),
        "v2": write_tiny_v2(root / "v2", seed=22),
        # one layer whose MTP module copies it: its drafts are often right, not always
        "mtp": write_tiny_v3(root / "mtp", mtp="copy", num_hidden_layers=1, first_k_dense_replace=0, seed=23),
    }


@pytest.fixture(scope="module")
def refs(ckpts):
    return {name: load_reference(ckpts[name]) for name in ("v3", "v2")}


@pytest.fixture(scope="module")
def v3(ckpts):
    return Engine.load(ckpts["v3"], dtype="float32", max_seq_len=64, max_batch=2)


def _ids(seed, n, low=6, high=400):
    return torch.randint(low, high, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_greedy(ref, ids, n, eos):
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(ids):].tolist()
    cut = [i for i, t in enumerate(out) if t in eos]
    return out[:cut[0]] if cut else out  # the engine stops at EOS (not yielded)


def _one_line(exc: Exception) -> str:
    msg = str(exc.value if hasattr(exc, "value") else exc)
    assert msg and "\n" not in msg.strip(), msg
    return msg


# -- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_forward_in_pieces_equals_one_forward_and_transformers(ckpts, refs, name):
    engine = Engine.load(ckpts[name], dtype="float32", max_seq_len=64)
    x = torch.tensor([_ids(1, 20)])
    with torch.no_grad():
        want = refs[name](x).logits
    whole = engine.forward(x)
    assert whole.shape == (1, 20, engine.args.vocab_size) and whole.dtype == torch.float32
    assert (whole - want).abs().max().item() <= TOL
    engine.reset()
    pieces = torch.cat([engine.forward(x[:, :7], 0), engine.forward(x[:, 7:8], 7), engine.forward(x[:, 8:], 8)], 1)
    assert (pieces - want).abs().max().item() <= TOL
    torch.testing.assert_close(pieces, whole, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_a_batch_of_two_matches_transformers_row_by_row_and_three_is_refused(ckpts, refs, name):
    engine = Engine.load(ckpts[name], dtype="float32", max_seq_len=32, max_batch=2)
    x = torch.tensor([_ids(2, 10), _ids(3, 10)])
    with torch.no_grad():
        out = refs[name](x, use_cache=True)
        step = refs[name](torch.tensor([[9], [11]]), past_key_values=out.past_key_values, use_cache=True).logits
    got = engine.forward(x, 0)
    assert got.shape == (2, 10, engine.args.vocab_size)
    assert (got - out.logits).abs().max().item() <= TOL
    assert (engine.forward(torch.tensor([[9], [11]]), 10) - step).abs().max().item() <= TOL
    with pytest.raises(InputError, match="max_batch") as e:
        engine.forward(torch.tensor([_ids(4, 5)] * 3), 0)
    _one_line(e)
    single = Engine.load(ckpts[name], dtype="float32", max_seq_len=32)  # max_batch=1
    with pytest.raises(InputError, match="max_batch"):
        single.forward(x, 0)


def test_forward_past_max_seq_len_is_a_clear_error_that_leaves_the_cache_usable(ckpts):
    engine = Engine.load(ckpts["v3"], dtype="float32", max_seq_len=16)
    x = torch.tensor([_ids(5, 16)])
    whole = engine.forward(x, 0)
    engine.reset()
    with pytest.raises(InputError, match="max_seq_len") as e:
        engine.forward(torch.tensor([_ids(5, 17)]), 0)
    _one_line(e)
    engine.forward(x[:, :10], 0)
    with pytest.raises(InputError, match="max_seq_len"):
        engine.forward(torch.tensor([_ids(6, 7)]), 10)
    torch.testing.assert_close(engine.forward(x[:, 10:], 10), whole[:, 10:], atol=TOL, rtol=0)


def test_start_pos_past_what_the_cache_holds_is_a_clear_error(v3):
    x = torch.tensor([_ids(7, 12)])
    v3.reset()
    whole = v3.forward(x, 0)
    v3.reset()
    for bad in (5, -1):
        with pytest.raises(InputError, match="start_pos") as e:
            v3.forward(x[:, 5:6], bad)
        _one_line(e)
    v3.forward(x[:, :4], 0)
    with pytest.raises(InputError, match="start_pos"):
        v3.forward(x[:, 5:], 5)  # position 4 was never written
    torch.testing.assert_close(v3.forward(x[:, 4:], 4), whole[:, 4:], atol=TOL, rtol=0)


def test_malformed_tokens_are_clear_errors(v3):
    v3.reset()
    for bad in (torch.zeros(1, 0, dtype=torch.long), torch.tensor([5, 6]), torch.tensor([[5, v3.args.vocab_size]]),
                torch.tensor([[-1, 5]])):
        with pytest.raises(InputError) as e:
            v3.forward(bad, 0)
        _one_line(e)


def test_reset_then_forward_equals_a_fresh_engine(ckpts, v3):
    x = torch.tensor([_ids(8, 14)])
    fresh = Engine.load(ckpts["v3"], dtype="float32", max_seq_len=64, max_batch=2).forward(x, 0)
    v3.reset()
    v3.forward(torch.tensor([_ids(9, 30), _ids(10, 30)]), 0)  # other context, both rows
    list(v3.generate(_ids(11, 9), max_new_tokens=5, temperature=0))
    v3.reset()
    torch.testing.assert_close(v3.forward(x, 0), fresh, atol=1e-6, rtol=0)
    v3.reset()
    list(v3.generate(x[0].tolist(), max_new_tokens=4, temperature=0))
    assert v3.last_stats["cached_tokens"] == 0 and v3.last_stats["prompt_tokens"] == 14


def test_reset_also_clears_the_v32_indexer_cache_and_pieces_match_transformers(tmp_path):
    folder = write_tiny_v32(tmp_path / "v32", seed=24, index_topk=8)
    engine = Engine.load(folder, dtype="float32", max_seq_len=32)
    x = torch.tensor([_ids(12, 20)])
    with torch.no_grad():
        want = load_reference(folder)(x).logits
    pieces = torch.cat([engine.forward(x[:, :6], 0), engine.forward(x[:, 6:], 6)], 1)  # past index_topk
    assert (pieces - want).abs().max().item() <= TOL
    a = engine.args
    assert engine.cache_bytes_per_token() == (a.kv_lora_rank + a.qk_rope_head_dim + a.index_head_dim) * \
        a.num_hidden_layers * 4
    engine.reset()
    for layer in engine.model.layers:
        assert not layer.attn.cache.any() and not layer.attn.indexer.cache.any()
    assert (engine.forward(x, 0) - want).abs().max().item() <= TOL


# -- cache size --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v3", "v2"])
@pytest.mark.parametrize("dtype,quant,size", [("float32", None, 4), ("bfloat16", None, 2),
                                              ("float32", "int8", 4), ("bfloat16", "int4", 2)])
def test_cache_bytes_per_token_is_the_latent_cache(ckpts, name, dtype, quant, size):
    cfg = json.loads((ckpts[name] / "config.json").read_text())
    engine = Engine.load(ckpts[name], dtype=dtype, quant=quant, max_seq_len=16, max_batch=2)
    want = (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * cfg["num_hidden_layers"] * size
    assert engine.cache_bytes_per_token() == want
    held = sum(layer.attn.cache.numel() * layer.attn.cache.element_size() for layer in engine.model.layers)
    assert held == want * 16 * 2  # per token, per sequence
    assert isinstance(engine.cache_bytes_per_token(), int)


# -- generate ----------------------------------------------------------------------------------


def test_max_new_tokens_zero_and_a_stop_id_hit_at_once_yield_nothing(v3):
    ids = _ids(13, 8)
    v3.reset()
    assert list(v3.generate(ids, max_new_tokens=0, temperature=0)) == []
    assert v3.last_stats["generated"] == 0 and v3.last_stats["prompt_tokens"] == 8
    first = list(v3.generate(ids, max_new_tokens=1, temperature=0))
    assert len(first) == 1
    for stop in ([first[0]], (first[0],), {first[0]}, first[0], torch.tensor([first[0], 3])):
        assert list(v3.generate(ids, max_new_tokens=10, temperature=0, stop_ids=stop)) == []
        assert v3.last_stats["generated"] == 0
    assert list(v3.generate(ids, max_new_tokens=10, temperature=0, stop_ids=[first[0]], speculative=None)) == []


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_greedy_is_deterministic_and_equals_transformers_greedy_generate(ckpts, refs, name):
    engine = Engine.load(ckpts[name], dtype="float32", max_seq_len=64)
    eos = set(engine.args.eos_token_id) | {engine.tokenizer.eos_token_id}
    for seed, n in ((14, 10), (15, 1)):  # a prompt of one token too
        ids = _ids(seed, n)
        want = _hf_greedy(refs[name], ids, 24, eos)
        assert len(want) >= 4
        engine.reset()
        a = list(engine.generate(ids, max_new_tokens=24, temperature=0, stop_ids=[]))
        b = list(engine.generate(ids, max_new_tokens=24, temperature=0, stop_ids=[]))  # cache reused
        assert a == b == want
        engine.reset()
        assert list(engine.generate(torch.tensor(ids), max_new_tokens=24, temperature=0)) == want
        assert list(engine.generate(torch.tensor([ids]), max_new_tokens=24, temperature=0)) == want
        st = engine.last_stats
        assert st["prompt_tokens"] == n and st["generated"] == len(want)


def test_a_seed_reproduces_sampling_and_top_p_edges(v3):
    ids = _ids(16, 6)

    def run(seed, **kw):
        v3.reset()
        return list(v3.generate(ids, max_new_tokens=16, seed=seed, stop_ids=[], **kw))

    greedy = run(None, temperature=0)
    a, b = run(5, temperature=1.0, top_p=1.0), run(5, temperature=1.0, top_p=1.0)
    assert a == b and len(a) == 16 and all(0 <= t < v3.args.vocab_size for t in a)
    assert len({tuple(run(s, temperature=1.0, top_p=1.0)) for s in range(4)}) > 1  # seeds differ
    assert run(6, temperature=0.8) == run(6, temperature=0.8)  # default top_p
    for edge in (0.0, 1e-9, -1.0):  # nothing but the top token is left: greedy
        assert run(7, temperature=0.8, top_p=edge) == greedy
    assert run(8, temperature=1.0, top_p=1.5) == run(8, temperature=1.0, top_p=1.0)
    assert run(9, temperature=-1.0) == greedy


def test_empty_prompts_and_prompts_past_the_context_are_clear_errors(v3):
    for empty in ([], (), torch.tensor([], dtype=torch.long)):
        with pytest.raises(InputError, match="empty") as e:
            v3.generate(empty, max_new_tokens=3)
        _one_line(e)
    with pytest.raises(InputError, match="max_seq_len"):
        v3.generate(_ids(17, 64), max_new_tokens=3)
    with pytest.raises(InputError):
        v3.generate([5, v3.args.vocab_size], max_new_tokens=3)
    with pytest.raises(InputError):
        v3.generate(torch.tensor([_ids(17, 4), _ids(18, 4)]), max_new_tokens=3)


@pytest.mark.parametrize("speculative", [None, "mtp"])
def test_a_budget_past_max_seq_len_stops_at_the_context_end(ckpts, speculative):
    ids = _ids(19, 20)
    big = Engine.load(ckpts["mtp"], dtype="float32", max_seq_len=64)
    want = list(big.generate(ids, max_new_tokens=20, temperature=0, stop_ids=[]))
    small = Engine.load(ckpts["mtp"], dtype="float32", max_seq_len=24)
    got = list(small.generate(ids, max_new_tokens=50, temperature=0, stop_ids=[], speculative=speculative))
    assert len(got) == min(24 - 20 + 1, len(want))  # the last token needs no cache row
    assert got == want[:len(got)]
    assert small.last_stats["generated"] == len(got)


def test_prefix_reuse_counts_cached_tokens_and_matches_a_fresh_engine(ckpts, v3):
    fresh = Engine.load(ckpts["v3"], dtype="float32", max_seq_len=64)

    def gen(engine, ids):
        return list(engine.generate(ids, max_new_tokens=6, temperature=0, stop_ids=[]))

    def check(ids, cached):
        got = gen(v3, ids)
        assert v3.last_stats["cached_tokens"] == cached, (len(ids), v3.last_stats)
        assert v3.last_stats["prompt_tokens"] == len(ids)
        fresh.reset()
        assert got == gen(fresh, ids)
        return got

    v3.reset()
    base = _ids(20, 16)
    out = check(base, 0)
    held = base + (out[:-1] if len(out) == 6 else out)  # the prompt and the tokens fed back
    check(held + _ids(21, 5), len(held))  # a continuation of everything held
    check(base[:10] + _ids(22, 6), 10)  # shares a prefix of ten
    check(base[:10] + _ids(22, 6), 15)  # identical to the previous prompt: all but the last token
    check(base[:7], 6)  # a strict prefix of the previous: all but its last token
    check([base[0] + 1] + base[1:], 0)  # shares nothing
    check(_ids(23, 1), 0)  # one token


# -- speculative -------------------------------------------------------------------------------


def test_mtp_greedy_output_is_the_plain_greedy_output(ckpts):
    engine = Engine.load(ckpts["mtp"], dtype="float32", max_seq_len=80)
    assert engine.has_mtp
    drafted = accepted = 0
    for seed, n in ((24, 12), (25, 1), (26, 30)):
        ids = _ids(seed, n)
        engine.reset()
        plain = list(engine.generate(ids, max_new_tokens=16, temperature=0, stop_ids=[]))
        engine.reset()
        spec = list(engine.generate(ids, max_new_tokens=16, temperature=0, stop_ids=[], speculative="mtp"))
        assert spec == plain
        st = engine.last_stats
        assert st["generated"] == len(spec) and st["prompt_tokens"] == n and st["cached_tokens"] == 0
        assert 0 <= st["accepted"] <= st["drafted"]
        drafted, accepted = drafted + st["drafted"], accepted + st["accepted"]
        again = list(engine.generate(ids, max_new_tokens=16, temperature=0, stop_ids=[], speculative="mtp"))
        assert again == plain
        assert (engine.last_stats["cached_tokens"] > 0) == (n > 1)  # the cache is reused
    assert drafted > 0 and accepted > 0


def test_mtp_sampling_is_reproducible_with_a_seed(ckpts):
    engine = Engine.load(ckpts["mtp"], dtype="float32", max_seq_len=64)
    ids = _ids(27, 8)
    runs = []
    for _ in range(2):
        engine.reset()
        runs.append(list(engine.generate(ids, max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3,
                                         speculative="mtp", stop_ids=[])))
        st = engine.last_stats
        assert st["accepted"] <= st["drafted"] and st["generated"] == len(runs[-1])
    assert runs[0] == runs[1]


def test_mtp_without_an_mtp_layer_and_an_unknown_speculative_value_are_clear_errors(ckpts, v3):
    with pytest.raises(ModelError, match="MTP") as e:
        v3.generate([5, 6, 7], max_new_tokens=3, speculative="mtp")  # raised at the call, not when iterated
    _one_line(e)
    skipped = Engine.load(ckpts["mtp"], dtype="float32", max_seq_len=16, mtp=False)
    with pytest.raises(ModelError, match="MTP"):
        skipped.generate([5, 6, 7], max_new_tokens=3, speculative="mtp")
    for bad in ("eagle", "MTP", True):
        with pytest.raises(InputError, match="speculative") as e:
            v3.generate([5, 6, 7], max_new_tokens=3, speculative=bad)
        _one_line(e)


# -- dtype and quantization ----------------------------------------------------------------------


def test_dtypes_and_quantization_track_float32_and_unknown_ones_are_refused(ckpts):
    x = torch.tensor([_ids(28, 16)])
    ref = Engine.load(ckpts["v3"], dtype="float32", max_seq_len=32).forward(x)
    for dtype, quant, floor in (("bfloat16", None, 0.99), ("float32", "int8", 0.95), ("bfloat16", "int8", 0.95),
                                ("float32", "int4", 0.8)):
        engine = Engine.load(ckpts["v3"], dtype=dtype, quant=quant, max_seq_len=32)
        assert engine.model.layers[0].attn.cache.dtype == getattr(torch, dtype)
        got = engine.forward(x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1).mean().item()
        assert cos > floor, (dtype, quant, cos)
        engine.reset()
        a = list(engine.generate(x[0, :6].tolist(), max_new_tokens=6, temperature=0, stop_ids=[]))
        engine.reset()
        assert a == list(engine.generate(x[0, :6].tolist(), max_new_tokens=6, temperature=0, stop_ids=[]))
    with pytest.raises(ModelError, match="int3") as e:
        Engine.load(ckpts["v3"], quant="int3")
    _one_line(e)
    with pytest.raises(ModelError, match="float64") as e:
        Engine.load(ckpts["v3"], dtype="float64")
    _one_line(e)


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_round_trips_and_renders_the_chat_template(v3):
    tok = v3.tokenizer
    text = "def main(): return 42 你好"
    assert tok.decode(tok.encode(text)) == text
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert isinstance(rendered, str) and "<｜User｜>hi" + ASSISTANT in rendered
    assert rendered.rstrip().endswith((ASSISTANT, "<think>"))  # R1 templates open the thinking block
    v3.reset()
    assert len(list(v3.generate(tok.encode(rendered), max_new_tokens=3, temperature=0))) <= 3


# -- bad folders -------------------------------------------------------------------------------


@pytest.fixture
def copy(ckpts, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(ckpts["v3"], dst)
    return dst


def _edit(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("changes", [dict(model_type="llama", architectures=["LlamaForCausalLM"]),
                                     dict(model_type="deepseek_v4", architectures=None)])
def test_a_wrong_model_type_names_config_json(copy, changes):
    _edit(copy, **changes)
    with pytest.raises(ModelError, match=r"config\.json.*(llama|deepseek_v4)") as e:
        Engine.load(copy)
    _one_line(e)


def test_a_derivative_with_its_own_model_type_loads_by_its_deepseek_architecture(copy):
    _edit(copy, model_type="kimi_k2")  # architectures still DeepseekV3ForCausalLM, as Kimi-K2 ships it
    assert Engine.load(copy, dtype="float32", max_seq_len=8).args.arch == "DeepseekV3ForCausalLM"


def test_each_model_type_the_contract_names_loads(copy):
    _edit(copy, model_type="deepseek_v3", architectures=None)
    assert Engine.load(copy, dtype="float32", max_seq_len=8).args.arch == "DeepseekV3ForCausalLM"


def test_missing_or_unreadable_config_json_is_named(copy, tmp_path):
    (copy / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json") as e:
        Engine.load(copy)
    _one_line(e)
    (copy / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="config.json") as e:
        Engine.load(copy)
    _one_line(e)
    with pytest.raises(ModelError, match="nowhere") as e:
        Engine.load(tmp_path / "nowhere")
    _one_line(e)


def test_missing_weights_are_named(copy):
    for p in copy.glob("*.safetensors*"):
        p.unlink()
    with pytest.raises(ModelError, match=r"model.*safetensors") as e:
        Engine.load(copy)
    _one_line(e)


def test_an_index_naming_a_missing_shard_names_the_shard(copy):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"model-00002-of-00002\.safetensors.*missing") as e:
        Engine.load(copy)
    _one_line(e)
