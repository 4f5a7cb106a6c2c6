"""Seed-to-seed noise of the Fisher estimators against batch size, on 8 small demo tasks.

Two or three tasks per family of ``read_demo_library(seed=0, scale=0.3)`` (a seeded choice),
each embedded with seeds 0 and 1 per (method, batch); prints the mean seed-to-seed d_sym, the
median d_sym between the tasks, their ratio and the seconds per embedding (one torch thread).

    python benchmarks/fisher_noise_sweep.py INPUT_SIZE METHODS BATCHES [TASKS]
    python benchmarks/fisher_noise_sweep.py 32 montecarlo,rademacher 32,8
"""
import itertools
import sys
import time

import numpy as np
import torch

from precompute import distances, embed, probes
from precompute.libraries import task_data
from precompute.libraries.demo import read_demo_library


def main() -> None:
    size, methods = int(sys.argv[1]), sys.argv[2].split(",")
    batches = [int(b) for b in sys.argv[3].split(",")]
    n_tasks = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    by_family: dict[str, list] = {}
    for spec in read_demo_library(seed=0, scale=0.3, families=("fashion_mnist", "glyphs", "digits")):
        by_family.setdefault(spec.family, []).append(spec)
    picked = []
    for family, specs in sorted(by_family.items()):
        count = 2 if family == "digits" else n_tasks // 3 + 1
        picked += [specs[i] for i in rng.choice(len(specs), min(len(specs), count), replace=False)]
    probe = probes.create("efficientnet_lite0")
    tasks = [task_data(s.task_id, list(s.records()), "train", size) for s in picked]
    print("task sizes:", [t.size for t in tasks])
    for method, batch in itertools.product(methods, batches):
        t0 = time.perf_counter()
        runs = [[embed(t, probe, method=method, input_size=size, seed=seed, batch_size=batch)
                 for t in tasks] for seed in (0, 1)]
        seconds = (time.perf_counter() - t0) / (2 * len(tasks))
        noise = np.mean([distances.symmetric(a, b) for a, b in zip(*runs)])
        between = np.median([distances.symmetric(runs[0][i], runs[0][j])
                             for i, j in itertools.combinations(range(len(tasks)), 2)])
        print(f"{size}px {method} batch {batch}: noise {noise:.4f} between {between:.4f} "
              f"ratio {noise / between:.3f}  {seconds:.1f} s/embedding", flush=True)


if __name__ == "__main__":
    main()
