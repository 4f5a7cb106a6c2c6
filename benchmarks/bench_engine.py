"""Ray's overhead: the same small library with ``--engine local`` and ``--engine ray``, in one run.

A library of digit-pair and Fashion-MNIST-pair tasks is written to disk as PNG files (the Ray
workers read them), then built, its experts trained and its matrix filled, alternately with
the local executor (this process, torch's default threads) and with a Ray instance started
here with as many workers as CPUs (one torch thread each). Each run gets a fresh library file
and cache. Printed: seconds per stage, the ratio ray / local with and without Ray's start,
the measured per-unit costs, and a PROJECTION for the paper's library on 1 and 8 H200 GPUs
from those costs and the GPU speeds in FACTS.md (see ``projection``; not a measurement).

    python benchmarks/bench_engine.py [--repeats 2] [--tasks 6] [--per-class 30] [--steps 40]

The machine is shared: run it when ``uptime`` shows a low load, and repeat.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import write_pair_manifest  # noqa: E402
from precompute import build, engine, experts, store, transfer  # noqa: E402
from precompute.libraries.user import read_user_library  # noqa: E402

DIGIT_PAIRS = [(0, 1), (3, 8), (1, 7), (4, 9), (2, 5), (6, 0), (5, 6), (7, 9)]
FASHION_PAIRS = [(0, 1), (7, 9), (5, 9), (2, 4), (0, 6), (1, 3), (5, 7), (8, 9)]
PAPER = {"tasks": 1460, "experts": 156, "pairs": 228_000}


def write_library(root: Path, tasks: int, per_class: int) -> Path:
    """``tasks`` digit pairs and ``tasks`` Fashion-MNIST pairs of ``per_class`` images a class."""
    d = load_digits()
    digits = ((d.images / 16 * 255).astype(np.uint8), d.target)
    return write_pair_manifest(root, digits, DIGIT_PAIRS[:tasks], FASHION_PAIRS[:tasks], per_class)


def run_stages(specs, manifest: Path, work: Path, executor, steps: int) -> dict:
    db, cache = work / "lib.duckdb", work / "cache"
    t = {}
    t0 = time.perf_counter()
    build.build_library(specs, db, library=str(manifest), input_size=64, maps=("tsne",),
                        progress=False, executor=executor)
    t["build"] = time.perf_counter() - t0
    with store.updating(db) as con:
        t0 = time.perf_counter()
        experts.build_experts(con, specs, cache, num_experts=2, sources=2, steps=steps,
                              progress=False, executor=executor)
        t["experts"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        experts.compute_matrix(con, specs, cache, progress=False, executor=executor)
        t["matrix"] = time.perf_counter() - t0
        t["embed_s_per_task"] = con.execute("SELECT avg(s) FROM (SELECT sum(seconds) s FROM "
                                            "embeddings GROUP BY task_id)").fetchone()[0]
        t["train_s_per_expert"] = con.execute("SELECT avg((meta->>'seconds_total')::DOUBLE) "
                                              "FROM experts WHERE kind = 'finetuned'").fetchone()[0]
        t["pairs"] = con.execute("SELECT count(*) FROM performance").fetchone()[0]
    return t


def unit_latency(ex, n: int = 200) -> float:
    """Seconds per no-op unit through the executor (scheduling + transfer), all workers busy."""
    units = [engine.Unit(str(i), (i, 1)) for i in range(n)]
    t0 = time.perf_counter()
    for _ in ex.run(pow, units, progress=False):
        pass
    return (time.perf_counter() - t0) / n


def paper_pair_seconds(seed: int = 0) -> float:
    """One matrix pair's CPU work at the paper library's caps (1,000 train / 500 test images,
    1,280 EfficientNet-Lite0 features, 2 classes), on seeded synthetic features."""
    rng = np.random.default_rng(seed)
    y, yt = rng.integers(0, 2, 1000), rng.integers(0, 2, 500)
    shift = rng.normal(0, 1, 1280).astype(np.float32)
    x = rng.normal(0, 1, (1000, 1280)).astype(np.float32) + 0.2 * shift * y[:, None]
    xt = rng.normal(0, 1, (500, 1280)).astype(np.float32) + 0.2 * shift * yt[:, None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as a Ray unit has
    try:
        t0 = time.perf_counter()
        transfer.linear_probe(x, y, xt, yt, 2)
        transfer.logme(x, y)
        transfer.knn_accuracy(x, y)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def projection(pair_s: float, latency_s: float, gpus: int, cpus_per_gpu: int = 8) -> dict:
    """PROJECTION (not a measurement) for the paper's library on ``gpus`` H200s.

    GPU work from FACTS.md's H200 speeds of a MobileNetV2-class probe at 64 px, bf16, batch 512
    (112k img/s forward, 29k img/s forward+backward), with these assumptions: 1,500 training
    images per task on average (embedding: one forward pass + min(max(N, 500), 10,000) Fisher
    samples, forward+backward); an expert: 300 steps of batch 64 through the tail (taken as a
    whole forward+backward: an upper bound); the matrix: 1,500 images per task through each
    expert's tail (a whole forward: an upper bound) and one pair's CPU fit (``pair_s``, measured
    here at the paper's size) on ``cpus_per_gpu`` cores per GPU; image decoding not counted.
    Ray's per-unit cost is ``latency_s`` (measured here) per unit, spread over the workers.
    """
    n, samples = 1500, min(max(1500, 500), 10_000)
    embed = PAPER["tasks"] * (n / 112e3 + samples / 29e3)
    train = PAPER["experts"] * 300 * 64 / 29e3
    tails = PAPER["pairs"] * n / 112e3
    fits = PAPER["pairs"] * pair_s / (cpus_per_gpu * gpus)
    units = PAPER["tasks"] + PAPER["experts"] + PAPER["tasks"] + PAPER["pairs"] / 25
    return {"build_h": embed / gpus / 3600, "experts_h": train / gpus / 3600,
            "matrix_h": max(tails / gpus, fits) / 3600,
            "ray_overhead_h": units * latency_s / gpus / 3600}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=6, help="tasks per family (2 families)")
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--steps", type=int, default=40, help="fine-tuning steps per expert")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads locally), load average "
          f"{os.getloadavg()[0]:.2f} at the start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        manifest = write_library(tmp / "images", args.tasks, args.per_class)
        specs = read_user_library(manifest)
        print(f"library: {len(specs)} tasks, {2 * args.per_class} images each, 64 px; "
              f"2 experts + ImageNet, {args.steps} steps; matrix 3 x {len(specs)}")
        runs = {"local": [], "ray": []}
        starts, latencies = [], []
        for r in range(args.repeats):
            runs["local"].append(run_stages(specs, manifest, _fresh(tmp / f"local{r}"), None,
                                            args.steps))
            t0 = time.perf_counter()
            ex = engine.RayExecutor("local", progress=False)
            starts.append(time.perf_counter() - t0)
            try:
                runs["ray"].append(run_stages(specs, manifest, _fresh(tmp / f"ray{r}"), ex,
                                              args.steps))
                latencies.append(unit_latency(ex))
            finally:
                ex.close()
            print(f"repeat {r + 1}: local {_total(runs['local'][-1]):.1f} s, ray "
                  f"{_total(runs['ray'][-1]):.1f} s + {starts[-1]:.1f} s to start Ray "
                  f"({ex.workers} workers), load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"\n{'stage':<10} {'local s':>9} {'ray s':>9} {'ratio':>7}   (median of {args.repeats})")
        for stage in ("build", "experts", "matrix"):
            a = statistics.median(t[stage] for t in runs["local"])
            b = statistics.median(t[stage] for t in runs["ray"])
            print(f"{stage:<10} {a:9.1f} {b:9.1f} {b / a:7.2f}")
        local = statistics.median(_total(t) for t in runs["local"])
        ray = statistics.median(_total(t) for t in runs["ray"])
        start = statistics.median(starts)
        print(f"{'total':<10} {local:9.1f} {ray:9.1f} {ray / local:7.2f}")
        print(f"ratio ray / local: {ray / local:.2f}x without Ray's start, "
              f"{(ray + start) / local:.2f}x with it ({start:.1f} s)")
        latency = statistics.median(latencies)
        unit = runs["local"][0]
        pair_s = paper_pair_seconds()
        print(f"\nmeasured per unit: embedding {unit['embed_s_per_task']:.2f} s/task, expert "
              f"{unit['train_s_per_expert']:.2f} s, matrix {unit['matrix'] / unit['pairs']:.2f} s/pair "
              f"(this library); Ray round trip {latency * 1e3:.1f} ms/unit; one matrix pair at "
              f"the paper's size (1,000/500 images, 1,280 features) {pair_s:.2f} s on one CPU")
        print("\nPROJECTION (not measured) for the paper's library: 1,460 tasks, 156 experts, "
              "228,000 pairs; H200 speeds from FACTS.md, 8 CPU cores per GPU, assumptions in "
              "bench_engine.projection")
        for gpus in (1, 8):
            p = projection(pair_s, latency, gpus)
            print(f"  {gpus} GPU{'s' if gpus > 1 else ' '}: build {p['build_h']:.2f} h, experts "
                  f"{p['experts_h']:.2f} h, matrix {p['matrix_h']:.2f} h, Ray's share "
                  f"{p['ray_overhead_h']:.3f} h; total {sum(p.values()):.2f} h")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _total(t: dict) -> float:
    return t["build"] + t["experts"] + t["matrix"]


if __name__ == "__main__":
    sys.exit(main())
