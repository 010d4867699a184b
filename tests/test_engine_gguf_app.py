"""A deepseek2 GGUF in the app: config accepts it for backend "local", and `duet doctor` and
discovery say which backends can serve a GGUF file, and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.config import ConfigError, load_config
from app.discovery import find_model_files
from app.doctor import check_role

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parent.parent


def write_header_only(path: Path, arch: str, types: dict[str, "gguf.GGMLQuantizationType"]) -> Path:
    """A small real GGUF file: architecture key and one [32, 256] tensor per type."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(4096)
    for name, t in types.items():
        bs, bb = gguf.GGML_QUANT_SIZES[t]
        w.add_tensor(name, np.zeros((32, 256 // bs * bb), dtype=np.uint8), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


Q = gguf.GGMLQuantizationType


@pytest.fixture
def files(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    ok = write_header_only(models / "ds-lite-Q4_K_M.gguf", "deepseek2",
                           {"blk.0.ffn_up.weight": Q.Q4_K, "output.weight": Q.Q6_K, "blk.0.attn_k_b.weight": Q.Q5_0})
    iq = write_header_only(models / "ds-TQ1_0.gguf", "deepseek2", {"blk.0.ffn_up_exps.weight": Q.TQ1_0})
    other = write_header_only(models / "llama-Q4_0.gguf", "llama", {"blk.0.ffn_up.weight": Q.Q4_0})
    return ok, iq, other


def _config(tmp_path, body: str):
    p = tmp_path / "config.toml"
    p.write_text(body)
    return load_config(p)


def test_the_local_backend_takes_a_gguf_path_but_not_a_quant_setting_with_it(files, tmp_path):
    ok, _, _ = files
    cfg = _config(tmp_path, f'[reasoner]\nbackend = "local"\npath = "{ok}"\n')
    assert cfg.role("reasoner").path == ok
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, f'[reasoner]\nbackend = "local"\npath = "{ok}"\nquant = "int4"\n')
    assert "reasoner.quant" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, f'[reasoner]\nbackend = "local"\npath = "{tmp_path / "missing.gguf"}"\n')
    assert "reasoner.path" in str(e.value)


def test_doctor_says_which_backend_serves_each_gguf_and_why(files, tmp_path):
    ok, iq, other = files
    good = check_role(_config(tmp_path, f'[reasoner]\nbackend = "local"\npath = "{ok}"\n').role("reasoner"), "c")
    assert good.ok and "deepseek2" in good.detail and "Q4_K" in good.detail and "llama.cpp" in good.detail
    assert good.context == "4096"
    bad = check_role(_config(tmp_path, f'[reasoner]\nbackend = "local"\npath = "{iq}"\n').role("reasoner"), "c")
    assert not bad.ok and "TQ1_0" in bad.detail and "blk.0.ffn_up_exps.weight" in bad.detail
    assert 'backend = "llama.cpp"' in bad.fix
    arch = check_role(_config(tmp_path, f'[reasoner]\nbackend = "local"\npath = "{other}"\n').role("reasoner"), "c")
    assert not arch.ok and "'llama'" in arch.detail
    if __import__("importlib").util.find_spec("llama_cpp") is not None:
        lc = check_role(_config(tmp_path, f'[reasoner]\nbackend = "llama.cpp"\npath = "{ok}"\n').role("reasoner"), "c")
        assert lc.ok and 'backend = "local" runs it too' in lc.detail


def test_discovery_offers_the_local_engine_first_for_a_deepseek2_file_it_runs(files, tmp_path):
    ok, iq, other = files
    found = {Path(f.location).name: f for f in find_model_files([ok.parent])}
    assert found[ok.name].backends == ("local", "llama.cpp")
    assert 'backend = "local"' in found[ok.name].config_snippet()
    assert "or llama.cpp" in found[ok.name].detail
    for name in (iq.name, other.name):
        assert found[name].backends == ("llama.cpp",)
        assert 'backend = "llama.cpp"' in found[name].config_snippet()
        assert "llama.cpp only" in found[name].detail


def test_reading_a_gguf_header_for_doctor_does_not_import_torch(files):
    ok, _, _ = files
    code = ("import sys; from local_engine.gguf_file import summarize; s = summarize(sys.argv[1]); "
            "print(s.runs_locally, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, str(ok)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.split() == ["True", "False"], r.stderr


def test_the_local_backend_streams_from_a_deepseek2_gguf_as_from_the_folder_it_came_from(tmp_path):
    pytest.importorskip("torch")
    from app.backends import close_all, make_backend
    from app.backends.base import ChatMessage
    from vocab.events import Done
    from app.config import RoleConfig, Sampling
    from tests import gguf_helpers as H
    from tests.backend_helpers import collect
    from tests.tiny_checkpoints import write_tiny_v3

    hf = write_tiny_v3(tmp_path / "hf", rope_scaling=None)
    path = H.write_gguf(hf, tmp_path / "m.gguf")
    greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=16)
    ask = [ChatMessage("user", "Plan a cache.")]
    results = []
    for p in (path, hf):
        close_all()
        rc = RoleConfig(role="reasoner", backend="local", path=p, dtype="float32", context=128)
        results.append(collect(make_backend(rc).stream(ask, greedy)))
    close_all()
    gg, folder = results
    assert isinstance(gg.end, Done) and gg.thinking  # the R1 template from the metadata opened <think>
    assert (gg.thinking, gg.answer) == (folder.thinking, folder.answer)
    assert gg.usage.prompt_tokens == folder.usage.prompt_tokens
