"""Grouped MoE combine equals the token-by-token reference, including empty experts and batch 1."""

import pytest
import torch

from kernels.moe import moe, reference_moe


def _experts(n, h, g):
    ws = [torch.randn(h, h, generator=g) * 0.3 for _ in range(n)]
    return [lambda x, w=w: torch.tanh(x @ w) for w in ws]


@pytest.mark.parametrize("N,K,E,H", [(1, 1, 3, 5), (1, 6, 16, 7), (13, 3, 9, 11), (40, 2, 64, 3)])
def test_moe_matches_reference(N, K, E, H):
    g = torch.Generator().manual_seed(N * 7 + E)
    x = torch.randn(N, H, generator=g)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    w = torch.rand(N, K, generator=g)
    experts = _experts(E, H, g)
    torch.testing.assert_close(moe(x, w, idx, experts), reference_moe(x, w, idx, experts), atol=1e-5, rtol=1e-5)


def test_moe_calls_each_active_expert_once_and_skips_idle_ones():
    calls = []
    E, H = 8, 4

    def make(e):
        def f(x):
            calls.append((e, x.shape[0]))
            return x * (e + 1)
        return f

    x = torch.randn(5, H)
    idx = torch.tensor([[0, 3], [3, 5], [0, 5], [3, 0], [5, 3]])
    w = torch.ones(5, 2)
    out = moe(x, w, idx, [make(e) for e in range(E)])
    assert sorted(calls) == [(0, 3), (3, 4), (5, 3)]
    torch.testing.assert_close(out, reference_moe(x, w, idx, [lambda t, e=e: t * (e + 1) for e in range(E)]))
