"""Experts and the performance matrix (paper section 4, "Model selection").

An *expert* is the library's probe network fine-tuned on a group of related source tasks; the
generic *ImageNet expert* is the probe itself. For every expert and every task of the library a
linear classifier is trained on the expert's frozen features (the task's train split) and its
test error is the entry of the *performance matrix* that model selection is judged against.

Why it is cheap enough for a 2-core CPU:

- Only the *tail* of the probe is fine-tuned: its last ``tail_stages`` stages (default 2) and
  the 1x1 head convolution (EfficientNet-Lite0: the last 5 blocks + ``_conv_head`` + ``_bn1``,
  2.7 M of 3.4 M backbone weights; ResNet: ``layer3`` + ``layer4``). The *trunk* before it is
  frozen and identical for every expert, so its activations are computed once per image and
  cached on disk (``<cache>/trunk/``); an expert is then a few hundred Adam steps on cached
  trunk activations, and each expert's features are one pass of its tail. Files made before
  record no ``tail_stages``: their experts are 1-stage tails (the last block + head).
- Features are computed once per image per expert, not once per task: images are keyed by a
  content hash of their uint8 pixels at the input size, and the tail runs once per distinct
  key (Fashion-MNIST tasks share images).
- The matrix uses at most ``max_train`` / ``max_test`` images of a task (stratified by class,
  seeded per task): 1,000 / 500 by default.

An expert trained on several tasks has one linear head per source task over a shared tail
(multi-task training), so the Fisher information of its training objective is the
image-weighted mean of its source tasks' Fishers: that mean of the library's Fisher
embeddings is the expert's task embedding (``expert_embeddings``). The ImageNet expert's task
(ImageNet) is not available here; as in the paper (section 3.4, "else we set it to zero") its
Fisher is zero, i.e. its embedding is the trivial embedding.

Expert weights live outside git in ``<cache>/weights/`` (plain ``torch.save(state_dict)``,
loaded with ``weights_only=True``); the DuckDB file records their file name and sha256. Beside
them, ``<expert>.heads.pt`` keeps the expert's *source heads* (one linear classifier per source
task, concatenated: ``weight`` [Z, D], ``bias`` [Z], ``offsets`` [H + 1]), which LEEP and NCE
read (:func:`precompute.transfer.head_mixture`); the ImageNet expert's source head is the
probe's own ImageNet classifier, where the probe has one.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import store, transfer, user_models
from .errors import Task2VecError
from .libraries import TaskSpec, task_data
from .probes import Probe, create
from .task2vec import _device_name, _versions

IMAGENET_EXPERT = "imagenet"
DEFAULT_EXPERTS = 24  # fine-tuned experts (disjoint taxonomy branches); plus the ImageNet expert
DEFAULT_SOURCES = 8  # at most this many source tasks per expert (and at most half its branch)
DEFAULT_STEPS = 300
DEFAULT_TAIL_STAGES = 2  # probe stages an expert fine-tunes (Probe.split); 1 before issue 15
BATCH_SIZE = 64
EXPERT_MAX_IMAGES = 2000  # training images per expert (union of its sources, stratified)
TAIL_LR, HEAD_LR = 5e-4, 5e-3  # Adam, cosine decay
MAX_TRAIN, MAX_TEST = 1000, 500  # images per task in the performance matrix
COMMIT_EVERY = 25  # tasks per transaction in the matrix


@dataclass(frozen=True)
class ExpertPlan:
    """One expert to train: the group of related tasks it stands for and its source tasks."""

    expert_id: str
    name: str
    kind: str  # 'imagenet' | 'finetuned'
    source_tasks: tuple[str, ...] = ()
    group: tuple[str, ...] = ()  # taxonomy node (family first) the sources come from
    group_size: int = 0


# ----------------------------------------------------------------------------------------------
# choosing experts


def _node_path(spec: TaskSpec) -> tuple[str, ...]:
    """Family, then the taxonomy path above the task (the task itself is the leaf)."""
    tax = tuple(spec.taxonomy)
    if tax and tax[0] == spec.family:
        tax = tax[1:]
    return (spec.family, *tax[:-1])


def plan_experts(specs: Sequence[TaskSpec], num_experts: int = DEFAULT_EXPERTS,
                 sources: int = DEFAULT_SOURCES, sizes: dict[str, int] | None = None
                 ) -> list[ExpertPlan]:
    """Disjoint taxonomy branches, one expert each, plus ImageNet.

    Starting from the families, the largest group is split into its taxonomy children while
    there are fewer than ``num_experts`` groups of at least 2 tasks (a split is kept only if
    it yields at least one such child), so the groups are disjoint branches of the library's
    taxonomies, as the paper's experts are iNaturalist/CUB subtrees. Each expert is trained on
    at most half of its branch (rounded up) and at most ``sources`` tasks: the branch's tasks by
    size (``sizes``: train images per task; ties by id), every other one from the largest, so
    the sources and the held-out tasks span the same sizes. The branch's other tasks are never
    in its training set: they are its related *novel* tasks for model selection.
    Deterministic: no seed needed.
    """
    if num_experts < 1 or sources < 1:
        raise Task2VecError("--experts and --sources must be at least 1")
    sizes = sizes or {}
    paths = {s.task_id: _node_path(s) for s in specs}
    groups: dict[tuple[str, ...], list[str]] = {}
    for tid, path in paths.items():
        groups.setdefault(path[:1], []).append(tid)
    final: dict[tuple[str, ...], list[str]] = {}

    def children(node, members):
        out: dict[tuple[str, ...], list[str]] = {}
        for tid in members:
            p = paths[tid]
            if len(p) > len(node):
                out.setdefault(p[:len(node) + 1], []).append(tid)
        return {k: v for k, v in out.items() if len(v) >= 2}

    while True:
        usable = {k: v for k, v in {**groups, **final}.items() if len(v) >= 2}
        if len(usable) >= num_experts or not groups:
            break
        node = max(groups, key=lambda k: (len(groups[k]), k))
        members = groups.pop(node)
        kids = children(node, members)
        if kids:
            groups.update(kids)
        else:
            final[node] = members  # leaves only: cannot split further
    chosen = sorted({**groups, **final}.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    chosen = [(k, v) for k, v in chosen if len(v) >= 2][:num_experts]
    plans = [ExpertPlan(IMAGENET_EXPERT, "ImageNet (generic)", "imagenet")]
    for node, members in sorted(chosen):
        ranked = sorted(members, key=lambda t: (-sizes.get(t, 0), t))
        take = min(sources, math.ceil(len(members) / 2))
        plans.append(ExpertPlan("expert/" + "/".join(node), node[-1], "finetuned",
                                tuple(sorted(ranked[0:2 * take:2])), node, len(members)))
    return plans


# ----------------------------------------------------------------------------------------------
# images and their cached trunk activations (the cut is the probe's own: Probe.split)


def image_keys(images: torch.Tensor) -> list[str]:
    """Content hash of each uint8 image ``[N, 3, S, S]``: identical pixels, identical key."""
    arr = np.ascontiguousarray(images.numpy())
    return [hashlib.blake2b(a.tobytes(), digest_size=12).hexdigest() for a in arr]


def stratified_cap(labels: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``cap`` items, proportional per class (each class keeps >= 1), sorted."""
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.maximum(1, np.floor(counts * cap / n)).astype(int)
    extra = cap - quota.sum()
    for i in np.argsort(-(counts * cap / n - np.floor(counts * cap / n)), kind="stable"):
        if extra <= 0:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
            extra -= 1
    picks = [rng.choice(np.flatnonzero(labels == c), min(q, cnt), replace=False)
             for c, q, cnt in zip(classes, quota, counts)]
    return np.sort(np.concatenate(picks))


# ----------------------------------------------------------------------------------------------
# the trunk cache: per task, the capped train/test images' keys, labels and trunk activations


def capped_splits(spec: TaskSpec, seed: int, max_train: int, max_test: int,
                  input_size: int) -> dict[str, tuple[torch.Tensor, np.ndarray, int]]:
    """The task's train and test splits capped at ``max_train`` / ``max_test`` images
    (stratified by class, seeded by (library seed, task)): split -> (uint8 images
    ``[N, 3, S, S]`` at ``input_size``, int64 labels, number of classes). The same images at
    any ``input_size``: the selection depends on the labels and the seed alone."""
    records = list(spec.records())
    rng = np.random.default_rng([seed, zlib.crc32(spec.task_id.encode()), 7])
    out = {}
    for split, cap in (("train", max_train), ("test", max_test)):
        if not any(r.split == split for r in records):
            raise Task2VecError(f"task {spec.task_id} has no {split} images")
        data = task_data(spec.task_id, records, split, input_size)
        keep = stratified_cap(data.labels.numpy(), cap, rng)
        out[split] = (data.images[torch.from_numpy(keep)],
                      data.labels.numpy()[keep].astype(np.int64), data.num_classes)
    return out


@dataclass
class TaskFeatures:
    """A task's capped splits as trunk activations (float16) with image keys and labels."""

    task_id: str
    num_classes: int
    keys: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    trunk: dict[str, np.ndarray]
    trunk_seconds_per_image: float = 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] + f"-{zlib.crc32(text.encode()):08x}"


class Workspace:
    """Everything one library's experts need outside the DuckDB file, under one cache folder.

    ``<cache>/<library fingerprint>/trunk/<task>.npz`` and ``.../weights/<expert>.pt``.
    """

    def __init__(self, cache: str | Path, info: dict, probe: Probe, device: str,
                 max_train: int = MAX_TRAIN, max_test: int = MAX_TEST,
                 tail_stages: int = DEFAULT_TAIL_STAGES):
        self.info, self.probe = info, probe
        self.input_size, self.seed = int(info["input_size"]), int(info["seed"])
        self.max_train, self.max_test = max_train, max_test
        self.tail_stages = tail_stages
        self.device = torch.device(device)
        key = [info["library"], info["probe"], self.input_size, self.seed, max_train, max_test]
        # the trunk activations depend on the cut; 1-stage caches keep their old folder
        fingerprint = json.dumps(key if tail_stages == 1 else key + [tail_stages])
        self.root = Path(cache) / _slug(f"{Path(str(info['library'])).name}-{info['probe']}"
                                        f"-{self.input_size}px") / hashlib.sha1(
            fingerprint.encode()).hexdigest()[:10]
        try:
            (self.root / "trunk").mkdir(parents=True, exist_ok=True)
            (self.root / "weights").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Task2VecError(f"cannot create cache folder {self.root}: {exc.strerror}") from None
        self.trunk_net, self.tail_template = probe.split(tail_stages)
        self.trunk_net = self.trunk_net.to(self.device).eval().requires_grad_(False)
        self._trunk_memo: dict[str, np.ndarray] = {}  # key -> activations, within this run

    # -- trunk ------------------------------------------------------------------------------
    def trunk_file(self, task_id: str) -> Path:
        return self.root / "trunk" / f"{_slug(task_id)}.npz"

    def task_features(self, spec: TaskSpec) -> TaskFeatures:
        """The task's capped splits and trunk activations, from the cache or computed now."""
        path = self.trunk_file(spec.task_id)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    return TaskFeatures(spec.task_id, meta["num_classes"],
                                        {s: list(z[f"{s}_keys"]) for s in ("train", "test")},
                                        {s: z[f"{s}_labels"] for s in ("train", "test")},
                                        {s: z[f"{s}_trunk"] for s in ("train", "test")},
                                        meta["trunk_seconds_per_image"])
            except (OSError, KeyError, ValueError):
                path.unlink(missing_ok=True)  # a damaged cache file is recomputed
        out = TaskFeatures(spec.task_id, 0, {}, {}, {})
        seconds, computed = 0.0, 0
        for split, (images, labels, num_classes) in capped_splits(
                spec, self.seed, self.max_train, self.max_test, self.input_size).items():
            out.num_classes = num_classes
            keys = image_keys(images)
            todo = [i for i, k in enumerate(keys) if k not in self._trunk_memo]
            t0 = time.perf_counter()
            if todo:
                acts = self.trunk_activations(images[torch.tensor(todo)])
                for i, a in zip(todo, acts):
                    self._trunk_memo[keys[i]] = a
            seconds += time.perf_counter() - t0
            computed += len(todo)
            out.keys[split] = keys
            out.labels[split] = labels
            out.trunk[split] = np.stack([self._trunk_memo[k] for k in keys])
        out.trunk_seconds_per_image = seconds / computed if computed else 0.0
        meta = {"num_classes": out.num_classes, "trunk_seconds_per_image": out.trunk_seconds_per_image,
                "max_train": self.max_train, "max_test": self.max_test, "seed": self.seed}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # workers may write at once
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)),
                     **{f"{s}_{what}": np.asarray(getattr(out, attr)[s])
                        for s in ("train", "test")
                        for what, attr in (("keys", "keys"), ("labels", "labels"), ("trunk", "trunk"))})
        tmp.replace(path)
        return out

    @torch.no_grad()
    def trunk_activations(self, images: torch.Tensor) -> np.ndarray:
        """uint8 ``[N, 3, S, S]`` -> float16 trunk activations ``[N, C, h, w]``."""
        batch = 512 if self.device.type == "cuda" else 128
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            # Always a full batch (the last one padded with zeros): the convolutions' algorithm
            # depends on the batch size, and with it the float rounding (measured: 121 of 128
            # images differ in a float16 ulp between batches of 8 and of 128), so an image's
            # activations would depend on which images the process had seen before (the memo).
            x = torch.zeros((batch, *chunk.shape[1:]), dtype=chunk.dtype)
            x[:len(chunk)] = chunk
            x = self.probe.normalize(x.to(self.device))
            out.append(self.trunk_net(x)[:len(chunk)].to(torch.float16).cpu())
        return torch.cat(out).numpy()

    def clear_memo(self) -> None:
        self._trunk_memo.clear()

    # -- experts ------------------------------------------------------------------------------
    def weights_file(self, expert_id: str) -> Path:
        return self.root / "weights" / f"{_slug(expert_id)}.pt"

    def heads_file(self, expert_id: str) -> Path:
        return self.root / "weights" / f"{_slug(expert_id)}.heads.pt"

    def load_tail(self, expert_id: str, meta: dict) -> nn.Module:
        """The expert's tail on the workspace device, eval mode, frozen."""
        tail = copy.deepcopy(self.tail_template)
        if meta.get("weights_file"):
            path = self.root / "weights" / meta["weights_file"]
            state = self._load_checked(path, meta["weights_sha256"], "weights", expert_id)
            try:
                tail.load_state_dict(state, strict=True)
            except Exception as exc:
                raise Task2VecError(f"cannot read expert weights {path}: "
                                    f"{str(exc).splitlines()[0]}") from None
        return tail.to(self.device).eval().requires_grad_(False)

    @staticmethod
    def _load_checked(path: Path, sha256: str, what: str, expert_id: str) -> dict:
        """A saved state dict of an expert, after checking it is there and is the recorded one."""
        if not path.is_file():
            raise Task2VecError(f"{what} of expert {expert_id} are missing ({path}); run "
                                "python -m precompute experts again with the same --cache")
        if _sha256(path) != sha256:
            raise Task2VecError(f"{what} file {path} does not match the library (sha256); "
                                "run python -m precompute experts again to retrain it")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise Task2VecError(f"cannot read {what} {path}: "
                                f"{str(exc).splitlines()[0]}") from None

    def load_heads(self, expert_id: str, meta: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The expert's source heads (weight [Z, D], bias [Z], offsets [H + 1]) for LEEP and NCE:
        a fine-tuned expert's saved heads, the ImageNet expert's ImageNet classifier; ``None``
        where there are none (experts trained before the heads were saved, a probe without a
        classifier)."""
        if not meta.get("weights_file"):  # the ImageNet expert: the probe's own head
            head = self.probe.classifier
            if head is None:
                return None
            w = head.weight.detach().cpu().numpy()
            return w, head.bias.detach().cpu().numpy(), np.array([0, len(w)])
        if not meta.get("heads_file"):
            return None
        path = self.root / "weights" / meta["heads_file"]
        state = self._load_checked(path, meta["heads_sha256"], "source heads", expert_id)
        try:
            return (state["weight"].numpy(), state["bias"].numpy(), state["offsets"].numpy())
        except Exception as exc:
            raise Task2VecError(f"cannot read source heads {path}: "
                                f"{str(exc).splitlines()[0]}") from None


_WORKSPACES: dict = {}  # this process's workspaces (a Ray worker serves many units)
TRUNK_MEMO_MAX = 200_000  # trunk activations kept per process between units (~0.3 GB at 64 px)


def workspace(cache: str | Path, info: dict, device: str, max_train: int = MAX_TRAIN,
              max_test: int = MAX_TEST, probe: Probe | None = None,
              tail_stages: int = DEFAULT_TAIL_STAGES) -> Workspace:
    """The library's :class:`Workspace` in this process, created once (the probe by name
    unless one is given) and reused by every unit that runs here."""
    key = (str(Path(cache).resolve()), json.dumps([info["library"], info["probe"],
           info["input_size"], info["seed"]]), str(device), max_train, max_test, id(probe),
           tail_stages)
    ws = _WORKSPACES.get(key)
    if ws is None:
        if len(_WORKSPACES) >= 2:
            _WORKSPACES.clear()
        ws = _WORKSPACES[key] = Workspace(cache, info, probe or create(info["probe"]), device,
                                          max_train, max_test, tail_stages=tail_stages)
    elif len(ws._trunk_memo) > TRUNK_MEMO_MAX:
        ws.clear_memo()
    return ws


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# fine-tuning


def train_expert(tail: nn.Module, sources: Sequence[TaskFeatures], *, steps: int = DEFAULT_STEPS,
                 batch_size: int = BATCH_SIZE, max_images: int = EXPERT_MAX_IMAGES, seed: int = 0,
                 device: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
    """Fine-tune a copy of ``tail`` on the train splits of ``sources`` (one linear head each).

    Multi-task cross-entropy: a sample's logits are its own task's head (others masked out);
    batches are drawn uniformly from the union, at most ``max_images`` images split evenly over
    the sources (stratified by class, seeded). BatchNorm in train mode (adapts its statistics to
    the new domain). Adam, ``TAIL_LR`` for the tail and ``HEAD_LR`` for the heads, cosine decay.

    Returns (state dict of the tail, info: images, train error of the last 20 steps, seconds,
    the source heads: ``{"weight": [Z, D], "bias": [Z], "offsets": [H + 1]}``, head j owning
    rows ``offsets[j]:offsets[j + 1]``, in the order of ``sources``).
    """
    device = torch.device(device)
    rng = np.random.default_rng([seed, 11])
    per_source = max(1, max_images // len(sources))
    acts, labels, owner, offsets = [], [], [], [0]
    for j, src in enumerate(sources):
        keep = stratified_cap(src.labels["train"], per_source, rng)
        acts.append(src.trunk["train"][keep])
        labels.append(src.labels["train"][keep] + offsets[-1])
        owner.append(np.full(len(keep), j))
        offsets.append(offsets[-1] + src.num_classes)
    x = torch.from_numpy(np.concatenate(acts)).float().to(device)
    y = torch.from_numpy(np.concatenate(labels)).to(device)
    own = torch.from_numpy(np.concatenate(owner)).to(device)
    # mask[j, c] = 0 for the classes of source j, -inf elsewhere
    mask = torch.full((len(sources), offsets[-1]), float("-inf"), device=device)
    for j in range(len(sources)):
        mask[j, offsets[j]:offsets[j + 1]] = 0.0
    # Nothing below draws from the global generator that matters: the head's random init is
    # zeroed, the tail has no dropout, and batches come from ``gen``.
    net = copy.deepcopy(tail).to(device).train().requires_grad_(True)
    dim = net(x[:2]).shape[1]
    head = nn.Linear(dim, offsets[-1]).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": TAIL_LR},
                            {"params": head.parameters(), "lr": HEAD_LR}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(steps, 1))))
    gen = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    wrong, seen = 0, 0
    for step in range(steps):
        index = torch.randint(len(y), (min(batch_size, len(y)),), generator=gen).to(device)
        logits = head(net(x[index])) + mask[own[index]]
        loss = F.cross_entropy(logits, y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - 20:
            wrong += int((logits.argmax(1) != y[index]).sum())
            seen += len(index)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    heads = {"weight": head.weight.detach().cpu().clone(), "bias": head.bias.detach().cpu().clone(),
             "offsets": torch.tensor(offsets, dtype=torch.int64)}
    info = {"images": int(len(y)), "train_error_last_steps": wrong / max(seen, 1),
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
            "steps": steps, "batch_size": batch_size,
            "tail_lr": TAIL_LR, "head_lr": HEAD_LR, "optimizer": "adam+cosine", "seed": seed,
            "images_per_source": {s.task_id: int(len(a)) for s, a in zip(sources, acts)},
            "head_classes": {s.task_id: int(s.num_classes) for s in sources}}
    return state, info, heads


def expert_embedding(plan: ExpertPlan, info: dict, task_embeddings: dict[str, np.ndarray],
                     trivial_level: float) -> np.ndarray:
    """The expert's task embedding: image-weighted mean of its sources' Fisher embeddings
    (the Fisher of its multi-head training objective); trivial for the ImageNet expert."""
    dim = len(next(iter(task_embeddings.values())))
    if plan.kind == "imagenet":
        return np.full(dim, trivial_level, dtype=np.float32)
    weights = info["images_per_source"]
    total = sum(weights.values())
    value = sum(task_embeddings[t].astype(np.float64) * (w / total) for t, w in weights.items())
    return np.asarray(value, dtype=np.float32)


def _library_state(con, specs: Sequence[TaskSpec]) -> tuple[dict, dict[str, TaskSpec], list[str]]:
    info = store.get_info(con)
    db_tasks = [r[0] for r in con.execute("SELECT task_id FROM tasks ORDER BY task_id").fetchall()]
    by_id = {s.task_id: s for s in specs}
    missing = [t for t in db_tasks if t not in by_id]
    if missing:
        raise Task2VecError(f"the library file has {len(missing)} task(s) the library "
                            f"{info.get('library')!r} does not (e.g. {missing[0]}): give the "
                            "LIBRARY the file was built from")
    return info, by_id, db_tasks


def build_experts(con, specs: Sequence[TaskSpec], cache: str | Path, *,
                  num_experts: int = DEFAULT_EXPERTS, sources: int = DEFAULT_SOURCES,
                  steps: int = DEFAULT_STEPS, max_images: int = EXPERT_MAX_IMAGES, seed: int = 0,
                  device: str = "cpu", progress: bool = True, probe: Probe | None = None,
                  tail_stages: int = DEFAULT_TAIL_STAGES, executor=None) -> list[ExpertPlan]:
    """Train the expert library into ``con`` (resumable: one transaction per expert).

    An expert already in the file is kept if its weights file is in the cache with the
    recorded sha256; otherwise it is retrained (and its performance rows dropped).
    ``executor`` (precompute.engine) runs the per-expert units (:func:`train_one`).
    """
    from .engine import LOCAL, Unit

    if steps < 1:
        raise Task2VecError("--steps must be at least 1")
    info, by_id, db_tasks = _library_state(con, specs)
    sizes = dict(con.execute("SELECT task_id, num_train FROM tasks").fetchall())
    plans = plan_experts([by_id[t] for t in db_tasks], num_experts, sources, sizes)
    settings = {"num_experts": num_experts, "sources": sources, "steps": steps,
                "max_images": max_images, "seed": seed, "tail_stages": tail_stages}
    old = info.get("experts")
    if old and {k: old.get(k) for k in settings} != settings:
        changed = [k for k in settings if old.get(k) != settings[k]]
        raise Task2VecError(f"the library's experts were made with other settings "
                            f"({', '.join(changed)}); use the same options, or a fresh library file")
    ws = workspace(cache, info, device, probe=probe, tail_stages=tail_stages)
    done = {r[0]: json.loads(r[1]) for r in con.execute("SELECT expert_id, meta FROM experts").fetchall()}
    method = store.task_method(info)
    embeddings = dict(zip(*store.embedding_matrix(con, method)))
    trivial = con.execute("SELECT any_value(trivial_level) FROM embeddings "
                          "WHERE method = ?", [method]).fetchone()[0]
    store.set_info(con, experts={**settings, "cache": str(ws.root)})
    # a user's models (add-expert) are not the plan's to drop
    stale = sorted(e for e in set(done) - {p.expert_id for p in plans}
                   if not user_models.is_user(done[e]))
    if stale:  # the library grew and the plan changed: the file's experts are the plan's
        with store.transaction(con):
            _delete_experts(con, stale)
        if progress:
            print(f"dropped {len(stale)} expert(s) no longer planned: {', '.join(stale)}", flush=True)
    units = [Unit(p.expert_id, (p, [by_id[t] for t in p.source_tasks], str(cache), info, device,
                                steps, max_images, seed, probe, tail_stages))
             for p in plans if not (p.expert_id in done and (p.kind == "imagenet"
                                                             or _weights_ok(ws, done[p.expert_id])))]
    for unit, meta in (executor or LOCAL).run(train_one, units, desc="experts", unit="expert",
                                             progress=progress):
        plan = unit.args[0]
        value = expert_embedding(plan, meta, embeddings, trivial)
        with store.transaction(con):
            _delete_experts(con, [plan.expert_id])
            con.execute("INSERT INTO experts VALUES (?, ?, ?, ?, ?)",
                        [plan.expert_id, plan.name, plan.kind, list(plan.source_tasks),
                         json.dumps(meta)])
            con.execute("INSERT INTO expert_embeddings VALUES (?, ?, ?, ?)",
                        [plan.expert_id, store.encode(value), trivial, float(np.abs(value).sum())])
    ws.clear_memo()
    return plans


def train_one(plan: ExpertPlan, sources: Sequence[TaskSpec], cache: str, info: dict, device: str,
              steps: int, max_images: int, seed: int, probe: Probe | None = None,
              tail_stages: int = DEFAULT_TAIL_STAGES) -> dict:
    """The experts stage's unit: train one expert on its source tasks (their trunk activations
    from the shared cache, or computed here), write its weights and source heads to the
    cache; its meta row."""
    ws = workspace(cache, info, device, probe=probe, tail_stages=tail_stages)
    t0 = time.perf_counter()
    if plan.kind == "imagenet":
        state, train, heads = None, {"images": 0, "seconds": 0.0, "seed": seed}, None
    else:
        feats = [ws.task_features(s) for s in sources]
        state, train, heads = train_expert(ws.tail_template, feats, steps=steps,
                                           max_images=max_images, seed=seed, device=device)
    meta = {**train, "group": list(plan.group), "group_size": plan.group_size,
            "probe": info["probe"], "input_size": ws.input_size,
            "tail": type(ws.tail_template).__name__, "tail_stages": tail_stages,
            "device": _device_name(ws.device), "versions": _versions(),
            "weights_file": None, "weights_sha256": None, "heads_file": None, "heads_sha256": None,
            "embedding": "imagenet: trivial (F = 0)" if plan.kind == "imagenet" else
            "image-weighted mean of the sources' Fisher embeddings"}
    if state is not None:
        for what, path, value in (("weights", ws.weights_file(plan.expert_id), state),
                                  ("heads", ws.heads_file(plan.expert_id), heads)):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # workers may write at once
            buf = io.BytesIO()  # torch.save names the archive after a file: the same bytes
            torch.save(value, buf)  # from any worker, so the sha256 is the tensors'
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
            meta[f"{what}_file"], meta[f"{what}_sha256"] = path.name, _sha256(path)
    meta["seconds_total"] = round(time.perf_counter() - t0, 3)
    return meta

def _delete_experts(con, expert_ids: Sequence[str]) -> None:
    """Remove experts with their embeddings and performance rows (inside a transaction)."""
    for table in ("experts", "expert_embeddings", "performance", "feature_scores"):
        con.executemany(f"DELETE FROM {table} WHERE expert_id = ?", [[e] for e in expert_ids])


def _weights_ok(ws: Workspace, meta: dict) -> bool:
    """The expert's weights (and its source heads, where it has them) are in the cache, intact."""
    for what in ("weights", "heads"):
        if what == "heads" and not meta.get("heads_file"):
            continue
        path = ws.root / "weights" / str(meta.get(f"{what}_file"))
        if not (path.is_file() and _sha256(path) == meta.get(f"{what}_sha256")):
            return False
    return True


# ----------------------------------------------------------------------------------------------
# the performance matrix


@torch.no_grad()
def tail_features(tail: nn.Module, trunk: np.ndarray, device: torch.device) -> np.ndarray:
    """One expert's pooled features float32 ``[N, D]`` from trunk activations ``[N, C, h, w]``."""
    batch = 2048 if device.type == "cuda" else 512
    out = []
    for start in range(0, len(trunk), batch):
        x = torch.from_numpy(trunk[start:start + batch]).to(device).float()
        out.append(tail(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def compute_matrix(con, specs: Sequence[TaskSpec], cache: str | Path, *, device: str = "cpu",
                   max_train: int = MAX_TRAIN, max_test: int = MAX_TEST, progress: bool = True,
                   probe: Probe | None = None, executor=None) -> dict:
    """Fill ``performance`` and ``feature_scores`` for every (expert, task) pair not yet there.

    Two stages of units (``executor``, precompute.engine; this process by default): the trunk
    activations of every task still to do, into the cache (:func:`trunk_unit`); then one unit
    per expert and ``COMMIT_EVERY`` of its tasks (:func:`matrix_chunk`: the expert's tail runs
    once per distinct image of the chunk), each committed in one transaction as it arrives,
    so a killed run resumes where it stopped. The transfer scores
    (:mod:`precompute.transfer`) are computed on the task's train split: LogME, k-NN, H-score
    on the expert's features, LEEP and NCE on its source heads' predictions (NULL for an
    expert without heads). Returns timings.
    """
    from .engine import LOCAL, Unit

    executor = executor or LOCAL
    info, by_id, db_tasks = _library_state(con, specs)
    experts = [(r[0], json.loads(r[1])) for r in
               con.execute("SELECT expert_id, meta FROM experts ORDER BY expert_id").fetchall()]
    if not experts:
        raise Task2VecError("the library has no experts yet: run python -m precompute experts first")
    settings = {"max_train": max_train, "max_test": max_test, "l2": transfer.LINEAR_L2,
                "knn_k": transfer.KNN_K, "hscore_shrinkage": transfer.HSCORE_SHRINKAGE}
    old = info.get("matrix")
    if old and {k: old.get(k) for k in settings} != settings:
        raise Task2VecError("the performance matrix was started with other settings "
                            f"({old}); use the same options, or a fresh library file")
    store.set_info(con, matrix={**settings, "classifier": "multinomial logistic regression, "
                                "standardised features, L-BFGS", "device": device,
                                "source_heads": "1/H mixture of the heads' softmaxes (LEEP); "
                                "one hard label per head (NCE)", "versions": _versions()})
    done = set(con.execute("SELECT expert_id, task_id FROM performance").fetchall())
    todo = {e: [t for t in db_tasks if (e, t) not in done] for e, _ in experts}
    timings = {"trunk_s": 0.0, "tail_s": {}, "fit_s": 0.0, "scores_s": {}, "pairs": 0}
    if not any(todo.values()):
        return timings
    # the trunk activations the probe's experts need (a user model reads the images itself)
    needed = sorted({t for e, meta in experts if not user_models.is_user(meta) for t in todo[e]})
    # the experts' own cut; files whose experts predate the setting have 1-stage tails
    tail_stages = int((info.get("experts") or {}).get("tail_stages", 1))
    common = (str(cache), info, device, max_train, max_test, probe, tail_stages)
    ws = workspace(*common[:5], probe=probe, tail_stages=tail_stages)
    t0 = time.perf_counter()
    for _ in executor.run(trunk_unit, [Unit(t, (by_id[t], *common)) for t in needed],
                          desc="trunk features", unit="task", progress=progress):
        pass
    ws.clear_memo()
    timings["trunk_s"] = time.perf_counter() - t0
    units = [Unit(f"{expert_id} x {tasks[i]}..{tasks[min(i + COMMIT_EVERY, len(tasks)) - 1]}",
                  (expert_id, meta, [by_id[t] for t in tasks[i:i + COMMIT_EVERY]], *common))
             for expert_id, meta in experts if (tasks := todo[expert_id])
             for i in range(0, len(tasks), COMMIT_EVERY)]
    for unit, out in executor.run(matrix_chunk, units, desc="matrix", unit="chunk",
                                  progress=progress):
        _write_rows(con, out["rows"])
        timings["pairs"] += len(out["rows"])
        timings["fit_s"] += out["fit_s"]
        timings["tail_s"][unit.args[0]] = timings["tail_s"].get(unit.args[0], 0.0) + out["tail_s"]
        for name, sec in out["scores_s"].items():
            timings["scores_s"][name] = timings["scores_s"].get(name, 0.0) + sec
    _FEATURES.clear()
    _FEATURE_SIZES.clear()
    return timings


_FEATURES: dict = {}  # (workspace, task) -> TaskFeatures, this process's most recent ones
_FEATURE_SIZES: dict = {}  # the same keys -> bytes of their trunk activations
FEATURES_BYTES = 2 << 30


def _task_features(ws: Workspace, spec: TaskSpec) -> TaskFeatures:
    """The task's trunk features, kept in memory between units up to ``FEATURES_BYTES``."""
    key = (str(ws.root), spec.task_id)
    if key not in _FEATURES:
        f = ws.task_features(spec)
        size = sum(a.nbytes for a in f.trunk.values())
        while _FEATURES and sum(_FEATURE_SIZES.values()) + size > FEATURES_BYTES:
            _FEATURE_SIZES.pop(next(iter(_FEATURES)))
            _FEATURES.pop(next(iter(_FEATURES)))  # the oldest first
        _FEATURES[key], _FEATURE_SIZES[key] = f, size
    return _FEATURES[key]


def trunk_unit(spec: TaskSpec, cache: str, info: dict, device: str, max_train: int,
               max_test: int, probe: Probe | None = None, tail_stages: int = 1) -> None:
    """The matrix's first unit: one task's capped splits through the frozen trunk, into the
    shared cache (nothing to do if they are there)."""
    _task_features(workspace(cache, info, device, max_train, max_test, probe, tail_stages), spec)


def matrix_chunk(expert_id: str, meta: dict, specs: Sequence[TaskSpec], cache: str, info: dict,
                 device: str, max_train: int, max_test: int, probe: Probe | None = None,
                 tail_stages: int = 1) -> dict:
    """The matrix's unit: one expert on a few tasks -> their ``performance`` and
    ``feature_scores`` rows, with the tail, classifier and transfer-score seconds."""
    ws = workspace(cache, info, device, max_train, max_test, probe, tail_stages)
    tasks = [s.task_id for s in specs]
    if user_models.is_user(meta):
        feats, index, features, tail_s, heads = _user_features(ws, cache, expert_id, meta, specs)
    else:
        feats, index, features, tail_s = _tail_features(ws, expert_id, meta, specs)
        heads = ws.load_heads(expert_id, meta)
    per_image = tail_s / max(len(features), 1)
    pending, fit_total, scores_s = [], 0.0, {}
    for t in tasks:
        f = feats[t]
        x = {s: features[[index[k] for k in f.keys[s]]] for s in ("train", "test")}
        t1 = time.perf_counter()
        train_err, test_err = transfer.linear_probe(x["train"], f.labels["train"], x["test"],
                                                    f.labels["test"], f.num_classes)
        fit_s = time.perf_counter() - t1
        scores = _transfer_scores(x["train"], f.labels["train"], heads)
        for name, (_, sec) in scores.items():
            scores_s[name] = scores_s.get(name, 0.0) + (sec or 0.0)
        n_images = len(f.keys["train"]) + len(f.keys["test"])
        feature_s = n_images * (per_image + f.trunk_seconds_per_image)
        fit_total += fit_s
        pending.append(((expert_id, t, test_err, train_err, feature_s + fit_s),
                        (expert_id, t, feature_s,
                         *(v for name in SCORES for v in scores[name]))))
    return {"rows": pending, "tail_s": tail_s, "fit_s": fit_total, "scores_s": scores_s}


def _distinct(feats: dict[str, TaskFeatures]) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
    """The distinct images of the tasks (by content): key -> row, and each row's (task, split,
    position), so that an expert runs once per image."""
    index: dict[str, int] = {}
    rows = []
    for t, f in feats.items():
        for split in ("train", "test"):
            for i, k in enumerate(f.keys[split]):
                if k not in index:
                    index[k] = len(rows)
                    rows.append((t, split, i))
    return index, rows


def _tail_features(ws: Workspace, expert_id: str, meta: dict, specs: Sequence[TaskSpec]):
    """A fine-tuned (or the ImageNet) expert's features of the tasks' capped splits: its tail
    on the cached trunk activations. (feats, key -> row, features, seconds)."""
    feats = {s.task_id: _task_features(ws, s) for s in specs}
    tail = ws.load_tail(expert_id, meta)
    index, rows = _distinct(feats)
    trunk = np.stack([feats[t].trunk[s][i] for t, s, i in rows])
    t1 = time.perf_counter()
    features = tail_features(tail, trunk, ws.device)
    return feats, index, features, time.perf_counter() - t1


def _user_features(ws: Workspace, cache: str, expert_id: str, meta: dict, specs: Sequence[TaskSpec]):
    """A user model's features (:mod:`precompute.user_models`) of the same capped splits,
    decoded at the model's input size; its classifier is its source head."""
    model = user_models.model_of(cache, expert_id, meta)
    feats, images = {}, {}
    for spec in specs:
        splits = capped_splits(spec, ws.seed, ws.max_train, ws.max_test, int(meta["input_size"]))
        f = TaskFeatures(spec.task_id, 0, {}, {}, {})
        for split, (imgs, labels, num_classes) in splits.items():
            f.num_classes = num_classes
            f.keys[split], f.labels[split] = image_keys(imgs), labels
            images.update(zip(f.keys[split], imgs))
        feats[spec.task_id] = f
    index, rows = _distinct(feats)
    batch = torch.stack([images[feats[t].keys[s][i]] for t, s, i in rows])
    t1 = time.perf_counter()
    features = model.features(batch, ws.device)
    weight, bias = model.head
    return (feats, index, features, time.perf_counter() - t1,
            (weight, bias, np.array([0, len(weight)])))


# feature_scores columns: (score, its seconds) per transfer score, as store.expert_schema has them
SCORES = {"logme": ("logme", "logme_seconds"), "knn": ("knn_accuracy", "knn_seconds"),
          "hscore": ("hscore", "hscore_seconds"), "leep": ("leep", "leep_seconds"),
          "nce": ("nce", "nce_seconds")}


def _transfer_scores(x: np.ndarray, y: np.ndarray,
                     heads: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> dict:
    """name -> (score, seconds) of every transfer score of one expert's train-split features
    ``x`` on one task; LEEP and NCE are (None, None) without source heads. The source heads'
    logits are computed once and their cost shared by LEEP and NCE."""
    out = {}
    for name, score in (("logme", transfer.logme), ("knn", transfer.knn_accuracy),
                        ("hscore", transfer.hscore)):
        t1 = time.perf_counter()
        value = score(x, y)
        out[name] = (value, time.perf_counter() - t1)
    if heads is None:
        return {**out, "leep": (None, None), "nce": (None, None)}
    weight, bias, offsets = heads
    t1 = time.perf_counter()
    theta, hard = transfer.head_mixture(x.astype(np.float64) @ weight.T.astype(np.float64) + bias,
                                        offsets)
    shared = time.perf_counter() - t1
    for name, score, source in (("leep", transfer.leep, theta), ("nce", transfer.nce, hard)):
        t1 = time.perf_counter()
        value = score(source, y)
        out[name] = (value, shared + time.perf_counter() - t1)
    return out


def _write_rows(con, pending: list) -> None:
    columns = ["expert_id", "task_id", "feature_seconds",
               *(c for name in SCORES for c in SCORES[name])]
    with store.transaction(con):
        con.executemany("INSERT INTO performance VALUES (?, ?, ?, ?, ?)", [p for p, _ in pending])
        con.executemany(f"INSERT INTO feature_scores ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' * len(columns))})", [s for _, s in pending])
