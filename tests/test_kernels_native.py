"""kernels/csrc (via kernels.cpu_native): the native int8/int4 GEMV, its dequantization for
many rows, and the fused one-token MoE, each against its reference, under every build this
CPU can run (its own, AVX2, plain C) and both activation precisions; the build cache and the
fallback when no compiler works."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import arm64_emulator
import pytest
import torch
import torch.nn.functional as F

from kernels import capability, cpu_native, dispatch
from kernels.moe import fuse_experts, reference_moe
from kernels.quant import (
    NATIVE,
    dequantize,
    from_codes,
    quantize_weight,
    quantized_linear,
    reference_native_linear,
    reference_quantized_linear,
    to_codes,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dispatch.native(),
                                reason="the native kernels did not build here (no working C compiler?)")

AWKWARD = [(1, 1), (5, 7), (13, 33), (17, 100), (48, 130), (100, 72), (33, 512), (40, 1000)]
# against the math of the kernel (activations rounded per block as it does, float32 matmul)
# the native results agree to float32 accumulation order; bf16 outputs carry bf16's 2^-9
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
# against the plain reference (unrounded activations): the activation rounding itself
LOOSE = {8: 2e-2, 16: 1e-3}


def _cpu_has(*flags: str) -> bool:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return False
    have = set(line.split())
    return all(f in have for f in flags)


_X86 = platform.machine().lower() in ("x86_64", "amd64")
BUILDS = {  # id -> (target, activation bits, the SIMD path it must compile)
    "native": ("native", None, None),
    "avx2-act8": ("haswell", 8, "avx2"),
    "avx2-act16": ("haswell", 16, "avx2"),
    "plain-c-act8": ("x86-64", 8, "scalar"),
    "plain-c-act16": ("x86-64", 16, "scalar"),
    "arm64-act8": ("arm64", 8, "neon"),        # built for aarch64 (sdot), run on an emulated CPU
    "arm64-act16": ("arm64", 16, "neon"),
    "arm64-nodot-act8": ("arm64-nodot", 8, "neon"),   # ARMv8.0: no sdot
}


@pytest.fixture(params=list(BUILDS))
def build(request):
    """Runs the test with a build of the library swapped in (the weight layouts are shared)."""
    march, abits, _ = BUILDS[request.param]
    if march.startswith("arm64"):
        cpu = arm64_emulator.NO_DOTPROD if march == "arm64-nodot" else arm64_emulator.DOTPROD
        with arm64_emulator.native(abits, cpu) as so:
            assert so.duet_isa().decode() == BUILDS[request.param][2]
            yield so
        return
    if march != "native" and not _X86:
        pytest.skip("x86-64 targets")
    if march == "haswell" and not _cpu_has("avx2", "fma"):
        pytest.skip("this CPU has no AVX2")
    with cpu_native.variant(march, abits) as so:
        yield so


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", [n for n in BUILDS if BUILDS[n][0] in ("haswell", "x86-64")])
def test_each_target_compiles_its_own_simd_path(name):
    march, _, isa = BUILDS[name]
    if not _X86:
        pytest.skip("x86-64 targets")
    path, _ = cpu_native.build(march=march)
    assert f"-march={march}" in cpu_native.flags(march)
    with cpu_native.variant(march) as so:
        assert so.duet_isa().decode() == isa
        assert cpu_native.isa() == isa
        # the default activation precision off AVX-512: 8 bits (maddubs) for int4, 16 for int8
        assert (dispatch.plan().linear.act_bits(4), dispatch.plan().linear.act_bits(8)) == (8, 16)
    assert cpu_native.isa() in ("avx512", "avx2", "scalar")


def test_arm_and_other_cpus_get_mcpu_not_march(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.delenv("DUET_NATIVE_MARCH", raising=False)   # (a run may set it for the whole suite)
    monkeypatch.delenv("DUET_CPU", raising=False)
    assert cpu_native.flags()[-1] == "-mcpu=native"
    monkeypatch.setenv("DUET_NATIVE_MARCH", "-march=armv8.2-a+dotprod")
    assert cpu_native.flags()[-1] == "-march=armv8.2-a+dotprod"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("DUET_NATIVE_MARCH", "haswell")
    assert cpu_native.flags()[-1] == "-march=haswell"


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("n,k", AWKWARD)
def test_native_matmul_matches_reference_for_one_to_four_rows_and_more(build, mode, n, k):
    g = torch.Generator().manual_seed(n * 1000 + k)
    qw = quantize_weight(torch.randn(n, k, generator=g), mode)
    assert qw.layout == NATIVE
    abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
    for dtype in (torch.float32, torch.bfloat16):
        for m in (1, 2, 3, 4, 5, 19):
            x = torch.randn(m, k, generator=g).to(dtype)
            before = dict(cpu_native.CALLS)
            y = quantized_linear(x, qw)
            assert y.shape == (m, n) and y.dtype == dtype
            if m <= 4:   # the integer kernel: exactly its math
                assert _rel(y, reference_native_linear(x, qw, abits)) < TOL[dtype], (mode, n, k, m, dtype)
                assert _rel(y, reference_quantized_linear(x.float(), qw)) < LOOSE[abits] + TOL[dtype]
            else:        # many rows: the dequantized weight, float activations
                assert _rel(y, reference_quantized_linear(x.float(), qw)) < TOL[dtype], (mode, n, k, m, dtype)
            entry = "gemm" if m <= 4 else "dequant"       # the native path really ran
            assert cpu_native.CALLS[entry] == before.get(entry, 0) + 1


def test_eight_bit_activations_round_as_llama_cpps_q8_0_blocks(build):
    """The 8-bit path's error is the activation rounding (what llama.cpp does): an input that is
    exactly representable (integers in one block scaled by a power of two) loses nothing."""
    if dispatch.plan().linear.act_bits(8) != 8:
        pytest.skip("this build runs 16-bit activations")
    qw = quantize_weight(torch.randn(24, 64), "int8")
    x = (torch.randint(-127, 128, (1, 64)).float() / 64)
    x[0, 0], x[0, 32] = 127 / 64, -127 / 64             # each block's max is exactly code 127
    torch.testing.assert_close(quantized_linear(x, qw), reference_quantized_linear(x, qw), rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize("mode,group", [("int8", 64), ("int8", 128), ("int4", 128), ("int4", 256)])
def test_larger_groups_run_natively_and_match(build, mode, group):
    g = torch.Generator().manual_seed(group)
    qw = quantize_weight(torch.randn(37, 300, generator=g), mode, group_size=group)
    assert qw.layout == NATIVE
    abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
    for m in (1, 4, 9):
        x = torch.randn(m, 300, generator=g)
        want = reference_native_linear(x, qw, abits) if m <= 4 else reference_quantized_linear(x, qw)
        assert _rel(quantized_linear(x, qw), want) < TOL[torch.float32]


def test_int4_groups_of_32_keep_the_aten_layout():
    qw = quantize_weight(torch.randn(32, 64), "int4", group_size=32)
    assert qw.layout == "cpu_int4pack"


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_empty_batches_zero_inputs_and_zero_weights(build, mode):
    qw = quantize_weight(torch.randn(24, 96), mode)
    assert quantized_linear(torch.randn(0, 96), qw).shape == (0, 24)
    assert quantized_linear(torch.randn(3, 0, 96), qw).shape == (3, 0, 24)
    zero_x = torch.zeros(2, 96)
    torch.testing.assert_close(quantized_linear(zero_x, qw), torch.zeros(2, 24))
    qz = quantize_weight(torch.zeros(24, 96), mode)     # all-zero groups (int4 keeps a zero point)
    x = torch.randn(3, 96)
    ref = reference_quantized_linear(x, qz)
    if ref.abs().max() == 0:   # q s and the zero-point term cancel on the same rounded x: float rounding only
        assert quantized_linear(x, qz).abs().max() < 1e-4
    else:
        abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
        assert _rel(quantized_linear(x, qz), reference_native_linear(x, qz, abits)) < TOL[torch.float32]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_native_layout_is_a_lossless_relayout_of_the_codes(build, mode):
    w = torch.randn(50, 200)
    qw = quantize_weight(w, mode)
    aten = from_codes(mode, qw.shape, qw.group_size, to_codes(qw), native=False)
    codes_a, codes_n = to_codes(aten), to_codes(qw)
    assert codes_a.keys() == codes_n.keys() and all(torch.equal(codes_a[k], codes_n[k]) for k in codes_a)
    assert qw.nbytes == sum(t.numel() * t.element_size() for t in codes_n.values())   # no second copy
    np_, kp = qw.padded_shape
    bits = 8 if mode == "int8" else 4
    sc = qw.tensors["scale" if mode == "int8" else "scale_zero"]
    native = cpu_native.dequant(bits, qw.tensors["q"], sc, kp, qw.group_size, 50, 200, torch.float32)
    torch.testing.assert_close(native, dequantize(qw), rtol=1e-6, atol=1e-7)


def _swiglu_reference(w13, w2, abits=None):
    """SwiGLU on quantized weights; with ``abits`` each matmul's input rounded as the kernel does."""
    def lin(x, w):
        return reference_quantized_linear(x.float(), w) if abits is None else reference_native_linear(x, w, abits)

    def run(x):
        g, u = lin(x, w13).split(w13.shape[0] // 2, dim=-1)
        return lin(F.silu(g) * u, w2)
    return run


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("H,I,E,K,shared", [(128, 64, 8, 2, True), (100, 40, 5, 3, False), (72, 136, 16, 6, True)])
def test_fused_moe_matches_reference_moe(build, mode, H, I, E, K, shared):
    g = torch.Generator().manual_seed(H + I + E)
    w13 = [quantize_weight(torch.randn(2 * I, H, generator=g) / H ** 0.5, mode) for _ in range(E)]
    w2 = [quantize_weight(torch.randn(H, I, generator=g) / I ** 0.5, mode) for _ in range(E)]
    sh = (quantize_weight(torch.randn(4 * I, H, generator=g) / H ** 0.5, mode),
          quantize_weight(torch.randn(H, 2 * I, generator=g) / I ** 0.5, mode)) if shared else None
    fused = fuse_experts(w13, w2, sh)
    assert fused is not None
    abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
    experts = [_swiglu_reference(a, b, abits) for a, b in zip(w13, w2)]
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, H, generator=g).to(dtype)
        idx = torch.randperm(E, generator=g)[:K][None]
        w = torch.rand(1, K, generator=g)
        before = cpu_native.CALLS["moe"]
        y = fused(x, w, idx)
        assert cpu_native.CALLS["moe"] == before + 1 and y.shape == (1, H) and y.dtype == dtype
        ref = reference_moe(x.float(), w, idx, experts)
        if shared:
            ref = ref + _swiglu_reference(*sh, abits)(x.float())
        # a hidden value on a rounding boundary may take the other code: 1e-3, not 1e-4
        assert _rel(y, ref) < TOL[dtype] + 1e-3, (dtype, _rel(y, ref))
    dense = fuse_experts(w13[:1], w2[:1])
    x = torch.randn(1, H, generator=g)
    assert _rel(dense.dense(x), _swiglu_reference(w13[0], w2[0], abits)(x)) < TOL[torch.float32] + 1e-3
    assert _rel(dense.dense(x), _swiglu_reference(w13[0], w2[0])(x)) < LOOSE[abits] + 1e-3


def test_fusing_refuses_weights_it_cannot_run():
    a = quantize_weight(torch.randn(64, 128), "int8")
    b = quantize_weight(torch.randn(128, 32), "int8")
    assert fuse_experts([a], [b]) is not None
    assert fuse_experts([a], [quantize_weight(torch.randn(128, 32), "int4")]) is None          # mixed modes
    assert fuse_experts([a], [quantize_weight(torch.randn(120, 32), "int8")]) is None          # hidden differs
    aten = from_codes("int8", a.shape, a.group_size, to_codes(a), native=False)
    assert fuse_experts([aten], [b]) is None
    assert fuse_experts([None], [b]) is None                                                   # unquantized


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_engine_decode_runs_the_fused_moe_and_matches_its_own_prefill(tmp_path, mode):
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    path = write_tiny_v3(tmp_path / "v3", hidden_size=128, intermediate_size=192, moe_intermediate_size=64,
                         num_hidden_layers=3)
    eng = Engine.load(path, dtype="float32", quant=mode)
    ids = torch.randint(0, 400, (1, 12), generator=torch.Generator().manual_seed(7))
    prefill = eng.forward(ids)[0]                       # many rows: dequantize + matmul
    eng.reset()
    before = dict(cpu_native.CALLS)
    steps = torch.cat([eng.forward(ids[:, j:j + 1], j)[0] for j in range(12)])   # one row: native GEMV/MoE
    moe_layers = sum(1 for b in eng.model.layers if hasattr(b.ffn, "experts"))
    # MoE and dense MLP: the fused call, alone or inside the whole-layer step (kernels.decode_step)
    fused = sum(cpu_native.CALLS[k] - before.get(k, 0) for k in ("moe", "layer_step"))
    assert fused == 12 * len(eng.model.layers)
    assert moe_layers >= 1
    cos = F.cosine_similarity(steps, prefill, dim=-1).min().item()
    # one-row decode rounds activations per block (16-bit: ~1e-5 of error; 8-bit, as llama.cpp's
    # Q8_0 activations on AVX2/plain-C int4 builds: ~1e-3), prefill runs them in float
    assert cos > (0.9999 if dispatch.plan().linear.act_bits(8 if mode == "int8" else 4) == 16 else 0.999), cos


@pytest.mark.parametrize("H,K,N", [(1, 1, 1), (3, 7, 200), (5, 33, 129), (16, 128, 512), (2, 512, 128)])
def test_the_per_head_gemv_matches_a_float32_bmm(H, K, N):
    g = torch.Generator().manual_seed(H * K + N)
    x, w = torch.randn(H, K, generator=g), torch.randn(H, K, N, generator=g).to(torch.bfloat16)
    want = torch.bmm(x[:, None, :], w.float())[:, 0]
    got = cpu_native.head_gemv(x, w)
    assert got.shape == (H, N) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * K)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_latent_cache_attention_matches_the_reference_on_every_build(build, dtype):
    """kernels/csrc's absorbed attention (the decode step's, and the op's for bf16 caches where
    bf16 is not native) on each build: AVX2, plain C, ARM64 NEON (emulated); a head count that
    is not a multiple of the four-head tile, rows past the queries holding stale values."""
    from kernels.mla import reference_mla_attention

    g = torch.Generator().manual_seed(7)
    B, T, H, R, P, start = 2, 2, 5, 40, 8, 21
    q = torch.randn(B, T, H, R + P, generator=g).to(dtype)
    cache = torch.randn(B, start + T + 6, R + P, generator=g).to(dtype)
    cache[:, start + T:] = 1e4   # stale rows: never read
    got = cpu_native.mla_attention(q, cache, R, 0.2, start)
    want = reference_mla_attention(q.float(), cache[:, :start + T].float(), R, 0.2, start)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_bf16_decode_runs_absorbed_attention_natively_and_matches_the_float32_bmm(tmp_path):
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    path = write_tiny_v3(tmp_path / "v3", dtype="bfloat16", num_hidden_layers=2)
    ids = torch.randint(0, 400, (1, 10), generator=torch.Generator().manual_seed(3))

    def decode(eng):
        return torch.cat([eng.forward(ids[:, j:j + 1], j)[0] for j in range(ids.shape[1])])

    native = Engine.load(path, dtype="bfloat16")
    for layer in native.model.layers:   # the PyTorch decode path (which the fused step replaces
        layer.step = None               # where the weights are not oneDNN-packed, as on AVX2)
    before = cpu_native.CALLS["head_gemv"]
    got = decode(native)
    assert cpu_native.CALLS["head_gemv"] - before == 2 * 2 * ids.shape[1]  # 2 per layer and token
    assert native.model.layers[0].attn.absorbed()[0].dtype == torch.bfloat16  # half the bytes of float32
    with dispatch.overridden(native=False):
        plain = Engine.load(path, dtype="bfloat16")
        want = decode(plain)
    assert plain.model.layers[0].attn.absorbed()[0].dtype == torch.float32
    assert F.cosine_similarity(got, want, dim=-1).min().item() > 0.9999
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.parametrize("H,I,E,K,shared", [(128, 64, 8, 2, True), (100, 40, 5, 3, False), (72, 136, 16, 6, True)])
def test_fused_bf16_experts_match_reference_moe(build, H, I, E, K, shared):
    g = torch.Generator().manual_seed(H + I + E)
    w13s = [(torch.randn(2 * I, H, generator=g) / H ** 0.5).bfloat16() for _ in range(E)]
    w2s = [(torch.randn(H, I, generator=g) / I ** 0.5).bfloat16() for _ in range(E)]
    sh = ((torch.randn(4 * I, H, generator=g) / H ** 0.5).bfloat16(),
          (torch.randn(H, 2 * I, generator=g) / I ** 0.5).bfloat16()) if shared else None
    fused = fuse_experts(w13s, w2s, sh)
    assert fused is not None
    x = torch.randn(1, H, generator=g).bfloat16()
    weights = torch.rand(1, K, generator=g)
    indices = torch.randperm(E, generator=g)[:K].view(1, K)

    def mlp(w13, w2):  # float32 math on the same bf16 weights
        return lambda t: (F.silu(t.float() @ w13.float()[:w13.shape[0] // 2].t())
                          * (t.float() @ w13.float()[w13.shape[0] // 2:].t())) @ w2.float().t()

    want = reference_moe(x.float(), weights, indices, [mlp(a, b) for a, b in zip(w13s, w2s)])
    if sh is not None:
        want = want + mlp(*sh)(x)
    before = cpu_native.CALLS["moe_bf16"]
    got = fused(x, weights, indices)
    assert cpu_native.CALLS["moe_bf16"] == before + 1 and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_bf16_engine_decode_runs_the_fused_experts_and_matches_the_packed_path(tmp_path):
    from local_engine import Engine
    from local_engine.layers import Linear, PackedLinear
    from tests.tiny_checkpoints import write_tiny_v3

    path = write_tiny_v3(tmp_path / "v3", dtype="bfloat16", num_hidden_layers=3)
    ids = torch.randint(0, 400, (1, 10), generator=torch.Generator().manual_seed(5))

    def decode(eng):
        return torch.cat([eng.forward(ids[:, j:j + 1], j)[0] for j in range(ids.shape[1])]).float()

    native = Engine.load(path, dtype="bfloat16")
    ffn = native.model.layers[-1].ffn
    assert isinstance(ffn.experts[0].w13, Linear) and ffn.experts[0].w13.weight.dtype == torch.bfloat16  # dense
    calls = ("moe_bf16", "layer_step")   # the fused experts' call, alone or inside the whole-layer step
    before = sum(cpu_native.CALLS[k] for k in calls)
    got = decode(native)
    assert sum(cpu_native.CALLS[k] for k in calls) - before == 3 * ids.shape[1]  # every layer's MLP or MoE, every token
    with dispatch.overridden(native=False):
        packed = Engine.load(path, dtype="bfloat16")  # oneDNN-packed where the CPU has bf16 for it
        w13 = packed.model.layers[-1].ffn.experts[0].w13
        assert isinstance(w13, PackedLinear) == capability.detect().bf16_packing
        before = decode(packed)
    truth = decode(Engine.load(path, dtype="float32"))  # the same bf16 weights, float32 math
    # bf16 noise may flip a routing choice of a random tiny model on either path: compare each
    # path's distance to float32 rather than the two paths to each other
    cos_native = F.cosine_similarity(got, truth, dim=-1)
    cos_before = F.cosine_similarity(before, truth, dim=-1)
    assert cos_native.mean().item() >= cos_before.mean().item() - 1e-3
    assert (got.argmax(-1) == truth.argmax(-1)).float().mean().item() >= 0.9


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (1, 512), (3, 7), (2, 3, 129), (8, 1000)])
def test_native_rms_norm_matches_torchs_and_runs_for_decode_rows(dtype, shape):
    from kernels.norm_rope import reference_rms_norm, rms_norm, torch_rms_norm

    g = torch.Generator().manual_seed(sum(shape))
    x, w = torch.randn(*shape, generator=g).to(dtype), torch.randn(shape[-1], generator=g).to(dtype)
    before = cpu_native.CALLS["rms_norm"]
    got = rms_norm(x, w, 1e-6)
    assert cpu_native.CALLS["rms_norm"] == before + 1 and got.dtype == dtype and got.shape == x.shape
    step = 2 ** -7 if dtype == torch.bfloat16 else 1e-6  # one bf16 rounding of values ~1
    scale = 1 + got.float().abs()
    assert ((got.float() - torch_rms_norm(x, w, 1e-6).float()).abs() <= step * scale).all()
    assert ((got.float() - reference_rms_norm(x, w, 1e-6).float()).abs() <= 2 * step * scale).all()


def test_a_prefill_of_many_rows_keeps_torchs_rms_norm():
    from kernels.norm_rope import rms_norm

    before = cpu_native.CALLS["rms_norm"]
    rms_norm(torch.randn(dispatch.plan().norm.native_rows + 1, 64), torch.ones(64), 1e-6)
    assert cpu_native.CALLS["rms_norm"] == before


def test_the_library_shares_torchs_openmp_runtime():
    maps = Path("/proc/self/maps").read_text()
    gomp = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line and "/" in line}
    assert len(gomp) == 1, gomp


def test_the_kernels_use_torchs_thread_count():
    qw = quantize_weight(torch.randn(512, 1024), "int8")     # large enough to run in parallel
    x = torch.randn(1, 1024)
    before = torch.get_num_threads()
    try:
        for n in sorted({1, min(2, os.cpu_count() or 1)}):
            torch.set_num_threads(n)
            quantized_linear(x, qw)
            assert cpu_native.lib().duet_last_team() == n
    finally:
        torch.set_num_threads(before)


def test_a_second_build_reuses_the_cached_library(tmp_path):
    path, compiled = cpu_native.build(tmp_path)
    assert compiled and path.is_file() and path.parent == tmp_path
    again, compiled_again = cpu_native.build(tmp_path)
    assert again == path and not compiled_again
    assert not list(tmp_path.glob("*.tmp"))


def test_a_broken_compiler_falls_back_to_aten_with_one_warning(tmp_path):
    script = (
        "import torch\n"
        "from kernels.quant import quantize_weight, quantized_linear, reference_quantized_linear\n"
        "qw = quantize_weight(torch.randn(40, 96), 'int8')\n"
        "x = torch.randn(2, 96)\n"
        "err = ((quantized_linear(x, qw) - reference_quantized_linear(x, qw)).norm() / "
        "reference_quantized_linear(x, qw).norm()).item()\n"
        "print(qw.layout, err < 1e-2)\n"
    )
    env = dict(os.environ, CC="false", DUET_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("DUET_KERNELS", None)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu_int4pack", "True"]
    assert r.stderr.count("native kernels unavailable") == 1, r.stderr
    assert not list(tmp_path.glob("*.so"))
