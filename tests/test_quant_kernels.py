"""kernels.quant: packed int8/int4 weights, their fast matmul against the reference."""

import pytest
import torch

from kernels.quant import (
    DEFAULT_GROUP,
    QuantizedWeight,
    dequantize,
    from_codes,
    quantize_weight,
    quantized_linear,
    reference_quantized_linear,
    to_codes,
)

AWKWARD = [(1, 1), (5, 7), (13, 33), (16, 64), (17, 100), (48, 130), (64, 256), (100, 72)]


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("n,k", AWKWARD)
def test_fast_matmul_matches_reference_on_awkward_shapes(mode, n, k):
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g)
    qw = quantize_weight(w, mode)
    for m in (1, 3, 19):
        x = torch.randn(m, k, generator=g)
        fast = quantized_linear(x, qw)
        ref = reference_quantized_linear(x, qw)
        assert fast.shape == (m, n) and fast.dtype == x.dtype
        # the packed kernels take bf16 activations: ~2^-9 relative rounding per element
        assert _rel(fast, ref) < 1e-2, (mode, n, k, m)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_empty_batch_gives_an_empty_result(mode):
    qw = quantize_weight(torch.randn(32, 64), mode)
    for x in (torch.randn(0, 64), torch.randn(2, 0, 64)):
        y = quantized_linear(x, qw)
        assert y.shape == (*x.shape[:-1], 32)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_leading_dimensions_are_kept_and_bf16_input_gives_bf16_output(mode):
    qw = quantize_weight(torch.randn(48, 96), mode)
    x = torch.randn(2, 5, 96, dtype=torch.bfloat16)
    y = quantized_linear(x, qw)
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    assert _rel(y, reference_quantized_linear(x.float(), qw)) < 1e-2


@pytest.mark.parametrize("mode,qtype", [("int8", "Q8_0"), ("int4", "Q4_0")])
def test_rounding_is_at_least_as_accurate_as_llama_cpp(mode, qtype):
    from gguf import GGMLQuantizationType, quants

    t = getattr(GGMLQuantizationType, qtype)
    w = torch.randn(256, 1024) * torch.linspace(0.01, 0.1, 256)[:, None]
    ours = (dequantize(quantize_weight(w, mode)) - w).square().mean()
    peer = (torch.from_numpy(quants.dequantize(quants.quantize(w.numpy(), t), t)) - w).square().mean()
    assert ours <= peer, (mode, ours.item(), peer.item())


def test_int4_codes_use_all_sixteen_levels_and_track_the_weight():
    w = torch.randn(64, 256)
    qw = quantize_weight(w, "int4")
    err = (dequantize(qw) - w).square().mean() / w.square().mean()
    assert err < 0.01        # 4-bit, group 64: ~0.7% of the weight's energy
    codes = to_codes(qw)["q"]
    nibbles = torch.cat([codes & 15, codes >> 4]).unique()
    assert len(nibbles) == 16


@pytest.mark.parametrize("mode,limit", [("int8", 1.07), ("int4", 0.57)])
def test_bytes_per_parameter_including_scales(mode, limit):
    # expert-, attention- and head-like shapes of DeepSeek models
    for n, k in [(1408, 2048), (2048, 1408), (2816, 2048), (576, 2048), (64, 7168)]:
        qw = quantize_weight(torch.randn(n, k), mode)
        assert qw.nbytes / qw.numel <= limit, (mode, n, k, qw.nbytes / qw.numel)
    assert quantize_weight(torch.randn(64, 256), "int4").group_size == DEFAULT_GROUP


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("native", [False, True])
def test_portable_codes_round_trip_through_the_cpu_packed_layouts(mode, native):
    from kernels import dispatch

    if native and not dispatch.native():
        pytest.skip("the native kernels did not build here (no C compiler?)")
    w = torch.randn(48, 192)
    qw = from_codes(mode, (48, 192), 32 if mode == "int8" else 64, to_codes(quantize_weight(w, mode)),
                    native=native)
    assert qw.layout == ("cpu_native" if native else "cpu_int4pack")
    again = from_codes(mode, qw.shape, qw.group_size, to_codes(qw), native=native)
    assert all(torch.equal(again.tensors[k], qw.tensors[k]) for k in qw.tensors)
    assert torch.equal(dequantize(again), dequantize(qw))


@pytest.mark.parametrize("mode,layout", [("int8", "codes"), ("int4", "nibbles")])
def test_vectorised_fallback_matches_the_packed_kernel(mode, layout):
    w = torch.randn(32, 128)
    qw = quantize_weight(w, mode)
    plain = QuantizedWeight(mode, qw.shape, qw.group_size, to_codes(qw), layout)   # no packed kernel
    x = torch.randn(4, 128)
    assert _rel(quantized_linear(x, plain), quantized_linear(x, qw)) < 1e-2
    assert torch.equal(dequantize(plain), dequantize(qw))


@pytest.mark.parametrize("bad", [("int3", {}), ("int4", {"group_size": 48}), ("int8", {"group_size": 16})])
def test_bad_mode_or_group_is_a_clear_error(bad):
    mode, kw = bad
    with pytest.raises(ValueError, match="group_size|mode"):
        quantize_weight(torch.randn(16, 64), mode, **kw)
