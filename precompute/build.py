"""The precompute pipeline: embed every task of a library into one DuckDB file.

Resumable and atomic: the work goes into ``FILE.building``; each task is committed in one
transaction, so a run killed at any point and started again embeds only the remaining tasks.
Each task's seed is derived from the build seed and the task id, so the result does not depend
on the order or on interruptions. Only when every task and the maps are written is the file
moved over ``FILE`` (``os.replace``): the app never sees a half-written library.
"""
from __future__ import annotations

import functools
import io
import json
import os
import shutil
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np

from . import distances, selection, store
from .errors import Task2VecError
from .libraries import TaskSpec, task_data
from .probes import DEFAULT_PROBE, create
from .task2vec import (DEFAULT_INPUT_SIZE, DEFAULT_METHOD, FISHER_METHODS, METHODS, EmbedConfig,
                       embed_methods, _versions)

THUMBNAILS_PER_TASK = 6


def task_seed(seed: int, task_id: str) -> int:
    """A per-task seed independent of build order (crc32 is stable across runs and platforms)."""
    return (seed * 1_000_003 + zlib.crc32(task_id.encode())) % 2**31


def build_library(specs: Sequence[TaskSpec], db: str | os.PathLike, *, library: str,
                  probe: str = DEFAULT_PROBE, methods: Sequence[str] = (DEFAULT_METHOD, "domain"),
                  input_size: int = DEFAULT_INPUT_SIZE, device: str = "cpu", seed: int = 0,
                  maps: Sequence[str] = ("tsne", "umap"), progress: bool = True,
                  executor=None) -> Path:
    """Embed ``specs`` into the DuckDB file ``db``, published atomically.

    If ``db`` is a library built with the same settings (library, probe, methods, input size,
    seed, head: EmbedConfig's ``head_folds`` and ``head_l2``, recorded in ``library_info``), it
    is extended: only tasks not in it are embedded, the maps are recomputed, and its
    experts and performance matrix are kept (the ``matrix`` stage then fills the new tasks'
    rows); otherwise ``db`` is replaced by a fresh build. ``executor`` (precompute.engine) runs
    the per-task units (:func:`embed_task`), in this process by default.
    """
    db = Path(db)
    if not specs:
        raise Task2VecError(f"library {library!r} has no tasks")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise Task2VecError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if not any(m in FISHER_METHODS for m in methods):
        raise Task2VecError(f"methods must include a Fisher method ({', '.join(FISHER_METHODS)})")
    ids = [s.task_id for s in specs]
    if len(set(ids)) != len(ids):
        raise Task2VecError("task ids of the library are not unique")
    if not db.parent.exists():
        raise Task2VecError(f"output folder {db.parent} does not exist")
    work = db.with_name(db.name + ".building")
    probe_net = _probe(probe)
    settings = {"library": library, "probe": probe, "methods": list(methods),
                "input_size": input_size, "seed": seed, "filters": probe_net.num_filters,
                **{k: getattr(EmbedConfig, k) for k in store.LEGACY_HEAD},
                "layers": [[n, m.weight.shape[0]] for n, m in probe_net.filter_layers()]}
    if not work.exists() and _built_with(db, settings):
        # A library that grew: start from the published file (its experts and matrix
        # included) and embed only the new tasks.
        _copy_atomically(db, work)
    try:
        con = store.connect(work, probe_net.num_filters)
    except Exception as exc:  # duckdb raises its own types for locked or foreign files
        raise Task2VecError(f"cannot open {work}: {str(exc).splitlines()[0]}") from None
    try:
        _check_resume(con, settings, work)
        store.set_info(con, **settings, schema_version=store.SCHEMA_VERSION)
        started = datetime.now(timezone.utc)
        done = store.done_task_ids(con)
        todo = [s for s in specs if s.task_id not in done]
        head = store.head_options(settings)
        seconds = _embed_tasks(con, todo, probe, methods, input_size, device, seed, head,
                               progress, executor)
        filled = _fill_diversity(con, specs, probe, methods, input_size, device, seed, head,
                                 progress, executor)
        if todo:  # new tasks make the stored model-selection evaluation stale
            selection.drop_evaluation(con)
        _compute_maps(con, methods, maps, seed, progress)
        summary = {"tasks_total": len(specs), "tasks_embedded_this_run": len(todo),
                   "seconds_embedding": round(seconds, 2), **filled, "versions": _versions(),
                   **settings}
        summary.pop("layers")
        con.execute("INSERT INTO runs VALUES ((SELECT coalesce(max(run_id), 0) + 1 FROM runs), "
                    "?, ?, ?, ?, ?, ?)", [started, datetime.now(timezone.utc), len(todo),
                                           seconds / max(len(todo), 1), device, json.dumps(summary)])
        con.execute("CHECKPOINT")
    except (duckdb.Error, OSError) as exc:
        # Disk full, output turned read-only, file lost: the published file was never touched,
        # and the tasks committed so far stay in the work file for a resumed run.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Task2VecError(f"cannot write {work}: {reason}; {db} is unchanged, and running the "
                            f"same command again resumes the build") from None
    finally:
        con.close()
    store.publish(work, db)
    return db


_RESUME_KEYS = ("library", "probe", "methods", "input_size", "seed", *store.LEGACY_HEAD)


def _built_with(db: Path, settings: dict) -> bool:
    """Whether ``db`` is a finished library built with these settings."""
    if not db.is_file():
        return False
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return False
    try:
        info = store.get_info(con)
    except duckdb.Error:
        return False
    finally:
        con.close()
    return all(info.get(k) == settings[k] for k in _RESUME_KEYS)


def _copy_atomically(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".copying")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise Task2VecError(f"cannot copy {src} to {dst}: {exc.strerror}; {src} is unchanged") from None


def _check_resume(con, settings: dict, work: Path) -> None:
    info = store.get_info(con)
    if not info:
        return
    changed = [k for k in _RESUME_KEYS if info.get(k) != settings[k]]
    if changed:
        raise Task2VecError(f"an unfinished build with other settings ({', '.join(changed)}) is in "
                            f"{work}: run with the same options to resume, or delete that file")


def _load_task(spec: TaskSpec, input_size: int):
    """Decode one task's train split (the test split is decoded later, by the experts)."""
    records = list(spec.records())
    if not any(r.split == "train" for r in records):
        raise Task2VecError(f"task {spec.task_id} has no training images")
    train = task_data(spec.task_id, records, "train", input_size)
    if train.num_classes < 2:
        raise Task2VecError(f"task {spec.task_id} has fewer than 2 classes")
    return train, sum(r.split == "test" for r in records)


@functools.lru_cache(maxsize=2)
def _probe(name: str):
    """The probe by name, created once per process (a Ray worker serves many tasks)."""
    return create(name)


def _load_unit(spec: TaskSpec, probe: str, methods, input_size: int, device: str, seed: int,
               head: dict):
    return _load_task(spec, input_size)


def embed_task(spec: TaskSpec, probe: str, methods: Sequence[str], input_size: int, device: str,
               seed: int, head: dict, loaded=None) -> dict:
    """The build's unit: one task's rows (task row, embeddings, thumbnails), from its spec and
    the build's settings (``head``: :func:`store.head_options`); the images are read here
    (``loaded``: already decoded)."""
    train, num_test = loaded or _load_task(spec, input_size)
    embeddings = embed_methods(train, _probe(probe), methods=methods, input_size=input_size,
                               device=device, seed=task_seed(seed, spec.task_id), **head)
    task_row = {"task_id": spec.task_id, "family": spec.family, "name": spec.name,
                "taxonomy": spec.taxonomy, "classes": train.classes,
                "class_counts": train.class_counts(), "num_train": train.size,
                "num_test": num_test, "meta": spec.meta}
    return {"task": task_row, "embeddings": embeddings, "thumbnails": _thumbnails(train)}


def _embed_tasks(con, todo: Sequence[TaskSpec], probe: str, methods, input_size: int, device: str,
                 seed: int, head: dict, progress: bool, executor=None) -> float:
    from .engine import LOCAL, Unit

    t_start = time.perf_counter()
    units = [Unit(s.task_id, (s, probe, list(methods), input_size, device, seed, head))
             for s in todo]
    # Each task is committed as it arrives (any order: rows are keyed by task id). Locally the
    # next task is decoded in a background thread while this one is embedded, so the device
    # never waits for image decoding (PIL and numpy release the GIL).
    for _, rows in (executor or LOCAL).run(embed_task, units, load=_load_unit,
                                           desc="embedding tasks", unit="task", progress=progress):
        store.write_task(con, rows["task"], rows["embeddings"], rows["thumbnails"])
    return time.perf_counter() - t_start


def _fill_diversity(con, specs: Sequence[TaskSpec], probe: str, methods, input_size: int,
                    device: str, seed: int, head: dict, progress: bool, executor=None) -> dict:
    """The diversity coefficient for tasks embedded before the build computed it.

    Each such task's Fisher embedding is computed again exactly as it was (same settings and
    seed: the unit is :func:`embed_task`); only the ``diversity`` entry of its stored metadata
    is added, and the stored embedding is kept. Returns the counts for the run's summary, with
    how many recomputed embeddings equal the stored ones bit for bit (all, on the same
    machine and engine; another CPU or thread count may differ in the last bits).
    """
    from .engine import LOCAL, Unit

    method = next(m for m in methods if m in FISHER_METHODS)
    missing = store.without_diversity(con, method)
    units = [Unit(s.task_id, (s, probe, [method], input_size, device, seed, head)) for s in specs
             if s.task_id in missing]
    if not units:
        return {}
    t_start, same = time.perf_counter(), 0
    for unit, rows in (executor or LOCAL).run(embed_task, units, load=_load_unit,
                                              desc="diversity of earlier tasks", unit="task",
                                              progress=progress):
        e = rows["embeddings"][method]
        same += store.add_diversity(con, unit.key, method, e.meta["diversity"], e.values)
    return {"diversity_filled": len(units), "diversity_reproduced_bits": same,
            "seconds_diversity": round(time.perf_counter() - t_start, 2)}


def _thumbnails(task) -> list[tuple[str, bytes]]:
    """Up to THUMBNAILS_PER_TASK images, round-robin over classes, as PNG bytes."""
    from PIL import Image

    by_class = [np.flatnonzero(task.labels.numpy() == c) for c in range(task.num_classes)]
    picks = []
    for rank in range(THUMBNAILS_PER_TASK):
        for c, idx in enumerate(by_class):
            if rank < len(idx) and len(picks) < THUMBNAILS_PER_TASK:
                picks.append((task.classes[c], idx[rank]))
    out = []
    for label, i in picks:
        buf = io.BytesIO()
        Image.fromarray(task.images[i].permute(1, 2, 0).numpy()).save(buf, format="PNG", optimize=True)
        out.append((label, buf.getvalue()))
    return out


def _compute_maps(con, methods: Sequence[str], algorithms: Sequence[str], seed: int,
                  progress: bool) -> None:
    """2-D maps of the task space (first Fisher method) and of the domain space, and each
    task's nearest tasks (from the same all-pairs distances)."""
    task_method = next(m for m in methods if m in FISHER_METHODS)
    spaces = {"task": task_method}
    if "domain" in methods:
        spaces["domain"] = "domain"
    for space, method in spaces.items():
        ids, matrix = store.embedding_matrix(con, method)
        if len(ids) < 5:
            continue  # too few tasks for a neighbourhood map
        dist = (distances.cosine_matrix(matrix) if method == "domain"
                else distances.symmetric_matrix(matrix))
        if space == "task":  # the task cards' nearest tasks, read instead of computed
            store.write_neighbours(con, ids, dist)
        for algorithm in algorithms:
            if progress:
                print(f"map: {algorithm} of {space} space ({len(ids)} tasks)", flush=True)
            xy, params = _layout(dist, algorithm, seed)
            store.write_map(con, space, algorithm, ids, xy, {**params, "method": method})


def _layout(dist: np.ndarray, algorithm: str, seed: int) -> tuple[np.ndarray, dict]:
    n = len(dist)
    if algorithm == "tsne":
        from sklearn.manifold import TSNE

        params = {"perplexity": float(min(30.0, (n - 1) / 3)), "init": "random",
                  "metric": "precomputed", "random_state": seed, "max_iter": 1000}
        xy = TSNE(n_components=2, **params).fit_transform(dist)
    elif algorithm == "umap":
        import warnings

        import umap

        params = {"n_neighbors": int(min(15, n - 1)), "min_dist": 0.1,
                  "metric": "precomputed", "random_state": seed}
        with warnings.catch_warnings():
            # umap-learn's notes on what was asked for (no inverse_transform with a precomputed
            # metric; one thread with a seed), printed on every build: not warnings here
            warnings.filterwarnings("ignore", message="using precomputed metric", module="umap")
            warnings.filterwarnings("ignore", message="n_jobs value", module="umap")
            xy = umap.UMAP(n_components=2, **params).fit_transform(dist)
    else:
        raise Task2VecError(f"unknown map algorithm {algorithm!r}; use tsne or umap")
    return np.asarray(xy, dtype=np.float64), {"algorithm": algorithm, **params}
