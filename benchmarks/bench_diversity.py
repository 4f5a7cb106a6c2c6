"""The diversity coefficient on controlled tasks: its order, its bounds and its seed spread.

Pre-registered checks (written before the first run of this definition; no other variant of the
coefficient is run here):

- classes: Fashion-MNIST pools of 2 classes ([0, 1] and [7, 9]) against the 10-class pool, the
  same number of images each: div(2 classes) < div(10 classes) for each seed (10 pairs);
- fonts: 20 Latin letters rendered with one font (Noto Sans) against eight (Noto Sans, Serif
  and their Display designs, each regular and bold, italic and bold italic where installed),
  same renderer, same augmentation: div(one font) < div(eight fonts) for each seed;
- bounds (Miranda et al. 2023): a task whose images are all one image (the lower bound: the
  head has nothing to learn, so every batch's Fisher is the trivial embedding and the
  coefficient is exactly 0) and uniform-noise images with random labels (their upper bound,
  "random tokens").

Every task is embedded as ``build`` embeds a library task (default method, the library's 32 px,
per-task seed from the build seed), for build seeds 0 to 4; printed: the coefficient's mean and
standard deviation over seeds per task, the order checks and the seconds per embedding.

    python benchmarks/bench_diversity.py [--seeds 5] [--images 512]
"""
from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

from precompute.build import task_seed
from precompute.libraries.demo import FONT_DIRS, render_glyph
from precompute.probes import create
from precompute.tasks import task_from_arrays
from precompute.task2vec import embed_methods

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
INPUT_SIZE = 32
LATIN = "abcdefghijklmnopqrst"
FONTS = [f"Noto{design}-{style}.ttf" for design in ("Sans", "Serif", "SansDisplay", "SerifDisplay")
         for style in ("Regular", "Bold", "Italic", "BoldItalic")]


def fashion(n_pool: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return images[:n_pool], labels[:n_pool]


def pool_task(x, y, classes, n, name):
    rng = np.random.default_rng([len(classes), classes[0]])
    idx = rng.choice(np.flatnonzero(np.isin(y, classes)), n, replace=False)
    return task_from_arrays(x[idx], y[idx], input_size=INPUT_SIZE, name=name)


def font_task(fonts, n, name):
    paths = [next(str(d / f) for d in FONT_DIRS if (d / f).is_file()) for f in fonts
             if any((d / f).is_file() for d in FONT_DIRS)]
    rng = np.random.default_rng(7)
    labels = np.arange(n) % len(LATIN)
    images = np.stack([render_glyph(LATIN[c], paths[int(rng.integers(len(paths)))], rng)
                       for c in labels])
    return task_from_arrays(images, labels, input_size=INPUT_SIZE, name=name), len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--images", type=int, default=512)
    args = ap.parse_args()
    n = args.images
    x, y = fashion(4000)
    rng = np.random.default_rng(3)
    one = np.repeat(x[:1], n, axis=0)
    tasks = {
        "fashion 2 classes [0,1]": pool_task(x, y, [0, 1], n, "fashion-01"),
        "fashion 2 classes [7,9]": pool_task(x, y, [7, 9], n, "fashion-79"),
        "fashion 10 classes": pool_task(x, y, list(range(10)), n, "fashion-all"),
    }
    tasks["latin, 1 font"], _ = font_task(FONTS[:1], n, "latin-one-font")
    tasks["latin, many fonts"], n_fonts = font_task(FONTS, n, "latin-many-fonts")
    tasks["lower: one image"] = task_from_arrays(one, np.arange(n) % 10, input_size=INPUT_SIZE,
                                                 name="one-image")
    tasks["upper: uniform noise"] = task_from_arrays(
        rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n),
        input_size=INPUT_SIZE, name="noise")
    probe = create("efficientnet_lite0")
    div, seconds, meta = {}, [], None
    for name, task in tasks.items():
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            e = embed_methods(task, probe, methods=["rademacher"], input_size=INPUT_SIZE,
                              seed=task_seed(seed, task.name))["rademacher"]
            seconds.append(time.perf_counter() - t0)
            div[name, seed] = e.meta["diversity"]["value"]
            meta = e.meta["diversity"]
        vals = [div[name, s] for s in range(args.seeds)]
        print(f"{name:<24} div {np.mean(vals):.4f} +- {np.std(vals, ddof=1):.4f} (seeds: "
              f"{' '.join(f'{v:.4f}' for v in vals)})", flush=True)
    print(f"batch {meta['batch']} images, {meta['batches']} batches per {n}-image task, "
          f"distance {meta['distance']}; {n_fonts} fonts installed of {len(FONTS)} named; "
          f"{np.mean(seconds):.2f} s per embedding")
    seeds = range(args.seeds)
    wins = sum(div[p, s] < div["fashion 10 classes", s]
               for p in ("fashion 2 classes [0,1]", "fashion 2 classes [7,9]") for s in seeds)
    print(f"classes: div(2) < div(10) in {wins}/{2 * args.seeds} (seed, pool) pairs")
    wins = sum(div["latin, 1 font", s] < div["latin, many fonts", s] for s in seeds)
    print(f"fonts: div(one font) < div(many fonts) in {wins}/{args.seeds} seeds")


if __name__ == "__main__":
    main()
