"""Engine.load on deepseek2 GGUF files, checked against llama.cpp on the very same file and
against transformers-checkpoint loading of the model the file was converted from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from local_engine import Engine
from local_engine.errors import ModelError
from tests import gguf_helpers as H
from tests.tiny_checkpoints import write_tiny_v2, write_tiny_v3

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

ROOT = Path(__file__).resolve().parents[1]
YARN = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "mscale": 0.8,
        "mscale_all_dim": 0.8, "beta_fast": 32, "beta_slow": 1}   # GGUF keeps one mscale: equal ones


def _ids(n=24, seed=0):
    return torch.randint(6, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("v3") / "hf", rope_scaling=YARN)


@pytest.fixture(scope="module")
def v2_lite(tmp_path_factory):
    # llama.cpp reads a deepseek2 file without q-LoRA only when it has 27 layers (its "lite" test)
    return write_tiny_v2(tmp_path_factory.mktemp("v2") / "hf", num_hidden_layers=27)


@pytest.mark.parametrize("model,layout", [("v3", "split"), ("v3", "legacy"), ("v2_lite", "split"),
                                          ("v2_lite", "legacy")])
def test_a_deepseek2_gguf_runs_with_llama_cpp_s_logits_in_both_mla_layouts(model, layout, request, tmp_path):
    hf = request.getfixturevalue(model)
    path = H.write_gguf(hf, tmp_path / "m.gguf", layout=layout)
    ids = _ids()
    ours = Engine.load(path, dtype="float32", max_seq_len=64).forward(torch.tensor([ids]))[0].numpy()
    theirs = H.llama_logits(path, ids)
    folder = Engine.load(hf, dtype="float32", max_seq_len=64).forward(torch.tensor([ids]))[0].numpy()
    assert np.abs(ours - theirs).max() < 1e-4, np.abs(ours - theirs).max()
    assert np.abs(ours - folder).max() < 1e-4, np.abs(ours - folder).max()


def test_a_split_gguf_runs_from_any_of_its_shards_as_the_single_file_and_as_llama_cpp_reads_it(v3, tmp_path):
    """A deepseek2 GGUF split into three files (gguf-py's writer, llama.cpp's naming): our engine
    loads it from its first or its second shard, each tensor from the shard that holds it, with
    the very logits of the same model in one file; llama.cpp reads the split too; doctor's and
    discovery's summary counts every shard's tensors and calls it runnable locally."""
    from local_engine.gguf_file import summarize

    (tmp_path / "one").mkdir()
    (tmp_path / "split").mkdir()
    single = H.write_gguf(v3, tmp_path / "one" / "m.gguf")
    first = H.write_gguf(v3, tmp_path / "split" / "m.gguf", shards=3)
    shards = sorted((tmp_path / "split").iterdir())
    assert [p.name for p in shards] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)] and first == shards[0]
    ids = _ids()
    whole = Engine.load(single, dtype="float32", max_seq_len=64).forward(torch.tensor([ids]))[0]
    for path in (shards[0], shards[1]):
        ours = Engine.load(path, dtype="float32", max_seq_len=64).forward(torch.tensor([ids]))[0]
        assert torch.equal(ours, whole), path.name
    theirs = H.llama_logits(shards[0], ids)
    assert np.abs(whole.numpy() - theirs).max() < 1e-4
    s, one = summarize(shards[1]), summarize(single)
    assert s.split == 3 and s.types == one.types and s.runs_locally
    assert "3 shards" in s.why() and "local" in s.why()


def test_a_split_gguf_with_a_shard_missing_or_out_of_place_is_refused_naming_the_shard(v3, tmp_path):
    first = H.write_gguf(v3, tmp_path / "m.gguf", shards=3)
    second, third = (first.with_name(f"m-0000{i}-of-00003.gguf") for i in (2, 3))
    third.rename(tmp_path / "aside.gguf")
    with pytest.raises(ModelError, match=r"m-00003-of-00003\.gguf: shard 3 of 3 .* is missing"):
        Engine.load(first, dtype="float32", max_seq_len=16)
    third.write_bytes(second.read_bytes())   # shard 2 under shard 3's name: its split keys disagree
    with pytest.raises(ModelError, match=r"m-00003-of-00003\.gguf: its split keys say shard 1 of 3, not 2 of 3"):
        Engine.load(first, dtype="float32", max_seq_len=16)
    renamed = tmp_path / "model.gguf"
    first.rename(renamed)
    with pytest.raises(ModelError, match=r"model\.gguf: one shard of a 3-file split GGUF, but its name"):
        Engine.load(renamed, dtype="float32", max_seq_len=16)


def test_hyperparameters_come_from_the_metadata_not_from_the_layer_count(tmp_path):
    # 27 layers *with* q-LoRA, sigmoid gating, groups and 2 leading dense layers: llama.cpp takes
    # 27 layers to mean "Lite" (no q-LoRA); the metadata says otherwise and we follow it
    hf = write_tiny_v3(tmp_path / "hf", num_hidden_layers=27, first_k_dense_replace=2, rope_scaling=None)
    path = H.write_gguf(hf, tmp_path / "m.gguf")
    ours = Engine.load(path, dtype="float32", max_seq_len=64)
    ref = Engine.load(hf, dtype="float32", max_seq_len=64)
    for field in ("q_lora_rank", "scoring_func", "topk_method", "n_group", "topk_group", "first_k_dense_replace",
                  "norm_topk_prob", "routed_scaling_factor", "n_shared_experts", "num_experts_per_tok",
                  "qk_nope_head_dim", "v_head_dim", "kv_lora_rank"):
        assert getattr(ours.args, field) == getattr(ref.args, field), field
    ids = torch.tensor([_ids()])
    assert torch.allclose(ours.forward(ids), ref.forward(ids), atol=1e-4)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_q8_0_and_q4_0_weights_run_from_their_file_blocks_bit_exactly(qtype, tmp_path):
    from gguf import GGMLQuantizationType

    from kernels import kquant

    hf = write_tiny_v3(tmp_path / "hf", moe_intermediate_size=32, q_lora_rank=64, v_head_dim=16, rope_scaling=None)
    path = H.write_gguf(hf, tmp_path / "m.gguf", quant=getattr(GGMLQuantizationType, qtype))
    exact = H.dequantized_tensors(path)
    types = H.tensor_types(path)
    eng = Engine.load(path, dtype="float32", max_seq_len=32)
    m = eng.model

    def same(qw, name, rows=slice(None)):
        assert qw is not None and qw.layout == "gguf" and qw.mode == qtype, name
        assert torch.equal(kquant.dequantize(qw), torch.from_numpy(exact[name][rows].reshape(qw.shape))), name

    same(m.embed.qweight, "token_embd.weight")
    same(m.head.qweight, "output.weight")
    blk = m.layers[1]
    same(blk.attn.wq_a.qweight, "blk.1.attn_q_a.weight")
    same(blk.attn.wkv_a.qweight, "blk.1.attn_kv_a_mqa.weight")
    same(blk.attn.wq_b.qweight, "blk.1.attn_q_b.weight")
    same(blk.attn.wo.qweight, "blk.1.attn_output.weight")
    same(blk.ffn.shared.w2.qweight, "blk.1.ffn_down_shexp.weight")
    for e in (0, 7):
        w13 = kquant.dequantize(blk.ffn.experts[e].w13.qweight)
        want = np.concatenate([exact["blk.1.ffn_gate_exps.weight"][e], exact["blk.1.ffn_up_exps.weight"][e]])
        assert types["blk.1.ffn_gate_exps.weight"] == qtype and torch.equal(w13, torch.from_numpy(want))
        same(blk.ffn.experts[e].w2.qweight, "blk.1.ffn_down_exps.weight", e)
    # kept as the file's blocks: the quantized tensors take exactly the file's bytes
    assert m.head.qweight.nbytes == exact["output.weight"].size // 32 * (34 if qtype == "Q8_0" else 18)


@pytest.fixture(scope="module")
def kshape(tmp_path_factory):
    """A V3 model whose rows are whole 256-blocks (K-quants need them), q-LoRA, groups, YaRN."""
    d = tmp_path_factory.mktemp("k")
    hf = write_tiny_v3(d / "hf", hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                       q_lora_rank=256, kv_lora_rank=256, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=64,
                       n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, rope_scaling=YARN)
    return hf, H.write_gguf(hf, d / "f32.gguf")


# file type -> the block types it must contain (K-quants fall back to Q5_0/Q5_1/Q8_0 for k_b's rows of 32)
CASES = {"Q8_0": {"Q8_0"}, "Q4_0": {"Q4_0"}, "Q4_K_M": {"Q4_K", "Q5_K", "Q6_K", "Q5_0"},
         "Q5_K_M": {"Q5_K", "Q6_K", "Q5_1"}, "Q6_K": {"Q6_K", "Q8_0"}, "Q4_1": {"Q4_1"}, "Q5_0": {"Q5_0"},
         "Q5_1": {"Q5_1"}}


def _decode_logits(eng, ids) -> np.ndarray:
    """Logits [T, V] fed one token at a time: the decode path (one activation row per matmul)."""
    eng.reset()
    return np.stack([eng.forward(torch.tensor([[t]]), start_pos=i)[0, 0].numpy() for i, t in enumerate(ids)])


@pytest.mark.parametrize("ftype", list(CASES))
def test_each_type_is_at_least_as_close_to_the_exact_dequantized_model_as_llama_cpp_is(ftype, kshape, tmp_path):
    from kernels import dispatch, kquant

    hf, f32 = kshape
    if ftype in ("Q8_0", "Q4_0"):
        from gguf import GGMLQuantizationType

        q = H.write_gguf(hf, tmp_path / "q.gguf", quant=getattr(GGMLQuantizationType, ftype))
    else:
        q = H.llama_quantize(f32, tmp_path / "q.gguf", ftype)
    assert CASES[ftype] <= set(H.tensor_types(q).values())
    ref = H.write_dequantized(q, tmp_path / "ref.gguf", hf)   # the exact weights, as F32
    ids = _ids(32, seed=1)
    exact = H.llama_logits(ref, ids)
    theirs = H.llama_logits(q, ids)                          # llama.cpp: 8-bit activation blocks
    eng = Engine.load(q, dtype="float32", max_seq_len=96)
    assert kquant.act_bits() == 16                           # the default: integer activations, two 8-bit terms
    decoded = _decode_logits(eng, ids)
    with dispatch.overridden(gguf_act_bits=8):                              # llama.cpp's own activation codes: shown, not
        decoded8 = _decode_logits(eng, ids)                  # asserted (as close as llama.cpp: a coin flip)
    with dispatch.overridden(gguf_act_bits=32):                             # the float reference path
        reference = _decode_logits(eng, ids)
        prefill = eng.forward(torch.tensor([ids]))[0].numpy()
    (cos_l, top_l), (cos_d, top_d) = H.agreement(exact, theirs), H.agreement(exact, decoded)
    (cos_p, _), (cos_r, _), (cos_8, top_8) = (H.agreement(exact, v) for v in (prefill, reference, decoded8))
    print(f"{ftype}: llama.cpp cos {cos_l:.6f} top1 {top_l:.3f}; duet decode cos {cos_d:.6f} top1 {top_d:.3f} "
          f"(8-bit activations {cos_8:.6f} / {top_8:.3f}); float activations: decode {cos_r:.7f}, "
          f"prefill {cos_p:.7f}")
    assert cos_d >= cos_l and top_d >= top_l                 # the rule, against llama.cpp's own figure
    assert cos_p > 0.99999 and cos_r > 0.99999               # float activations: the dequantized model itself
    n = 16
    g_llama = H.llama_greedy(q, ids, n)
    g_ref = H.llama_greedy(ref, ids, n)
    g_ours = list(eng.generate(ids, max_new_tokens=n, temperature=0))
    assert H.common_prefix(g_ours, g_llama) >= H.common_prefix(g_ref, g_llama)
    assert H.common_prefix(g_ours, g_ref) >= H.common_prefix(g_llama, g_ref)


@pytest.mark.parametrize("ftype,refused", [("TQ1_0", "TQ1_0"), ("TQ2_0", "TQ2_0")])
def test_types_we_do_not_run_are_refused_at_load_naming_tensor_and_type(ftype, refused, kshape, tmp_path):
    _, f32 = kshape
    q = H.llama_quantize(f32, tmp_path / "q.gguf", ftype)
    with pytest.raises(ModelError) as e:
        Engine.load(q, dtype="float32")
    msg = str(e.value)
    bad = next(n for n, t in H.tensor_types(q).items() if t == refused)
    assert refused in msg and ".weight" in msg and "Q4_K" in msg and "llama.cpp" in msg
    assert any(n in msg for n, t in H.tensor_types(q).items() if t == refused), (bad, msg)
    r = subprocess.run([sys.executable, "-m", "local_engine", "generate", "--model", str(q), "hi"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2
    assert refused in r.stderr and "Traceback" not in r.stderr


_PEAK = r"""
import sys, torch
from kernels import dispatch
from local_engine import Engine
dispatch.plan()   # loads both native libraries (and their OpenMP runtime): code, not the model
torch.zeros(1).to(torch.bfloat16)
with torch.device("meta"):   # the first meta-device init imports torch's decompositions (~160 MB,
    torch.nn.Embedding(2, 2)  # once per process, whatever the model): part of the baseline
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")   # reset the peak
eng = Engine.load(sys.argv[1], dtype="bfloat16", max_seq_len=64)
print(status("VmHWM:") - before, eng.weight_bytes())
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_loading_a_q8_0_file_peaks_under_1_1x_its_size(tmp_path):
    from bench.gguf_deepseek2 import write_deepseek2_gguf

    cfg = dict(vocab_size=4096, hidden_size=1024, intermediate_size=2048, moe_intermediate_size=512,
               num_hidden_layers=3, num_attention_heads=8, q_lora_rank=None, kv_lora_rank=256,
               qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=32, n_shared_experts=1,
               num_experts_per_tok=4, first_k_dense_replace=1, scoring_func="softmax")
    rng = np.random.default_rng(0)

    def q8(*shape):
        return ("q8_0", rng.integers(-127, 128, shape, dtype=np.int8),
                np.full(shape[:-1] + (shape[-1] // 32,), 0.01, dtype=np.float32))

    def f32(*shape):
        return ("f32", (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32))

    hd, E, I, R, H_ = cfg["hidden_size"], cfg["n_routed_experts"], cfg["moe_intermediate_size"], 256, 8
    t = {"token_embd.weight": q8(4096, hd), "output_norm.weight": f32(hd), "output.weight": q8(4096, hd)}
    for i in range(3):
        p = f"blk.{i}."
        t.update({p + "attn_norm.weight": f32(hd), p + "ffn_norm.weight": f32(hd), p + "attn_kv_a_norm.weight": f32(R),
                  p + "attn_q.weight": q8(H_ * 96, hd), p + "attn_kv_a_mqa.weight": q8(R + 32, hd),
                  p + "attn_k_b.weight": f32(H_, R, 64), p + "attn_v_b.weight": f32(H_, 64, R),
                  p + "attn_output.weight": q8(hd, H_ * 64)})
        if i == 0:
            t.update({p + "ffn_gate.weight": q8(2048, hd), p + "ffn_up.weight": q8(2048, hd),
                      p + "ffn_down.weight": q8(hd, 2048)})
        else:
            t.update({p + "ffn_gate_inp.weight": f32(E, hd), p + "ffn_gate_exps.weight": q8(E, I, hd),
                      p + "ffn_up_exps.weight": q8(E, I, hd), p + "ffn_down_exps.weight": q8(E, hd, I),
                      p + "ffn_gate_shexp.weight": q8(I, hd), p + "ffn_up_shexp.weight": q8(I, hd),
                      p + "ffn_down_shexp.weight": q8(hd, I)})
    path = tmp_path / "big.gguf"
    write_deepseek2_gguf(path, cfg, t)
    size = path.stat().st_size
    r = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                         "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    peak, weights = (int(v) for v in r.stdout.split()[-2:])
    print(f"file {size / 1e6:.1f} MB, peak RSS while loading +{peak / 1e6:.1f} MB, weights held {weights / 1e6:.1f} MB")
    assert size > 100e6
    assert peak <= 1.1 * size


TEXTS = [
    "Hello, world! How are you today?",
    "深度求索发布了推理模型，中文能力更强。我们在本地运行它。",
    "def main():\n    return [x ** 2 for x in range(10)]  # squares\n\n\n",
    "  leading spaces,\ttabs\t\tand trailing   ",
    "numbers 1234567 3.14159 and 2026-12-03; emoji 🙂🚀 ünïcödé Ελληνικά русский 日本語のテキスト",
    "<｜User｜>What is 2+2?<｜Assistant｜><think>\nfour</think>4<｜end▁of▁sentence｜>",
    "it's we'll they've I'M don't\r\nCRLF line\n",
]


@pytest.mark.parametrize("pre", ["gpt-2", "deepseek-v3", "deepseek-llm", "deepseek-coder", "llama-bpe", "qwen2"])
def test_the_gguf_tokenizer_splits_text_exactly_as_llama_cpp(pre, v3, tmp_path):
    import llama_cpp

    from local_engine.gguf_file import GGUFFile
    from local_engine.tokenizer import Tokenizer

    path = H.write_gguf(v3, tmp_path / "m.gguf", pre=pre)
    tok = Tokenizer.from_gguf(GGUFFile(path).meta, path)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in TEXTS:
        ours = tok.encode(text)
        assert ours == llm.tokenize(text.encode(), add_bos=False, special=True), text
        assert tok.decode(ours) == text


def test_the_chat_template_and_special_tokens_come_from_the_metadata(v3, tmp_path):
    from local_engine.tokenizer import Tokenizer

    path = H.write_gguf(v3, tmp_path / "m.gguf")
    ours, folder = Engine.load(path, dtype="float32", max_seq_len=32).tokenizer, Tokenizer(v3)
    msgs = [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "<think>x</think>ok"},
            {"role": "user", "content": "again"}]
    assert ours.apply_chat_template(msgs) == folder.apply_chat_template(msgs)
    assert ours.reasoning and (ours.bos_token_id, ours.eos_token_id) == (folder.bos_token_id, folder.eos_token_id)
    text = ours.apply_chat_template(msgs)
    assert ours.encode(text) == folder.encode(text)


def test_an_hf_folder_with_chat_template_jinja_reads_its_template(v3, tmp_path):
    import shutil

    from local_engine.tokenizer import Tokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(v3 / "tokenizer.json", folder)
    cfg = json.loads((v3 / "tokenizer_config.json").read_text())
    template = cfg.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").write_text(template)
    tok = Tokenizer(folder)
    assert tok.chat_template == template
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == \
        Tokenizer(v3).apply_chat_template([{"role": "user", "content": "hi"}])


def test_a_file_missing_a_required_key_names_it(v3, tmp_path):
    from gguf import GGUFReader, GGUFWriter

    src = H.write_gguf(v3, tmp_path / "m.gguf")
    r = GGUFReader(str(src))
    w = GGUFWriter(str(tmp_path / "bad.gguf"), "deepseek2")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "deepseek2.attention.kv_lora_rank"):
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="deepseek2.attention.kv_lora_rank"):
        Engine.load(tmp_path / "bad.gguf")
