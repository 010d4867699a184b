"""One token through one GGUF matrix (decode's matrix-vector product), Duet's native kernels:
every row alone (the build before eight-row products, ``-DKQ_ONE_ROW``) against the default
build, side by side in one run.

    python -m bench.gguf_matvec_bench [--threads 1] [--types Q4_0,Q8_0,Q4_K,Q6_K] [--reps 40]

Shapes: DeepSeek-V2-Lite's dense FFN (10944 x 2048, and 2048 x 10944 as its down projection),
random blocks with small finite fp16 scales; four copies of each matrix in turn, so each product
reads its weights from DRAM, as decode does (a model's matrices outgrow the caches). Activations
at 16 bits (Duet's default) and 8 (llama.cpp's precision). Reports the best time of ``--reps``
products per cell (the two builds taking turns) as GB/s of weights and GMAC/s, and writes bench/results/gguf_matvec_bench.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import quant_bench as qb  # noqa: E402
from kernels import cpu_native, kquant  # noqa: E402

TYPES = {"Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
SHAPES = ((10944, 2048), (2048, 10944))
COPIES = 4


def random_matrix(type_id: int, n: int, k: int, seed: int) -> np.ndarray:
    """n rows of random blocks whose fp16 scales (d, and dmin where the type has one) are small and finite."""
    _, bs, bb = kquant.TYPES[type_id]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, k // bs, bb), dtype=np.uint8)
    scales = {2: (0,), 8: (0,), 12: (0, 2), 14: (208,)}[type_id]
    half = (rng.standard_normal((n, k // bs)) * 0.01).astype(np.float16).view(np.uint8).reshape(n, k // bs, 2)
    for at in scales:
        raw[..., at:at + 2] = half
    return raw.reshape(n, -1)


def one_row_build() -> ctypes.CDLL:
    path = cpu_native.build_any(None, source=kquant.SOURCE, headers=kquant.HEADERS,
                                extra=kquant.EXTRA_FLAGS + ("-DKQ_ONE_ROW",))
    return kquant._bind(ctypes.CDLL(str(path)))


def time_products(builds: dict, type_id: int, mats: list[np.ndarray], k: int, act: int, threads: int,
                  reps: int) -> dict[str, float]:
    """The best time of each build over ``reps`` products, the builds taking turns (so a burst of
    other load on the machine falls on both)."""
    n, row_bytes = mats[0].shape
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(0))
    y = torch.empty(1, n)
    best = dict.fromkeys(builds, float("inf"))
    for r in range(reps):
        w = mats[r % len(mats)]
        for b in (list(builds) if r % 2 else list(builds)[::-1]):
            t = time.perf_counter()
            rc = builds[b].kq_gemm(type_id, x.data_ptr(), 1, k, w.ctypes.data, row_bytes, n, y.data_ptr(), n,
                                   threads, act)
            best[b] = min(best[b], time.perf_counter() - t)
            if rc:
                raise RuntimeError(f"kq_gemm returned {rc}")
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gguf_matvec_bench.json"))
    a = ap.parse_args(argv)
    unknown = set(a.types.split(",")) - set(TYPES)
    if unknown:
        ap.error(f"--types: {', '.join(sorted(unknown))} (choose from {', '.join(TYPES)})")
    torch.set_num_threads(a.threads)
    builds = {"one row": one_row_build(), "default": kquant.lib()}
    if builds["default"] is None:
        print("the native GGUF kernels did not build here", file=sys.stderr)
        return 1
    rows = []
    print(f"CPU: {qb._cpu_name()}; kernels {kquant.isa()}; {a.threads} thread(s); best of {a.reps} products, "
          f"{COPIES} copies of each matrix in turn")
    print(f"{'type':<6}{'matrix':>14}{'act':>5}{'one row GB/s':>14}{'default GB/s':>14}{'GMAC/s':>9}{'ratio':>7}")
    for name in a.types.split(","):
        t = TYPES[name]
        for n, k in SHAPES:
            if k % kquant.TYPES[t][1]:
                continue   # (a K-quant's rows are whole super-blocks of 256: 10944 is none)
            mats = [random_matrix(t, n, k, seed) for seed in range(COPIES)]
            size = mats[0].nbytes
            for act in (16, 8):
                secs = time_products(builds, t, mats, k, act, a.threads, a.reps)
                row = {"type": name, "n": n, "k": k, "act_bits": act, "bytes": size,
                       **{f"{b} s": s for b, s in secs.items()},
                       "one row GB/s": size / secs["one row"] / 1e9, "default GB/s": size / secs["default"] / 1e9,
                       "default GMAC/s": n * k / secs["default"] / 1e9, "ratio": secs["one row"] / secs["default"]}
                rows.append(row)
                print(f"{name:<6}{f'{n} x {k}':>14}{act:>5}{row['one row GB/s']:>14.2f}{row['default GB/s']:>14.2f}"
                      f"{row['default GMAC/s']:>9.1f}{row['ratio']:>6.2f}x", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": qb._cpu_name(), "isa": kquant.isa(), "threads": a.threads, "reps": a.reps,
                               "copies": COPIES, "rows": rows, "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
