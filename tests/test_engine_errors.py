"""A folder that is not a model the engine can run fails with one line naming file and tensor;
`python -m local_engine` turns that into exit status 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local_engine import Engine
from local_engine.errors import ModelError
from tests.tiny_checkpoints import write_tiny_v3

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def good(tmp_path_factory):
    return write_tiny_v3(tmp_path_factory.mktemp("err") / "v3", shards=2)


@pytest.fixture
def copy(good, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(good, dst)
    return dst


def _shards(folder):
    return sorted(p for p in folder.glob("*.safetensors"))


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_missing_config_names_the_file(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        Engine.load(tmp_path)


def test_unknown_architecture_is_named(copy):
    _edit_config(copy, architectures=["LlamaForCausalLM"], model_type="llama")
    with pytest.raises(ModelError, match="unsupported architecture.*LlamaForCausalLM"):
        Engine.load(copy)


def test_truncated_shard_names_the_file(copy):
    shard = _shards(copy)[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=shard.name):
        Engine.load(copy, dtype="float32")


def test_garbage_shard_names_the_file(copy):
    shard = _shards(copy)[0]
    shard.write_bytes(b"\x00\x01not safetensors at all")
    with pytest.raises(ModelError, match=shard.name):
        Engine.load(copy, dtype="float32")


def test_missing_shard_named_in_the_index(copy):
    shard = _shards(copy)[1]
    shard.unlink()
    with pytest.raises(ModelError, match=f"{shard.name}.*missing"):
        Engine.load(copy)


def test_shape_mismatch_names_the_tensor(copy):
    _edit_config(copy, v_head_dim=10)
    with pytest.raises(ModelError, match=r"model-0000\d-of-0000\d\.safetensors: tensor model\.layers\.0\.self_attn\.kv_b_proj\.weight: "
                       r"shape \(128, 48\), config.json expects \(120, 48\)"):
        Engine.load(copy, dtype="float32")


def test_a_layer_the_config_promises_but_the_files_lack_is_named(copy):
    _edit_config(copy, num_hidden_layers=5)
    with pytest.raises(ModelError, match="no tensors for layer 3"):
        Engine.load(copy, dtype="float32")


def test_a_missing_tensor_is_named(copy):
    index = copy / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    del data["weight_map"]["model.layers.2.mlp.gate.e_score_correction_bias"]
    index.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"model\.layers\.2: no tensor in the checkpoint for ffn\.gate\.bias"):
        Engine.load(copy, dtype="float32")


def test_cli_reports_a_bad_folder_with_exit_status_2(copy):
    _edit_config(copy, kv_lora_rank=40)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "local_engine", "generate", "--model", str(copy), "hi"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "kv_a_layernorm.weight" in lines[0] and ".safetensors" in lines[0] and "Traceback" not in r.stderr
