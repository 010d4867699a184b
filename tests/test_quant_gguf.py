"""The deepseek2 GGUF writer the quant bench uses: llama.cpp runs what it writes, and the
model it runs is the one Duet runs (same logits on a tiny V3 checkpoint)."""

import json

import numpy as np
import pytest
import torch

from bench.gguf_deepseek2 import gguf_tensors_from_hf, write_deepseek2_gguf
from local_engine import Engine
from tests.tiny_checkpoints import write_tiny_v3

llama_cpp = pytest.importorskip("llama_cpp")


def test_llama_cpp_runs_the_written_gguf_with_duet_s_logits(tmp_path):
    from safetensors.torch import load_file

    path = write_tiny_v3(tmp_path / "v3", hidden_size=128, intermediate_size=192, moe_intermediate_size=64,
                         rope_scaling=None)
    cfg = json.loads((path / "config.json").read_text())
    cfg.setdefault("scoring_func", "sigmoid")
    state = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(f)))
    gguf = tmp_path / "m.gguf"
    write_deepseek2_gguf(gguf, cfg, gguf_tensors_from_hf(state, cfg))

    ids = torch.randint(2, 400, (1, 16), generator=torch.Generator().manual_seed(0))
    duet = Engine.load(path, dtype="float32", max_seq_len=64).forward(ids)[0].numpy()
    llm = llama_cpp.Llama(str(gguf), n_ctx=64, n_threads=1, n_batch=64, flash_attn=False, type_k=0, type_v=0,
                          logits_all=True, verbose=False)
    llm.eval(ids[0].tolist())
    ours = np.asarray(llm.scores[:16])
    print("max |llama.cpp - duet|", np.abs(ours - duet).max(), "logit scale", np.abs(duet).max())
    assert np.abs(ours - duet).max() < 1e-3, np.abs(ours - duet).max()
