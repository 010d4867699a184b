"""Dequantization speed of the i-quants (kernels/iquant.py): C library vs torch fallback.

    python -m bench.iquant_bench [--rows 256] [--cols 7168] [--threads 1] [--repeat 5]

Random blocks (finite fp16 scales) of each type, ``--rows`` rows of ``--cols`` weights (7168:
DeepSeek-V3/R1's hidden size, the rows of an expert's gate / up matrix); rows per second for
the native library (``--threads`` OpenMP threads), the torch formulas, and llama.cpp's own
``dequantize_row_iq*`` (one thread; llama-cpp-python's libggml-base) where it is installed.
Best of ``--repeat``. Then the decode matmul: one activation row times a ``--matmul-rows`` x
``--cols`` matrix (2048 x 7168: an R1 expert's gate / up) per type, products per second for
the native integer dot product (kernels/csrc/iquant_dot.h; 16- and 8-bit activations) and the
tiled path (dequantize rows to float32, torch matmul: what ran before it, and still runs at 32
bits). Prints a table and writes bench/results/iquant_bench.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kernels import iquant, kquant  # noqa: E402


def random_blocks(name: str, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """uint8 [rows, row_bytes]: random bytes with a finite fp16 scale in each block."""
    rng = np.random.default_rng(seed)
    bb = iquant.IQ_TYPES[iquant.NAMES[name]][2]
    b = rng.integers(0, 256, size=(rows * cols // 256, bb), dtype=np.uint8)
    d = (rng.uniform(1e-3, 1e-1, b.shape[0]).astype(np.float16)).view("<u2")
    return torch.from_numpy(iquant.set_scales(name, b, d).reshape(rows, -1))


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def llama_row_fn(name: str):
    """llama.cpp's dequantize_row for ``name``, or None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    found = sorted((Path(llama_cpp.__file__).resolve().parent / "lib").glob("libggml-base.so*"))
    if not found:
        return None
    f = getattr(ctypes.CDLL(str(found[0])), f"dequantize_row_{name.lower()}")
    f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=7168)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--matmul-rows", type=int, default=2048, help="weight rows of the 1-row matmul (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "iquant_bench.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    so = iquant.lib()
    results = []
    print(f"{a.rows} rows x {a.cols}, {a.threads} thread(s); rows/s (best of {a.repeat})")
    print(f"{'type':8} {'native':>12} {'torch':>12} {'llama.cpp':>12} {'native/torch':>13}")
    for name in iquant.NAMES:
        b = random_blocks(name, a.rows, a.cols)
        out = torch.empty(a.rows, a.cols)
        row = {"type": name}
        if so is not None:
            row["native"] = a.rows / best(lambda: iquant.native_dequantize_rows(name, b, a.cols, out=out), a.repeat)
        row["torch"] = a.rows / best(lambda: iquant.torch_dequantize_rows(name, b, a.cols), a.repeat)
        f = llama_row_fn(name)
        if f is not None:
            y = np.empty(a.rows * a.cols, dtype=np.float32)
            row["llama_cpp_1thread"] = a.rows / best(lambda: f(b.data_ptr(), y.ctypes.data, y.size), a.repeat)
        results.append(row)

        def cell(k):
            return f"{row[k]:12.0f}" if k in row else f"{'-':>12}"

        ratio = f"{row['native'] / row['torch']:12.1f}x" if "native" in row else f"{'-':>13}"
        print(f"{name:8} {cell('native')} {cell('torch')} {cell('llama_cpp_1thread')} {ratio}")
    matmul = []
    if so is not None and a.matmul_rows:
        n = a.matmul_rows
        x = torch.randn(1, a.cols, generator=torch.Generator().manual_seed(0))
        print(f"\n1 row x [{n}, {a.cols}], {a.threads} thread(s); matmuls/s (best of {a.repeat}), isa {iquant.isa()}")
        print(f"{'type':8} {'native 16':>10} {'native 8':>10} {'tiled f32':>10} {'16 / tiled':>11}")
        for name in iquant.NAMES:
            b = random_blocks(name, n, a.cols)
            w = kquant.GGUFWeight(iquant.NAMES[name], (n, a.cols), b)
            row = {"type": name, "rows": n, "cols": a.cols}
            for act in (16, 8):
                row[f"native_{act}"] = 1 / best(lambda: iquant.native_linear(name, x, b, a.cols, act), a.repeat)
            row["tiled_f32"] = 1 / best(lambda: kquant._tiled_linear(x, w), a.repeat)
            matmul.append(row)
            print(f"{name:8} {row['native_16']:10.1f} {row['native_8']:10.1f} {row['tiled_f32']:10.1f} "
                  f"{row['native_16'] / row['tiled_f32']:10.1f}x")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": a.rows, "cols": a.cols, "threads": a.threads, "repeat": a.repeat,
                               "machine": platform.machine(), "cpus": os.cpu_count(),
                               "native": so is not None, "results": results, "isa": iquant.isa(),
                               "matmul_1row": matmul}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
