"""The low-bit GGUF types real DeepSeek-R1 files hold -- Q2_K, Q3_K (bartowski's Q2_K / Q3_K_M,
unsloth's UD-Q2_K_XL mixes) and IQ4_NL / IQ4_XS -- run end to end: their blocks (random ones
and llama.cpp's own) dequantize exactly as gguf-py's; the integer block dot products are the
same integers under every build (AVX2, plain C, ARM64 NEON with and without sdot, emulated);
the torch dequantizer stands in without native code; and a tiny DeepSeek quantized by
llama.cpp to each type loads with Engine.load and is at least as close to its exact model
as llama.cpp is on the very same file."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernels import dispatch, kquant
from local_engine import Engine, gguf_loader
from local_engine.gguf_file import RUNS_LOCALLY, summarize
from tests import gguf_helpers as H
from tests.gguf_helpers import BUILDS, X86 as _X86
from tests.tiny_checkpoints import write_tiny_v3

quants = pytest.importorskip("gguf.quants")

NEW = {"Q2_K": 10, "Q3_K": 11, "IQ4_NL": 20, "IQ4_XS": 23}
IDS = list(NEW)
TYPES = [NEW[n] for n in IDS]


build = pytest.fixture(params=list(BUILDS))(H.each_build)  # each kernels/kquant build


def _blocks(type_id: int, n: int, k: int, rng, scale=None) -> np.ndarray:
    """Random blocks uint8 [n, row bytes]: random bytes, finite fp16 scales where the type keeps
    them (random normal ones, or ``scale`` for all)."""
    _, bs, bb = kquant.TYPES[type_id]
    raw = rng.integers(0, 256, (n, k // bs, bb), dtype=np.uint8)
    for at in H.FP16_SCALES.get(type_id, (0,)):
        half = rng.standard_normal((n, k // bs)) * 0.05 if scale is None else np.full((n, k // bs), scale)
        raw[..., at:at + 2] = half.astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
    return raw.reshape(n, -1)


def _weight(type_id: int, raw: np.ndarray) -> kquant.GGUFWeight:
    _, bs, bb = kquant.TYPES[type_id]
    return kquant.GGUFWeight(type_id, (raw.shape[0], raw.shape[1] // bb * bs), torch.from_numpy(raw))


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def test_the_new_types_are_run_locally_and_listed_where_the_docs_say():
    assert {NEW[n]: n for n in NEW} == {t: kquant.TYPES[t][0] for t in NEW.values()}
    assert {(10, 256, 84), (11, 256, 110), (20, 32, 18), (23, 256, 136)} <= \
        {(t, bs, bb) for t, (_, bs, bb) in kquant.TYPES.items()}
    assert set(NEW) <= set(RUNS_LOCALLY)
    for doc in (kquant.__doc__, gguf_loader.__doc__):
        assert all(n in doc for n in NEW)


# ---------------------------------------------------------------------------------------
# dequantization


@pytest.mark.parametrize("type_id", TYPES, ids=IDS)
def test_random_blocks_dequantize_as_gguf_py_bit_for_bit_under_every_build(build, type_id):
    raw = _blocks(type_id, 16, 512, np.random.default_rng(type_id))
    w = _weight(type_id, raw)
    exact = quants.dequantize(raw, type_id)
    assert np.isfinite(exact).all()
    assert np.array_equal(kquant.dequantize(w).numpy(), exact)
    assert np.array_equal(kquant.reference_dequantize(w).numpy(), exact)
    assert torch.equal(kquant.dequantize(w, torch.bfloat16), torch.from_numpy(exact).to(torch.bfloat16))
    ids = torch.tensor([[5, 0], [15, 5]])
    assert torch.equal(kquant.get_rows(w, ids, torch.float32), torch.from_numpy(exact)[ids])


@pytest.fixture(scope="module")
def kshape(tmp_path_factory):
    """A V3 model whose rows are whole 256-blocks, as test_engine_gguf's (q-LoRA, groups, YaRN)."""
    d = tmp_path_factory.mktemp("lowbit")
    yarn = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "mscale": 0.8,
            "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1}
    hf = write_tiny_v3(d / "hf", hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                       q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=64,
                       n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, rope_scaling=yarn)
    return hf, H.write_gguf(hf, d / "f32.gguf")


# llama.cpp file type -> the new block types it must hold (rows of 32, attn_k_b's, fall back to
# Q4_0 / IQ4_NL: llama.cpp's choice, checked from the file)
FILES = {"Q2_K": {"Q2_K", "Q3_K"}, "Q3_K_S": {"Q3_K"}, "Q3_K_M": {"Q3_K"}, "Q3_K_L": {"Q3_K"},
         "IQ4_NL": {"IQ4_NL"}, "IQ4_XS": {"IQ4_XS", "IQ4_NL"}}


@pytest.mark.parametrize("ftype", list(FILES))
def test_blocks_written_by_llama_cpp_s_quantizer_dequantize_as_gguf_py_bit_for_bit(ftype, kshape, tmp_path):
    from gguf import GGUFReader

    _, f32 = kshape
    q = H.llama_quantize(f32, tmp_path / "q.gguf", ftype)
    held = Counter(H.tensor_types(q).values())
    assert FILES[ftype] <= set(held), held
    assert summarize(q).runs_locally, summarize(q).why()
    seen = Counter()
    for t in GGUFReader(str(q)).tensors:
        if t.tensor_type.name not in NEW:
            continue
        _, bs, bb = kquant.TYPES[int(t.tensor_type)]
        raw = np.array(np.asarray(t.data, dtype=np.uint8).reshape(-1, int(t.shape[0]) // bs * bb))
        w = _weight(int(t.tensor_type), raw)
        exact = quants.dequantize(raw, t.tensor_type)
        assert np.array_equal(kquant.dequantize(w).numpy(), exact), t.name
        assert np.array_equal(kquant.reference_dequantize(w).numpy(), exact), t.name
        seen[t.tensor_type.name] += 1
    assert set(seen) == FILES[ftype] and all(seen[n] == held[n] for n in seen)


# ---------------------------------------------------------------------------------------
# the integer dot products


def _exact_case(type_id: int, rows: int, k: int, seed: int):
    """Blocks with power-of-two fp16 scales and integer activations whose 8-bit blocks have
    scale 1 (an element of magnitude 127 in each, the largest in a 256-block negative): every
    block sum, scale product and float32 partial sum is then exact, so each build's result is
    its integers' alone -- and must equal x . w computed exactly from gguf-py's weights."""
    rng = np.random.default_rng(seed)
    raw = _blocks(type_id, 24, k, rng, scale=2.0 ** -4)
    if type_id == 23:   # IQ4_XS: 6-bit scales 28..35 (|sc| <= 4) keep its block sums under 2^24
        b = raw.reshape(24, k // 256, 136)
        ls = rng.integers(28, 36, (24, k // 256, 8))
        b[..., 4:8] = ((ls[..., 0::2] & 15) | ((ls[..., 1::2] & 15) << 4)).astype(np.uint8)
        hi = ((ls >> 4) << (2 * np.arange(8))).sum(-1).astype(np.uint16)
        b[..., 2:4] = hi[..., None].view(np.uint8).reshape(24, k // 256, 2)
    x = rng.integers(-30, 31, (rows, k)).astype(np.float32)
    block = kquant.TYPES[type_id][1]
    x.reshape(rows, -1, block)[:, :, rng.integers(0, block)] = -127.0
    exact = x.astype(np.float64) @ quants.dequantize(raw, type_id).astype(np.float64).T
    assert np.array_equal(exact.astype(np.float32).astype(np.float64), exact)   # representable
    return _weight(type_id, raw), torch.from_numpy(x), torch.from_numpy(exact.astype(np.float32))


@pytest.mark.parametrize("act", [8, 16])
@pytest.mark.parametrize("type_id", TYPES, ids=IDS)
def test_every_build_computes_the_same_integers_exactly(build, type_id, act):
    """The AVX2, plain-C and NEON paths of each new type give bit for bit the exact product
    when no float rounding can hide a wrong integer."""
    for rows, k, seed in ((1, 512, 0), (3, 768, 1), (8, 256, 2)):
        w, x, exact = _exact_case(type_id, rows, k, seed)
        with dispatch.overridden(gguf_act_bits=act):
            y = kquant.linear(x, w)
        assert torch.equal(y, exact), (build, rows, k, (y - exact).abs().max().item())
        assert torch.equal(kquant.reference_linear(x, w, act), exact)


def test_the_avx2_and_plain_c_builds_agree_on_random_blocks():
    """Random scales and activations: the two x86-64 builds' results differ only by float32
    summation order."""
    if not _X86 or kquant.lib() is None:
        pytest.skip("x86-64 with a working compiler")
    rng = np.random.default_rng(7)
    cases = [(t, rows, act) for t in TYPES for rows in (1, 5) for act in (8, 16)]
    w = {t: _weight(t, _blocks(t, 40, 768, rng)) for t in TYPES}
    x = {rows: torch.randn(rows, 768, generator=torch.Generator().manual_seed(rows)) for rows in (1, 5)}

    def run():
        out = []
        for t, rows, act in cases:
            with dispatch.overridden(gguf_act_bits=act):
                out.append(kquant.linear(x[rows], w[t]))
        return out

    with kquant.variant("haswell"):
        avx2 = run()
    with kquant.variant("x86-64"):
        plain = run()
    for (t, rows, act), a, b in zip(cases, avx2, plain):
        ref = kquant.reference_linear(x[rows], w[t], act)
        assert _rel(a, b) < 1e-6 and _rel(a, ref) < 1e-6 and _rel(b, ref) < 1e-6, (kquant.TYPES[t][0], rows, act)


def _extreme(type_id: int, n: int, k: int) -> np.ndarray:
    """Blocks at the edge of every integer range: largest codes and scales of either sign."""
    rng = np.random.default_rng(type_id)
    raw = _blocks(type_id, n, k, rng, scale=0.5)
    b = raw.reshape(n, -1, kquant.TYPES[type_id][2])
    half = n // 2
    if type_id == 10:        # scale 15, min 15, codes 3 (first half); codes 0 (second)
        b[..., 0:16], b[:half, :, 16:80], b[half:, :, 16:80] = 0xFF, 0xFF, 0x00
    elif type_id == 11:      # scales -32 (all bits clear), codes -4 / 3
        b[..., 96:108] = 0x00
        b[:half, :, 0:96], b[half:, :, 0:32], b[half:, :, 32:96] = 0x00, 0xFF, 0xFF
    elif type_id == 20:      # levels -127 / 113
        b[:half, :, 2:18], b[half:, :, 2:18] = 0x00, 0xFF
    else:                    # IQ4_XS: scale -32, levels -127 / 113
        b[..., 2:8] = 0x00
        b[:half, :, 8:], b[half:, :, 8:] = 0x00, 0xFF
    return raw


@pytest.mark.parametrize("type_id", TYPES, ids=IDS)
def test_extreme_codes_and_scales_neither_saturate_nor_overflow(build, type_id):
    raw = _extreme(type_id, 8, 512)
    w = _weight(type_id, raw)
    assert np.array_equal(kquant.dequantize(w).numpy(), quants.dequantize(raw, type_id))
    H.linear_is_its_reference_at_extremes(w, 512)


@pytest.mark.parametrize("type_id", [11, 23], ids=["Q3_K", "IQ4_XS"])
def test_the_largest_scales_unpack_as_the_reference_under_every_build(build, type_id):
    """Every scale bit set (Q3_K's and IQ4_XS's 6-bit scales at +31), the other end of the
    ranges the vector scale unpacking reads (the test above clears them: -32)."""
    raw = _extreme(type_id, 8, 512)
    b = raw.reshape(8, -1, kquant.TYPES[type_id][2])
    if type_id == 11:
        b[..., 96:108] = 0xFF
    else:
        b[..., 2:8] = 0xFF
    w = _weight(type_id, raw)
    assert np.array_equal(kquant.dequantize(w).numpy(), quants.dequantize(raw, type_id))
    H.linear_is_its_reference_at_extremes(w, 512)


@pytest.mark.parametrize("rows", [1, 3, 12])
@pytest.mark.parametrize("type_id", TYPES, ids=IDS)
def test_the_float_path_and_prefill_are_the_float32_product_of_the_exact_weights(type_id, rows):
    if kquant.lib() is None:
        pytest.skip("no native GGUF kernels here")
    raw = _blocks(type_id, 40, 768, np.random.default_rng(rows))
    w = _weight(type_id, raw)
    x = torch.randn(rows, 768, generator=torch.Generator().manual_seed(rows))
    ref = x.double() @ torch.from_numpy(quants.dequantize(raw, type_id)).double().t()
    with dispatch.overridden(gguf_act_bits=32):
        assert _rel(kquant.linear(x, w), ref) < 1e-5
    assert _rel(kquant.reference_linear(x, w, 32), ref) < 1e-6


@pytest.mark.parametrize("type_id", TYPES, ids=IDS)
def test_without_native_code_the_torch_dequantizer_runs_the_new_types(type_id):
    raw = _blocks(type_id, 24, 512, np.random.default_rng(3))
    w = _weight(type_id, raw)
    exact = torch.from_numpy(quants.dequantize(raw, type_id))
    x = torch.randn(2, 512)
    with kquant.swapped(None):
        assert dispatch.plan().gguf.impl == "torch"
        assert torch.equal(kquant.dequantize(w), exact)
        assert torch.equal(kquant.get_rows(w, torch.tensor([4, 1]), torch.float32), exact[[4, 1]])
        assert torch.allclose(kquant.linear(x, w), F.linear(x, exact), rtol=1e-5, atol=1e-5)
        assert not kquant.GGUFExperts.fits([w], [w], [w])


MOE = {"Q2_K-Q3_K": (10, 10, 11, 256), "IQ4_XS-IQ4_NL": (23, 23, 20, 288), "mixed": (11, 12, 10, 256)}


@pytest.mark.parametrize("act", [8, 16, 32])
@pytest.mark.parametrize("kinds", list(MOE))
def test_the_fused_moe_step_runs_the_new_types_as_its_experts_one_by_one(build, kinds, act):
    tg, tu, td, inter = MOE[kinds]
    E, hidden = 5, 512
    rng = np.random.default_rng(len(kinds))

    def mats(t, n, k):
        return [_weight(t, _blocks(t, n, k, rng)) for _ in range(E)]

    gates, ups, downs = mats(tg, inter, hidden), mats(tu, inter, hidden), mats(td, hidden, inter)
    assert kquant.GGUFExperts.fits(gates, ups, downs)
    x = torch.randn(1, hidden, generator=torch.Generator().manual_seed(1))
    idx, wts = torch.tensor([[3, 0, 4]]), torch.tensor([[0.5, 0.3, 0.2]])
    with dispatch.overridden(gguf_act_bits=act):
        y = kquant.GGUFExperts(gates, ups, downs)(x, wts, idx)
    ref = torch.zeros(1, hidden, dtype=torch.float64)
    for e, wt in zip(idx[0].tolist(), wts[0].tolist()):
        h = F.silu(kquant.reference_linear(x, gates[e], act)) * kquant.reference_linear(x, ups[e], act)
        ref += wt * kquant.reference_linear(h, downs[e], act).double()
    # integer activations: h's float32 rounding may move one of its codes by one step
    assert _rel(y, ref) < {8: 1e-3, 16: 1e-4, 32: 1e-5}[act]


# ---------------------------------------------------------------------------------------
# the engine on llama.cpp's files


def _ids(n=32, seed=1):
    return torch.randint(6, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _decode_logits(eng, ids) -> np.ndarray:
    """Logits [T, V] fed one token at a time: the decode path (one activation row per matmul)."""
    eng.reset()
    return np.stack([eng.forward(torch.tensor([[t]]), start_pos=i)[0, 0].numpy() for i, t in enumerate(ids)])


def _same_weights(eng, path):
    """The engine holds the file's blocks (its types) and they are gguf-py's exact weights."""
    exact, types = H.dequantized_tensors(path), H.tensor_types(path)
    m = eng.model

    def same(qw, name, rows=slice(None)):
        assert qw is not None and qw.layout == "gguf" and qw.mode == types[name], (name, types[name])
        assert torch.equal(kquant.dequantize(qw), torch.from_numpy(exact[name][rows].reshape(qw.shape))), name

    same(m.embed.qweight, "token_embd.weight")
    same(m.head.qweight, "output.weight")
    for i, blk in enumerate(m.layers):
        p = f"blk.{i}."
        same(blk.attn.wq_a.qweight, p + "attn_q_a.weight")
        same(blk.attn.wq_b.qweight, p + "attn_q_b.weight")
        same(blk.attn.wkv_a.qweight, p + "attn_kv_a_mqa.weight")
        same(blk.attn.wo.qweight, p + "attn_output.weight")
        if p + "ffn_down_exps.weight" not in types:
            continue
        same(blk.ffn.shared.w2.qweight, p + "ffn_down_shexp.weight")
        for e in (0, 5):
            w13 = kquant.dequantize(blk.ffn.experts[e].w13.qweight)
            want = np.concatenate([exact[p + "ffn_gate_exps.weight"][e], exact[p + "ffn_up_exps.weight"][e]])
            assert torch.equal(w13, torch.from_numpy(want)), (p, e)
            same(blk.ffn.experts[e].w2.qweight, p + "ffn_down_exps.weight", e)
    return {types[n] for n in types}


# file type -> the block types it must hold (what test_engine_gguf's CASES are for the others)
ENGINE = {"Q2_K": {"Q2_K", "Q3_K", "Q6_K"}, "Q3_K_M": {"Q3_K", "Q4_K", "Q6_K"}, "IQ4_XS": {"IQ4_XS", "IQ4_NL"},
          "IQ4_NL": {"IQ4_NL"}}


@pytest.mark.parametrize("ftype", list(ENGINE))
def test_llama_cpp_s_low_bit_files_load_and_are_at_least_as_close_to_the_exact_model_as_llama_cpp(
        ftype, kshape, tmp_path):
    """test_engine_gguf's rule for Q4_K_M, on Q2_K / Q3_K_M / IQ4_XS / IQ4_NL files."""
    hf, f32 = kshape
    q = H.llama_quantize(f32, tmp_path / "q.gguf", ftype)
    assert ENGINE[ftype] <= set(H.tensor_types(q).values())
    ref = H.write_dequantized(q, tmp_path / "ref.gguf", hf)   # the exact weights, as F32
    ids = _ids()
    exact = H.llama_logits(ref, ids)
    theirs = H.llama_logits(q, ids)                          # llama.cpp: 8-bit activation blocks
    eng = Engine.load(q, dtype="float32", max_seq_len=96)
    assert ENGINE[ftype] <= _same_weights(eng, q)
    assert kquant.act_bits() == 16
    decoded = _decode_logits(eng, ids)
    with dispatch.overridden(gguf_act_bits=8):
        decoded8 = _decode_logits(eng, ids)
    with dispatch.overridden(gguf_act_bits=32):
        reference = _decode_logits(eng, ids)
        prefill = eng.forward(torch.tensor([ids]))[0].numpy()
    (cos_l, top_l), (cos_d, top_d) = H.agreement(exact, theirs), H.agreement(exact, decoded)
    (cos_p, _), (cos_r, _), (cos_8, top_8) = (H.agreement(exact, v) for v in (prefill, reference, decoded8))
    cos_x, top_x = H.agreement(theirs, decoded)
    print(f"{ftype}: llama.cpp cos {cos_l:.6f} top1 {top_l:.3f}; duet decode cos {cos_d:.6f} top1 {top_d:.3f} "
          f"(8-bit activations {cos_8:.6f} / {top_8:.3f}); float activations: decode {cos_r:.7f}, "
          f"prefill {cos_p:.7f}; duet vs llama.cpp cos {cos_x:.6f} top1 {top_x:.3f}")
    assert cos_d >= cos_l and top_d >= top_l
    assert cos_p > 0.99999 and cos_r > 0.99999
    n = 16
    g_llama = H.llama_greedy(q, ids, n)
    g_ref = H.llama_greedy(ref, ids, n)
    g_ours = list(eng.generate(ids, max_new_tokens=n, temperature=0))
    assert H.common_prefix(g_ours, g_llama) >= H.common_prefix(g_ref, g_llama)
    assert H.common_prefix(g_ours, g_ref) >= H.common_prefix(g_llama, g_ref)


def test_a_q2_k_file_runs_on_the_torch_dequantizer_as_on_the_native_float_path(kshape, tmp_path):
    _, f32 = kshape
    q = H.llama_quantize(f32, tmp_path / "q.gguf", "Q2_K")
    ids = torch.tensor([_ids(12)])
    with dispatch.overridden(gguf_act_bits=32):
        native = Engine.load(q, dtype="float32", max_seq_len=32).forward(ids)[0].numpy()
    with kquant.swapped(None):
        fallback = Engine.load(q, dtype="float32", max_seq_len=32).forward(ids)[0].numpy()
    assert np.abs(native - fallback).max() < 1e-4 * np.abs(native).max()
