"""Prefill: kernels/csrc's tiled many-row GEMM (cpu_native.gemm_tiled) against the math of the
native kernels and against their one-to-four-row GEMV, under every build this CPU can run
(its own, AVX2, plain C), both activation precisions and one and two threads, on awkward
shapes; the plan's routing of many-row matmuls; a whole model's prefill against its own
row-by-row decode; and chunked prefill (later chunks: keys expanded per head) against one pass.
Correctness and call counts only, never speed."""

from __future__ import annotations

import platform

import arm64_emulator
import pytest
import torch
import torch.nn.functional as F

from kernels import cpu_native, dispatch, mla
from kernels.quant import _bind, quantize_weight, quantized_linear, reference_native_linear, reference_quantized_linear

pytestmark = pytest.mark.skipif(not dispatch.native(),
                                reason="the native kernels did not build here (no working C compiler?)")

_X86 = platform.machine().lower() in ("x86_64", "amd64")
BUILDS = {  # id -> (target, activation bits)
    "native": ("native", None),
    "avx2-act8": ("haswell", 8),
    "avx2-act16": ("haswell", 16),
    "plain-c-act8": ("x86-64", 8),
    "plain-c-act16": ("x86-64", 16),
    "arm64-act8": ("arm64", 8),      # built for aarch64 (sdot), run on an emulated CPU
    "arm64-act16": ("arm64", 16),
    "arm64-nodot-act8": ("arm64-nodot", 8),   # ARMv8.0: no sdot
}
# (rows, out, in): rows not a multiple of the 4-row tile, past the 64-row pass, 5 = just above
# the GEMV's 4; outputs not a multiple of the 4-row weight group; inputs of odd block counts and
# not a multiple of 64 (int4: padded); 1000 / 130 run two threads past the one-thread work limit
SHAPES = [(5, 7, 5), (7, 13, 33), (11, 48, 130), (64, 17, 100), (67, 100, 1000), (130, 40, 640), (6, 30, 96)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}   # vs the GEMV (same integers) / the kernels' math


@pytest.fixture(params=list(BUILDS))
def build(request):
    march, abits = BUILDS[request.param]
    if march.startswith("arm64"):
        cpu = arm64_emulator.NO_DOTPROD if march == "arm64-nodot" else arm64_emulator.DOTPROD
        with arm64_emulator.native(abits, cpu) as so:
            yield so
        return
    if march != "native" and not _X86:
        pytest.skip("x86-64 targets")
    with cpu_native.variant(march, abits) as so:
        yield so


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def _tiled(x, qw, abits):
    b = qw.bound or _bind(qw)
    return cpu_native.gemm_tiled(b.bits, x, b.q, b.scale, b.kp, b.group, b.n, abits)


def _gemv(x, qw, abits):
    """The one-to-four-row GEMV, four rows at a time."""
    b = qw.bound or _bind(qw)
    return torch.cat([cpu_native.gemm(b.bits, x[i:i + 4], b.q, b.scale, b.kp, b.group, b.n, abits)
                      for i in range(0, x.shape[0], 4)])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_tiled_gemm_matches_the_gemv_and_the_kernels_math(build, mode, threads):
    g = torch.Generator().manual_seed(3)
    abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for m, n, k in SHAPES:
            qw = quantize_weight(torch.randn(n, k, generator=g), mode)
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(m, k, generator=g).to(dtype)
                y = _tiled(x, qw, abits)
                assert y.shape == (m, n) and y.dtype == dtype
                assert _rel(y, _gemv(x, qw, abits)) < TOL[dtype], (mode, m, n, k, dtype)
                assert _rel(y, reference_native_linear(x, qw, abits)) < TOL[dtype] + 1e-4, (mode, m, n, k, dtype)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("mode,group", [("int8", 64), ("int8", 128), ("int4", 128), ("int4", 256)])
def test_tiled_gemm_takes_larger_groups(build, mode, group):
    g = torch.Generator().manual_seed(4)
    abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
    qw = quantize_weight(torch.randn(37, 3 * group, generator=g), mode, group_size=group)
    x = torch.randn(9, 3 * group, generator=g)
    assert _rel(_tiled(x, qw, abits), reference_native_linear(x, qw, abits)) < 1e-4


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_eight_bit_activations_stay_within_llama_cpps_rounding(build, mode):
    """Against unrounded activations: the per-block rounding of Q8_0 activations (llama.cpp's own
    prefill), well inside the weights' own rounding."""
    g = torch.Generator().manual_seed(5)
    qw = quantize_weight(torch.randn(64, 512, generator=g), mode)
    x = torch.randn(40, 512, generator=g)
    ref = reference_quantized_linear(x, qw)
    assert _rel(_tiled(x, qw, 8), ref) < 2e-2
    assert _rel(_tiled(x, qw, 16), ref) < 1e-3


def test_zero_inputs_and_weights(build):
    """Zero weights: the codes times the scale cancel the zero point to float32 rounding."""
    qw = quantize_weight(torch.zeros(20, 128), "int4")
    assert _tiled(torch.randn(6, 128), qw, 8).abs().max().item() < 1e-4
    qw = quantize_weight(torch.randn(20, 128), "int8")
    assert _tiled(torch.zeros(6, 128), qw, 16).abs().max().item() == 0


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("rows", [5, 48, 300])
def test_many_rows_take_the_path_the_plan_names(mode, rows):
    lin = dispatch.plan().linear
    if dispatch.plan().capability.level == "avx2" and dispatch.plan().native_isa in ("avx2", "avx512"):
        assert lin.tiled   # the AVX2 machines: float32 prefill, the tiled GEMM where it wins
    qw = quantize_weight(torch.randn(1024, 1024), mode)
    x = torch.randn(rows, 1024)
    before = dict(cpu_native.CALLS)
    y = quantized_linear(x, qw)
    took = {k: cpu_native.CALLS[k] - before.get(k, 0) for k in ("gemm_tiled", "dequant", "gemm")}
    tiled = lin.tiled_for(8 if mode == "int8" else 4, rows, 1024, 1024)
    assert took == {"gemm_tiled": int(tiled), "dequant": int(not tiled), "gemm": 0}
    abits = lin.act_bits(8 if mode == "int8" else 4)
    want = reference_native_linear(x, qw, abits) if tiled else reference_quantized_linear(x, qw)
    assert _rel(y, want) < 1e-3


def test_the_plans_rule():
    lin = dispatch.LinearPlan("native", "torch", 16, 8, torch.float32, tiled=True)
    assert lin.tiled_for(4, 512, 768, 1024) and lin.tiled_for(4, 512, 8192, 512)     # int4 x 8-bit: k or size
    assert not lin.tiled_for(4, 48, 512, 512) and not lin.tiled_for(4, 512, 768, 192)
    assert lin.tiled_for(8, 48, 2816, 2048) and not lin.tiled_for(8, 512, 2816, 2048)
    assert not lin.tiled_for(8, 48, 512, 512)                                          # its float32 copy fits the cache
    assert not dispatch.LinearPlan("native", "torch", 16, 8, torch.float32).tiled_for(4, 512, 768, 1024)


@pytest.mark.parametrize("march,abits", [("haswell", 8), ("haswell", 16), ("x86-64", 8)])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_models_tiled_prefill_matches_its_row_by_row_decode(tmp_path, monkeypatch, mode, march, abits):
    """Every many-row matmul forced onto the tiled GEMM (tiny shapes are below the plan's
    thresholds): the prompt's logits against one token at a time (the GEMV and fused MoE, the
    same rounded activations). They differ by float32 summation order and, at 8 bits, by codes a
    rounding boundary apart (the same tolerance as test_kernels_native's prefill/decode check)."""
    if not _X86:
        pytest.skip("x86-64 targets")
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    path = write_tiny_v3(tmp_path / "v3", hidden_size=128, intermediate_size=192, moe_intermediate_size=64,
                         num_hidden_layers=3)
    monkeypatch.setattr(dispatch.LinearPlan, "tiled_for", lambda self, *a: True)
    with cpu_native.variant(march, abits):
        eng = Engine.load(path, dtype="float32", quant=mode)
        ids = torch.randint(0, 400, (1, 24), generator=torch.Generator().manual_seed(7))
        before = cpu_native.CALLS["gemm_tiled"]
        prefill = eng.forward(ids)[0]
        assert cpu_native.CALLS["gemm_tiled"] > before
        eng.reset()
        steps = torch.cat([eng.forward(ids[:, j:j + 1], j)[0] for j in range(24)])
    cos = F.cosine_similarity(steps, prefill, dim=-1).min().item()
    assert cos > (0.9999 if abits == 16 else 0.999), cos


def test_later_prefill_chunks_expand_keys_and_match_one_pass(tmp_path):
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    path = write_tiny_v3(tmp_path / "v3", hidden_size=128, num_hidden_layers=2)
    eng = Engine.load(path, dtype="float32")
    a = eng.args
    nope, rope, v, lora = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.kv_lora_rank
    assert mla.expand_pays(32, 32, nope, rope, v, lora)            # the second chunk: expanded
    assert not mla.expand_pays(1, 32, nope, rope, v, lora)         # one token after it: absorbed
    ids = torch.randint(0, 400, (1, 64), generator=torch.Generator().manual_seed(8))
    whole = eng.forward(ids)[0]
    eng.reset()
    chunks = torch.cat([eng.forward(ids[:, :32], 0)[0], eng.forward(ids[:, 32:], 32)[0]])
    assert _rel(chunks, whole) < 1e-5
    eng.reset()
    eng.forward(ids[:, :32], 0)
    rows = [eng.forward(ids[:, 32 + j:33 + j], 32 + j)[0] for j in range(32)]   # absorbed, row by row
    assert _rel(torch.cat(rows), whole[32:]) < 1e-4


def test_chunk_mask_is_bottom_right_causal():
    m = mla.chunk_mask(3, 2)
    assert m.tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]


# -- a prefill's routed experts in one call (FusedExperts.many, cpu_native.moe_many) -------------

def _swiglu_math(w13, w2, abits):
    """One expert as the kernels compute it: each matmul's input rounded per block."""
    def run(x):
        g, u = reference_native_linear(x, w13, abits).split(w13.shape[0] // 2, dim=-1)
        return reference_native_linear(F.silu(g) * u, w2, abits)
    return run


# (tokens, hidden, expert width, experts, chosen per token): past the 64-slot item (two items for
# one expert), idle experts, a hidden size off the block size, odd expert widths, one token
MOE_SHAPES = [(150, 128, 64, 3, 2), (5, 100, 40, 16, 2), (70, 72, 136, 8, 6), (1, 64, 32, 4, 3)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_many_token_moe_matches_the_kernels_math(build, mode, threads):
    from kernels.moe import fuse_experts, reference_moe

    abits = dispatch.plan().linear.act_bits(8 if mode == "int8" else 4)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, h, i, e, k in MOE_SHAPES:
            g = torch.Generator().manual_seed(n + h + i)
            w13 = [quantize_weight(torch.randn(2 * i, h, generator=g) / h ** 0.5, mode) for _ in range(e)]
            w2 = [quantize_weight(torch.randn(h, i, generator=g) / i ** 0.5, mode) for _ in range(e)]
            fused = fuse_experts(w13, w2, (w13[0], w2[0]))   # a shared row in the table: not run here
            idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])
            w = torch.rand(n, k, generator=g)
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(n, h, generator=g).to(dtype)
                before = cpu_native.CALLS["moe_many"]
                y = fused.many(x, w, idx)
                assert cpu_native.CALLS["moe_many"] == before + 1 and y.shape == (n, h) and y.dtype == dtype
                want = reference_moe(x.float(), w, idx, [_swiglu_math(a, b, abits) for a, b in zip(w13, w2)])
                # a hidden value on a rounding boundary may take the other code: + 1e-3
                assert _rel(y, want) < TOL[dtype] + 1e-3, (mode, n, h, i, e, k, dtype, _rel(y, want))
    finally:
        torch.set_num_threads(saved)


def test_many_token_moe_gives_the_same_bits_on_any_thread_count(build):
    """Each slot's row is one thread's work and each token sums its rows in its choices' order:
    which thread ran which expert does not change a bit (nor does the thread count)."""
    from kernels.moe import fuse_experts

    g = torch.Generator().manual_seed(11)
    w13 = [quantize_weight(torch.randn(128, 96, generator=g), "int4") for _ in range(8)]
    w2 = [quantize_weight(torch.randn(96, 64, generator=g), "int4") for _ in range(8)]
    fused = fuse_experts(w13, w2)
    x, w = torch.randn(200, 96, generator=g), torch.rand(200, 3, generator=g)
    idx = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(200)])
    saved = torch.get_num_threads()
    try:
        outs = []
        for threads in (2, 2, 1):
            torch.set_num_threads(threads)
            outs.append(fused.many(x, w, idx))
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def _combine_natively(monkeypatch):
    """The plan with the routed experts' many-token call on (the AVX2 float32 plan's choice)."""
    import dataclasses

    p = dispatch.plan()
    monkeypatch.setattr(dispatch, "_PLAN", dataclasses.replace(p, moe=dataclasses.replace(p.moe, combine="native-grouped")))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_models_prefill_runs_one_expert_call_per_moe_layer(tmp_path, monkeypatch, mode):
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    path = write_tiny_v3(tmp_path / "v3", hidden_size=128, intermediate_size=192, moe_intermediate_size=64,
                         num_hidden_layers=3)
    ids = torch.randint(0, 400, (1, 40), generator=torch.Generator().manual_seed(9))
    # every other many-row matmul on the tiled GEMM too, so that prefill and decode round the
    # same activations (a random tiny model turns any other difference into flipped experts)
    monkeypatch.setattr(dispatch.LinearPlan, "tiled_for", lambda self, *a: True)
    with cpu_native.variant("haswell" if _X86 else "native"):
        _combine_natively(monkeypatch)
        eng = Engine.load(path, dtype="float32", quant=mode)
        moe_layers = sum(1 for layer in eng.model.layers if hasattr(layer.ffn, "experts"))
        assert moe_layers == 2
        before = dict(cpu_native.CALLS)
        prefill = eng.forward(ids)[0]
        assert cpu_native.CALLS["moe_many"] - before.get("moe_many", 0) == moe_layers
        eng.reset()
        steps = torch.cat([eng.forward(ids[:, j:j + 1], j)[0] for j in range(ids.shape[1])])
    cos = F.cosine_similarity(steps, prefill, dim=-1).min().item()
    assert cos > 0.999, cos


def test_the_last_positions_logits_alone(tmp_path):
    from local_engine import Engine
    from tests.tiny_checkpoints import write_tiny_v3

    eng = Engine.load(write_tiny_v3(tmp_path / "v3", num_hidden_layers=2), dtype="float32")
    ids = torch.randint(0, 400, (1, 12), generator=torch.Generator().manual_seed(4))
    every = eng.forward(ids)
    eng.reset()
    last = eng.forward(ids, last_only=True)
    assert last.shape == (1, 1, every.shape[-1])
    assert _rel(last[0, 0], every[0, -1]) < 1e-5


@pytest.mark.parametrize("bf16_native", [False, True], ids=["bf16-emulated", "bf16-native"])
def test_a_dense_bf16_weight_runs_many_rows_in_float32_tiles_where_bf16_is_not_native(monkeypatch, bf16_native):
    """local_engine's Linear (quant.unpacked_linear): where the plan has no native bf16 matmuls,
    more than UNPACKED_ROWS rows times a bf16 weight are the float32 product, tile by tile,
    rounded to the activations' dtype; fewer rows, a float32 weight or a bf16 CPU: F.linear."""
    import dataclasses

    from kernels import capability, quant

    cpu = dataclasses.replace(capability.detect(), bf16_native=bf16_native)
    monkeypatch.setattr(capability, "detect", lambda: cpu)
    monkeypatch.setattr(quant, "UNPACKED_TILE_BYTES", 16 * 4 * 96)   # 16 rows a tile: 4 tiles, the last short
    dispatch.replan()
    try:
        gen = torch.Generator().manual_seed(9)
        w = torch.randn(50, 96, generator=gen).bfloat16()
        many = torch.randn(2, 5, 96, generator=gen).bfloat16()         # 10 rows
        few = many[:1, :quant.UNPACKED_ROWS]
        tiles = (many.float() @ w.float().t()).bfloat16()
        assert torch.equal(quant.unpacked_linear(few, w), F.linear(few, w))
        assert torch.equal(quant.unpacked_linear(many.float(), w.float()), F.linear(many.float(), w.float()))
        want = F.linear(many, w) if bf16_native else tiles
        if not bf16_native:   # (the two can round alike): the tiles must not reach bf16 F.linear
            monkeypatch.setattr(F, "linear", lambda *a: pytest.fail("bf16 F.linear for many rows"))
        got = quant.unpacked_linear(many, w)
        assert got.shape == (2, 5, 50) and got.dtype == torch.bfloat16
        if bf16_native:
            assert torch.equal(got, want)
        else:   # the float32 product, tile by tile (its sums' order may differ from one matmul's)
            torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=0)
    finally:
        monkeypatch.undo()
        dispatch.replan()
