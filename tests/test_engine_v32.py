"""DeepSeek-V3.2 (deepseek_v32, sparse attention through the lightning indexer) against
transformers on the same tiny random weights, in float32.

index_topk is small (16, or 8) so prompts and decodes run both below it (dense attention) and
far past it (each query attends to its chosen 16 of up to 100 tokens). Variants: YaRN + grouped
routing + two shards + an MTP layer to skip, DeepSeek's own config spelling (no layer_types),
and DeepSeek's FP8 release layout (indexer wq_b/wk in FP8) against its dequantized weights."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from local_engine import Engine
from local_engine.errors import ModelError
from tests.tiny_checkpoints import load_reference
from tests.tiny_v32 import write_fp8_copy_v32, write_tiny_v32

ROOT = Path(__file__).resolve().parents[1]
DECODE_STEPS, TOL = 24, 1e-4


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("v32_ckpts")
    v32 = write_tiny_v32(root / "v32", shards=2, mtp=True)
    write_fp8_copy_v32(v32, root / "v32_fp8", dequantized_dst=root / "v32_deq")
    return {
        "yarn_groups_mtp": (v32, v32),
        "deepseek_config": (write_tiny_v32(root / "v32ds", style="deepseek", seed=1, num_hidden_layers=4,
                                           first_k_dense_replace=2, index_topk=8, index_head_dim=16), None),
        "fp8": (root / "v32_fp8", root / "v32_deq"),
    }


def _pair(checkpoints, name, max_seq_len=160):
    folder, ref_folder = checkpoints[name]
    return Engine.load(folder, dtype="float32", max_seq_len=max_seq_len), load_reference(ref_folder or folder)


def _prompt(seed, n):
    return torch.randint(2, 400, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["yarn_groups_mtp", "deepseek_config", "fp8"])
@pytest.mark.parametrize("prompt_len", [6, 40])  # 6: dense, then past index_topk while decoding; 40: sparse prefill
def test_prefill_and_cached_decode_logits_match_transformers(checkpoints, name, prompt_len):
    engine, ref = _pair(checkpoints, name)
    assert engine.args.index_topk in (8, 16)
    x = _prompt(prompt_len + len(name), prompt_len)
    with torch.no_grad():
        out = ref(x, use_cache=True)
    got = engine.forward(x, 0)
    assert (got - out.logits).abs().max().item() <= TOL
    cache, tok, worst = out.past_key_values, out.logits[:, -1:].argmax(-1), 0.0
    for step in range(DECODE_STEPS):
        with torch.no_grad():
            out = ref(tok, cache=cache, use_cache=True)
        cache = out.past_key_values
        got = engine.forward(tok, prompt_len + step)
        worst = max(worst, (got - out.logits).abs().max().item())
        tok = out.logits[:, -1:].argmax(-1)
    assert worst <= TOL


def test_a_prompt_fed_in_chunks_across_index_topk_matches_one_transformers_prefill(checkpoints):
    engine, ref = _pair(checkpoints, "yarn_groups_mtp")
    x = _prompt(21, 48)
    with torch.no_grad():
        want = ref(x).logits
    # 0..10 below index_topk (dense); 10..30 crosses it (several queries, sparse); 30..48 all sparse
    got = torch.cat([engine.forward(x[:, a:b], a) for a, b in ((0, 10), (10, 30), (30, 48))], dim=1)
    assert (got - want).abs().max().item() <= TOL


def test_sparse_attention_is_really_sparse_past_index_topk_and_exactly_dense_below(checkpoints):
    sparse, _ = _pair(checkpoints, "yarn_groups_mtp")
    dense, _ = _pair(checkpoints, "yarn_groups_mtp")
    for layer in dense.model.layers:
        layer.attn.indexer.topk = 10 ** 6  # every position chosen: dense attention
    topk = sparse.args.index_topk
    x = _prompt(3, 3 * topk)
    # up to index_topk tokens of context: the very same computation, prefill and decode
    assert torch.equal(sparse.forward(x[:, : topk - 4], 0), dense.forward(x[:, : topk - 4], 0))
    for pos in range(topk - 4, topk):
        assert torch.equal(sparse.forward(x[:, pos:pos + 1], pos), dense.forward(x[:, pos:pos + 1], pos))
    # a longer prompt: its first index_topk queries see every position either way
    s, d = sparse.forward(x, 0), dense.forward(x, 0)
    assert (s[:, :topk] - d[:, :topk]).abs().max().item() <= 1e-5
    assert (s[:, topk:] - d[:, topk:]).abs().max().item() > 0.1  # past it the indexer's choice matters


@pytest.mark.parametrize("back_to", [5, 30])  # below and past index_topk
def test_rewriting_the_cache_from_an_earlier_position_equals_a_fresh_run(checkpoints, back_to):
    """Prefix reuse / MTP roll back by writing again from an earlier start_pos: the latent and the
    indexer caches must both forget what lay after it."""
    engine, _ = _pair(checkpoints, "yarn_groups_mtp")
    a, b = _prompt(1, 60), _prompt(2, 25)
    engine.forward(a, 0)
    for step in range(4):  # and some decode past the prompt
        engine.forward(a[:, step:step + 1], 60 + step)
    got = engine.forward(b, back_to)
    nxt = engine.forward(b[:, :1], back_to + 25)
    fresh, _ = _pair(checkpoints, "yarn_groups_mtp")
    whole = fresh.forward(torch.cat([a[:, :back_to], b], dim=1), 0)
    torch.testing.assert_close(got, whole[:, back_to:], atol=TOL, rtol=0)
    torch.testing.assert_close(nxt, fresh.forward(b[:, :1], back_to + 25), atol=TOL, rtol=0)


def test_sixty_four_greedy_tokens_are_identical_to_transformers(checkpoints):
    engine, ref = _pair(checkpoints, "yarn_groups_mtp")
    x = _prompt(5, 12)
    with torch.no_grad():
        want = ref.generate(x, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 12:]
    got = list(engine.generate(x[0].tolist(), max_new_tokens=64, temperature=0, stop_ids=[]))
    expected = want.tolist()
    eos = set(engine.args.eos_token_id)
    if any(t in eos for t in expected):  # our generate stops at EOS (not yielded)
        expected = expected[: min(expected.index(t) for t in eos if t in expected)]
    assert len(expected) >= 32  # far past index_topk (12 + 32 > 16)
    assert got == expected


def test_cache_bytes_per_token_count_the_latent_and_the_indexer_keys(checkpoints):
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        engine = Engine.load(checkpoints["yarn_groups_mtp"][0], dtype=dtype, max_seq_len=64, max_batch=2)
        a = engine.args
        per_token = (a.kv_lora_rank + a.qk_rope_head_dim + a.index_head_dim) * a.num_hidden_layers * size
        assert engine.cache_bytes_per_token() == per_token
        held = sum(t.numel() * t.element_size() for layer in engine.model.layers
                   for t in (layer.attn.cache, layer.attn.indexer.cache))
        assert held == per_token * 64 * 2  # nothing else is cached per token


def test_fp8_indexer_weights_are_dequantized_and_weights_proj_stays_float32(checkpoints):
    engine = Engine.load(checkpoints["fp8"][0], dtype="bfloat16", max_seq_len=16, pack=False)
    ref = load_reference(checkpoints["fp8"][1])
    ours, theirs = engine.model.layers[1].attn.indexer, ref.model.layers[1].self_attn.indexer
    torch.testing.assert_close(ours.wk.weight.float(), theirs.wk.weight.detach().bfloat16().float(), atol=0, rtol=0)
    assert ours.weights_proj.dtype == torch.float32
    torch.testing.assert_close(ours.weights_proj, theirs.weights_proj.weight.detach(), atol=0, rtol=0)


def test_bf16_and_int8_engines_run_the_chat_template_past_index_topk(checkpoints):
    folder = checkpoints["yarn_groups_mtp"][0]
    x = _prompt(9, 40)
    full = Engine.load(folder, dtype="float32", max_seq_len=64).forward(x)
    for quant in (None, "int8"):
        engine = Engine.load(folder, dtype="bfloat16", quant=quant, max_seq_len=128)
        half = engine.forward(x)
        cos = torch.nn.functional.cosine_similarity(full.flatten(0, 1), half.flatten(0, 1), dim=-1)
        # a near-tied routing or top-k choice may flip in low precision (random tiny model)
        assert cos.median().item() > (0.999 if quant is None else 0.99)
        ids = engine.chat_prompt([{"role": "user", "content": "你好, write a loop"}])
        assert len(ids) > 8
        out = list(engine.generate(ids, max_new_tokens=24, temperature=0, stop_ids=[]))
        assert all(0 <= t < engine.args.vocab_size for t in out)


def _edited_copy(checkpoints, tmp_path, **changes):
    dst = tmp_path / "model"
    shutil.copytree(checkpoints["yarn_groups_mtp"][0], dst)
    path = dst / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("changes, named", [
    ({"layer_types": ["indexed_attention", "sliding_attention", "indexed_attention"]}, "layer_types"),
    ({"mlp_layer_types": ["dense", "sparse", "shared"]}, "mlp_layer_types"),
    ({"attention_bias": True}, "attention_bias"),
    ({"q_lora_rank": None}, "q_lora_rank"),
    ({"index_topk": 0}, "index_topk"),
])
def test_an_unimplemented_v32_feature_is_refused_by_name(checkpoints, tmp_path, changes, named):
    with pytest.raises(ModelError, match=named):
        Engine.load(_edited_copy(checkpoints, tmp_path, **changes))


def test_cli_refuses_an_unimplemented_layer_type_with_exit_status_2(checkpoints, tmp_path):
    folder = _edited_copy(checkpoints, tmp_path, layer_types=["sliding_attention"] * 3)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "local_engine", "generate", "--model", str(folder), "hi"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer_types" in lines[0] and "config.json" in lines[0] and "Traceback" not in r.stderr


def test_a_saved_int8_v32_model_reloads_to_the_same_logits(checkpoints, tmp_path):
    from local_engine.quantize import save_quantized

    engine = Engine.load(checkpoints["yarn_groups_mtp"][0], dtype="float32", quant="int8", max_seq_len=64, pack=False)
    save_quantized(engine, tmp_path / "q8")
    again = Engine.load(tmp_path / "q8", dtype="float32", max_seq_len=64)
    assert again.model.layers[1].attn.indexer.weights_proj.dtype == torch.float32
    x = _prompt(4, 40)  # past index_topk
    assert torch.equal(engine.forward(x), again.forward(x))


def test_a_batch_of_two_past_index_topk_equals_each_sequence_alone(checkpoints):
    engine = Engine.load(checkpoints["yarn_groups_mtp"][0], dtype="float32", max_seq_len=64, max_batch=2)
    x = torch.cat([_prompt(1, 30), _prompt(2, 30)])
    both = engine.forward(x, 0)
    step = engine.forward(torch.tensor([[5], [7]]), 30)
    for i in range(2):
        engine.reset()
        torch.testing.assert_close(both[i:i + 1], engine.forward(x[i:i + 1], 0), atol=1e-5, rtol=0)
        torch.testing.assert_close(step[i:i + 1], engine.forward(torch.tensor([[[5], [7]][i]]), 30),
                                   atol=1e-5, rtol=0)
