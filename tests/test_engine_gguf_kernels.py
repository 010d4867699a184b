"""kernels/kquant: ggml blocks read in place give exactly gguf-py's dequantized weights; the
native matmul and fused MoE agree with their torch reference at every activation precision
(8-bit blocks as llama.cpp rounds them, two 8-bit terms, float32), under every build this CPU can run
(its own, AVX2, plain C; ARM64's NEON with and without sdot, emulated); the prefill path (many rows) is the float32 product,
or, at 8-bit activations where kquant.tiled_gemm_for says so, the tiled integer GEMM."""

from __future__ import annotations

import contextlib
import dataclasses

import arm64_emulator
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import capability, dispatch, kquant
from tests import gguf_helpers as H
from tests.gguf_helpers import ARM64, BUILDS, X86 as _X86

quants = pytest.importorskip("gguf.quants")


def random_blocks(type_id: int, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Any bytes are a valid block except non-finite fp16 scales: random bytes, sane scales."""
    rng = np.random.default_rng(seed)
    _, bs, bb = kquant.TYPES[type_id]
    raw = rng.integers(0, 256, (n, k // bs, bb), dtype=np.uint8)
    half = (rng.standard_normal((n, k // bs)) * 0.05).astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
    at = H.FP16_SCALES.get(type_id, (0,))   # d, then m / dmin where the type has one
    raw[..., at[0]:at[0] + 2] = half
    if len(at) > 1:
        raw[..., at[1]:at[1] + 2] = half[:, ::-1]
    return raw.reshape(n, -1)


TYPES = sorted(kquant.DOT_TYPES)  # the types with native dot products (i-quants: tests/test_gguf_iquants.py)


@pytest.mark.parametrize("type_id", TYPES, ids=[kquant.TYPES[t][0] for t in TYPES])
def test_native_and_torch_dequantization_equal_gguf_py_bit_for_bit(type_id):
    raw = random_blocks(type_id, 24, 512)
    w = kquant.GGUFWeight(type_id, (24, 512), torch.from_numpy(raw))
    exact = quants.dequantize(raw, type_id)
    assert np.array_equal(kquant.dequantize(w).numpy(), exact)
    assert np.array_equal(kquant.reference_dequantize(w).numpy(), exact)
    assert torch.equal(kquant.dequantize(w, torch.bfloat16), torch.from_numpy(exact).to(torch.bfloat16))




build = pytest.fixture(params=list(BUILDS))(H.each_build)  # each kernels/kquant build


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# k: one block, blocks not filling a 256-chunk (288 = 9 x 32), several super-blocks
SHAPES = [(t, k) for t in TYPES for k in ((32, 288, 768) if kquant.TYPES[t][1] == 32 else (256, 768))]


ROUNDING = {8: (1e-6, 3e-2), 16: (1e-9, 5e-4)}   # integer activations vs float32: (above, below)


@pytest.mark.parametrize("act", [8, 16])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("type_id,k", SHAPES, ids=[f"{kquant.TYPES[t][0]}-{k}" for t, k in SHAPES])
def test_the_integer_activation_matmul_equals_its_reference_under_every_build(build, type_id, k, rows, act):
    raw = random_blocks(type_id, 40, k, seed=rows + k)
    w = kquant.GGUFWeight(type_id, (40, k), torch.from_numpy(raw))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    with dispatch.overridden(gguf_act_bits=act):
        y = kquant.linear(x, w)
    ref, exact = kquant.reference_linear(x, w, act), kquant.reference_linear(x, w, 32)
    assert y.shape == (rows, 40) and y.dtype == torch.float32
    assert _rel(y, ref) < 1e-5                  # the same integers; float32 sums in another order
    lo, hi = ROUNDING[act]
    assert lo < _rel(ref, exact) < hi           # the activations really were rounded, to that precision


@pytest.mark.parametrize("arm", list(ARM64))
def test_the_arm64_neon_builds_give_the_plain_c_builds_results_bit_for_bit(arm):
    """NEON computes plain C's integer block sums and keeps its float sums' order."""
    if not _X86 or kquant.lib() is None:
        pytest.skip("x86-64 with a working compiler (the plain-C build)")
    cases = [(t, k, rows, act) for t, k in SHAPES for rows, act in ((1, 16), (3, 8), (8, 16))]
    x = {(k, rows): torch.randn(rows, k, generator=torch.Generator().manual_seed(k + rows))
         for _, k, rows, _ in cases}
    w = {(t, k): kquant.GGUFWeight(t, (40, k), torch.from_numpy(random_blocks(t, 40, k, seed=t + k)))
         for t, k in SHAPES}

    def run():
        out = []
        for t, k, rows, act in cases:
            with dispatch.overridden(gguf_act_bits=act):
                out.append(kquant.linear(x[k, rows], w[t, k]))
        return out

    with kquant.variant("x86-64"):
        plain = run()
    with arm64_emulator.gguf(ARM64[arm][0]):
        assert kquant.isa() == BUILDS[arm][1]
        neon = run()
    for (t, k, rows, act), a, b in zip(cases, plain, neon):
        assert torch.equal(a, b), (kquant.TYPES[t][0], k, rows, act)


def test_every_finite_fp16_scale_is_read_exactly_under_every_build(build):
    """Block scales are IEEE halves: each build's conversion (F16C, ARM64's fcvt, or plain C's
    bit arithmetic) gives every finite one, subnormals and -0 included, exactly."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    halves = halves[np.isfinite(halves.view(np.float16))]
    if build.startswith("neon"):  # emulated (slow): every subnormal and zero, every 7th normal value
        halves = halves[((halves & 0x7C00) == 0) | (np.arange(halves.size) % 7 == 0)]
    halves = np.concatenate([halves, np.zeros(-halves.size % 64, np.uint16)])
    raw = np.ones((halves.size, 34), dtype=np.uint8)      # Q8_0: d, then 32 codes of 1
    raw[:, 0:2] = halves.view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(-1, 64 * 34)                          # 64 blocks a row
    w = kquant.GGUFWeight(8, (raw.shape[0], 64 * 32), torch.from_numpy(raw))
    want = np.repeat(halves.view(np.float16).astype(np.float32), 32).reshape(raw.shape[0], -1)
    assert np.array_equal(kquant.dequantize(w).numpy().view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("rows", [1, 3, 8, 17])
@pytest.mark.parametrize("type_id", TYPES, ids=[kquant.TYPES[t][0] for t in TYPES])
def test_the_float_path_is_the_float32_product_of_the_exact_weights(build, type_id, rows):
    raw = random_blocks(type_id, 40, 768, seed=rows)
    w = kquant.GGUFWeight(type_id, (40, 768), torch.from_numpy(raw))
    x = torch.randn(rows, 768, generator=torch.Generator().manual_seed(rows))
    ref = x.double() @ torch.from_numpy(quants.dequantize(raw, type_id)).double().t()
    with dispatch.overridden(gguf_act_bits=32):
        y = kquant.linear(x, w)
        yb = kquant.linear(x.to(torch.bfloat16), w)
    assert y.shape == (rows, 40) and y.dtype == torch.float32
    assert _rel(y, ref) < 1e-5
    assert yb.dtype == torch.bfloat16


@pytest.mark.parametrize("rows", [9, 17, 40])
def test_prefill_rows_run_tile_by_tile_as_the_float32_product(monkeypatch, rows):
    if kquant.lib() is None:
        pytest.skip("no native GGUF kernels here")
    monkeypatch.setattr(kquant, "TILE_BYTES", 16 * 4 * 512)   # 16 rows a tile: 5 tiles, the last short
    raw = random_blocks(13, 70, 512, seed=rows)
    w = kquant.GGUFWeight(13, (70, 512), torch.from_numpy(raw))
    x = torch.randn(rows, 512)
    ref = x.double() @ torch.from_numpy(quants.dequantize(raw, 13)).double().t()
    assert _rel(kquant.linear(x, w), ref) < 1e-5


@pytest.mark.parametrize("type_id", [8, 12, 14], ids=["Q8_0", "Q4_K", "Q6_K"])
def test_bf16_prefill_tiles_are_the_product_of_the_weights_rounded_to_bf16(monkeypatch, type_id):
    """bf16 activations where the plan says bf16 tiles (forced here, so on any CPU): each tile is
    the exact weights rounded to bf16, multiplied in bf16 (float32 sums), tile by tile; float32
    activations keep the float32 product."""
    if kquant.lib() is None:
        pytest.skip("no native GGUF kernels here")
    monkeypatch.setattr(kquant, "TILE_BYTES", 16 * 2 * 512)   # bf16: 16 rows a tile, 5 tiles, the last short
    monkeypatch.setattr(kquant, "TILED_ISAS", ())              # the float tiles, on an AVX2 CPU too
    raw = random_blocks(type_id, 70, 512, seed=type_id)
    w = kquant.GGUFWeight(type_id, (70, 512), torch.from_numpy(raw))
    exact = torch.from_numpy(quants.dequantize(raw, type_id))
    x = torch.randn(40, 512, generator=torch.Generator().manual_seed(type_id))
    xb = x.to(torch.bfloat16)
    rounded = xb.double() @ exact.to(torch.bfloat16).double().t()   # what bf16 tiles multiply, summed exactly
    with dispatch.overridden(gguf_prefill=torch.bfloat16):
        y = kquant.linear(xb, w)
        y32 = kquant.linear(x, w)
    assert y.dtype == torch.bfloat16 and y.shape == (40, 70)
    assert _rel(y, rounded) < 2 ** -7                               # the output's own bf16 rounding, and float32 sums
    assert _rel(y32, x.double() @ exact.double().t()) < 1e-5       # float32 activations: float32 tiles still
    with dispatch.overridden(gguf_prefill=torch.float32):
        assert _rel(kquant.linear(xb, w), xb.double() @ exact.double().t()) < 2 ** -7


TILED = sorted(kquant.TILED_TYPES)
# (k, M, n): one block; several blocks, M odd (the tiles take activation rows two at a time) and n
# not a multiple of 4 (weight rows per group); M past 128 (rows per pass) with n enough for two threads
TILED_SHAPES = [(t, k, M, n) for t in TILED for k, M, n in
                (((32, 1, 5), (288, 9, 13), (768, 300, 90)) if kquant.TYPES[t][1] == 32 else
                 ((256, 1, 5), (768, 9, 13), (1024, 300, 90)))]


def _few_rows_when_emulated(cases, rows_at: int):
    """(build, *case) for every build, the emulated ARM64 ones only where the case's rows
    (``case[rows_at]``) are few: there the tiled GEMM is the few-row matmul, and emulation is slow."""
    return [(b, *c) for b in BUILDS for c in cases if not (b.startswith("arm64") and c[rows_at] > 9)]


TILED_CASES = _few_rows_when_emulated(TILED_SHAPES, rows_at=2)


@pytest.mark.parametrize("build,type_id,k,M,n", TILED_CASES, indirect=["build"],
                         ids=[f"{b}-{kquant.TYPES[t][0]}-{k}-{M}x{n}" for b, t, k, M, n in TILED_CASES])
def test_the_tiled_gemm_equals_its_8_bit_reference_under_every_build(build, type_id, k, M, n):
    """kq_gemm_tiled: llama.cpp's 8-bit activation codes times the blocks as stored, the same
    integers as reference_linear(.., 8) (AVX2's tiles; plain C and NEON through kq_gemm). Under
    the emulated ARM64 builds the shapes keep to a few rows (emulation is slow; the few-row
    matmul they run is tested above under them at every size)."""
    w = kquant.GGUFWeight(type_id, (n, k), torch.from_numpy(random_blocks(type_id, n, k, seed=M + n)))
    x = torch.randn(M, k, generator=torch.Generator().manual_seed(k + M))
    y = kquant._tiled_gemm(x, w)
    ref, exact = kquant.reference_linear(x, w, 8), kquant.reference_linear(x, w, 32)
    assert y.shape == (M, n) and y.dtype == torch.float32
    assert _rel(y, ref) < 1e-5                  # the same integers; float32 sums in another order
    assert _rel(ref, exact) > 1e-4              # ... and not the float product: the codes really were 8-bit


# the bytes of each type's codes (and Q6_K's int8 sub-scales): (from, to, most negative, most positive)
EXTREMES = {2: [(2, 18, 0x00, 0xFF)], 8: [(2, 34, 0x80, 0x7F)], 12: [(4, 144, 0xFF, 0xFF)],
            14: [(0, 192, 0x00, 0xFF), (192, 208, 0x80, 0x7F)]}


def _extreme_blocks(type_id: int, n: int, k: int) -> np.ndarray:
    """Blocks whose codes and sub-scales are all at their largest magnitude: even rows the most
    negative codes (Q4_0 -8, Q8_0 -128, Q6_K -32 with sub-scales -128), odd rows the most
    positive (Q4_K: codes 15, scales and mins 63 in both); fp16 scales as random_blocks'."""
    raw = random_blocks(type_id, n, k).reshape(n, k // kquant.TYPES[type_id][1], -1)
    for a, b, neg, pos in EXTREMES[type_id]:
        raw[0::2, :, a:b] = neg
        raw[1::2, :, a:b] = pos
    return raw.reshape(n, -1)


@pytest.mark.parametrize("type_id", TILED, ids=[kquant.TYPES[t][0] for t in TILED])
def test_the_tiled_gemm_neither_overflows_nor_saturates_at_extremes(build, type_id):
    """Activation codes +-127 (any magnitude: 1e6 rounds to the same codes) against the largest
    weights of either sign, and an all-zero activation block (scale 0): every integer lane's
    largest sum, equal to the reference's."""
    k = 512
    w = kquant.GGUFWeight(type_id, (6, k), torch.from_numpy(_extreme_blocks(type_id, 6, k)))
    x = torch.full((3, k), 127.0)
    x[1, ::3] = -127.0                    # codes of either sign (not cancelling), against weights of either sign
    x[2] = -1e6
    x[2, :kquant.TYPES[type_id][1]] = 0.0  # an all-zero block
    y = kquant._tiled_gemm(x, w)
    ref = kquant.reference_linear(x, w, 8)
    assert torch.isfinite(y).all()
    for r in range(3):                     # each row on its own scale (1e6 x the others)
        assert _rel(y[r], ref[r]) < 1e-6, r


@pytest.mark.parametrize("act", [8, 16])
@pytest.mark.parametrize("type_id", TILED, ids=[kquant.TYPES[t][0] for t in TILED])
def test_the_few_row_dot_products_neither_overflow_nor_saturate_at_extremes(build, type_id, act):
    """The largest weights of either sign against activation codes at +-127 with second codes at
    +-64 (x / d = 126.5: the widest 16-bit values, 128 q + r = +-16320), one and three rows;
    twelve weight rows: Q4_0's and Q4_K's eight-row products (qdot_rows8) and the rows after them."""
    k = 512
    w = kquant.GGUFWeight(type_id, (12, k), torch.from_numpy(_extreme_blocks(type_id, 12, k)))
    x = torch.full((3, k), 126.5)
    x[:, ::4] = 127.0                      # each block's largest: the scale, 127 / 127
    x[1, 1::3] = -126.5                    # codes of either sign against weights of either sign
    x[2] *= -1e6
    for rows in (1, 3):
        with dispatch.overridden(gguf_act_bits=act):
            y = kquant.linear(x[:rows], w)
        ref = kquant.reference_linear(x[:rows], w, act)
        assert torch.isfinite(y).all()
        for r in range(rows):
            assert _rel(y[r], ref[r]) < 1e-6, (rows, r)


def test_the_tiled_gemm_rounds_ties_as_llama_cpp():
    """Codes x / d exactly halfway between integers (a block whose largest magnitude is 127:
    d = 1): Q8_0 rounds them away from zero, Q8_K to even, in the tiles as in the reference."""
    if kquant.lib() is None:
        pytest.skip("no native GGUF kernels here")
    x = (torch.arange(512) % 32 - 15.5).repeat(2, 1)   # -15.5, ..., -0.5, 0.5, ..., 15.5
    x[:, ::32] = 127.0                                  # each block's largest magnitude
    x[1] = -x[1]
    for t in (2, 12):
        w = kquant.GGUFWeight(t, (8, 512), torch.from_numpy(random_blocks(t, 8, 512, seed=t)))
        codes, _ = kquant.quantize_activations(x, kquant.TYPES[t][1])
        assert (codes.abs() == 127).any() and ((x - x.round()).abs() == 0.5).sum() > 400
        for march in ("haswell", None):
            with kquant.variant(march) if march else contextlib.nullcontext():
                assert _rel(kquant._tiled_gemm(x, w), kquant.reference_linear(x, w, 8)) < 1e-6


ROUTED = _few_rows_when_emulated([(12, 40, 40), (14, 9, 200), (2, 100, 200), (2, 100, 40), (8, 40, 40),
                                  (8, 100, 200), (13, 40, 40)], rows_at=1)


@pytest.mark.parametrize("level", ["avx2", "avx512"])
@pytest.mark.parametrize("act", [8, 16, 32])
@pytest.mark.parametrize("build,type_id,rows,n", ROUTED, indirect=["build"],
                         ids=[f"{b}-{kquant.TYPES[t][0]}-{rows}x{n}" for b, t, rows, n in ROUTED])
def test_linear_takes_the_tiled_gemm_exactly_where_tiled_gemm_for_says(monkeypatch, build, type_id, rows, n, act,
                                                                         level):
    """With float32 prefill tiles (forced: this CPU may multiply bf16 natively) and 8-bit
    activations chosen: the x86 SIMD builds run the tiled GEMM for its types up to 64 rows;
    beyond, only on a CPU level whose float32 GEMM is 256-bit (DUET_CPU=avx2), from 128 weight
    rows, Q8_0 only with VNNI. Everything else (the default 16 bits too) is the float32 product."""
    k = 512
    w = kquant.GGUFWeight(type_id, (n, k), torch.from_numpy(random_blocks(type_id, n, k, seed=rows)))
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(n))
    cpu = dataclasses.replace(capability.detect(), forced=level)   # as DUET_CPU=level would plan
    try:
        with monkeypatch.context() as mp:
            mp.setattr(capability, "detect", lambda: cpu)
            with dispatch.overridden(gguf_prefill=torch.float32, gguf_act_bits=act):
                assert dispatch.plan().capability.level == level
                tiled = kquant.tiled_gemm_for(dispatch.plan(), type_id, rows, n)
                y = kquant.linear(x, w)
            with dispatch.overridden(gguf_prefill=torch.bfloat16, gguf_act_bits=act):
                assert not kquant.tiled_gemm_for(dispatch.plan(), type_id, rows, n)   # bf16 tiles stay
    finally:
        dispatch.replan()   # with the real CPU again
    simd = build in ("avx2", "avx-vnni", "avx512-vnni")
    want = simd and act == 8 and type_id in (2, 8, 12, 14) and (
        rows <= 64 or (level == "avx2" and n >= 128 and (type_id != 8 or build != "avx2")))
    assert tiled == want
    ref8, exact = kquant.reference_linear(x, w, 8), kquant.reference_linear(x, w, 32)
    assert _rel(ref8, exact) > 1e-4             # the two paths' results are told apart
    assert _rel(y, ref8 if tiled else exact) < 1e-5


def test_activation_rounding_is_llama_cpps_q8_0_and_q8_k():
    x = torch.randn(3, 512) * torch.tensor([1.0, 1e-3, 50.0]).view(3, 1)
    x[1, :32] = 0.0                                          # an all-zero block
    x[2, 7] = -500.0                                         # the largest magnitude is negative
    q, d = kquant.quantize_activations(x, 32)
    packed = quants.quantize(x.numpy(), quants.GGMLQuantizationType.Q8_0).reshape(3, 16, 34)
    assert np.array_equal(q.numpy().reshape(3, 16, 32), packed[..., 2:].view(np.int8))
    assert np.array_equal(d.numpy().astype(np.float16), packed[..., :2].copy().view(np.float16)[..., 0])
    qk, dk = kquant.quantize_activations(x, 256)
    assert qk.max() <= 127 and qk.min() >= -127 and (qk[2, 7] * dk[2, 0]).item() == pytest.approx(-500.0)
    xb = x.view(3, 2, 256)
    rebuilt = qk.view(3, 2, 256).float() * dk.unsqueeze(-1)
    assert ((rebuilt - xb).abs() <= dk.abs().unsqueeze(-1) * 0.5 + 1e-6).all()   # round to nearest
    top = torch.gather(xb, -1, xb.abs().argmax(-1, keepdim=True))[..., 0]
    assert torch.equal(torch.sign(dk), -torch.sign(top))    # d = -max / 127: that element's code is -127
    assert qk[2, 7].item() == -127
    for block in (32, 256):                                  # 16 bits: the first code, then the remainder
        q8, d8 = kquant.quantize_activations(x, block, 8)
        q16, d16 = kquant.quantize_activations(x, block, 16)
        assert torch.equal(d16, d8 / 128) and ((q16.int() - 128 * q8.int()).abs() <= 64).all()
        xv = x.view(3, -1, block)
        err = (q16.view(3, -1, block).float() * d16.unsqueeze(-1) - xv).abs()
        # round to nearest, up to float32's own error at x (codes come from x times 1 / d, as llama.cpp's)
        assert (err <= d16.abs().unsqueeze(-1) * 0.5 + 4 * torch.finfo(torch.float32).eps * xv.abs() + 1e-6).all()


def test_row_lookup_dequantizes_just_the_rows_asked_for():
    raw = random_blocks(12, 16, 256)
    w = kquant.GGUFWeight(12, (16, 256), torch.from_numpy(raw))
    ids = torch.tensor([[3, 0, 15], [3, 7, 1]])
    rows = kquant.get_rows(w, ids, torch.float32)
    assert torch.equal(rows, torch.from_numpy(quants.dequantize(raw, 12))[ids])


MOE_TYPES = {"K-quants": (12, 13, 14, 256), "mixed": (12, 8, 6, 288), "legacy": (2, 3, 7, 96), "Q4_0": (2, 2, 2, 96)}


@pytest.mark.parametrize("act", [8, 16, 32])
@pytest.mark.parametrize("kinds", list(MOE_TYPES))
def test_the_fused_gguf_moe_step_equals_its_experts_one_by_one(build, kinds, act):
    tg, tu, td, I = MOE_TYPES[kinds]
    E, H = 6, 512
    gates = [kquant.GGUFWeight(tg, (I, H), torch.from_numpy(random_blocks(tg, I, H, seed=e))) for e in range(E)]
    ups = [kquant.GGUFWeight(tu, (I, H), torch.from_numpy(random_blocks(tu, I, H, seed=10 + e))) for e in range(E)]
    downs = [kquant.GGUFWeight(td, (H, I), torch.from_numpy(random_blocks(td, H, I, seed=20 + e))) for e in range(E)]
    assert kquant.GGUFExperts.fits(gates, ups, downs)
    fused = kquant.GGUFExperts(gates, ups, downs)
    x = torch.randn(1, H)
    idx, wts = torch.tensor([[4, 1, 2]]), torch.tensor([[0.5, 0.3, 0.2]])
    with dispatch.overridden(gguf_act_bits=act):
        y = fused(x, wts, idx)
    ref = torch.zeros(1, H, dtype=torch.float64)
    for e, wt in zip(idx[0].tolist(), wts[0].tolist()):
        h = F.silu(kquant.reference_linear(x, gates[e], act)) * kquant.reference_linear(x, ups[e], act)
        ref += wt * kquant.reference_linear(h, downs[e], act).double()
    # integer activations: h's float32 rounding may move one of its codes by one step
    assert _rel(y, ref) < {8: 1e-3, 16: 1e-4, 32: 1e-5}[act]


@pytest.mark.parametrize("level,isa", [("avx2", "avx2"), ("scalar", "scalar")])
def test_duet_cpu_builds_the_gguf_kernels_for_that_level(level, isa):
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not _X86 or kquant.lib() is None:
        pytest.skip("x86-64 with a working compiler")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DUET_CPU=level, PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-c", "from kernels import kquant; print(kquant.isa())"], env=env,
                       capture_output=True, text=True, cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.split()[-1] == isa


def test_the_activation_setting_is_read_once_into_the_plan_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv(dispatch.GGUF_ACT_ENV, raising=False)
    try:
        assert dispatch.replan().gguf.act_bits == 16 == kquant.act_bits()
        monkeypatch.setenv(dispatch.GGUF_ACT_ENV, "8")
        assert kquant.act_bits() == 16                      # read once: the plan already holds it
        assert dispatch.replan().gguf.act_bits == 8 == kquant.act_bits()
        with dispatch.overridden(gguf_act_bits=32):
            assert kquant.act_bits() == 32
        assert kquant.act_bits() == 8
        monkeypatch.setenv(dispatch.GGUF_ACT_ENV, "4")
        with pytest.raises(ValueError, match="DUET_GGUF_ACT_BITS='4'"):
            dispatch.replan()
    finally:
        monkeypatch.delenv(dispatch.GGUF_ACT_ENV, raising=False)
        dispatch.replan()
