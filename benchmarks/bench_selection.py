"""Ranking the experts for a new task from its embedding alone, against brute force.

Ours: `precompute.selection.rank_experts` for every embedding-only selector, on a library file
with experts and an evaluation (default: the shipped data/demo.duckdb), for tasks of the file
taken as if new (their stored Fisher embeddings). The baseline is brute force: a linear
classifier on every expert's features for the task; its seconds per task are the ones the
`matrix` stage measured and stored in `performance.seconds` (features + classifier, summed over
the experts), because rerunning it needs the expert weights, which live outside git.

    python benchmarks/bench_selection.py [--db data/demo.duckdb] [--tasks 20]
"""
import argparse
import statistics
import time
from pathlib import Path

import duckdb
import numpy as np

from precompute import store
from precompute.selection import EMBEDDING_SELECTORS, rank_experts
from precompute.task2vec import TaskEmbedding

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=ROOT / "data" / "demo.duckdb")
    ap.add_argument("--tasks", type=int, default=20)
    args = ap.parse_args()
    con = duckdb.connect(str(args.db), read_only=True)
    info = store.get_info(con)
    method = store.task_method(info)
    ids, values = store.embedding_matrix(con, method)
    pick = np.random.default_rng(0).choice(len(ids), min(args.tasks, len(ids)), replace=False)
    brute = dict(con.execute("SELECT task_id, sum(seconds) FROM performance GROUP BY 1").fetchall())
    n_experts = con.execute("SELECT count(*) FROM experts").fetchone()[0]
    print(f"{args.db.name}: {len(ids)} tasks, {n_experts} experts; {len(pick)} tasks ranked as new")
    baseline = statistics.median(brute[ids[i]] for i in pick)
    for selector in EMBEDDING_SELECTORS:
        times = []
        for i in pick:
            e = TaskEmbedding(values[i], method, info["probe"], [],
                              {"input_size": info["input_size"]})
            t0 = time.perf_counter()
            ranking = rank_experts(con, e, selector=selector)
            times.append(time.perf_counter() - t0)
            assert len(ranking) == n_experts
        ours = statistics.median(times)
        print(f"{selector:<14} median {1000 * ours:7.1f} ms  max {1000 * max(times):7.1f} ms   "
              f"brute force {baseline:6.2f} s per task (stored)   ratio {baseline / ours:8.0f}x")
    con.close()


if __name__ == "__main__":
    main()
