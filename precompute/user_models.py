"""A user's own pretrained models as experts of a built library (issue 18).

The question a practitioner brings is "which of *my* models should I start from for this new
dataset?". ``python -m precompute add-expert`` adds such a model to a library file:

- **The network.** ARCH names a torchvision classification architecture
  (``torchvision.models.get_model(ARCH, weights=None)``; with the number of classes of the
  file's last linear layer), or one of this project's probes that torchvision lacks
  (``efficientnet_lite0``..``2``), so that a fine-tuned copy of the probe can be brought back.
- **The weights** are a state dict, read with ``torch.load(weights_only=True)``: tensors only,
  never unpickled, so a file that holds Python objects (code) is refused before anything runs.
  They are checked strictly against the architecture; the error names the first key that is
  missing, unexpected or of another shape.
- **The feature extractor** is the network without its classifier: the input of its last
  linear layer (ResNet's ``fc``, MobileNetV3's ``classifier.3``); images at the library's
  input size (or ``--input-size``), scaled to [0, 1] and normalised with ImageNet's mean and
  std (a probe: its own normalisation). The removed layer is the model's source head, for
  LEEP and NCE.
- **Its task.** With ``--trained-on`` (a task id of the library, or a task folder / zip / CSV
  embedded here with the library's probe and settings) the expert's embedding is that task's
  Fisher embedding, and the TASK2VEC selectors rank it; without, its task is unknown: it gets
  the trivial embedding (F = 0, as the ImageNet expert) and the TASK2VEC selectors say they
  cannot rank it (Model2Vec places it from its learned bias once ``evaluate`` has run again).

In the file: an ``experts`` row ``user/<name>``, kind ``user``, ``source_tasks`` [the library
task] or [], ``meta`` (arch, num_classes, feature_dim, input_size, normalisation, head,
weights_file + weights_sha256, trained_on, task_known, added, versions); an
``expert_embeddings`` row. The weights are copied into the cache, content-addressed
(``<cache>/user-models/<sha256>.pt``), where ``matrix`` (any worker) reads them after checking
the sha256. ``matrix`` then fills the expert's column for every task (resumable, as for every
expert). The stored evaluation is kept, marked stale (``library_info.selection_stale``) until
``evaluate`` runs again.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import store
from .errors import Task2VecError
from .probes.base import IMAGENET_MEAN, IMAGENET_STD

KIND = "user"
PREFIX = "user/"
WEIGHTS_FOLDER = "user-models"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BATCH = 64


# ----------------------------------------------------------------------------------------------
# the network and its weights


def architectures() -> list[str]:
    """The architecture names ``add-expert`` accepts: torchvision's classification models,
    then the project's probes torchvision lacks."""
    import torchvision

    from .probes import available

    names = list(torchvision.models.list_models(module=torchvision.models))
    return names + [p for p in available() if p not in names]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` with ``torch.load(weights_only=True)``: tensors only, nothing
    unpickled. ``{"state_dict": {...}}`` (a training checkpoint) is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise Task2VecError(f"no such weights file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # weights_only's unpickler refuses any object it would have to construct by calling
        # code, with pickle's UnpicklingError (matched by name: this module never imports pickle)
        if type(exc).__name__ == "UnpicklingError":
            raise Task2VecError(
                f"{path} was refused: it holds Python objects, not only tensors, and this tool "
                f"never unpickles them ({str(exc).splitlines()[0][:120]}); save the weights "
                "with torch.save(model.state_dict(), FILE)") from None
        raise Task2VecError(f"cannot read weights file {path}: truncated, or not a file "
                            f"torch.save wrote ({str(exc).splitlines()[0][:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise Task2VecError(f"{path} is not a state dict (a mapping of names to tensors); save "
                            "the weights with torch.save(model.state_dict(), FILE)")
    return state


def _last_linear(net: nn.Module) -> str | None:
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _first_mismatch(own: dict, state: dict, arch: str) -> str | None:
    """The first key in which ``state`` and the architecture's own state dict differ, in words."""
    problems = []
    for key, value in own.items():
        if key not in state:
            problems.append(f"key {key!r} of {arch} is missing from the file")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(f"key {key!r} has shape {list(state[key].shape)} in the file, "
                            f"{list(value.shape)} in {arch}")
    problems += [f"the file has key {key!r}, which {arch} does not" for key in state if key not in own]
    if not problems:
        return None
    more = f" ({len(problems)} mismatches in all)" if len(problems) > 1 else ""
    return problems[0] + more


@dataclass
class UserModel:
    """A user's network ready to make features: ``net`` maps normalised images to
    ``[N, feature_dim]`` (its classifier removed); ``head`` (weight, bias) is that classifier."""

    arch: str
    net: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    feature_dim: int
    num_classes: int
    head: tuple[np.ndarray, np.ndarray]
    head_name: str
    normalisation: str

    @torch.no_grad()
    def features(self, images: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
        """uint8 ``[N, 3, S, S]`` -> float32 ``[N, feature_dim]``, in full (zero-padded)
        batches, so an image's features do not depend on the images beside it."""
        device = torch.device(device)
        net = self.net.to(device)
        mean, std = self.mean.to(device), self.std.to(device)
        out = []
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            x = torch.zeros((BATCH, *chunk.shape[1:]), dtype=torch.uint8)
            x[:len(chunk)] = chunk
            x = (x.to(device).float() / 255.0 - mean) / std
            out.append(net(x)[:len(chunk)].float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.feature_dim), np.float32)


def load_model(arch: str, weights: str | os.PathLike) -> UserModel:
    """The network ARCH with the state dict in ``weights`` (strict), its classifier removed.

    Raises Task2VecError naming the architecture or the first mismatched key.
    """
    import torchvision

    from . import probes

    state = read_state_dict(weights)
    tv = torchvision.models.list_models(module=torchvision.models)
    if arch in tv:
        net = torchvision.models.get_model(arch, weights=None)
        head_name = _last_linear(net)
        if head_name is None:
            raise Task2VecError(f"{arch} has no linear classifier to remove; choose an "
                                "architecture whose last layer is linear (e.g. resnet18)")
        w = state.get(f"{head_name}.weight")
        if w is not None and w.ndim == 2 and w.shape[0] != net.get_submodule(head_name).out_features:
            net = torchvision.models.get_model(arch, weights=None, num_classes=int(w.shape[0]))
        mean, std, normalisation = IMAGENET_MEAN, IMAGENET_STD, "ImageNet mean and std"
    elif arch in probes.available():
        probe = probes.create(arch, pretrained=False)
        if probe.classifier is None:
            raise Task2VecError(f"probe {arch} has no classifier to remove")
        net, head_name = probe, "classifier"
        mean, std = tuple(probe.mean.flatten().tolist()), tuple(probe.std.flatten().tolist())
        normalisation = f"probe {arch}'s own"
    else:
        close = difflib.get_close_matches(arch, architectures(), n=3)
        raise Task2VecError(f"unknown architecture {arch!r}"
                            + (f" (did you mean {', '.join(close)}?)" if close else "")
                            + "; ARCH is a torchvision classification model by name, e.g. "
                            "resnet18 or mobilenet_v3_small")
    problem = _first_mismatch(net.state_dict(), state, arch)
    if problem:
        raise Task2VecError(f"{weights} does not fit {arch}: {problem}")
    net.load_state_dict(state, strict=True)
    head = net.get_submodule(head_name)
    parent, _, leaf = head_name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, nn.Identity())
    net.eval().requires_grad_(False)
    return UserModel(arch, net, torch.tensor(mean).view(1, 3, 1, 1),
                     torch.tensor(std).view(1, 3, 1, 1), head.in_features, head.out_features,
                     (head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()
                      if head.bias is not None else np.zeros(head.out_features, np.float32)),
                     head_name, normalisation)


# ----------------------------------------------------------------------------------------------
# in the library file


@dataclass
class Entry:
    """One model to add: name, architecture, weights file, optional training task, input size."""

    name: str
    arch: str
    weights: str
    trained_on: str | None = None
    input_size: int | None = None


MANIFEST_COLUMNS = ("name", "arch", "weights", "trained_on")


def read_manifest(path: str | os.PathLike) -> list[Entry]:
    """A CSV with a header ``name,arch,weights[,trained_on][,input_size]``, one model a line;
    relative weight and task paths are relative to the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise Task2VecError(f"no such manifest: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Task2VecError(f"cannot read manifest {path}: {exc}") from None
    missing = [c for c in MANIFEST_COLUMNS[:3] if c not in header]
    if not rows or missing:
        raise Task2VecError(f"manifest {path} needs a header line name,arch,weights[,trained_on]"
                            f"[,input_size] and one model a line"
                            + (f" (missing: {', '.join(missing)})" if rows else " (it is empty)"))
    out = []
    for line, row in enumerate(rows, start=2):
        if any(not (row.get(c) or "").strip() for c in MANIFEST_COLUMNS[:3]):
            raise Task2VecError(f"{path}, line {line}: name, arch and weights must all be given")
        size = (row.get("input_size") or "").strip()
        if size and not size.isdigit():
            raise Task2VecError(f"{path}, line {line}: input_size {size!r} is not a number")
        trained = (row.get("trained_on") or "").strip() or None
        if trained and (path.parent / trained).exists():
            trained = str(path.parent / trained)
        out.append(Entry(row["name"].strip(), row["arch"].strip(),
                         str(path.parent / row["weights"].strip()), trained,
                         int(size) if size else None))
    return out


@dataclass
class Prepared:
    """A checked entry, ready to write: the rows and the weights' place in the cache."""

    entry: Entry
    expert_id: str
    meta: dict
    source_tasks: list[str]
    embedding: np.ndarray
    trivial_level: float  # the library's, stored beside the embedding


def weights_path(cache: str | os.PathLike, meta: dict) -> Path:
    return Path(cache) / WEIGHTS_FOLDER / meta["weights_file"]


def _sha256(path: Path) -> str:
    from .experts import _sha256 as file_sha256  # experts imports this module

    return file_sha256(path)


def _training_embedding(con, info: dict, trained_on: str, progress: bool) -> tuple[np.ndarray, list[str], dict]:
    """(embedding, source_tasks, description) of ``--trained-on``: a library task's stored
    Fisher embedding, or a task folder / zip / CSV embedded with the library's settings."""
    method = store.task_method(info)
    row = con.execute("SELECT value FROM embeddings WHERE task_id = ? AND method = ?",
                      [trained_on, method]).fetchone()
    if row is not None:
        return store.decode(np.asarray(row[0])), [trained_on], {"task_id": trained_on}
    if not Path(trained_on).exists():
        raise Task2VecError(f"--trained-on {trained_on!r} is neither a task of this library nor "
                            "a task folder, zip or CSV")
    from .task2vec import embed_methods
    from .tasks import load_task

    size = int(info["input_size"])
    task = load_task(trained_on, input_size=size)
    emb = embed_methods(task, info["probe"], methods=[method], input_size=size,
                        seed=int(info.get("seed", 0)), progress=progress,
                        **store.head_options(info))[method]
    return (emb.values.astype(np.float32), [],
            {"path": str(Path(trained_on).resolve()), "images": task.size,
             "classes": task.num_classes, "method": method, "seed": int(info.get("seed", 0))})


def prepare(con, entries: Sequence[Entry], progress: bool = False) -> list[Prepared]:
    """Check every entry against the library in ``con`` (read-only is enough) and load its
    network once (a trial forward pass at its input size); nothing is written. Raises
    Task2VecError for the first entry that is wrong, naming it."""
    from .task2vec import _versions

    info = store.get_info(con)
    if "input_size" not in info or "probe" not in info:
        raise Task2VecError("the file is not a built library (no library_info): build it first")
    existing = {r[0] for r in con.execute("SELECT expert_id FROM experts").fetchall()}
    names = [e.name for e in entries]
    trivial = con.execute("SELECT any_value(trivial_level) FROM embeddings WHERE method = ?",
                          [store.task_method(info)]).fetchone()[0]
    out = []
    for entry in entries:
        what = f"model {entry.name!r}"
        if not NAME_RE.match(entry.name):
            raise Task2VecError(f"{what}: a name is 1 to 64 letters, digits, '.', '_' or '-'")
        expert_id = PREFIX + entry.name
        if expert_id in existing:
            raise Task2VecError(f"{what}: the library already has an expert {expert_id}; "
                                f"remove it first (python -m precompute remove-expert --db FILE "
                                f"--name {entry.name})")
        if names.count(entry.name) > 1:
            raise Task2VecError(f"{what} is listed twice")
        size = int(entry.input_size or info["input_size"])
        if size < 16:
            raise Task2VecError(f"{what}: input size {size} px is too small")
        try:
            model = load_model(entry.arch, entry.weights)
        except Task2VecError as exc:
            raise Task2VecError(f"{what}: {exc}") from None
        try:
            probe_out = model.net(torch.zeros(2, 3, size, size))
        except Exception as exc:
            raise Task2VecError(f"{what}: {entry.arch} cannot run on {size} px images "
                                f"({str(exc).splitlines()[0][:160]}); give a larger --input-size")
        if tuple(probe_out.shape) != (2, model.feature_dim):
            raise Task2VecError(f"{what}: {entry.arch} without its classifier gives features of "
                                f"shape {list(probe_out.shape[1:])}, not [{model.feature_dim}]")
        if entry.trained_on:
            embedding, sources, trained = _training_embedding(con, info, entry.trained_on, progress)
        else:
            dim = int(info["filters"])
            embedding, sources, trained = np.full(dim, trivial, np.float32), [], None
        sha = _sha256(Path(entry.weights))
        meta = {"arch": entry.arch, "num_classes": model.num_classes,
                "feature_dim": model.feature_dim, "input_size": size,
                "normalisation": model.normalisation, "head": model.head_name,
                "features": f"the input of {model.head_name} (the network without its classifier)",
                "weights_file": f"{sha}.pt", "weights_sha256": sha,
                "weights_source": str(Path(entry.weights).resolve()),
                "trained_on": trained, "task_known": trained is not None,
                "embedding": ("the Fisher embedding of its training task" if trained else
                              "trivial (its training task is unknown)"),
                "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": _versions()}
        out.append(Prepared(entry, expert_id, meta, sources, embedding, trivial))
    return out


def write(con, prepared: Sequence[Prepared], cache: str | os.PathLike) -> None:
    """Copy the weights into the cache (content-addressed) and add the experts, one
    transaction for all; marks the stored evaluation stale."""
    folder = Path(cache) / WEIGHTS_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for p in prepared:
            target = weights_path(cache, p.meta)
            if not (target.is_file() and _sha256(target) == p.meta["weights_sha256"]):
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                shutil.copyfile(p.entry.weights, tmp)
                tmp.replace(target)
    except OSError as exc:
        raise Task2VecError(f"cannot copy the weights into the cache {folder}: {exc.strerror}") from None
    with store.transaction(con):
        for p in prepared:
            con.execute("INSERT INTO experts VALUES (?, ?, ?, ?, ?)",
                        [p.expert_id, p.entry.name, KIND, p.source_tasks, json.dumps(p.meta)])
            con.execute("INSERT INTO expert_embeddings VALUES (?, ?, ?, ?)",
                        [p.expert_id, store.encode(p.embedding), p.trivial_level,
                         float(np.abs(p.embedding).sum())])
        _mark_stale(con, "added " + ", ".join(p.expert_id for p in prepared))


def removable(con, names: Sequence[str]) -> list[str]:
    """The expert ids of the user models ``names`` (NAME or user/NAME); Task2VecError for a
    name the library lacks or one of the library's own experts (the experts plan's)."""
    rows = dict(con.execute("SELECT expert_id, kind FROM experts").fetchall())
    ids = []
    for name in names:
        expert_id = name if name in rows else PREFIX + name
        if expert_id not in rows:
            users = sorted(e.removeprefix(PREFIX) for e, k in rows.items() if k == KIND)
            raise Task2VecError(f"the library has no expert {name!r}"
                                + (f"; its own models: {', '.join(users)}" if users else
                                   "; it has no models added with add-expert"))
        if rows[expert_id] != KIND:
            raise Task2VecError(f"{expert_id} is one of the library's own experts (kind "
                                f"{rows[expert_id]}); python -m precompute experts trains those, "
                                "remove-expert removes models added with add-expert")
        ids.append(expert_id)
    return ids


def remove(con, names: Sequence[str]) -> list[str]:
    """Remove the user experts ``names`` (:func:`removable`) from every table, in one
    transaction; the cached weights copy stays (content-addressed, it may serve another file)."""
    from .experts import _delete_experts

    ids = removable(con, names)
    with store.transaction(con):
        _delete_experts(con, ids)
        con.executemany("DELETE FROM model2vec WHERE expert_id = ?", [[i] for i in ids])
        _mark_stale(con, "removed " + ", ".join(ids))
    return ids


def _mark_stale(con, change: str) -> None:
    """The stored evaluation (Table 1, Model2Vec, the static prior) predates ``change``."""
    info = store.get_info(con)
    if "selection" in info:
        before = info.get("selection_stale") or []
        store.set_info(con, selection_stale=[*before, change])


# ----------------------------------------------------------------------------------------------
# the matrix stage's view of a user expert


_MODELS: dict = {}  # (weights file, arch) -> UserModel, this process's (a Ray worker's) last one


def model_of(cache: str | os.PathLike, expert_id: str, meta: dict) -> UserModel:
    """The expert's network from the cache copy of its weights, after checking the sha256."""
    path = weights_path(cache, meta)
    key = (str(path), meta["arch"])
    if key not in _MODELS:
        if not path.is_file() or _sha256(path) != meta["weights_sha256"]:
            raise Task2VecError(f"the weights of {expert_id} are not in the cache ({path}) or "
                                "differ from the ones added; add it again with add-expert "
                                "(same --cache), or give the --cache it was added with")
        _MODELS.clear()
        _MODELS[key] = load_model(meta["arch"], path)
    return _MODELS[key]


def is_user(meta: dict) -> bool:
    return "arch" in meta and "feature_dim" in meta
