"""Time one task embedding against the plain forward+backward floor, in the same run.

CPU (default): the default probe and input size on a 500-image, 10-class Fashion-MNIST task
written to disk as PNGs, end to end (loading, feature pass, head, Fisher). Also reports how well
the default Fisher estimate agrees with a run over 10x the samples (correlations per filter).

GPU (``--device cuda``): the issue's setting, ResNet-34 (random weights: timing only), 224 px,
1,000 images, 10,000 Fisher samples, bf16 autocast, channels_last.

The floor is ``loss.backward()`` of the same probe over the same number of samples and batch
size, with every parameter's gradient: what any Fisher estimator must at least do.

    python benchmarks/bench_embed.py [--device cuda] [--repeats 3]
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import pearsonr, spearmanr

from precompute import distances, embed, probes
from precompute.tasks import TaskData, load_task

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion_task_folder(root: Path, n: int = 500) -> Path:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)[:n]
    for i, (img, y) in enumerate(zip(images, labels)):
        (root / f"class{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"class{y}" / f"{i}.png")
    return root


def floor_seconds(probe, task: TaskData, samples: int, batch: int, device: torch.device,
                  amp: bool) -> float:
    """Plain forward+backward over ``samples`` images (all parameter gradients)."""
    probe = probe.to(device).train(False)
    for p in probe.backbone.parameters():
        p.requires_grad_(True)
    head = torch.nn.Linear(probe.feature_dim, task.num_classes).to(device)
    images = task.images.to(device)
    labels = task.labels.to(device)
    if device.type == "cuda":
        probe = probe.to(memory_format=torch.channels_last)
    steps = -(-samples // batch)
    order = torch.randint(0, task.size, (steps, batch), device=device)

    def step(index):
        x = probe.normalize(images[index])
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(head(probe.backbone(x)).float(), labels[index])
        loss.backward()

    step(order[0])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for index in order:
        step(index)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_cpu(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = fashion_task_folder(Path(tmp) / "fashion500")
        probe = probes.create("efficientnet_lite0")
        embed(load_task(folder, input_size=64), probe, fisher_samples=64)  # warm-up
        totals, results = [], []
        for seed in range(repeats):
            t0 = time.perf_counter()
            task = load_task(folder, input_size=64)
            load_s = time.perf_counter() - t0
            e = embed(task, probe, seed=seed)
            totals.append(time.perf_counter() - t0)
            results.append((load_s, e))
        e = results[0][1]
        samples, batch = e.meta["fisher_samples"], e.meta["batch_size"]
        floor = floor_seconds(probes.create("efficientnet_lite0"), task, samples, batch,
                              torch.device("cpu"), amp=False)
        key = f"{e.method}_s"
        fisher_s = statistics.median(r[1].meta["timings_s"][key] for r in results)
        long = embed(task, probe, seed=100, fisher_samples=10 * samples)
    total = statistics.median(totals)
    print(f"machine   : {platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")
    print(f"task      : Fashion-MNIST, {task.size} images, {task.num_classes} classes, PNG on disk")
    print(f"probe     : efficientnet_lite0 (ImageNet), input 64 px, {e.method} Fisher, "
          f"{samples} samples, batch {batch}")
    t = results[0][1].meta["timings_s"]
    print(f"stages    : load {results[0][0]:.2f}s  features {t['features_s']:.2f}s  "
          f"head {t['head_s']:.2f}s  fisher {t[key]:.2f}s   (first of {repeats})")
    print(f"end to end: median {total:.2f} s over {repeats} runs (target <= 10 s)")
    print(f"floor     : forward+backward of {samples} samples {floor:.2f} s; "
          f"fisher / floor = {fisher_s / floor:.2f}x")
    noise = [distances.symmetric(a[1], b[1]) for a, b in itertools.combinations(results, 2)]
    print(f"noise     : d_sym between runs with seeds 0..{repeats - 1}: mean {np.mean(noise):.4f}")
    log_a, log_b = np.log(e.values), np.log(long.values)
    print(f"agreement : default vs {10 * samples}-sample run: Spearman "
          f"{spearmanr(e.values, long.values).statistic:.3f}, Pearson(log) "
          f"{pearsonr(log_a, log_b).statistic:.3f}")


def bench_gpu(repeats: int, device: str) -> None:
    dev = torch.device(device)
    torch.manual_seed(0)
    probe = probes.create("resnet34", pretrained=False)  # random weights: timing only
    images = torch.randint(0, 256, (1000, 3, 224, 224), dtype=torch.uint8)
    labels = torch.arange(1000) % 10
    task = TaskData("random-1000", images, labels, [str(i) for i in range(10)], "<memory>")
    opts = dict(device=device, input_size=224, fisher_samples=10_000, batch_size=256)
    embed(task, probe, **{**opts, "fisher_samples": 512})  # warm-up (cuDNN autotune)
    times, fishers = [], []
    for seed in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        e = embed(task, probe, seed=seed, **opts)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        fishers.append(e.meta["timings_s"][f"{e.method}_s"])
    floor = min(floor_seconds(probes.create("resnet34", pretrained=False), task, 10_000, 256, dev,
                              amp=True) for _ in range(2))
    total = statistics.median(times)
    print(f"device    : {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    print("setting   : resnet34 (random weights, timing only), 224 px, 1,000 images, "
          "10,000 Fisher samples, batch 256, bf16")
    print(f"embedding : median {total:.2f} s end to end (features+head+fisher), "
          f"fisher alone {statistics.median(fishers):.2f} s")
    print(f"floor     : plain forward+backward {floor:.2f} s")
    print(f"ratio     : embedding / floor = {total / floor:.2f}x (target <= 1.35x); "
          f"public reference code: 11.5 s on an H200 (FACTS.md)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        bench_gpu(args.repeats, args.device)
    else:
        bench_cpu(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
