"""The engine plans its CPU paths from what this CPU and torch can do (kernels.capability):
where a path is missing the next one runs, never a crash. ``DUET_CPU`` lowers the level so
the fallbacks run on any machine; ``ONEDNN_MAX_CPU_ISA=AVX2`` makes oneDNN itself refuse
bf16 as it does on an AVX2-only CPU (the crash of issue 15)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import capability
from local_engine import Engine
from local_engine.errors import ModelError
from tests.tiny_checkpoints import write_tiny_v3

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("cap") / "v3", dtype="bfloat16", num_hidden_layers=3)


@pytest.fixture
def forced(monkeypatch):
    """Set DUET_CPU for one test; detection is redone before and after."""
    def force(level):
        monkeypatch.setenv("DUET_CPU", level)
        capability.detect.cache_clear()
    yield force
    monkeypatch.delenv("DUET_CPU", raising=False)
    capability.detect.cache_clear()


def _packed_linears(engine) -> int:
    return sum(getattr(m, "packed", None) is not None for m in engine.model.modules())


def _greedy(engine, n=16):
    return list(engine.generate(list(range(5, 17)), max_new_tokens=n, temperature=0))


@pytest.mark.parametrize("level", ["avx2", "scalar"])
def test_forcing_a_cpu_without_avx512_turns_bf16_packing_off_and_the_plain_weights_run(bf16_model, forced, level):
    forced(level)
    cap = capability.detect()
    assert cap.level == level and not cap.bf16_packing
    assert f"DUET_CPU={level}" in cap.bf16_packing_why
    engine = Engine.load(bf16_model, dtype="bfloat16", max_seq_len=64, pack=True)
    assert _packed_linears(engine) == 0
    plain = Engine.load(bf16_model, dtype="bfloat16", max_seq_len=64, pack=False)
    assert _greedy(engine) == _greedy(plain)


def test_the_level_follows_torchs_kernels_when_nothing_is_forced(forced):
    forced("auto")
    cap = capability.detect()
    assert cap.forced is None
    isa = torch.backends.cpu.get_cpu_capability().upper()
    expected = "avx512" if "AVX512" in isa else "avx2" if "AVX2" in isa else None
    if expected:
        assert cap.level == expected


def test_an_unknown_duet_cpu_value_is_refused_naming_the_variable(bf16_model, forced):
    forced("avx9000")
    with pytest.raises(ModelError, match="DUET_CPU='avx9000'"):
        Engine.load(bf16_model, dtype="bfloat16", max_seq_len=64)


PROBE = r"""
import json, sys
from kernels import capability
from local_engine import Engine
cap = capability.detect()
engine = Engine.load(sys.argv[1], dtype="bfloat16", max_seq_len=64)
ids = list(engine.generate(list(range(5, 17)), max_new_tokens=8, temperature=0))
print(json.dumps({"packing": cap.bf16_packing, "why": cap.bf16_packing_why, "tokens": ids,
                  "packed": sum(getattr(m, "packed", None) is not None for m in engine.model.modules())}))
"""


def test_a_bf16_model_loads_and_generates_where_onednn_refuses_bf16(bf16_model):
    """The AVX2-only crash itself: oneDNN limited to AVX2 refuses to pack bf16 weights. The
    engine notices at detection and runs plain weights, with the same greedy tokens."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2", PYTHONPATH=str(ROOT))
    env.pop("DUET_CPU", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(bf16_model)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["packing"] is False and got["packed"] == 0
    assert "AVX-512" in got["why"] or "refused" in got["why"]
    plain = Engine.load(bf16_model, dtype="bfloat16", max_seq_len=64, pack=False)
    assert got["tokens"] == _greedy(plain, 8)


def test_an_avx512_cpu_without_bf16_dot_products_gets_float32_prompts_and_no_packing(bf16_model):
    """Skylake-SP, Cascade Lake, Ice Lake: AVX-512 but no AVX512_BF16 or AMX. oneDNN takes bf16
    there but emulates it, slower than float32, so the engine plans as on AVX2: float32
    activations, plain bf16 weights. ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` makes oneDNN behave
    so on any AVX-512 machine (on others the same holds for their own reasons)."""
    probe = PROBE.replace('"packed": sum(', '"act": str(__import__("kernels.dispatch").dispatch.plan().act_dtype), '
                                            '"native": cap.bf16_native, "packed": sum(')
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX512_CORE_VNNI", PYTHONPATH=str(ROOT))
    for var in ("DUET_CPU", "ATEN_CPU_CAPABILITY"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", probe, str(bf16_model)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["native"] is False and got["act"] == "torch.float32"
    assert got["packing"] is False and got["packed"] == 0
    if "AVX512" in torch.backends.cpu.get_cpu_capability().upper():
        assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" in got["why"]
    plain = Engine.load(bf16_model, dtype="bfloat16", max_seq_len=64, pack=False)
    assert got["tokens"] == _greedy(plain, 8)


def test_bf16_counts_as_native_only_with_bf16_dot_products(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(capability, "cpu_flags", lambda: {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"})
    assert capability.bf16_dot() == (False, "no AVX512_BF16 or AMX: oneDNN would emulate bf16, slower than float32")
    assert capability._bf16_native(None, "AVX512") is False
    monkeypatch.setattr(capability, "cpu_flags", lambda: {"avx512f", "avx512bw", "amx_bf16"})
    assert capability.bf16_dot()[0] is True
    monkeypatch.setattr(capability, "cpu_flags", lambda: None)     # flags unknown: oneDNN's word stands
    assert capability.bf16_dot()[0] is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert capability.bf16_dot() == (False, "ONEDNN_MAX_CPU_ISA=AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert capability.bf16_dot()[0] is None


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 build targets")
@pytest.mark.parametrize("level,isa", [("avx2", "avx2"), ("scalar", "scalar")])
def test_a_forced_level_builds_the_native_kernels_for_that_level(level, isa, tmp_path):
    env = dict(os.environ, DUET_CPU=level, DUET_KERNEL_CACHE=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("DUET_NATIVE_MARCH", None)
    code = "from kernels import capability, cpu_native; print(cpu_native.isa()); print(dict(capability.report())['native kernels'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    built, row = out.stdout.strip().splitlines()[-2:]
    assert built == isa
    assert row.startswith("on (") and ("AVX2" in row if isa == "avx2" else "plain C" in row)


def test_doctor_shows_which_engine_paths_this_cpu_gets(bf16_model, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[reasoner]\nbackend = "local"\npath = "{bf16_model}"\n')
    env = dict(os.environ, DUET_HOME=str(tmp_path / "home"), DUET_CPU="avx2", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "app", "--config", str(cfg), "doctor"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert "engine paths on this CPU" in out.stdout, out.stdout + out.stderr
    assert "bf16 packing" in out.stdout and "off (DUET_CPU=avx2" in out.stdout
    assert "native kernels" in out.stdout
