"""The engine bench runs end to end (tiny model, tiny sizes): table printed, JSON with every metric."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_checkpoints import write_tiny_v3

ROOT = Path(__file__).resolve().parents[1]


def test_bench_compares_duet_and_transformers_and_writes_json(tmp_path):
    model = write_tiny_v3(tmp_path / "m", dtype="bfloat16", tokenizer=False)
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "local_engine", "bench", "--model", str(model), "--threads", "1",
                        "--prefill", "16", "--context", "48", "--decode-steps", "8", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    duet, hf = report["results"]["duet"], report["results"]["transformers"]
    for row in (duet, hf):
        assert {"load_s", "peak_rss_load_mb", "prefill_tok_s", "decode_tok_s_ctx0", "decode_tok_s_ctx48",
                "cache_bytes_per_token"} <= set(row)
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s_ctx0"] > 0
    # both engines cache the same latent: (kv_lora 48 + rope 8) x 3 layers x 2 bytes
    assert duet["cache_bytes_per_token"] == hf["cache_bytes_per_token"] == (48 + 8) * 3 * 2
    assert "decode_tok_s_ctx0" in r.stdout and "speedup" in r.stdout


def test_the_llama_cpp_build_is_named_from_its_system_info():
    """The GGUF and quant benches say which llama.cpp build they ran (an AVX2 build or one for
    this machine's AVX-512): the x86 SIMD levels and ARM extensions switched on, in its order."""
    import llama_cpp

    from bench.quant_bench import llama_build

    assert llama_build("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | OPENMP = 1 |") == "AVX2"
    assert llama_build("CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 |") == \
        "AVX2+AVX512+AVX512_VNNI+AMX_INT8"
    assert llama_build("CPU : NEON = 1 | ARM_FMA = 1 | DOTPROD = 1 | SVE = 0 |") == "NEON+DOTPROD"
    assert llama_build("") == llama_build(None) == "unknown"
    assert llama_build(llama_cpp.llama_print_system_info().decode()) != "unknown"   # the installed build


def test_the_dsa_bench_runs_past_index_topk_and_writes_json(tmp_path):
    """bench/dsa_bench.py end to end at one context past V3.2's index_topk (its cache tiled out
    from a real 1,024-token prefill, which the engine must accept as written): all three rows."""
    out = tmp_path / "dsa.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "dsa_bench.py"), "--contexts", "2100", "--steps", "2",
                        "--hf-steps", "1", "--model", str(tmp_path / "model"), "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["context"] == 2100
    for name in ("duet sparse", "duet dense", "transformers"):
        assert row[name]["ms_per_step"] > 0, name


def test_the_gguf_bench_writes_i_quant_expert_blocks_that_read_back_finite_within_their_scale():
    """bench/gguf_bench.py's i-quant files: each expert tensor whole rows of the named type's
    blocks (down in its own type), dequantizing to finite weights within the scale it set."""
    import numpy as np
    import torch

    from bench.gguf_bench import IQ_DOWN, IQ_FILES, file_config, iq_blocks
    from kernels import iquant

    for name in IQ_FILES:
        for kind in (name, IQ_DOWN[name]):
            gtype, b = iq_blocks(kind, (3, 4, 512), np.random.default_rng(0))
            tid = iquant.NAMES[kind]
            assert int(gtype) == tid and b.dtype == np.uint8
            assert b.shape == (3, 4, 2 * iquant.IQ_TYPES[tid][2])
            w = iquant.dequantize_rows(tid, torch.from_numpy(b.reshape(12, -1)), 512)
            # |w| <= d x sub-scale x level: at most 0.01 x 31 x 62 for any i-quant
            assert torch.isfinite(w).all() and 0 < w.abs().max() <= 0.01 * 31 * 62
    assert file_config({"moe_intermediate_size": 1408}, "IQ1_S")["moe_intermediate_size"] == 2048
    assert file_config({"moe_intermediate_size": 1408}, "Q8_0")["moe_intermediate_size"] == 1408


def test_the_matvec_benchs_row_at_a_time_build_gives_the_default_builds_products():
    """bench/gguf_matvec_bench.py's baseline (-DKQ_ONE_ROW) and the default build (eight Q4_0 /
    Q4_K rows at a time on AVX2) compute the same integers: the same products up to float32
    sums' order, for every type it times, 1 and 3 activation rows, both precisions."""
    from bench.gguf_matvec_bench import TYPES, one_row_build, random_matrix
    from kernels import kquant

    if kquant.lib() is None:
        pytest.skip("no C compiler: the native GGUF kernels did not build")
    builds = (one_row_build(), kquant.lib())
    n, k = 20, 512   # two groups of eight rows and four more
    for name, t in TYPES.items():
        w = random_matrix(t, n, k, seed=t)
        for rows in (1, 3):
            x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
            for act in (8, 16):
                ys = []
                for so in builds:
                    y = torch.empty(rows, n)
                    assert so.kq_gemm(t, x.data_ptr(), rows, k, w.ctypes.data, w.shape[1], n, y.data_ptr(), n, 1, act) == 0
                    ys.append(y)
                assert torch.isfinite(ys[1]).all()
                rel = ((ys[0] - ys[1]).abs().max() / ys[1].abs().max()).item()
                assert rel < 1e-5, (name, rows, act, rel)
