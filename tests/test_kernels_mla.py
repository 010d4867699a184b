"""Absorbed MLA attention over the latent cache: fast path equals the reference; the absorbed
form equals attention with per-head keys/values expanded from the same latent."""

import pytest
import torch

from kernels.mla import mla_attention, padded_length, reference_mla_attention


@pytest.mark.parametrize("B,T,H,R,P,start", [(1, 1, 1, 3, 2, 0), (1, 1, 5, 48, 8, 17), (2, 4, 3, 33, 6, 9),
                                             (1, 7, 4, 10, 4, 0)])
def test_mla_attention_matches_reference(B, T, H, R, P, start):
    g = torch.Generator().manual_seed(B + T + H)
    q = torch.randn(B, T, H, R + P, generator=g)
    cache = torch.randn(B, start + T, R + P, generator=g)
    torch.testing.assert_close(mla_attention(q, cache, R, 0.3, start).float(),
                               reference_mla_attention(q, cache, R, 0.3, start), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,H,R,P,start,extra", [(1, 1, 1, 3, 2, 0, 63), (1, 1, 5, 48, 8, 17, 1),
                                                   (2, 4, 3, 33, 6, 9, 50), (1, 7, 4, 10, 4, 0, 5)])
def test_rows_past_the_queries_are_ignored_whatever_they_hold(dtype, B, T, H, R, P, start, extra):
    g = torch.Generator().manual_seed(B + T + H + extra)
    q = torch.randn(B, T, H, R + P, generator=g).to(dtype)
    valid = torch.randn(B, start + T, R + P, generator=g).to(dtype)
    stale = torch.randn(B, extra, R + P, generator=g).mul(1e3).to(dtype)  # an earlier, longer context
    padded = torch.cat([valid, stale], dim=1)
    expected = reference_mla_attention(q.float(), valid.float(), R, 0.3, start)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    got = mla_attention(q, padded, R, 0.3, start)
    assert got.dtype in (dtype, torch.float32)   # float32 from the native path (its sums)
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(reference_mla_attention(q, padded, R, 0.3, start).float(), expected, atol=tol, rtol=tol)


def _native():
    from kernels import cpu_native, dispatch

    if not dispatch.plan().native:
        pytest.skip("kernels/csrc not built here")
    return cpu_native


# (B, T, H, R, P, start, extra): the last two cases hold enough rows that the work is split
# across threads (H * S * (R + P) * 2 bytes over kernels/csrc's one-thread bound)
NATIVE_CASES = [(1, 1, 1, 3, 2, 0, 63), (1, 1, 5, 48, 8, 17, 1), (2, 4, 3, 33, 6, 9, 50), (1, 7, 4, 10, 4, 0, 5),
                (1, 1, 16, 64, 16, 700, 60), (2, 3, 4, 96, 32, 400, 7)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B,T,H,R,P,start,extra", NATIVE_CASES)
def test_native_attention_matches_the_reference_in_float32(threads, dtype, B, T, H, R, P, start, extra):
    """kernels/csrc's attention reads a float32 or bf16 cache and sums in float32: the reference
    over the same (rounded) inputs in float32, whatever stale rows follow the valid ones."""
    cpu_native = _native()
    g = torch.Generator().manual_seed(B + T + H + start)
    q = torch.randn(B, T, H, R + P, generator=g).to(dtype)
    valid = torch.randn(B, start + T, R + P, generator=g).to(dtype)
    padded = torch.cat([valid, torch.randn(B, extra, R + P, generator=g).mul(1e3).to(dtype)], dim=1)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_native.mla_attention(q, padded, R, 0.3, start)
    finally:
        torch.set_num_threads(saved)
    assert got.dtype == torch.float32 and got.shape == (B, T, H, R)
    want = reference_mla_attention(q.float(), valid.float(), R, 0.3, start)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_native_attention_computes_each_query_as_one_token_at_its_position(threads):
    """A chunk's queries (MTP's verification, a short prefill chunk) get exactly the sums one-token
    calls at their positions get (a decode step): the rows are split across threads by each
    query's own length, so a greedy choice cannot differ between the two."""
    cpu_native = _native()
    g = torch.Generator().manual_seed(threads)
    B, T, H, R, P, start = 2, 4, 16, 64, 16, 900
    q = torch.randn(B, T, H, R + P, generator=g).bfloat16()
    cache = torch.randn(B, start + T + 30, R + P, generator=g).bfloat16()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        chunk = cpu_native.mla_attention(q, cache, R, 0.1, start)
        ones = [cpu_native.mla_attention(q[:, t:t + 1], cache, R, 0.1, start + t) for t in range(T)]
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(chunk, torch.cat(ones, dim=1))


def test_the_op_runs_the_native_attention_for_a_bf16_cache_where_the_plan_says():
    from kernels import dispatch

    cpu_native = _native()
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 4, 40, generator=g).bfloat16()
    cache = torch.randn(1, 70, 40, generator=g).bfloat16()
    for on in (True, False):
        with dispatch.overridden(native_attention=on):
            assert dispatch.plan().attention.attention == ("native-bf16" if on else "torch")
            before = cpu_native.CALLS["mla_attention"]
            mla_attention(q, cache, 32, 0.2, 60)
            mla_attention(q.float(), cache.float(), 32, 0.2, 60)   # a float32 cache: torch's, always
            assert cpu_native.CALLS["mla_attention"] - before == (1 if on else 0)


def test_padded_length_rounds_up_within_the_capacity():
    assert [padded_length(e, 200) for e in (1, 63, 64, 65, 190, 193, 200)] == [64, 64, 64, 128, 192, 200, 200]
    assert padded_length(5, 300, step=16) == 16


def test_absorbed_attention_equals_expanded_per_head_attention():
    g = torch.Generator().manual_seed(5)
    H, nope, v, R, P, S = 3, 6, 5, 8, 4, 9
    w_kv_b = torch.randn(H, nope + v, R, generator=g)
    c_kv, k_pe = torch.randn(S, R, generator=g), torch.randn(S, P, generator=g)
    q_nope, q_pe = torch.randn(H, nope, generator=g), torch.randn(H, P, generator=g)
    # expanded: per-head keys and values
    k = torch.einsum("hdr,sr->hsd", w_kv_b[:, :nope], c_kv)
    val = torch.einsum("hdr,sr->hsd", w_kv_b[:, nope:], c_kv)
    scores = (torch.einsum("hd,hsd->hs", q_nope, k) + q_pe @ k_pe.T) * 0.2
    expected = torch.einsum("hs,hsd->hd", scores.softmax(-1), val)
    # absorbed
    q_lat = torch.einsum("hd,hdr->hr", q_nope, w_kv_b[:, :nope])
    q = torch.cat([q_lat, q_pe], -1)[None, None]
    lat = mla_attention(q, torch.cat([c_kv, k_pe], -1)[None], R, 0.2, S - 1)[0, 0]
    got = torch.einsum("hr,hdr->hd", lat, w_kv_b[:, nope:])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_absorbed_per_head_products_match_the_reference(rows, dtype):
    """kv_b split per head (in the dtype the plan's head GEMV wants) and one row's or a few rows'
    products with it: the native bf16 GEMV for one row of a bf16 CPU model, else a batched matmul."""
    from kernels import cpu_native, dispatch
    from kernels.mla import absorb, per_head, reference_per_head

    g = torch.Generator().manual_seed(rows)
    H, nope, v, kv_lora = 3, 24, 20, 40
    wkv_b = torch.randn(H * (nope + v), kv_lora, generator=g).to(dtype)
    cache = torch.zeros(1, 4, kv_lora + 8, dtype=dtype)
    w_uk, w_uv_t = absorb(wkv_b, H, nope, v, kv_lora, cache)
    assert w_uk.shape == (H, nope, kv_lora) and w_uv_t.shape == (H, kv_lora, v)
    native = dtype == torch.bfloat16 and dispatch.plan().attention.head_gemv == "native-bf16"
    assert w_uk.dtype == (torch.bfloat16 if native else torch.float32)
    torch.testing.assert_close(w_uv_t.float(), wkv_b.float().view(H, nope + v, kv_lora)[:, nope:].transpose(1, 2))
    x = torch.randn(rows, H, nope, generator=g).to(dtype)
    before = cpu_native.CALLS["head_gemv"]
    got = per_head(x, w_uk)
    assert cpu_native.CALLS["head_gemv"] - before == (1 if native and rows == 1 else 0)
    want = reference_per_head(x, w_uk)
    tol = 2e-2 if w_uk.dtype == torch.bfloat16 and rows > 1 else 1e-4   # bf16 bmm rounds its result
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
