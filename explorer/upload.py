"""A user's task placed into a library, without changing the library file.

The upload is read and embedded by the same public functions as the CLI
(:func:`precompute.tasks.load_task`, :func:`precompute.embed_methods`) with the library's probe,
methods, input size and seed, so its distances to the library tasks mean the same as theirs.

Placement on the maps: the stored maps hold coordinates only (no fitted UMAP or t-SNE model,
and the explorer never unpickles one), and refitting UMAP takes longer than the 15 s an upload
may take here. So the new task is placed at the distance-weighted mean of its k nearest tasks'
positions (weights 1 / distance), on each map: nearest by TASK2VEC distance on the task maps and
by domain-embedding distance on the domain maps. This is what t-SNE "transform" approximations
do (openTSNE initialises new points the same way); it puts the task among its neighbours but
is not a re-optimised embedding.
"""
from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import duckdb
import numpy as np
import pandas as pd

from precompute.errors import Task2VecError
from precompute.tasks import IMAGE_EXTENSIONS

from . import store

NEIGHBOURS = 5  # tasks averaged to place an upload on a map
MAX_FILES = 20_000


def safe_name(name: str) -> str:
    """The file's base name, reduced to safe characters; refuses hidden or empty names."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).name)
    if not base or base.startswith("."):
        raise Task2VecError(f"unusable file name {name!r}: rename the file and upload it again")
    return base


def save_uploads(files: Sequence[tuple[str, bytes]], folder: Path) -> Path:
    """Write the uploaded files into ``folder`` and return the path to read the task from.

    Accepted: one ``.zip`` of class folders, or one ``.csv`` (``path,label``) with the images it
    names (matched by file name, so the CSV may keep its own folder structure).
    """
    if not files:
        raise Task2VecError("no files uploaded")
    if len(files) > MAX_FILES:
        raise Task2VecError(f"{len(files)} files uploaded; at most {MAX_FILES} (zip them instead)")
    names = [safe_name(n) for n, _ in files]
    kinds = [Path(n).suffix.lower() for n in names]
    zips, csvs = kinds.count(".zip"), kinds.count(".csv")
    if zips == 1 and len(files) == 1:
        path = folder / names[0]
        path.write_bytes(files[0][1])
        return path
    if zips:
        raise Task2VecError("upload either one .zip of class folders, or a .csv of labels with "
                            "its images, not a zip together with other files")
    if csvs != 1:
        raise Task2VecError("images need one .csv with path,label columns to give their labels "
                            f"(got {csvs} .csv files); or upload one .zip of class folders")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise Task2VecError(f"two uploaded files are both named {dup}: names must be unique")
    images = folder / "images"
    images.mkdir()
    for name, kind, (_, data) in zip(names, kinds, files):
        if kind == ".csv":
            labels = data
            csv_name = name
        elif kind in IMAGE_EXTENSIONS:
            (images / name).write_bytes(data)
        else:
            raise Task2VecError(f"{name} is neither an image nor the labels .csv")
    return _rewrite_csv(labels, folder / csv_name)


def _rewrite_csv(data: bytes, out: Path) -> Path:
    """The labels CSV with every path replaced by ``images/<file name>`` (uploads are flat)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Task2VecError(f"{out.name} is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "path" not in fields or "label" not in fields:
        raise Task2VecError(f"{out.name} needs a header with path and label columns "
                            f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
    rows = []
    for row in reader:
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        # An empty path stays empty, so that load_task names the line instead of a row vanishing.
        path = f"images/{safe_name(row['path'])}" if row.get("path") else ""
        rows.append({"path": path, "label": row.get("label", "")})
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def embed_methods_for(lib: store.Library) -> tuple[str, ...]:
    methods = (lib.task_method,)
    if "domain" in lib.info.get("methods", []):
        methods += ("domain",)
    return methods


def embed_task(task, lib: store.Library, probe, progress: Callable[[str, float], None]) -> dict:
    """Embed a loaded task exactly as the library's tasks were (probe, methods, size, seed)."""
    from precompute import embed_methods

    return embed_methods(task, probe, methods=embed_methods_for(lib),
                         input_size=int(lib.info.get("input_size", 64)),
                         seed=int(lib.info.get("seed", 0)), progress=progress)


def place(dist: pd.Series, xy: pd.DataFrame, k: int = NEIGHBOURS) -> tuple[float, float] | None:
    """Distance-weighted mean position of the k nearest tasks on a map (weights 1 / distance)."""
    dist = dist[dist.index.isin(xy.index)]
    if dist.empty:
        return None
    near = dist.nsmallest(k)
    w = 1.0 / np.maximum(near.to_numpy(), 1e-6)
    pts = xy.loc[near.index, ["x", "y"]].to_numpy()
    x, y = (w[:, None] * pts).sum(0) / w.sum()
    return float(x), float(y)


def rank_experts(lib: store.Library, embedding) -> tuple[pd.DataFrame | None, str]:
    """Experts ranked for a task's Fisher embedding by ``precompute.selection.rank_experts``
    (the model2vec selector), or (None, why not)."""
    if not lib.has_experts:
        return None, store.expert_hint(lib)
    try:
        from precompute.selection import rank_experts as ranker
    except ImportError:
        return None, "expert ranking (precompute.selection.rank_experts) is not available yet"
    try:
        with lib.cursor() as cur:
            return ranker(cur, embedding, selector="model2vec"), ""
    except Task2VecError as exc:
        return None, str(exc)
    except duckdb.Error as exc:  # a library from before the model-selection tables
        return None, f"this library cannot rank experts yet ({str(exc).splitlines()[0]})"


def results_table(nearest: pd.DataFrame, experts: pd.DataFrame | None) -> bytes:
    """The upload's results as CSV: nearest tasks, then ranked experts."""
    out = io.StringIO()
    out.write("# nearest library tasks (symmetric TASK2VEC distance)\n")
    nearest.rename_axis("task_id").to_csv(out)
    if experts is not None:
        out.write("# experts ranked for this task\n")
        experts.to_csv(out, index=False)
    return out.getvalue().encode()


def process(lib: store.Library, files: Sequence[tuple[str, bytes]], folder: Path, probe,
            name: str, on_stage: Callable[[str], None] = lambda s: None,
            progress: Callable[[str, float], None] = lambda s, f: None) -> dict:
    """Validate, embed and place an upload; everything the page shows, as one dict.

    Raises Task2VecError for anything wrong with the upload, before the embedding starts.
    """
    from precompute.tasks import load_task

    t0 = time.perf_counter()
    on_stage("Checking the files")
    path = save_uploads(files, folder)
    task = load_task(path, input_size=int(lib.info.get("input_size", 64)), name=name)
    t_load = time.perf_counter() - t0
    on_stage(f"Embedding {task.size} images in {task.num_classes} classes "
             f"(probe {lib.info.get('probe')}, {lib.task_method})")
    embeddings = embed_task(task, lib, probe, progress)
    t_embed = time.perf_counter() - t0 - t_load
    on_stage("Placing the task among the library's tasks")
    fisher = embeddings[lib.task_method]
    row = store.distance_row(lib, fisher.values)
    nearest = store.describe_tasks(lib, row.nsmallest(10))
    rows = {"task": row}
    if "domain" in embeddings:
        rows["domain"] = store.distance_row(lib, embeddings["domain"].values, "domain")
    positions: dict = {}
    for space, dist in rows.items():
        for algo in lib.algorithms():
            xy = lib.map_xy(space, algo)
            spot = place(dist, xy)
            if spot is not None:
                positions.setdefault(space, {})[algo] = spot
    experts, why = rank_experts(lib, fisher)
    buf = io.BytesIO()
    tmp = folder / "embedding.npz"
    fisher.save(tmp)
    buf.write(tmp.read_bytes())
    return {"name": name, "library": lib.path, "size": task.size, "classes": task.classes,
            "class_counts": task.class_counts(), "norm": fisher.norm, "nearest": nearest,
            "positions": positions, "experts": experts, "experts_note": why,
            "embedding_npz": buf.getvalue(), "values": fisher.values,
            "seconds": {"load": t_load, "embed": t_embed,
                        "total": time.perf_counter() - t0}}
