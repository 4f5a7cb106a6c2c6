"""Shared fixtures: small real tasks built from data that installs offline."""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from precompute.errors import Task2VecError
from precompute.probes import Probe
from precompute.tasks import TaskData, task_from_arrays
from precompute.task2vec import embed_methods

SIDE = 32  # small input keeps the CPU suite fast; the probes accept any size >= 32


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    return (d.images / 16 * 255).astype(np.uint8), d.target


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


def fashion_test_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` Fashion-MNIST test images (uint8 [n, 28, 28]) and labels."""
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return images[:n], labels[:n]


@pytest.fixture(scope="session")
def fashion():
    """The first 300 Fashion-MNIST test images and labels (another domain than digits)."""
    return fashion_test_images(300)


@pytest.fixture(scope="session")
def digits_task(digits) -> TaskData:
    images, labels = digits
    return task_from_arrays(images[:300], labels[:300], input_size=SIDE, name="digits")


def write_pair_manifest(root: Path, digits, digit_pairs, fashion_pairs, per_class: int) -> Path:
    """A path,label,task,taxonomy manifest of digit-pair and fashion-pair tasks, one PNG per
    image shared by every task that uses it (so shared images have identical pixels)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,task,taxonomy"]
    for family, (images, labels), pairs in (("digits", digits, digit_pairs),
                                            ("fashion", fashion_test_images(2000), fashion_pairs)):
        for a, b in pairs:
            for c in (a, b):
                for i in np.flatnonzero(labels == c)[:per_class]:
                    path = root / f"{family}-{i}.png"
                    if not path.exists():
                        Image.fromarray(np.asarray(images[i], np.uint8)).save(path)
                    lines.append(f"{path.name},{c},{family}-{a}-vs-{b},{family}/pair")
    manifest = root / "library.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


EXPERT_DIGIT_PAIRS = [(0, 1), (3, 8), (1, 7), (4, 9)]
EXPERT_FASHION_PAIRS = [(0, 1), (7, 9), (5, 9), (2, 4)]
EXPERT_PER_CLASS = 20


@pytest.fixture(scope="session")
def expert_library(digits, tmp_path_factory):
    """A built library file with experts (digits, fashion, ImageNet), matrix and evaluation:
    4 digit-pair and 4 Fashion-MNIST-pair tasks of 20 images a class at 32 px, written as a
    CSV manifest so the CLI can re-read it (digit 1 is in two tasks, so images are shared).
    Shared by test_experts and test_user_models; tests that change it work on a copy."""
    from precompute import build, experts, selection, store
    from precompute.libraries.user import read_user_library

    root = tmp_path_factory.mktemp("experts")
    manifest = write_pair_manifest(root / "images", digits, EXPERT_DIGIT_PAIRS,
                                   EXPERT_FASHION_PAIRS, EXPERT_PER_CLASS)
    db = root / "lib.duckdb"
    specs = read_user_library(manifest)
    build.build_library(specs, db, library=str(manifest), methods=("montecarlo",),
                        input_size=SIDE, maps=(), progress=False)
    con = store.open_library(db)
    try:
        experts.build_experts(con, specs, root / "cache", num_experts=2, sources=2, steps=40,
                              progress=False)
        experts.compute_matrix(con, specs, root / "cache", progress=False)
        summary = selection.evaluate(con, seeds=2, folds=2, progress=False)
    finally:
        con.close()
    return {"root": root, "db": db, "manifest": manifest, "specs": specs, "summary": summary}


def constant_task(task: TaskData) -> TaskData:
    """Every image labelled the same: the task carries no information about the label."""
    return TaskData(name="constant", images=task.images,
                    labels=torch.zeros(task.size, dtype=torch.long), classes=["all"],
                    source="<memory>")


def tiny_probe(seed: int = 0) -> Probe:
    """A small conv net whose exact diagonal Fisher is cheap to compute by enumeration."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in backbone:
        if isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode statistics
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return Probe("tiny", backbone, None, feature_dim=6, input_size=SIDE).eval()


def expect_error(call, *phrases: str) -> str:
    """Assert ``call()`` raises Task2VecError whose one-line message holds every phrase."""
    with pytest.raises(Task2VecError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    return message


# ---------------------------------------------------------------------- embeddings computed once

_EMBEDDINGS: dict = {}


def remembered_embed_methods(task: TaskData, probe, **settings) -> dict:
    """``embed_methods``, computed for real the first time a task (its pixels, labels and
    classes) is embedded with given settings in this test session, then handed out again.

    For tests of what a stage does *around* the embedding (resume, crashes at chosen commits,
    publishing, a grown library): they would otherwise embed the same tasks a dozen times. The
    embedding itself is tested elsewhere (test_task2vec, the real SIGKILL trials of test_faults,
    which embed in a subprocess)."""
    digest = hashlib.sha256(task.images.numpy().tobytes())
    digest.update(task.labels.numpy().tobytes())
    key = (digest.hexdigest(), tuple(task.classes), getattr(probe, "name", probe),
           repr(sorted(settings.items())))
    if key not in _EMBEDDINGS:
        _EMBEDDINGS[key] = embed_methods(task, probe, **settings)
    return dict(_EMBEDDINGS[key])


@pytest.fixture
def remembered_embeddings(monkeypatch):
    """The build embeds through :func:`remembered_embed_methods` during this test."""
    from precompute import build

    monkeypatch.setattr(build, "embed_methods", remembered_embed_methods)


# --------------------------------------------------------------------------- explorer (app) fixtures

APP_DIGIT_PAIRS = [(0, 1, "round"), (3, 8, "round"), (6, 0, "round"), (1, 7, "straight"),
                   (4, 9, "straight")]
APP_FASHION_PAIRS = [(0, 2, "tops"), (5, 7, "footwear"), (7, 9, "footwear")]


def app_task_specs(digits, fashion) -> list:
    """8 small real tasks in two families with a 3-level taxonomy (family / group / pair):
    digit pairs and Fashion-MNIST class pairs, 30 train + 10 test images each."""
    from precompute.libraries import Record, TaskSpec

    def spec(images, labels, a, b, family, group, name):
        idx = np.flatnonzero((labels == a) | (labels == b))[:40]
        records = [Record(images[i], str(labels[i]), "train" if k < 30 else "test")
                   for k, i in enumerate(idx)]
        return TaskSpec(task_id=f"{family}/{a}-vs-{b}", family=family, name=name,
                        taxonomy=(family, group, f"{a}-vs-{b}"), records=lambda r=records: r)

    return ([spec(*digits, a, b, "digits", g, f"digits {a} vs {b}") for a, b, g in APP_DIGIT_PAIRS]
            + [spec(*fashion, a, b, "fashion", g, f"fashion {a} vs {b}") for a, b, g in APP_FASHION_PAIRS])


@pytest.fixture(scope="session")
def app_library(digits, fashion, tmp_path_factory) -> Path:
    """A real library file for the explorer tests: 8 tasks embedded with the default probe at
    32 px (rademacher + domain), t-SNE and UMAP maps, thumbnails; no experts."""
    from precompute.build import build_library

    db = tmp_path_factory.mktemp("app") / "app.duckdb"
    return build_library(app_task_specs(digits, fashion), db, library="app-test", input_size=SIDE,
                         maps=("tsne", "umap"), progress=False)


# Hand-chosen expert results for the display tests of the difficulty and model-selection pages
# (test data, not measurements): 3 experts, their test error on every task, two selectors.
APP_EXPERTS = {"e_digits": "digits expert", "e_fashion": "fashion expert", "e_imagenet": "ImageNet"}
APP_SELECTION = [("model2vec", 0.05, 0.01, 0.75, 1.0, 0.2),
                 ("task2vec", 0.12, 0.03, 0.5, 0.875, 0.1),
                 ("chance", 0.40, 0.05, 0.33, 1.0, 0.0)]


def app_expert_errors(task_ids) -> dict:
    """(expert_id, task_id) -> test error: the family's own expert is best on each task."""
    errors = {}
    for i, t in enumerate(sorted(task_ids)):
        own = "e_digits" if t.startswith("digits") else "e_fashion"
        other = "e_fashion" if own == "e_digits" else "e_digits"
        errors[(own, t)] = 0.02 + 0.01 * i
        errors[(other, t)] = 0.30 + 0.01 * i
        errors[("e_imagenet", t)] = 0.10 + 0.01 * i
    return errors


@pytest.fixture(scope="session")
def app_library_experts(app_library, tmp_path_factory) -> Path:
    """A copy of ``app_library`` with the expert tables (the store's own schema) holding the
    hand-chosen numbers above."""
    import json
    import shutil

    import duckdb

    from precompute import store

    db = tmp_path_factory.mktemp("app_experts") / "app_experts.duckdb"
    shutil.copy(app_library, db)
    con = duckdb.connect(str(db))
    try:
        ids = [r[0] for r in con.execute("SELECT task_id FROM tasks").fetchall()]
        con.execute(store.expert_schema(int(store.get_info(con)["filters"])))
        for eid, name in APP_EXPERTS.items():
            kind = "imagenet" if eid == "e_imagenet" else "finetuned"
            sources = [t for t in ids if t.startswith(eid[2:])]
            con.execute("INSERT INTO experts VALUES (?, ?, ?, ?, '{}')", [eid, name, kind, sources])
        con.executemany("INSERT INTO performance (expert_id, task_id, test_error, train_error, "
                        "seconds) VALUES (?, ?, ?, ?, 1.0)",
                        [(e, t, err, err / 2) for (e, t), err in app_expert_errors(ids).items()])
        for t in ids:
            own = "e_digits" if t.startswith("digits") else "e_fashion"
            con.execute("INSERT INTO selector_rankings VALUES ('model2vec', ?, ?)",
                        [t, [own, "e_imagenet"]])
            con.execute("INSERT INTO selector_rankings VALUES ('task2vec', ?, ?)",
                        [t, ["e_imagenet", own]])
        con.executemany("INSERT INTO selection_results (selector, relative_error_increase, "
                        "relative_error_increase_std, top1, top3, seconds, meta) "
                        "VALUES (?, ?, ?, ?, ?, ?, '{}')", APP_SELECTION)
        con.execute("INSERT INTO library_info VALUES ('optimal_error', ?)", [json.dumps(0.055)])
    finally:
        con.close()
    return db


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives the real app in headless Chromium "
                            "(still part of the default run)")
