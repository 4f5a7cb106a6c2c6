"""All-pairs symmetric TASK2VEC distance for a 1,500-task library, against plain numpy.

The baseline is the direct vectorised numpy formula, one source row against all tasks at a time
(timed on a few rows and scaled to the full matrix); ours is the tiled numba kernel.

    python benchmarks/bench_distances.py [--tasks 1500] [--filters 42016]
"""
import argparse
import time

import numpy as np

from precompute import distances


def numpy_rows(E: np.ndarray, rows: int) -> np.ndarray:
    out = np.empty((rows, E.shape[0]))
    for i in range(rows):
        x = E[i] / (E[i] + E)  # [n, d]
        y = 1 - x
        out[i] = 1 - (x * y).sum(1) / np.sqrt((x * x).sum(1) * (y * y).sum(1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--filters", type=int, default=42016)  # efficientnet_lite0
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    E = rng.lognormal(-9, 2, size=(args.tasks, args.filters)).astype(np.float32)
    distances.symmetric_matrix(E[:20])  # JIT compile / load from cache
    t0 = time.perf_counter()
    full = distances.symmetric_matrix(E)
    ours = time.perf_counter() - t0
    rows = 10
    t0 = time.perf_counter()
    ref = numpy_rows(E, rows)
    baseline = (time.perf_counter() - t0) * args.tasks / rows
    assert np.allclose(full[:rows], ref, atol=1e-4)
    print(f"all pairs {args.tasks} x {args.tasks}, {args.filters} filters")
    print(f"numba kernel : {ours:.2f} s")
    print(f"numpy rows   : {baseline:.2f} s (extrapolated from {rows} rows)")
    print(f"speed-up     : {baseline / ours:.1f}x")


if __name__ == "__main__":
    main()
