"""Noise and meaning of one Fisher setting on a slice of the demo library, in one run.

The slice (``read_demo_library(seed=0, scale=SCALE)``, all four families): 40 glyph scripts taken
evenly along the genealogy, the 14 whole-pool Fashion-MNIST tasks of ``all-images/footwear`` and
``all-images/other``, 6 other Fashion-MNIST tasks, 2 digit tasks and 12 emoji tasks taken evenly.
Every task's train split is embedded as ``build`` does (per-task seed ``build.task_seed``) for
build seeds 0 and 1. Printed:

- noise: mean d_sym of a task to itself under the other seed; between: median d_sym between
  different tasks; their ratio (target <= 0.1); stable neighbours: how many of its 5 nearest
  slice tasks a task keeps under the other seed (target >= 4.5);
- tenfold: per-filter Spearman of the estimate with a 10x-samples run (the ``--tenfold``
  smallest tasks);
- size: Spearman of d_sym with |log size ratio| over glyph pairs (target <= 0.1);
- glyph and emoji rho: Spearman of d_sym (domain: cosine) with the taxonomic distance, with a
  95 % bootstrap interval over tasks; the glyph neighbourhood curve against chance, k = 1..10;
- one-pool precision: related tasks among the 5 nearest, whole-pool tasks (domain, chance);
- label noise: embedding norm of 300 digits at label noise 0 / 0.3 / 0.6 / 0.9 (must rise);
- seconds per task (the embedding, not the image rendering).

    python benchmarks/fisher_slice.py [--method rademacher] [--input-size 32] [--batch-size B]
                                      [--head-l2 X] [--tenfold 5]
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from precompute import analysis, distances, embed, embed_methods, probes
from precompute.build import task_seed
from precompute.libraries import task_data
from precompute.libraries.demo import read_demo_library
from precompute.tasks import task_from_arrays

SCALE = 0.3


def pick_slice(specs):
    def even(items, n):
        return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]

    fam = {f: [s for s in specs if s.family == f] for f in ("glyphs", "fashion_mnist", "digits", "emoji")}
    pool = [s for s in fam["fashion_mnist"]
            if s.meta.get("attribute_group") in ("all-images/footwear", "all-images/other")]
    other = even([s for s in fam["fashion_mnist"] if not s.meta.get("attribute_group", "").startswith("all-images")], 6)
    return even(fam["glyphs"], 40) + pool + other + fam["digits"][:2] + even(fam["emoji"], 12)


def knn(dist: np.ndarray, k: int) -> list[set[int]]:
    order = np.argsort(np.where(np.eye(len(dist), dtype=bool), np.inf, dist), axis=1)[:, :k]
    return [set(row) for row in order]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="rademacher")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--head-l2", type=float)
    ap.add_argument("--head-l2-images", type=int,
                    help="scale the head's L2 weight as head_l2 * this / task size")
    ap.add_argument("--head-calibration", action="store_true")
    ap.add_argument("--head-folds", type=int,
                    help="score each image with a head fitted on the other folds (0: one head, "
                         "in-sample; default: EmbedConfig's)")
    ap.add_argument("--head-adam-steps", type=int, default=0,
                    help="train the head with the reference's Adam for this many steps")
    ap.add_argument("--tenfold", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2, choices=(1, 2),
                    help="1: one build seed, no noise or stability numbers (faster)")
    args = ap.parse_args()
    options = {"input_size": args.input_size}
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.head_l2 is not None:
        options["head_l2"] = args.head_l2
    if args.head_l2_images:
        options["head_l2_images"] = args.head_l2_images
    if args.head_folds is not None:
        options["head_folds"] = args.head_folds
    if args.head_calibration:
        options["head_calibration"] = True
    if args.head_adam_steps:
        options["head_adam_steps"] = args.head_adam_steps
    torch.set_num_threads(1)  # comparable seconds on a shared 2-core machine
    probe = probes.create("efficientnet_lite0")
    specs = pick_slice(read_demo_library(seed=0, scale=SCALE))
    tasks = [task_data(s.task_id, list(s.records()), "train", args.input_size) for s in specs]

    runs, seconds = {}, []
    seeds = range(args.seeds)
    for build_seed in seeds:
        for spec, task in zip(specs, tasks):
            t0 = time.perf_counter()
            runs[build_seed, spec.task_id] = embed_methods(
                task, probe, methods=(args.method, "domain"), seed=task_seed(build_seed, spec.task_id),
                **options)
            seconds.append(time.perf_counter() - t0)
    ids = [s.task_id for s in specs]
    fisher = {b: np.stack([runs[b, t][args.method].values for t in ids]) for b in seeds}
    domain = np.stack([runs[0, t]["domain"].values for t in ids])
    d0 = distances.symmetric_matrix(fisher[0])
    between = float(np.median(d0[np.triu_indices(len(ids), 1)]))
    noise = stable = None
    if args.seeds == 2:
        d1 = distances.symmetric_matrix(fisher[1])
        noise = float(np.mean([distances.symmetric(a, b) for a, b in zip(fisher[0], fisher[1])]))
        stable = float(np.mean([len(a & b) for a, b in zip(knn(d0, 5), knn(d1, 5))]))

    tenfold = []  # on the smallest tasks: 10x the samples of a 2,400-image task takes minutes
    for spec, task in sorted(zip(specs, tasks), key=lambda st: st[1].size)[: args.tenfold]:
        base = runs[0, spec.task_id][args.method]
        more = embed(task, probe, method=args.method, seed=task_seed(0, spec.task_id),
                     fisher_samples=10 * base.meta["fisher_samples"], **options)
        tenfold.append(spearmanr(base.values, more.values).statistic)

    out = {"setting": {"method": args.method, **options, "scale": SCALE, "tasks": len(ids)},
           "seconds_per_task": float(np.mean(seconds)), "noise": noise, "between": between,
           "noise_ratio": noise and noise / between, "stable_neighbours_of_5": stable,
           "tenfold_spearman": float(np.mean(tenfold)) if tenfold else None}
    family = np.array([s.family for s in specs])
    dom = distances.cosine_matrix(domain)
    for fam in ("glyphs", "emoji"):
        keep = np.flatnonzero(family == fam)
        sub = np.ix_(keep, keep)
        tax = analysis.taxonomy_matrix([specs[i].taxonomy for i in keep])
        out[fam] = {
            "rho": analysis.taxonomy_correlation(d0[sub], tax)[0],
            "rho_interval": analysis.bootstrap_correlation(d0[sub], tax),
            "rho_domain": analysis.taxonomy_correlation(dom[sub], tax)[0],
            "rho_domain_interval": analysis.bootstrap_correlation(dom[sub], tax),
            "size": analysis.size_correlation(d0[sub], [tasks[i].size for i in keep])}
        if fam == "glyphs":
            curve = analysis.neighbourhood_curve(d0[sub], tax, 10)
            out[fam]["curve_k1_10"] = [round(float(x), 2) for x in curve["embedding"]]
            out[fam]["curve_chance"] = round(float(curve["chance"][0]), 2)
            out[fam]["curve_below_chance"] = bool(np.all(curve["embedding"] < curve["chance"]))
    pool = [i for i, s in enumerate(specs) if s.meta.get("attribute_group", "").startswith("all-images")]
    sub = np.ix_(pool, pool)
    related = [set(specs[i].meta.get("related", [])) for i in pool]
    pool_ids = [ids[i] for i in pool]
    out["one_pool"] = {
        "task2vec": analysis.related_precision(d0[sub], pool_ids, related),
        "domain": analysis.related_precision(dom[sub], pool_ids, related),
        "chance": float(np.mean([len(r & set(pool_ids)) / (len(pool) - 1) for r in related]))}

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:300] / 16 * 255).astype(np.uint8)  # as tests/conftest.py
    labels = digits.target[:300]
    rng = np.random.default_rng(0)
    norms = []
    for level in (0.0, 0.3, 0.6, 0.9):
        noisy = labels.copy()
        flip = rng.random(len(noisy)) < level
        noisy[flip] = rng.integers(0, 10, flip.sum())
        task = task_from_arrays(images, noisy, input_size=args.input_size)
        norms.append(embed(task, probe, method=args.method, seed=0, **options).norm)
    out["label_noise_norms"] = [round(n, 1) for n in norms]
    out["label_noise_rises"] = norms == sorted(norms)
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
