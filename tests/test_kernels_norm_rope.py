"""RMSNorm and RoPE fast paths agree with their plain references on awkward shapes."""

import pytest
import torch

from kernels.norm_rope import reference_apply_rope, reference_rms_norm, torch_apply_rope, torch_rms_norm


@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 33), (2, 1, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g)).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(torch_rms_norm(x, w, 1e-6), reference_rms_norm(x, w, 1e-6), atol=tol, rtol=tol)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 2), (2, 7, 3, 10), (1, 13, 5, 64)])
def test_rope_matches_reference(interleaved, B, T, H, D):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, T, H, D, generator=g)
    angles = torch.rand(T, D // 2, generator=g) * 50
    cos, sin = angles.cos() * 1.1, angles.sin() * 1.1
    torch.testing.assert_close(torch_apply_rope(x, cos, sin, interleaved),
                               reference_apply_rope(x, cos, sin, interleaved), atol=1e-5, rtol=1e-5)


def test_interleaved_rope_rotates_each_adjacent_pair_by_its_angle():
    x = torch.tensor([[[[1.0, 0.0, 0.0, 2.0]]]])  # [1, 1, 1, 4]: pairs (1, 0) and (0, 2)
    angle = torch.tensor([[torch.pi / 2, torch.pi]])
    out = reference_apply_rope(x, angle.cos(), angle.sin(), True)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 1.0, 0.0, -2.0]]]]), atol=1e-6, rtol=0)
