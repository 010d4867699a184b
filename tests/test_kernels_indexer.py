"""kernels/indexer.py: the fast top-k and sparse attention against their plain references, on
random awkward shapes (padded caches with stale rows, prompts crossing topk, blocks of queries)."""

import pytest
import torch

from kernels import dispatch, indexer, mla


def _inputs(seed, B, T, start_pos, Hi=5, D=12, pad=7, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    S = start_pos + T + pad  # rows past the context hold garbage: they must never be chosen
    q = torch.randn(B, T, Hi, D, generator=g).to(dtype)
    w = torch.randn(B, T, Hi, generator=g)
    k = torch.randn(B, S, D, generator=g).to(dtype)
    return q, w, k


def _valid_sets(chosen, start_pos):
    """Per query, the chosen positions it may attend to (those not after it)."""
    B, T, _ = chosen.shape
    return [[sorted(p for p in chosen[b, t].tolist() if p <= start_pos + t) for t in range(T)] for b in range(B)]


@pytest.mark.parametrize("B, T, start_pos, topk", [(1, 1, 40, 8), (2, 1, 7, 8), (2, 9, 0, 4), (1, 13, 20, 16),
                                                   (2, 30, 3, 1000), (1, 1, 3, 1000)])
def test_fast_top_k_chooses_what_the_reference_chooses(B, T, start_pos, topk):
    q, w, k = _inputs(B * 100 + T + start_pos, B, T, start_pos)
    want = indexer.reference_indexer_topk(q, w, k, 0.3, start_pos, topk)
    got = indexer.indexer_topk(q, w, k, 0.3, start_pos, topk)
    assert got.shape == want.shape == (B, T, min(topk, start_pos + T))
    assert _valid_sets(got, start_pos) == _valid_sets(want, start_pos)
    assert int(got.max()) < start_pos + T  # never a padding row


def test_top_k_keeps_each_querys_highest_scores():
    q, w, k = _inputs(5, 1, 1, 30)
    chosen = indexer.indexer_topk(q, w, k, 1.0, 30, 6)[0, 0]
    scores = torch.einsum("hd,sd->hs", q[0, 0], k[0, :31]).relu()
    index = (w[0, 0, :, None] * scores).sum(0)
    assert sorted(chosen.tolist()) == sorted(index.topk(6).indices.tolist())


@pytest.mark.parametrize("B, T, start_pos, K", [(1, 1, 50, 8), (2, 1, 9, 10), (2, 11, 0, 4), (1, 17, 25, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_sparse_attention_equals_the_reference(B, T, start_pos, K, dtype):
    g = torch.Generator().manual_seed(B + T + start_pos)
    H, kv_lora, rope = 3, 20, 6
    S = start_pos + T + 5
    q = torch.randn(B, T, H, kv_lora + rope, generator=g).to(dtype)
    cache = torch.randn(B, S, kv_lora + rope, generator=g).to(dtype)
    qi, w, k = _inputs(7, B, T, start_pos, pad=5)
    chosen = indexer.reference_indexer_topk(qi, w, k, 0.5, start_pos, K)
    want = indexer.reference_sparse_mla_attention(q, cache, chosen, kv_lora, 0.2, start_pos)
    got = indexer.sparse_mla_attention(q, cache, chosen, kv_lora, 0.2, start_pos)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_choosing_every_position_is_dense_attention():
    g = torch.Generator().manual_seed(0)
    B, T, start_pos, H, kv_lora, rope = 2, 6, 10, 4, 16, 8
    q = torch.randn(B, T, H, kv_lora + rope, generator=g)
    cache = torch.randn(B, start_pos + T, kv_lora + rope, generator=g)
    every = torch.arange(start_pos + T).expand(B, T, -1)
    torch.testing.assert_close(indexer.sparse_mla_attention(q, cache, every, kv_lora, 0.3, start_pos),
                               mla.reference_mla_attention(q, cache, kv_lora, 0.3, start_pos), atol=1e-5, rtol=0)


def test_long_prompts_run_in_blocks_of_queries_with_the_same_result(monkeypatch):
    q, w, k = _inputs(3, 1, 40, 10)
    g = torch.Generator().manual_seed(4)
    qa = torch.randn(1, 40, 3, 26, generator=g)
    cache = torch.randn(1, k.shape[1], 26, generator=g)
    whole_idx = indexer.indexer_topk(q, w, k, 0.4, 10, 12)
    whole = indexer.sparse_mla_attention(qa, cache, whole_idx, 20, 0.2, 10)
    monkeypatch.setattr(indexer, "_BLOCK_ELEMENTS", 200)  # a few queries per block
    idx = indexer.indexer_topk(q, w, k, 0.4, 10, 12)
    assert _valid_sets(idx, 10) == _valid_sets(whole_idx, 10)
    torch.testing.assert_close(indexer.sparse_mla_attention(qa, cache, idx, 20, 0.2, 10), whole, atol=1e-6, rtol=0)


def test_one_query_over_a_bf16_key_cache_chooses_nearly_what_float32_chooses():
    """Its scores run in bf16 where the CPU multiplies bf16 natively, in float32 elsewhere."""
    q, w, k = _inputs(11, 2, 1, 500, Hi=8, D=32, dtype=torch.bfloat16)
    want = indexer.reference_indexer_topk(q, w, k, 0.2, 500, 64)
    got = indexer.indexer_topk(q, w, k, 0.2, 500, 64)
    for b in range(2):
        same = set(got[b, 0].tolist()) & set(want[b, 0].tolist())
        assert len(same) >= 0.9 * 64  # only near-ties at the boundary may go the other way


def test_one_querys_sparse_attention_over_a_bf16_cache_runs_native_where_the_plan_says():
    """Its gathered rows through kernels/csrc's attention (float32 sums: the reference over the
    same bf16 inputs in float32), as the dense op's; torch's bf16 products where the plan says not."""
    from kernels import cpu_native

    if not dispatch.plan().native:
        pytest.skip("kernels/csrc not built here")
    g = torch.Generator().manual_seed(21)
    B, start_pos, H, kv_lora, rope, K = 2, 300, 8, 64, 16, 40
    q = torch.randn(B, 1, H, kv_lora + rope, generator=g).bfloat16()
    cache = torch.randn(B, start_pos + 9, kv_lora + rope, generator=g).bfloat16()
    qi, w, k = _inputs(5, B, 1, start_pos, pad=8)
    chosen = indexer.reference_indexer_topk(qi, w, k, 0.5, start_pos, K)
    want = indexer.reference_sparse_mla_attention(q.float(), cache.float(), chosen, kv_lora, 0.2, start_pos)
    for on in (True, False):
        with dispatch.overridden(native_attention=on):
            before = cpu_native.CALLS["mla_attention"]
            got = indexer.sparse_mla_attention(q, cache, chosen, kv_lora, 0.2, start_pos)
            assert cpu_native.CALLS["mla_attention"] - before == (1 if on else 0)
        tol = 2e-5 if on else 2e-2
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
