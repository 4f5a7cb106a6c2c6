"""TASK2VEC task embeddings (Achille et al. 2019, section 3) and the domain-embedding baseline.

One public entry point, :func:`embed`: a task (a path or a :class:`~precompute.tasks.TaskData`)
goes through a frozen probe network; a linear head is trained on the task; then the diagonal
Fisher information of every filter-bearing weight (conv and BatchNorm) is estimated and
averaged per filter. The result is a :class:`TaskEmbedding` with one value per probe filter.

Methods:
    ``rademacher``  (default) the montecarlo estimator with the sampled label's score p - e_y
                    replaced by a Rademacher residual of the same second moment
                    (:func:`rademacher_residual`): same expectation, same one backward pass,
                    seed-to-seed noise 7x to 20x lower on demo slices (BENCHMARKS.md).
    ``montecarlo``  the paper's: labels sampled from the head's predictive distribution (the
                    FIM definition, eq. in section 3), squared gradient of the batch-mean loss
                    rescaled by the batch size, accumulated over steps. Kept for comparison and
                    for libraries built with it.
    ``variational`` per-filter Gaussian weight noise learned with the local reparameterisation
                    trick against an isotropic prior N(w, lambda^2 I) with weight beta (section
                    3.1 "Robust Fisher computation"); the embedding is (beta / N0) * precision.
    ``domain``      the paper's baseline: per-filter mean activation over the task's images.

Every Fisher method returns ``F + (beta / N0) / lambda^2`` per filter: the Monte-Carlo estimates add
the prior term analytically so the two live on one scale and a trivial task (no information
about the label) gives exactly the *trivial embedding* ``(beta / N0) / lambda^2`` (section 3.1).
The paper writes N, the task's size, for N0; with task sizes from 50 to 8,000 that made the
floor, and so d_sym over the many filters near it, a function of the size ratio of two tasks
(measured on the demo library: related-task precision at chance, 0.105). N0 is a fixed
``prior_samples`` instead, so the floor is the same for every task.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .distances import symmetric_matrix
from .errors import Task2VecError
from .probes import DEFAULT_PROBE, Probe, create
from .tasks import TaskData, load_task

METHODS = ("rademacher", "montecarlo", "variational", "domain")
FISHER_METHODS = ("rademacher", "montecarlo", "variational")
DEFAULT_METHOD = "rademacher"
# The Fisher estimate's noise is set by the number of steps, not of samples: B * g^2 of a
# batch-mean gradient carries B(B-1) zero-mean cross terms, as large as the signal whatever B
# (measured, Rademacher, 8 demo tasks at 32 px: seed-to-seed d_sym 0.034 at batch 32 and
# 16 steps, 0.010 at batch 8 and 64 steps, same 500 samples). So a small CPU batch, and
# at least this many steps where the batch is large (CUDA).
MIN_FISHER_STEPS = 64
# The diversity coefficient's batch: images per batch embedding (see ``_montecarlo_fisher``);
# a task needs two disjoint batches, 64 images, for a coefficient.
DIVERSITY_BATCH = 32
DEFAULT_INPUT_SIZE = 64  # small so that a CPU embeds a 500-image task in seconds
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class EmbedConfig:
    """How a task is embedded. Every field is recorded in the embedding's metadata.

    Attributes:
        input_size: images are resized to ``input_size`` x ``input_size`` pixels.
        fisher_samples: images the Fisher estimate averages over; ``None``: one pass over
            the task, at least 500 and at most 10,000, and at least ``MIN_FISHER_STEPS``
            batches.
        batch_size: Fisher batch; ``None``: 8 on CPU, 256 on CUDA (keeps the device busy).
            The noise falls with the number of batches (see ``MIN_FISHER_STEPS``), so on a
            CPU, where a small batch costs little throughput, small batches are cheaper noise
            reduction than more samples.
        head_l2: L2 weight of the linear head trained on frozen features (per image: the
            mean cross-entropy plus ``head_l2 / 2 * |W|^2``). Chosen on the 74-task slice of
            docs/RESULTS.md with ``head_folds=5``: 1e-3 left distances following task sizes
            (Spearman 0.118), 1e-2 stopped the norm rising at high label noise, 3e-3 does
            both (0.097, rising). Without cross-fitting 1e-3 was the default (a strong 1.0 made
            the norm fall with label noise).
        head_l2_images: if set, ``head_l2`` is the head's L2 weight at this many images and
            scales as ``head_l2 * head_l2_images / n`` for a task of ``n`` images (a fixed
            Gaussian prior on the head instead of a per-image one). Measured worse on the slice
            (size correlation 0.176 -> 0.230; 0.281 with cross-fitting); off.
        head_folds: cross-fitting. With K > 1 the images are split into K class-stratified
            folds (set by the images, not the seed: ``_Embedder._folds``), K heads are fitted,
            each on all folds but one, and every image is scored (its ``p``, and the ``W`` its
            gradient flows through) by the head that did not see it. The Fisher is an
            expectation over the model's predictive distribution; scored on its own training
            images a head reports its fit, and how well a linear head fits n images depends on
            n (a few dozen images in 1,280 dimensions are separated perfectly, a few thousand
            are not), so distances followed task sizes. Held-out predictions estimate that
            distribution without the bias. 0 or 1: one head on all images, scored in-sample
            (libraries built before 2026-12-02).
        head_calibration: divide the head's logits by a held-out temperature (measured worse,
            off; see ``_train_head``).
        head_adam_steps: if > 0 (and ``head_folds`` <= 1), train the head like the reference
            (Adam, lr 4e-4, batch 64) for this many steps instead of L-BFGS to convergence (an
            early-stopped head; docs/RESULTS.md has its slice numbers).
        beta, prior_variance, prior_samples: the variational prior's weight ``beta``, variance
            ``lambda^2`` and sample count N0 (section 3.1); they set the trivial embedding
            (beta / N0) / lambda^2, so that filters the task does not use sit at the prior
            instead of adding label-sampling noise.
        variational_steps, variational_lr: optimisation of the per-filter noise.
        amp: bfloat16 autocast on CUDA (ignored on CPU, where it would be slower).
    """

    input_size: int = DEFAULT_INPUT_SIZE
    fisher_samples: int | None = None
    batch_size: int | None = None
    head_l2: float = 3e-3
    head_l2_images: int | None = None
    head_max_iter: int = 200
    head_calibration: bool = False
    head_folds: int = 5
    head_adam_steps: int = 0
    beta: float = 1e-2
    prior_variance: float = 1.0
    prior_samples: int = 1000
    variational_steps: int = 200
    variational_lr: float = 0.1
    amp: bool = True
    seed: int = 0
    device: str = "cpu"


@dataclass
class TaskEmbedding:
    """One embedding of one task.

    Attributes:
        values: float32 ``[num_filters]``; for Fisher methods, per-filter Fisher information
            (units of log-likelihood curvature per sample, plus the prior term).
        trivial: float32 ``[num_filters]``, the trivial embedding for this task (prior only);
            ``None`` for the domain embedding.
        layers: (layer name, number of filters) of the probe, in the order of ``values``.
        meta: probe, method, sample counts, input size, seed, versions, device, timings.
    """

    values: np.ndarray
    method: str
    probe: str
    layers: list[tuple[str, int]]
    meta: dict = field(default_factory=dict)
    trivial: np.ndarray | None = None

    @property
    def norm(self) -> float:
        """L1 norm, the paper's measure of task difficulty (Fig. 2 right)."""
        return float(np.abs(self.values).sum())

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.npz`` (no pickles) atomically: a crash leaves no partial file."""
        path = Path(path)
        meta = {**self.meta, "method": self.method, "probe": self.probe,
                "layers": [list(x) for x in self.layers]}
        arrays = {"values": self.values}
        if self.trivial is not None:
            arrays["trivial"] = self.trivial
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Task2VecError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TaskEmbedding":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                values = z["values"].astype(np.float32)
                trivial = z["trivial"].astype(np.float32) if "trivial" in z else None
        except (OSError, KeyError, ValueError) as exc:
            raise Task2VecError(f"{path} is not a task embedding file: {exc}") from None
        layers = [(n, int(c)) for n, c in meta.pop("layers")]
        return cls(values, meta.pop("method"), meta.pop("probe"), layers, meta, trivial)


# ----------------------------------------------------------------------------------------------
# public entry point


def embed(task: TaskData | str | os.PathLike, probe: str | Probe = DEFAULT_PROBE, *,
          method: str = DEFAULT_METHOD, config: EmbedConfig | None = None,
          progress: bool | Progress = False, **overrides) -> TaskEmbedding:
    """Embed one task.

    Args:
        task: a :class:`TaskData`, or a path accepted by :func:`precompute.tasks.load_task`
            (class folders, a zip of them, or a ``path,label`` CSV).
        probe: a probe name (see :func:`precompute.probes.available`) or a :class:`Probe`;
            a given probe is copied, never modified.
        method: one of :data:`METHODS` (default ``rademacher``).
        config: an :class:`EmbedConfig`; keyword ``overrides`` replace its fields.
        progress: ``True`` for a progress bar on stderr, or a callable ``(stage, fraction)``.
    """
    return embed_methods(task, probe, methods=(method,), config=config, progress=progress,
                         **overrides)[method]


def embed_methods(task: TaskData | str | os.PathLike, probe: str | Probe = DEFAULT_PROBE, *,
                  methods: Sequence[str] = (DEFAULT_METHOD, "domain"),
                  config: EmbedConfig | None = None, progress: bool | Progress = False,
                  **overrides) -> dict[str, TaskEmbedding]:
    """Like :func:`embed` for several methods at once, sharing the feature pass and the head."""
    config = _resolve_config(config, overrides)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise Task2VecError(f"unknown method {bad[0] if bad else ''!r}; choose from {', '.join(METHODS)}")
    if not isinstance(task, TaskData):
        task = load_task(task, input_size=config.input_size)
    if task.images.shape[-1] != config.input_size or task.images.shape[-2] != config.input_size:
        raise Task2VecError(f"task images are {tuple(task.images.shape[-2:])} px but input_size is "
                            f"{config.input_size}; load the task with the same input_size")
    return _Embedder(task, probe, config, _progress_fn(progress)).run(methods)


def _resolve_config(config: EmbedConfig | None, overrides: dict) -> EmbedConfig:
    config = config or EmbedConfig()
    unknown = set(overrides) - set(EmbedConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown embedding option(s): {', '.join(sorted(unknown))}")
    config = EmbedConfig(**{**config.__dict__, **overrides})
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise Task2VecError("--device cuda requested but no CUDA device is available; use --device cpu")
    if config.input_size < 32:
        raise Task2VecError(f"input_size must be at least 32 pixels, got {config.input_size}")
    return config


def _progress_fn(progress: bool | Progress) -> Progress:
    if callable(progress):
        return progress
    if not progress:
        return lambda stage, fraction: None
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def show(stage: str, fraction: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=1000, desc=f"{stage:>12}", unit="‰", leave=True,
                                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")
        bar.update(round(fraction * 1000) - bar.n)
        if fraction >= 1:
            bar.close()

    return show


# ----------------------------------------------------------------------------------------------
# the work


def sampled_label_residual(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The paper's montecarlo step: y ~ p(y|x), r = p - e_y (the score of the sampled label).

    With a confident head y is almost always the predicted class, r is then near zero, and the
    estimate rests on the rare other draws: measured seed-to-seed d_sym 0.28 at 64 px, as far
    as two different tasks (BENCHMARKS.md)."""
    y = torch.multinomial(p, 1, generator=generator).squeeze(1)
    return p - F.one_hot(y, p.shape[-1]).to(p.dtype)


def rademacher_residual(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """r = S v with v a Rademacher vector and S = diag(sqrt p) - p sqrt(p)^T.

    S S^T = diag(p) - 2 p p^T + p (sqrt(p)^T sqrt(p)) p^T = diag(p) - p p^T, so E[r r^T] is the
    sampled-label residual's and the Fisher estimate has the same expectation; but every
    sample contributes a residual of typical size instead of a rare large one (a confident
    head no longer starves the estimate), from the same one backward pass."""
    v = torch.randint(0, 2, p.shape, generator=generator, device=p.device).mul_(2).sub_(1).to(p.dtype)
    root = p.sqrt()
    return root * v - p * (root * v).sum(-1, keepdim=True)


RESIDUALS = {"montecarlo": sampled_label_residual, "rademacher": rademacher_residual}


class _Embedder:
    def __init__(self, task: TaskData, probe: str | Probe, config: EmbedConfig, progress: Progress):
        self.task, self.config, self.progress = task, config, progress
        self.device = torch.device(config.device)
        # A private copy: the caller's probe is never touched (the reference code mutated it).
        probe = create(probe) if isinstance(probe, str) else copy.deepcopy(probe)
        self.probe = probe.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":
            self.probe = self.probe.to(memory_format=torch.channels_last)
        self.layers = self.probe.filter_layers()
        self.weights = [m.weight for _, m in self.layers]
        self.images = task.images.to(self.device)
        self.labels = task.labels.to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.timings: dict[str, float] = {}

    # -- helpers --------------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _inputs(self, index: torch.Tensor) -> torch.Tensor:
        x = self.probe.normalize(self.images[index])
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _batch_size(self) -> int:
        return self.config.batch_size or (256 if self.device.type == "cuda" else 8)

    # -- stages ---------------------------------------------------------------------------------
    def run(self, methods: Sequence[str]) -> dict[str, TaskEmbedding]:
        want_domain = "domain" in methods
        t0 = time.perf_counter()
        features, domain = self._feature_pass(want_domain)
        self.timings["features_s"] = time.perf_counter() - t0
        out = {}
        if want_domain:
            out["domain"] = self._result("domain", domain, None, {})
        fisher = [m for m in methods if m in FISHER_METHODS]
        if fisher:
            t0 = time.perf_counter()
            head = self._train_head(features)
            self.timings["head_s"] = time.perf_counter() - t0
        for method in fisher:
            # Each method its own stream from the seed: its result does not depend on which
            # methods ran before it in the same call.
            self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
            t0 = time.perf_counter()
            if method == "variational":
                values, extra = self._variational_fisher(head)
            else:
                values, extra = self._montecarlo_fisher(head, RESIDUALS[method])
            self.timings[f"{method}_s"] = time.perf_counter() - t0
            out[method] = self._result(method, values, self._prior_term(), extra)
        return {m: out[m] for m in methods}

    @torch.no_grad()
    def _feature_pass(self, want_domain: bool) -> tuple[torch.Tensor, np.ndarray | None]:
        """Pooled features ``[N, D]`` (float32) and, if asked, per-filter mean activations."""
        sums = [torch.zeros(m.weight.shape[0], device=self.device) for _, m in self.layers]
        hooks = []
        if want_domain:
            for i, (_, module) in enumerate(self.layers):
                def hook(mod, inp, out, i=i):
                    sums[i] += out.float().mean(dim=(2, 3)).sum(0)
                hooks.append(module.register_forward_hook(hook))
        n = self.task.size
        batch = 512 if self.device.type == "cuda" else 64
        features = []
        try:
            for start in range(0, n, batch):
                index = torch.arange(start, min(start + batch, n), device=self.device)
                with self._autocast():
                    features.append(self.probe.backbone(self._inputs(index)).float())
                self.progress("features", min(start + batch, n) / n)
        finally:
            for h in hooks:
                h.remove()
        domain = torch.cat(sums).div_(n).cpu().numpy() if want_domain else None
        return torch.cat(features), domain

    def _train_head(self, features: torch.Tensor) -> "_Heads":
        """Linear heads on frozen features: class-balanced cross-entropy + L2, solved by L-BFGS;
        with ``head_folds`` K > 1 (the default) one per fold, fitted without it, and each image
        is scored by the head that did not see it (``EmbedConfig.head_folds``).

        Full-batch and started from zero, so it is deterministic and takes milliseconds on a GPU
        (the reference trained 10 epochs of Adam; on cached features the optimum is the same
        convex problem). With ``head_calibration`` its logits are divided by the temperature
        that minimises the cross-entropy of held-out predictions (2-fold cross-fitting), meant
        against the size effect (a head that fits a small task perfectly is confident on images
        it has seen). Measured on the 74-task slice, not adopted: the size correlation rose
        (0.18 -> 0.31), glyph rho fell (0.10 -> 0.04) and the norm no longer rises with label
        noise (a noisy task gets a large temperature, which shrinks its Fisher by 1 / T^2).
        """
        if self.config.head_folds > 1:
            fold = self._folds(self.config.head_folds)
            heads = [self._fit_head(features[fold != k], self.labels[fold != k])
                     for k in range(self.config.head_folds)]
        else:
            fold = torch.zeros_like(self.labels)
            heads = [self._fit_head_adam(features, self.config.head_adam_steps)
                     if self.config.head_adam_steps else self._fit_head(features, self.labels)]
        if self.config.head_calibration:
            temperature = self._held_out_temperature(features)
            for h in heads:
                h.weight.div_(temperature)
                h.bias.div_(temperature)
            self.timings["head_temperature"] = temperature
        self.progress("head", 1.0)
        return _Heads(heads, fold)

    def _fit_head(self, features: torch.Tensor, labels: torch.Tensor) -> nn.Linear:
        c = self.task.num_classes
        counts = torch.bincount(labels, minlength=c).float()
        class_weight = counts.sum() / (c * counts.clamp(min=1))
        l2 = self._head_l2(len(labels))
        head = self._zero_head(features.shape[1])
        opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=self.config.head_max_iter,
                                history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(head(features), labels, weight=class_weight)
            loss = loss + 0.5 * l2 * head.weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return head.requires_grad_(False)

    def _head_l2(self, n: int) -> float:
        """The head's L2 weight for ``n`` training images (see ``EmbedConfig.head_l2_images``)."""
        if self.config.head_l2_images is None:
            return self.config.head_l2
        return self.config.head_l2 * self.config.head_l2_images / max(n, 1)

    def _zero_head(self, dim: int) -> nn.Linear:
        head = nn.Linear(dim, self.task.num_classes).to(self.device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    def _fit_head_adam(self, features: torch.Tensor, steps: int) -> nn.Linear:
        """The reference's head regime, stopped early: Adam (lr 4e-4, weight decay head_l2),
        class-balanced batches of 64, ``steps`` steps from zero (reference: 10 epochs of
        10,000 samples = 1,563 steps)."""
        counts = torch.bincount(self.labels, minlength=self.task.num_classes).float()
        weight = (1 / counts.clamp(min=1))[self.labels]
        head = self._zero_head(features.shape[1])
        opt = torch.optim.Adam(head.parameters(), lr=4e-4, weight_decay=self.config.head_l2)
        with torch.enable_grad():
            for _ in range(steps):
                index = torch.multinomial(weight, 64, replacement=True, generator=self.generator)
                loss = F.cross_entropy(head(features[index]), self.labels[index])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return head.requires_grad_(False)

    def _folds(self, k: int) -> torch.Tensor:
        """A class-stratified fold number 0..k-1 per image, set by the images themselves: within
        each class the images are ranked by a hash of their pixels and dealt round-robin.

        Not drawn from the seed: which head scores which image is then part of what is
        estimated, like a fixed train/validation split, and the seed moves only the Fisher
        draws. Seeded folds made two seeds of one task differ by their folds (74-task slice, head
        L2 1e-2: seed-to-seed d_sym 0.036 and 4.26 of 5 neighbours kept; 0.023 and 4.45 with
        these folds). The same images get the same folds in any file order.
        """
        pixels = self.task.images.cpu().numpy().reshape(self.task.size, -1)
        key = torch.tensor([zlib.crc32(row.tobytes()) for row in pixels], dtype=torch.float64)
        labels = self.labels.cpu()
        order = torch.argsort(labels * 2.0**33 + key, stable=True)  # by class, then by hash
        start = torch.searchsorted(labels[order], labels[order], right=False)
        fold = torch.empty_like(labels)
        fold[order] = (torch.arange(len(order)) - start) % k
        return fold.to(self.device)

    def _held_out_temperature(self, features: torch.Tensor) -> float:
        """Temperature of the held-out logits of two heads, each fitted on half of the task."""
        fold = self._folds(2)
        logits = torch.empty(len(self.labels), self.task.num_classes, device=self.device)
        for k in (0, 1):
            train, test = fold != k, fold == k
            logits[test] = self._fit_head(features[train], self.labels[train])(features[test])
        grid = torch.logspace(-1, 2, 61, device=self.device)  # T from 0.1 to 100
        nll = torch.stack([F.cross_entropy(logits / t, self.labels) for t in grid])
        return float(grid[nll.argmin()])

    def _fisher_batches(self) -> tuple[int, int]:
        batch = self._batch_size()
        samples = self.config.fisher_samples or min(max(self.task.size, 500), 10_000)
        steps = max(1, -(-samples // batch))
        if self.config.fisher_samples is None:
            steps = max(steps, MIN_FISHER_STEPS)
        return batch, steps

    def _sample_order(self, steps: int, batch: int) -> torch.Tensor:
        """Indices for ``steps`` batches: epochs of seeded permutations of the task."""
        n = self.task.size
        epochs = -(-steps * batch // n)
        order = torch.cat([torch.randperm(n, generator=self.generator, device=self.device)
                           for _ in range(epochs)])
        return order[: steps * batch].view(steps, batch)

    def _montecarlo_fisher(self, head: "_Heads", residual: Callable) -> tuple[np.ndarray, dict]:
        """Diagonal FIM, E_x [J^T (diag p - p p^T) J] per weight (J = d logits / dw), averaged
        per filter.

        For softmax cross-entropy the score of a label y with respect to the logits is
        r = p - e_y, and E_{y ~ p}[r r^T] = diag(p) - p p^T. Any random ``residual`` r with that
        second moment gives an unbiased estimate: back-propagating (1/B) sum_i r_i . logits_i
        yields g = (1/B) sum_i J_i^T r_i, and since the r_i are independent and zero-mean, B * g^2
        estimates the per-sample Fisher, whatever the batch size or the number of samples.
        """
        batch, steps = self._fisher_batches()
        order = self._sample_order(steps, batch)
        for w in self.weights:
            w.requires_grad_(True)
        acc = [torch.zeros_like(w, dtype=torch.float32) for w in self.weights]
        group_steps = -(-DIVERSITY_BATCH // batch)
        cumulative = []  # per-filter sums after every group_steps steps: the batch embeddings
        try:
            for step in range(steps):
                index = order[step]
                with self._autocast():
                    logits = head(self.probe.backbone(self._inputs(index)), index).float()
                with torch.no_grad():
                    r = residual(logits.softmax(-1), self.generator)
                grads = torch.autograd.grad((logits * r).sum() / index.numel(), self.weights)
                torch._foreach_addcmul_(acc, grads, grads, value=float(index.numel()))
                if (step + 1) % group_steps == 0 and (step + 1) * batch <= self.task.size:
                    cumulative.append(_per_filter(acc).double())  # disjoint: the first epoch
                if step % 8 == 0 or step == steps - 1:
                    self.progress("fisher", (step + 1) / steps)
        finally:
            for w in self.weights:
                w.requires_grad_(False)
        values = _per_filter(acc).div_(steps).cpu().numpy() + self._prior_term()
        extra = {"fisher_samples": steps * batch, "batch_size": batch, "steps": steps}
        if len(cumulative) >= 2:
            sums = torch.stack(cumulative)
            batches = torch.diff(sums, dim=0, prepend=torch.zeros_like(sums[:1])) / group_steps
            extra["diversity"] = _diversity(batches.float().cpu().numpy() + self._prior_term(),
                                            group_steps * batch)
        else:
            extra["diversity"] = {"value": None, "batch": group_steps * batch, "batches": 0,
                                  "reason": f"fewer than {2 * group_steps * batch} images: no two "
                                            f"disjoint batches of {group_steps * batch}"}
        return values, extra

    def _variational_fisher(self, head: "_Heads") -> tuple[np.ndarray, dict]:
        """Per-filter precision of the optimal Gaussian weight noise (section 3.1).

        Minimises  E_{w ~ N(w_hat, diag sigma^2)} CE  +  (beta / N0) KL(N(0, sigma^2) || N(0, lambda^2))
        with one sigma^2 per filter, sampling the *activations* (local reparameterisation
        trick) rather than the weights. At the optimum (beta / N0) / sigma^2 = F + (beta / N0) / lambda^2.
        """
        cfg = self.config
        batch, _ = self._fisher_batches()
        steps = cfg.variational_steps
        order = self._sample_order(steps, batch)
        prior = cfg.prior_variance
        # Start with little noise (precision e^6 times the prior's): the network still works,
        # and filters the loss does not need relax towards the prior within a few dozen steps.
        log_var = [torch.full((w.shape[0],), float(np.log(prior)) - 6.0, device=self.device,
                              requires_grad=True) for w in self.weights]
        per_filter_weights = [w[0].numel() for w in self.weights]
        hooks = [_add_weight_noise(module, lv, self.generator)
                 for (_, module), lv in zip(self.layers, log_var)]
        opt = torch.optim.Adam(log_var, lr=cfg.variational_lr)
        kl_weight = cfg.beta / cfg.prior_samples
        try:
            for step in range(steps):
                index = order[step]
                with self._autocast():
                    logits = head(self.probe.backbone(self._inputs(index)), index).float()
                ce = F.cross_entropy(logits, self.labels[index])
                kl = sum(n * 0.5 * (lv.exp() / prior - 1 - (lv - np.log(prior))).sum()
                         for n, lv in zip(per_filter_weights, log_var))
                loss = ce + kl_weight * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step % 8 == 0 or step == steps - 1:
                    self.progress("variational", (step + 1) / steps)
        finally:
            for h in hooks:
                h.remove()
        precision = torch.cat([lv.detach() for lv in log_var]).neg_().exp_()
        values = (kl_weight * precision).cpu().numpy()
        return values, {"variational_steps": steps, "batch_size": batch}

    def _prior_term(self) -> np.ndarray:
        """(beta / N0) / lambda^2 per filter: the trivial embedding."""
        value = self.config.beta / self.config.prior_samples / self.config.prior_variance
        return np.full(self.probe.num_filters, value, dtype=np.float32)


    def _result(self, method: str, values: np.ndarray, trivial: np.ndarray | None,
                extra: dict) -> TaskEmbedding:
        cfg = self.config
        meta = {
            "task": self.task.name,
            "source": self.task.source,
            "num_images": self.task.size,
            "num_classes": self.task.num_classes,
            "classes": list(self.task.classes),
            "input_size": cfg.input_size,
            "seed": cfg.seed,
            "config": {k: v for k, v in cfg.__dict__.items()},
            "device": _device_name(self.device),
            "amp": bool(cfg.amp and self.device.type == "cuda"),
            "versions": _versions(),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            **extra,
        }
        layers = [(name, m.weight.shape[0]) for name, m in self.layers]
        values = np.asarray(values, dtype=np.float32)
        return TaskEmbedding(values, method, self.probe.name, layers, meta,
                             None if trivial is None else np.asarray(trivial, dtype=np.float32))


class _Heads:
    """K linear heads over the probe's features and, per image, which one scores it: image i
    gets head ``fold[i]`` (with cross-fitting, the head fitted without fold ``fold[i]``)."""

    def __init__(self, heads: Sequence[nn.Linear], fold: torch.Tensor):
        self.weight = torch.stack([h.weight.detach() for h in heads])  # [K, C, D]
        self.bias = torch.stack([h.bias.detach() for h in heads])  # [K, C]
        self.fold = fold

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of the images ``index`` from their features ``x`` ``[B, D]``."""
        if len(self.weight) == 1:
            return F.linear(x, self.weight[0].to(x.dtype), self.bias[0].to(x.dtype))
        f = self.fold[index]
        return torch.einsum("bd,bcd->bc", x, self.weight[f].to(x.dtype)) + self.bias[f].to(x.dtype)


def _per_filter(acc: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([a.flatten(1).mean(1) if a.dim() > 1 else a for a in acc])


def _diversity(batch_embeddings: np.ndarray, batch: int) -> dict:
    """The TASK2VEC diversity coefficient (Miranda et al. 2023) from ``[K, filters]`` embeddings
    of K disjoint random batches of ``batch`` images: the mean d_sym over the K(K-1)/2 pairs.

    The batches are the Fisher pass's consecutive ``batch`` images within its first epoch (a
    seeded permutation of the task), so no image is in two batches: batches that shared images
    (a task smaller than the pass) would make a small task look uniform (measured on the demo
    library with overlapping batches of 64: Spearman 0.87 between coefficient and size; -0.26
    among the 115 tasks large enough not to overlap)."""
    k = len(batch_embeddings)
    pairs = symmetric_matrix(batch_embeddings, batch_embeddings)[np.triu_indices(k, 1)]
    return {"value": round(float(pairs.mean()), 6), "batch": batch, "batches": k,
            "distance": "d_sym"}


def _add_weight_noise(module: nn.Module, log_var: torch.Tensor, generator: torch.Generator):
    """Forward hook adding the output noise of per-filter weight noise N(0, exp(log_var))."""
    if isinstance(module, nn.BatchNorm2d):
        def hook(mod, inp, out):
            x = inp[0]
            shape = (1, -1, 1, 1)
            x_hat = (x - mod.running_mean.view(shape)) * torch.rsqrt(mod.running_var.view(shape) + mod.eps)
            std = (0.5 * log_var).exp().view(shape)
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            return out + std * x_hat.abs() * noise
    else:
        w = module.weight
        # For an ungrouped conv every filter sees the same sum of squared inputs: one channel.
        ones = torch.ones_like(w[:1]) if module.groups == 1 else torch.ones_like(w)

        def hook(mod, inp, out):
            # _conv_forward: the module's own padding/stride, without re-entering the hooks.
            field = mod._conv_forward(inp[0].square(), ones, None)
            var = field * log_var.exp().view(1, -1, 1, 1)
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            return out + var.clamp_min(1e-20).sqrt() * noise
    return module.register_forward_hook(hook)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def _versions() -> dict[str, str]:
    import torchvision

    return {"precompute": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
