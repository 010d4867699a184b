"""kernels/kquant: ggml blocks read in place give exactly gguf-py's dequantized weights, and the
native matmul / row lookup / fused MoE agree with the float32 reference on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import kquant

quants = pytest.importorskip("gguf.quants")


def random_blocks(type_id: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Any bytes are a valid block except non-finite fp16 scales: random bytes, sane scales."""
    rng = np.random.default_rng(seed)
    _, bs, bb = kquant.TYPES[type_id]
    raw = rng.integers(0, 256, (n, k // bs, bb), dtype=np.uint8)
    half = (rng.standard_normal((n, k // bs)) * 0.05).astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
    if type_id == 14:               # Q6_K: d at the end
        raw[..., 208:210] = half
    else:
        raw[..., 0:2] = half
        if type_id in (3, 7, 12, 13):  # a second fp16 (m / dmin)
            raw[..., 2:4] = half[:, ::-1]
    return raw.reshape(n, -1)


TYPES = sorted(kquant.TYPES)


@pytest.mark.parametrize("type_id", TYPES, ids=[kquant.TYPES[t][0] for t in TYPES])
def test_native_and_torch_dequantization_equal_gguf_py_bit_for_bit(type_id):
    raw = random_blocks(type_id, 24, 512)
    w = kquant.GGUFWeight(type_id, (24, 512), torch.from_numpy(raw))
    exact = quants.dequantize(raw, type_id)
    assert np.array_equal(kquant.dequantize(w).numpy(), exact)
    assert np.array_equal(kquant.reference_dequantize(w).numpy(), exact)
    assert torch.equal(kquant.dequantize(w, torch.bfloat16), torch.from_numpy(exact).to(torch.bfloat16))


@pytest.mark.parametrize("rows", [1, 3, 8, 9])
@pytest.mark.parametrize("type_id", TYPES, ids=[kquant.TYPES[t][0] for t in TYPES])
def test_the_gguf_matmul_is_the_float32_product_of_the_exact_weights(type_id, rows):
    raw = random_blocks(type_id, 40, 768, seed=rows)
    w = kquant.GGUFWeight(type_id, (40, 768), torch.from_numpy(raw))
    x = torch.randn(rows, 768, generator=torch.Generator().manual_seed(rows))
    ref = x.double() @ torch.from_numpy(quants.dequantize(raw, type_id)).double().t()
    y = kquant.linear(x, w)
    assert y.shape == (rows, 40) and y.dtype == torch.float32
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
    yb = kquant.linear(x.to(torch.bfloat16), w)
    assert yb.dtype == torch.bfloat16


def test_row_lookup_dequantizes_just_the_rows_asked_for():
    raw = random_blocks(12, 16, 256)
    w = kquant.GGUFWeight(12, (16, 256), torch.from_numpy(raw))
    ids = torch.tensor([[3, 0, 15], [3, 7, 1]])
    rows = kquant.get_rows(w, ids, torch.float32)
    assert torch.equal(rows, torch.from_numpy(quants.dequantize(raw, 12))[ids])


def test_the_fused_gguf_moe_step_equals_its_experts_one_by_one():
    import torch.nn.functional as F

    E, I, H = 6, 256, 512
    gates = [kquant.GGUFWeight(12, (I, H), torch.from_numpy(random_blocks(12, I, H, seed=e))) for e in range(E)]
    ups = [kquant.GGUFWeight(13, (I, H), torch.from_numpy(random_blocks(13, I, H, seed=10 + e))) for e in range(E)]
    downs = [kquant.GGUFWeight(14, (H, I), torch.from_numpy(random_blocks(14, H, I, seed=20 + e))) for e in range(E)]
    if not kquant.GGUFExperts.fits(gates, ups, downs):
        pytest.skip("no native GGUF kernels here")
    fused = kquant.GGUFExperts(gates, ups, downs)
    x = torch.randn(1, H)
    idx, wts = torch.tensor([[4, 1, 2]]), torch.tensor([[0.5, 0.3, 0.2]])
    y = fused(x, wts, idx)
    ref = torch.zeros(1, H, dtype=torch.float64)
    for e, wt in zip(idx[0].tolist(), wts[0].tolist()):
        g, u, d = (kquant.dequantize(t).double() for t in (gates[e], ups[e], downs[e]))
        ref += wt * (F.silu(x.double() @ g.t()) * (x.double() @ u.t())) @ d.t()
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
