"""kernels.dispatch: the CPU's capabilities and the switches are read once into a plan of small
frozen dataclasses; every op picks its implementation from it, and ``describe()`` names them.
CPUs without native bf16 matmuls (AVX2-only, ARM64 without bf16) get float32 activations from
the plan (emulated here with DUET_CPU and ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA)."""

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import capability, cpu_native, dispatch, norm_rope, quant
from local_engine import Engine
from tests.tiny_checkpoints import write_tiny_v3

ROOT = Path(__file__).resolve().parents[1]
OPS = ("cpu level", "activations", "linear (quantized)", "linear (dense)", "moe", "mla attention", "decode step",
       "rms norm", "rope", "gguf", "cuda")


def test_the_plan_is_built_once_and_kept_through_loading_and_running_a_model(tmp_path):
    p = dispatch.plan()
    model = write_tiny_v3(tmp_path / "m", dtype="bfloat16", tokenizer=False, num_hidden_layers=2)
    for quant_mode in (None, "int4"):
        engine = Engine.load(model, dtype="bfloat16", quant=quant_mode, max_seq_len=32)
        list(engine.generate(list(range(5, 12)), max_new_tokens=3, temperature=0))
    assert dispatch.plan() is p                      # nothing rebuilt it: the choices were made once
    for part in (p, p.linear, p.moe, p.attention, p.norm, p.gguf):
        assert dataclasses.is_dataclass(part) and type(part).__dataclass_params__.frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.linear.quantized = "aten-int4pack"


def test_a_switch_changed_after_the_plan_is_built_waits_for_a_replan(monkeypatch):
    p = dispatch.plan()
    bits = 16 if p.linear.int4_act_bits == 8 else 8
    monkeypatch.setenv(dispatch.NATIVE_ACT_ENV, str(bits))
    try:
        assert dispatch.plan() is p
        if p.native:
            assert dispatch.replan().linear.int4_act_bits == bits
    finally:
        monkeypatch.undo()
        dispatch.replan()


def test_describe_names_each_ops_implementation_from_the_plan():
    p = dispatch.plan()
    rows = dict(dispatch.describe())
    assert tuple(rows) == OPS
    assert p.capability.level in rows["cpu level"]
    assert rows["linear (quantized)"].startswith("native" if p.linear.quantized == "native" else "aten")
    assert ("oneDNN" in rows["linear (dense)"]) == (p.linear.dense == "onednn-packed")
    assert ("native call" in rows["moe"]) == (p.moe.decode == "native-fused")
    assert ("native bf16 GEMV" in rows["mla attention"]) == (p.attention.head_gemv == "native-bf16")
    assert ("one native call" in rows["decode step"]) == (p.attention.step == "native")
    assert rows["activations"].startswith("bfloat16" if p.act_dtype == torch.bfloat16 else "float32")
    assert (rows["gguf"].startswith("native")) == (p.gguf.impl == "native")


def test_switching_the_native_kernels_off_changes_every_ops_choice_and_back():
    if not dispatch.native():
        pytest.skip("the native kernels did not build here")
    with dispatch.overridden(native=False) as off:
        assert not dispatch.native() and off.linear.quantized == "aten-int4pack"
        assert off.moe.decode == "grouped" and off.attention.head_gemv == "bmm" and off.norm.native_rows == 0
        qw = quant.quantize_weight(torch.randn(32, 64), "int4")
        assert qw.layout == "cpu_int4pack"
        before = cpu_native.CALLS["rms_norm"]
        norm_rope.rms_norm(torch.randn(1, 64), torch.ones(64), 1e-6)
        assert cpu_native.CALLS["rms_norm"] == before
    assert dispatch.native() and quant.quantize_weight(torch.randn(32, 64), "int4").layout == quant.NATIVE


def test_an_unknown_switch_value_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv(dispatch.NATIVE_ACT_ENV, "16")
    monkeypatch.setenv(dispatch.GGUF_ACT_ENV, "12")
    try:
        with pytest.raises(ValueError, match="DUET_GGUF_ACT_BITS='12'"):
            dispatch.replan()
        with pytest.raises(TypeError, match="unknown switch"):
            with dispatch.overridden(threads=3):
                pass
    finally:
        monkeypatch.undo()
        dispatch.replan()


PROBE = r"""
import json, sys, torch, torch.nn.functional as F
from kernels import capability, cpu_native, dispatch, quant
p = dispatch.plan()
out = {"level": p.capability.level, "bf16_native": p.capability.bf16_native, "act": str(p.act_dtype),
       "prefill": str(p.linear.prefill_dtype), "dense": p.linear.dense, "describe": dict(p.describe()),
       "gguf_prefill": str(p.gguf.prefill_dtype), "attention": p.attention.attention, "native": p.native}
if p.native:   # a quantized prefill (more rows than the native GEMV takes) in the plan's float type
    torch.manual_seed(0)
    qw = quant.quantize_weight(torch.randn(40, 128), "int8")
    x = torch.randn(9, 128).bfloat16()
    b = qw.bound or quant._bind(qw)
    w = cpu_native.dequant(b.bits, b.q, b.scale, b.kp, b.group, b.n, b.k, p.linear.prefill_dtype)
    want = F.linear(x.to(p.linear.prefill_dtype), w).to(torch.bfloat16)
    out["prefill_exact"] = bool(torch.equal(quant.quantized_linear(x, qw), want))
print(json.dumps(out))
"""


def _probe(**env):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    for k in ("DUET_CPU", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if k not in env:
            full.pop(k, None)
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", [{"DUET_CPU": "avx2"}, {"DUET_CPU": "scalar"},
                                 {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}],
                         ids=["duet_cpu_avx2", "duet_cpu_scalar", "aten_onednn_avx2"])
def test_a_cpu_without_native_bf16_gets_float32_activations_from_the_plan(env):
    got = _probe(**env)
    assert got["bf16_native"] is False
    assert got["act"] == got["prefill"] == got["gguf_prefill"] == "torch.float32"
    assert got["describe"]["activations"].startswith("float32")
    assert got["dense"] == "torch"                    # no oneDNN bf16 packing either
    # bf16 latent caches: kernels/csrc's attention where it is built (torch's bf16 bmm is 8-15x slower)
    assert got["attention"] == ("native-bf16" if got["native"] else "torch")
    if "DUET_CPU" in env:
        assert got["level"] == env["DUET_CPU"]
    if "prefill_exact" in got:
        assert got["prefill_exact"]


def test_this_cpu_plans_bf16_activations_only_where_bf16_matmuls_are_native():
    cap = capability.detect()
    assert (dispatch.plan().act_dtype == torch.bfloat16) == cap.bf16_native
    if cap.bf16_native:
        assert cap.level == "avx512"
    # GGUF prefill tiles: bf16 with the other prefills, float32 at 32-bit GGUF activations (the reference)
    assert dispatch.plan().gguf.prefill_dtype == dispatch.plan().act_dtype
    with dispatch.overridden(gguf_act_bits=32):
        assert dispatch.plan().gguf.prefill_dtype == torch.float32
    with dispatch.overridden(gguf_prefill=torch.bfloat16):
        assert dispatch.plan().gguf.prefill_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="gguf_prefill"):
        with dispatch.overridden(gguf_prefill=torch.float16):
            pass
    # a bf16 latent cache: torch's attention where bf16 matmuls are native, kernels/csrc's elsewhere
    if dispatch.plan().native:
        assert dispatch.plan().attention.attention == ("torch" if cap.bf16_native else "native-bf16")
        with dispatch.overridden(native_attention=cap.bf16_native):
            assert dispatch.plan().attention.attention == ("native-bf16" if cap.bf16_native else "torch")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_kernels_import_nothing_from_the_engine_or_the_app_and_only_dispatch_asks_for_the_library():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("local_engine", "app")}
        assert not bad, f"{path.name} imports {bad}"
    for folder in ("kernels", "local_engine"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name in ("dispatch.py", "cpu_native.py"):
                continue
            assert "cpu_native.lib()" not in path.read_text(), f"{folder}/{path.name} tests the library itself"
