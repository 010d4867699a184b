"""kernels.decode_step: a decode step's attention block and MoE router as one native call each,
checked against the model's own PyTorch path (the reference) on tiny V3 and V2 checkpoints:
float32 and bf16, dense and int8/int4 weights, every native build (native, AVX2, plain C), and
by the work it saves (framework calls per decode step, a count that does not depend on speed)."""

from __future__ import annotations

import arm64_emulator
import pytest
import torch

from kernels import cpu_native, dispatch
from local_engine import Engine
from local_engine.model import Block, Gate
from tests.tiny_checkpoints import write_tiny_v2, write_tiny_v3

pytestmark = pytest.mark.skipif(cpu_native.lib() is None, reason="native kernels not built here")

SIZES = dict(hidden_size=128, intermediate_size=192, moe_intermediate_size=64, num_hidden_layers=3)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("v3"), **SIZES)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return write_tiny_v2(tmp_path_factory.mktemp("v2"), **SIZES)


def _same_picks(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-3) -> bool:
    """Greedy picks agree: at each position got's pick is ref's, or one ref scores within ``tol`` of
    its best (where two logits tie that closely, float32 sums in another order may pick the other:
    4.41600 against 4.41575 on a Zen 3 core)."""
    best = ref.max(-1).values
    return bool((ref.gather(-1, got.argmax(-1, keepdim=True)).squeeze(-1) >= best - tol).all())


def _pytorch_path(eng: Engine) -> None:
    """Switch the native decode calls off: every block and router takes the PyTorch path."""
    for m in eng.model.modules():
        if isinstance(m, Block):
            m.step = None
        elif isinstance(m, Gate):
            m.native = None


def _decode(eng: Engine, prompt: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """Prefill (the PyTorch path either way), then one token per step: the logits of each step."""
    eng.reset()
    eng.forward(prompt, 0)
    pos = prompt.shape[1]
    out = []
    for tok in steps:
        out.append(eng.forward(torch.tensor([[tok]]), pos)[0, -1])
        pos += 1
    return torch.stack(out)


def _pair(folder, dtype, quant, prompt_len=20, steps=12):
    """The decode logits with the native calls, then (same engine, calls switched off) without."""
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(2, 400, (1, prompt_len), generator=g)
    toks = torch.randint(2, 400, (steps,), generator=g).tolist()
    eng = Engine.load(folder, dtype=dtype, quant=quant, pack=False)
    before = dict(cpu_native.CALLS)
    got = _decode(eng, prompt, toks)
    kinds = ("mla_step", "layer_step", "gate")
    calls = {k: cpu_native.CALLS[k] - before.get(k, 0) for k in kinds}
    _pytorch_path(eng)
    ref = _decode(eng, prompt, toks)
    assert all(cpu_native.CALLS[k] - before.get(k, 0) == calls[k] for k in kinds)   # none on the PyTorch path
    return got.float(), ref.float(), calls


@pytest.mark.parametrize("quant", [None, "int8", "int4"])
@pytest.mark.parametrize("which", ["v3", "v2"])
def test_native_decode_step_matches_the_pytorch_path_in_float32(request, which, quant):
    got, ref, calls = _pair(request.getfixturevalue(which), "float32", quant)
    layers, moe_layers = SIZES["num_hidden_layers"], SIZES["num_hidden_layers"] - 1
    if quant is None:   # float32 experts have no fused kernel: the attention call and the router's
        assert calls == {"mla_step": 12 * layers, "layer_step": 0, "gate": 12 * moe_layers}
    else:               # native experts: one call per layer for all of it
        assert calls == {"mla_step": 0, "layer_step": 12 * layers, "gate": 0}
    if quant is None:   # float32 either way: only the order of the sums differs
        assert torch.allclose(got, ref, atol=2e-4, rtol=1e-4), (got - ref).abs().max()
    else:   # quantized matmuls round their activations to integer blocks (8-bit ones for int4 on
        # AVX2): a last-bit difference of an input can move a code by one step
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
        assert cos.min() > 0.9995 and (got - ref).abs().max() < 0.05, (cos.min(), (got - ref).abs().max())
    assert _same_picks(got, ref)


@pytest.mark.parametrize("which", ["v3", "v2"])
def test_native_decode_step_in_bf16_stays_within_bf16_rounding(request, which):
    got, ref, calls = _pair(request.getfixturevalue(which), "bfloat16", None)
    assert calls["layer_step"] == 12 * SIZES["num_hidden_layers"]   # bf16 experts: the whole layer
    exact, _, _ = _pair(request.getfixturevalue(which), "float32", None)
    # float32 inside: the native step is at least as close to the float32 model as the bf16 path
    assert (got - exact).abs().mean() <= 1.2 * (ref - exact).abs().mean() + 1e-3
    # a random tiny MoE may route one step differently under either rounding; the rest agree
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.median() > 0.999


@pytest.mark.parametrize("march", ["haswell", "x86-64", "arm64"])
def test_every_native_build_gives_the_same_step(v3, march):
    import platform

    if march != "arm64" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 builds")
    ref, _, _ = _pair(v3, "float32", "int8")
    build = arm64_emulator.native(16) if march == "arm64" else cpu_native.variant(march, act_bits=16)
    with build:
        got, _, calls = _pair(v3, "float32", "int8")
    assert calls["layer_step"] > 0
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.9995 and _same_picks(got, ref)


def test_a_long_context_spreads_attention_over_threads_and_still_matches(v3):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got, ref, _ = _pair(v3, "float32", None, prompt_len=200, steps=4)
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(got, ref, atol=2e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def v3_odd(tmp_path_factory):
    """6 heads (the attention tiles take 4 at a time: a tile and a rest), a latent of 40 and rope
    keys of 8 (rows of 48: no multiple of the 16- or 32-float vector steps either)."""
    return write_tiny_v3(tmp_path_factory.mktemp("v3-odd"), **dict(SIZES, num_attention_heads=6, num_key_value_heads=6,
                                                                    kv_lora_rank=40))


@pytest.mark.parametrize("march", ["native", "haswell", "x86-64", "arm64"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_attention_tiles_match_on_awkward_shapes_in_every_build(v3_odd, march, dtype):
    import contextlib
    import platform

    if march in ("haswell", "x86-64") and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 builds")
    build = (contextlib.nullcontext() if march == "native" else arm64_emulator.native(16) if march == "arm64"
             else cpu_native.variant(march, act_bits=16))
    with build:   # an odd context (37 + 5 rows: the 2-row tiles and a last row alone)
        got, ref, calls = _pair(v3_odd, dtype, None, prompt_len=37, steps=5)
    assert calls["mla_step"] + calls["layer_step"] == 5 * SIZES["num_hidden_layers"]
    if dtype == "float32":
        assert torch.allclose(got, ref, atol=2e-4, rtol=1e-4), (got - ref).abs().max()
    else:   # float32 inside against the bf16 PyTorch path: within bf16's rounding
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
        assert cos.min() > 0.999, cos


def test_a_decode_step_is_one_native_call_through_every_layer(v3, monkeypatch):
    eng = Engine.load(v3, dtype="float32", quant="int8", pack=False)
    eng.forward(torch.tensor([[3, 4, 5]]), 0)
    calls, real = [], cpu_native.layers_step

    def counted(rows, *args):
        calls.append(rows.shape[0])
        return real(rows, *args)

    monkeypatch.setattr(cpu_native, "layers_step", counted)
    for pos, tok in enumerate([6, 7, 8], start=3):
        eng.forward(torch.tensor([[tok]]), pos)
    assert calls == [SIZES["num_hidden_layers"]] * 3   # one call a token, every layer in it
    eng.forward(torch.tensor([[3, 4, 5, 6]]), 0)        # a prompt: the PyTorch path, no call
    assert len(calls) == 3


def test_a_decode_step_makes_a_fraction_of_the_framework_calls(v3):
    """Ops the profiler sees per decode step: the native step replaces ~60 per layer by a few, the
    whole-layer call (attention, router, experts, residual) fewer still."""
    eng = Engine.load(v3, dtype="float32", quant="int8", pack=False)

    def ops(e):
        e.reset()
        e.forward(torch.tensor([[3, 4, 5]]), 0)
        e.forward(torch.tensor([[6]]), 3)       # the first step builds what the next ones reuse
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            e.forward(torch.tensor([[7]]), 4)
        return sum(ev.count for ev in prof.key_averages())

    whole = ops(eng)
    for layer in eng.model.layers:   # the attention block and the router alone, the experts apart
        layer.whole = None
    attention = ops(eng)
    _pytorch_path(eng)
    plain = ops(eng)
    assert attention * 5 < plain and whole * 10 < plain and whole < attention, (whole, attention, plain)


def test_the_step_follows_a_new_cache(v3):
    eng = Engine.load(v3, dtype="float32", pack=False, max_seq_len=64)
    ids = torch.tensor([[3, 4, 5, 6]])
    eng.forward(ids[:, :3], 0)
    a = eng.forward(ids[:, 3:], 3)
    step = eng.model.layers[0].step
    for layer in eng.model.layers:          # what a resize does: every layer a fresh cache
        layer.attn.alloc_cache(1, 32, torch.float32, "cpu")
    eng.forward(ids[:, :3], 0)
    b = eng.forward(ids[:, 3:], 3)
    assert eng.model.layers[0].step is not step and eng.model.layers[0].step.cache.shape[1] == 32
    assert torch.allclose(a, b, atol=1e-5)


def test_without_native_kernels_nothing_is_fused(v3):
    with dispatch.overridden(native=False):
        eng = Engine.load(v3, dtype="float32", pack=False)
        eng.forward(torch.tensor([[3]]), 0)
        assert all(layer.step is None and layer.whole is None for layer in eng.model.layers)
        assert eng.model.layers[1].ffn.gate.native is None


# ---------------------------------------------------------------------------------------
# GGUF files: the layer's linears and experts are GGUF blocks, read inside the one call by
# kernels/kquant.py's own library (its kq_gemm and kq_moe, passed by address)


@pytest.fixture(scope="module")
def gguf_files(v3, v2, tmp_path_factory):
    from gguf import GGMLQuantizationType as Q

    from tests import gguf_helpers as H

    d = tmp_path_factory.mktemp("gguf")
    return {(which, q.name): H.write_gguf(hf, d / f"{which}-{q.name}.gguf", quant=q)
            for which, hf in (("v3", v3), ("v2", v2)) for q in (Q.Q8_0, Q.Q4_0)}


def _gguf_pair(path, dtype="float32", act=None):
    """The decode logits with the one-call layers, then without (same engine), at ``act`` bits."""
    import contextlib

    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(2, 400, (1, 20), generator=g)
    toks = torch.randint(2, 400, (12,), generator=g).tolist()
    with dispatch.overridden(gguf_act_bits=act) if act else contextlib.nullcontext():
        eng = Engine.load(path, dtype=dtype)
        before = dict(cpu_native.CALLS)
        got = _decode(eng, prompt, toks)
        calls = {k: cpu_native.CALLS[k] - before.get(k, 0) for k in ("mla_step", "layer_step", "gate")}
        _pytorch_path(eng)
        ref = _decode(eng, prompt, toks)
    return got.float(), ref.float(), calls, eng


@pytest.mark.parametrize("act", [8, 16, 32])
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0"])
@pytest.mark.parametrize("which", ["v3", "v2"])
def test_a_gguf_models_decode_step_is_one_call_per_layer_and_matches_the_pytorch_path(gguf_files, which, quant,
                                                                                      act):
    from kernels import kquant

    if kquant.lib() is None:
        pytest.skip("the GGUF kernels are not built here")
    got, ref, calls, eng = _gguf_pair(gguf_files[which, quant], act=act)
    assert calls == {"mla_step": 0, "layer_step": 12 * SIZES["num_hidden_layers"], "gate": 0}
    # the same integer (or float32) dot products, on inputs that differ in the order of float32
    # sums (the attention block): a last-bit difference can move an activation code by one step,
    # a step of 1/127 of its block's largest at 8 bits, 128 times finer at 16
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    close = {8: (0.9995, 0.2), 16: (0.99999, 2e-3), 32: (0.99999, 2e-3)}[act]
    assert cos.min() > close[0] and (got - ref).abs().max() < close[1], (cos.min(), (got - ref).abs().max())
    assert _same_picks(got, ref)
    # every layer's FFN of GGUF blocks: the dense MLP alone (a one-row table), then the routed
    # experts' table and the shared expert's (G_S_TABLE: F_COUNT + 8)
    ffn = [layer.whole.ffn.tolist() for layer in eng.model.layers]
    assert all(f[0] == 64 for f in ffn) and ffn[0][1] == 0 and ffn[0][19 + 8] != 0
    assert all(f[1] != 0 and f[19 + 8] != 0 for f in ffn[1:])


def test_a_gguf_decode_step_follows_the_activation_bits(gguf_files):
    """The one-call layer holds its activation precision; under another plan it is rebuilt."""
    from kernels import kquant

    if kquant.lib() is None:
        pytest.skip("the GGUF kernels are not built here")
    eng = Engine.load(gguf_files["v3", "Q8_0"], dtype="float32")
    ids = torch.tensor([[3, 4, 5, 6]])
    runs = {}
    for act in (16, 8, 32, 16):
        with dispatch.overridden(gguf_act_bits=act):
            eng.reset()
            eng.forward(ids[:, :3], 0)
            runs.setdefault(act, []).append(eng.forward(ids[:, 3:], 3)[0, -1])
            layer = eng.model.layers[1]
            assert layer.whole is not None and int(layer.whole.ffn[8]) == act   # F_ABITS
            assert all(int(d[4]) >> 8 == act for d in layer.step.lin.tolist() if d[0] == 64)
    assert torch.equal(runs[16][0], runs[16][1])
    assert not torch.equal(runs[8][0], runs[16][0]) and not torch.equal(runs[32][0], runs[16][0])


def test_a_gguf_dense_mlp_runs_one_row_in_one_call_and_a_few_rows_through_the_linears(gguf_files):
    from kernels import kquant, moe

    if kquant.lib() is None:
        pytest.skip("the GGUF kernels are not built here")
    eng = Engine.load(gguf_files["v3", "Q8_0"], dtype="float32")
    mlp = eng.model.layers[0].ffn
    fused = mlp.fused_kernel()
    assert isinstance(fused, moe.GGUFDense)
    x = torch.randn(3, SIZES["hidden_size"], generator=torch.Generator().manual_seed(1))
    g, u = mlp.w13(x).split(mlp.inter, dim=-1)
    want = mlp.w2(torch.nn.functional.silu(g) * u)
    calls = []
    real = fused.dense
    fused.dense = lambda r: calls.append(r.shape[0]) or real(r)
    one = mlp(x[:1])
    assert calls == [1] and torch.allclose(one, want[:1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(mlp(x), want) and calls == [1]   # three rows: the linears, not row by row


@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_the_gguf_step_runs_in_every_x86_build_of_both_libraries(gguf_files, march):
    """The AVX2 and plain-C builds of kernels/cpu_native's and kernels/kquant.py's libraries: the
    call from one into the other, the same step."""
    import platform

    from kernels import kquant

    if platform.machine().lower() not in ("x86_64", "amd64") or kquant.lib() is None:
        pytest.skip("x86-64 builds of both libraries")
    with cpu_native.variant(march, act_bits=16), kquant.variant(march):
        got, ref, calls, _ = _gguf_pair(gguf_files["v2", "Q4_0"])
    assert calls["layer_step"] == 12 * SIZES["num_hidden_layers"]
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.99999 and _same_picks(got, ref)


def test_an_emulated_arm64_library_leaves_a_gguf_model_on_the_pytorch_path(gguf_files):
    """tests/arm64_emulator.py's ARM64 build cannot call into this process's GGUF library (nor
    it into the emulator): no one-call layers there, and the model still decodes."""
    from kernels import kquant

    if kquant.lib() is None:
        pytest.skip("the GGUF kernels are not built here")
    with arm64_emulator.native(16):
        assert kquant.entry("kq_gemm") is None
        got, ref, calls, _ = _gguf_pair(gguf_files["v3", "Q8_0"])
    assert calls["layer_step"] == 0 and calls["mla_step"] == 0
    assert torch.allclose(got, ref, atol=1e-3)


def test_a_gguf_step_with_i_quant_experts_matches_the_pytorch_path(tmp_path):
    """The low-bit R1 files' layout: Q8_0 attention and dense MLP, routed and shared experts as
    i-quant blocks, which kq_moe reads through the i-quant library's row product (its address)
    inside the one call."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    from bench.gguf_deepseek2 import gguf_tensors_from_hf, hf_tokenizer_fields, write_deepseek2_gguf
    from kernels import iquant, kquant
    from tests import gguf_helpers as H
    from tests.test_gguf_iquants import _small_scale_blocks
    from tests.tiny_checkpoints import write_tiny_v3

    if kquant.lib() is None or iquant.lib() is None:
        pytest.skip("the GGUF and i-quant kernels are not built here")
    hf = write_tiny_v3(tmp_path / "hf", hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                       q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=64,
                       n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1, rope_scaling=None)
    cfg = H.hf_config(hf)
    tensors = gguf_tensors_from_hf(H.hf_state(hf), cfg)
    rng, bb = np.random.default_rng(3), iquant.IQ_TYPES[iquant.NAMES["IQ2_XXS"]][2]
    for name, (kind, arr) in list(tensors.items()):
        if arr.ndim < 2 or name.endswith(("_norm.weight", "ffn_gate_inp.weight")):
            continue
        if "_exps." in name or "_shexp." in name:
            rows = int(np.prod(arr.shape[:-1]))
            blocks = _small_scale_blocks("IQ2_XXS", rows, arr.shape[-1] // 256, rng)
            tensors[name] = ("blocks", Q.IQ2_XXS, blocks.reshape(*arr.shape[:-1], arr.shape[-1] // 256 * bb))
        elif arr.shape[-1] % 32 == 0:
            tensors[name] = ("quant", Q.Q8_0, arr)
    path = tmp_path / "iq.gguf"
    write_deepseek2_gguf(path, cfg, tensors, tokenizer=hf_tokenizer_fields(hf))
    got, ref, calls, eng = _gguf_pair(path)
    experts = eng.model.layers[1].ffn.fused_kernel()
    assert experts.experts.iq and experts.shared_table.iq        # i-quants on both tables
    assert calls["layer_step"] == 12 * len(eng.model.layers)      # every layer, one call each
    assert eng.model.layers[1].whole.ffn.tolist()[19 + 1] != 0    # G_IQ_DOT: the row product's address
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min() > 0.99999 and _same_picks(got, ref), cos.min()
