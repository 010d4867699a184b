"""Engine.load(quant=...) quantizes the right Linears while loading; a quantized model saves
and reloads directly (no second quantization) with identical logits."""

import json

import pytest
import torch

import kernels.quant
from local_engine import Engine
from local_engine.errors import ModelError
from local_engine.layers import Linear, QuantizedLinear
from local_engine.quantize import MARKER, TENSORS, quantized_bytes, save_quantized
from tests.tiny_checkpoints import write_tiny_v2, write_tiny_v3

SIZES = dict(hidden_size=128, intermediate_size=192, moe_intermediate_size=64, num_hidden_layers=3)


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("v3"), **SIZES)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_load_with_quant_quantizes_mlps_and_experts_but_not_gate_attention_or_head(tiny_v3, mode):
    eng = Engine.load(tiny_v3, dtype="float32", quant=mode)
    quantized, kept = [], []
    for name, m in eng.model.named_modules():
        if isinstance(m, (Linear, QuantizedLinear)):
            (quantized if isinstance(m, QuantizedLinear) else kept).append(name)
    assert quantized and all(".ffn." in n for n in quantized)
    assert any(".experts." in n for n in quantized) and any(".shared." in n for n in quantized)
    assert "layers.0.ffn.w13" in quantized                       # the dense first layer
    assert all(".attn." in n or n == "head" for n in kept)
    for name in quantized:
        m = eng.model.get_submodule(name)
        assert not list(m.parameters()) and m.qweight.mode == mode  # full-precision copy freed
    gate = eng.model.layers[1].ffn.gate
    assert gate.weight.dtype == torch.float32 and gate.bias.dtype == torch.float32


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_engine_generates_and_tracks_float32_logits(tiny_v3, mode):
    ids = torch.randint(0, 400, (1, 24), generator=torch.Generator().manual_seed(3))
    ref = Engine.load(tiny_v3, dtype="float32").forward(ids)
    eng = Engine.load(tiny_v3, dtype="float32", quant=mode)
    cos = torch.nn.functional.cosine_similarity(eng.forward(ids), ref, dim=-1).mean().item()
    assert cos > (0.95 if mode == "int8" else 0.8)     # random tiny models flip routing; garbage is ~0
    eng.reset()
    out = list(eng.generate(ids[0, :8], max_new_tokens=6, temperature=0))
    assert len(out) <= 6 and all(0 <= t < 512 for t in out)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_saved_model_reloads_without_quantizing_and_gives_identical_logits(tiny_v3, tmp_path, monkeypatch, mode):
    eng = Engine.load(tiny_v3, dtype="bfloat16", quant=mode)
    ids = torch.randint(0, 400, (1, 16), generator=torch.Generator().manual_seed(4))
    before = eng.forward(ids)
    out = save_quantized(eng, tmp_path / "q")
    assert (out / MARKER).is_file() and (out / TENSORS).is_file() and (out / "tokenizer.json").is_file()

    def no_quantizing(*a, **k):
        raise AssertionError("reload must not quantize again")

    monkeypatch.setattr(kernels.quant, "quantize_weight", no_quantizing)
    again = Engine.load(out, dtype="bfloat16")
    assert torch.equal(again.forward(ids), before)
    assert quantized_bytes(again.model) == quantized_bytes(eng.model)
    assert again.tokenizer is not None and again.tokenizer.encode("hello") == eng.tokenizer.encode("hello")


def test_v2_checkpoint_quantizes_and_round_trips(tmp_path):
    path = write_tiny_v2(tmp_path / "v2", **SIZES)
    eng = Engine.load(path, dtype="float32", quant="int4")
    ids = torch.randint(0, 400, (1, 12), generator=torch.Generator().manual_seed(5))
    before = eng.forward(ids)
    again = Engine.load(save_quantized(eng, tmp_path / "q"), dtype="float32")
    assert torch.equal(again.forward(ids), before)


def test_saving_an_unquantized_model_is_a_clear_error(tiny_v3, tmp_path):
    with pytest.raises(ModelError, match="no quantized Linear"):
        save_quantized(Engine.load(tiny_v3, dtype="float32"), tmp_path / "q")


def test_broken_quantized_folders_name_the_file(tiny_v3, tmp_path):
    out = save_quantized(Engine.load(tiny_v3, dtype="float32", quant="int8"), tmp_path / "q")
    meta = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps(dict(meta, version=99)))
    with pytest.raises(ModelError, match=MARKER):
        Engine.load(out)
    (out / MARKER).write_text(json.dumps(meta))
    (out / TENSORS).write_bytes(b"\x00" * 10)
    with pytest.raises(ModelError, match=TENSORS):
        Engine.load(out)
    (out / TENSORS).unlink()
    with pytest.raises(ModelError, match="missing"):
        Engine.load(out)


def test_the_quantize_command_writes_a_folder_that_loads_to_the_same_greedy_tokens(tiny_v3, tmp_path, capsys):
    from local_engine.__main__ import main

    assert main(["quantize", "--model", str(tiny_v3), "--quant", "int4", "--out", str(tmp_path / "q4")]) == 0
    said = capsys.readouterr().out
    assert "int4" in said and "0.5625 bytes/weight" in said
    ids = torch.randint(0, 400, (12,), generator=torch.Generator().manual_seed(5)).tolist()
    direct = list(Engine.load(tiny_v3, dtype="bfloat16", quant="int4").generate(ids, max_new_tokens=6, temperature=0))
    saved = Engine.load(tmp_path / "q4", dtype="bfloat16")
    assert list(saved.generate(ids, max_new_tokens=6, temperature=0)) == direct
    assert main(["quantize", "--model", str(tmp_path / "missing"), "--quant", "int8", "--out", str(tmp_path / "x")]) == 2
