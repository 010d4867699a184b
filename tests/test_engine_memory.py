"""Loading builds the model block by block from mapped shards: the process's peak resident
memory while loading stays within 1.25x the final weights (measured as RSS in a subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_checkpoints import write_fp8_copy, write_tiny_v3

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, torch
from local_engine import Engine
import local_engine.engine, local_engine.loader, local_engine.model, local_engine.config, local_engine.rope  # imports are not the model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

torch.ones(1) + 1
from kernels import dispatch, quant  # first use of the packed-matmul library loads its code: not the model
dispatch.plan()  # the plan loads the native libraries: not the model either
w = torch.zeros(64, 64, dtype=torch.bfloat16)
if quant.can_pack(w):
    quant.dense_linear(torch.zeros(1, 64, dtype=torch.bfloat16), quant.pack_dense(w))
with torch.device("meta"):  # the meta device's first use imports a lot of torch: not the model
    args = local_engine.config.ModelArgs.from_folder(sys.argv[1])
    local_engine.model.Transformer(args), local_engine.model.Block(args, 1)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
engine = Engine.load(sys.argv[1], dtype=sys.argv[2], max_seq_len=16)
print(json.dumps({"peak": status("VmHWM") - base, "final": status("VmRSS") - base,
                  "weights": engine.weight_bytes()}))
"""


# ~32M parameters in few, larger experts: weights dominate the fixed costs (module objects, the
# matmul library's caches) that a real checkpoint would make negligible; small enough for 2 cores
SIZE = dict(vocab_size=4096, hidden_size=256, intermediate_size=512, moe_intermediate_size=384,
            n_routed_experts=32, num_experts_per_tok=4, num_hidden_layers=4, tokenizer=False)


@pytest.fixture(scope="session")
def mids(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    bf16 = write_tiny_v3(root / "bf16", shards=3, dtype="bfloat16", **SIZE)
    return {"float32": write_tiny_v3(root / "fp32", shards=3, **SIZE), "bfloat16": bf16,
            "fp8": write_fp8_copy(bf16, root / "fp8")}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("checkpoint,dtype", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                              ("fp8", "bfloat16"), ("float32", "bfloat16")])
def test_peak_memory_while_loading_stays_within_a_quarter_above_the_weights(mids, checkpoint, dtype):
    folder = mids[checkpoint]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", PROBE, str(folder), dtype], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["weights"] // (2 if dtype == "bfloat16" else 4) > 10_000_000  # the model really is in memory
    assert m["peak"] <= 1.25 * m["weights"], m
