"""FP8 block dequantization: the strip-by-strip fast path equals the reference, any shape."""

import pytest
import torch

from kernels.fp8 import fp8_block_dequant, reference_fp8_block_dequant
from tests.tiny_checkpoints import fp8_quantize


@pytest.mark.parametrize("shape", [(1, 1), (127, 129), (300, 200), (256, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_dequant_matches_reference(shape, dtype):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 0.05
    q, s = fp8_quantize(w)
    assert q.dtype == torch.float8_e4m3fn and s.shape == ((shape[0] + 127) // 128, (shape[1] + 127) // 128)
    fast, ref = fp8_block_dequant(q, s, dtype), reference_fp8_block_dequant(q, s, dtype)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, ref, atol=0, rtol=0)


def test_fp8_dequant_uses_each_blocks_own_scale():
    q = torch.ones(130, 260).to(torch.float8_e4m3fn)
    s = torch.arange(1, 7, dtype=torch.float32).view(2, 3)
    out = fp8_block_dequant(q, s)
    assert out[0, 0] == 1 and out[0, 128] == 2 and out[0, 259] == 3
    assert out[129, 0] == 4 and out[129, 200] == 5 and out[129, 259] == 6


def test_fp8_dequant_rejects_scales_that_do_not_fit():
    q = torch.zeros(130, 10).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="weight_scale_inv"):
        fp8_block_dequant(q, torch.ones(1, 1))


def test_fp8_dequant_writes_into_a_given_buffer():
    w = torch.randn(200, 130, generator=torch.Generator().manual_seed(4))
    q, s = fp8_quantize(w)
    big = torch.zeros(400, 130, dtype=torch.bfloat16)
    half = big[200:]
    got = fp8_block_dequant(q, s, torch.bfloat16, out=half)
    assert got.data_ptr() == half.data_ptr() and big[:200].abs().sum() == 0
    torch.testing.assert_close(big[200:], reference_fp8_block_dequant(q, s, torch.bfloat16), atol=0, rtol=0)
