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


EXAMPLE_NAME = "Fashion-MNIST footwear (example)"
EXAMPLE_CLASSES = ("Sandal", "Sneaker", "Ankle boot")
EXAMPLE_PER_CLASS = 60
FASHION_TEST_START = 60_000  # Fashion-MNIST's test split: images 60,000 to 69,999 of the pool


def example_upload(per_class: int = EXAMPLE_PER_CLASS, seed: int = 0,
                   root: str | Path | None = None) -> list[tuple[str, bytes]]:
    """A ready upload for a first look without a dataset of one's own: one .zip of class
    folders holding ``per_class`` PNG images each of three footwear classes, drawn with a seeded
    generator from Fashion-MNIST's test split (the Debian package the project installs).

    The demo library's Fashion-MNIST tasks draw from all 70,000 images, so the example can share
    images with them: it shows the flow (and lands among the footwear tasks), it is not a
    held-out evaluation. ``root``: where Fashion-MNIST is (default: the Debian package's folder).
    """
    import zipfile

    from PIL import Image

    from precompute.libraries.demo import FASHION_CLASSES, FASHION_MNIST_DIR, fashion_mnist_pool

    images, by_class = fashion_mnist_pool(root or FASHION_MNIST_DIR)
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in EXAMPLE_CLASSES:
            ids = by_class[FASHION_CLASSES.index(name)]
            ids = ids[ids >= FASHION_TEST_START]
            for i in np.sort(rng.choice(ids, per_class, replace=False)):
                png = io.BytesIO()
                Image.fromarray(images[i]).save(png, format="PNG")
                # a fixed time stamp: the same archive, byte for byte, on every click
                entry = zipfile.ZipInfo(f"{safe_name(name)}/{i}.png",
                                        date_time=(2017, 8, 25, 0, 0, 0))
                zf.writestr(entry, png.getvalue(), zipfile.ZIP_DEFLATED)
    return [("fashion-mnist-footwear.zip", buf.getvalue())]


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
    """Embed a loaded task exactly as the library's tasks were (probe, methods, size, seed,
    head)."""
    from precompute import embed_methods
    from precompute.store import head_options

    return embed_methods(task, probe, methods=embed_methods_for(lib),
                         input_size=int(lib.info.get("input_size", 64)),
                         seed=int(lib.info.get("seed", 0)), progress=progress,
                         **head_options(lib.info))


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


# Without a held-out evaluation the upload is ranked by the symmetric TASK2VEC distance: of the
# embedding-only selectors it is the one that needs nothing fitted (asymmetric TASK2VEC,
# Model2Vec and the static prior read what evaluate fitted).
DEFAULT_SELECTOR = "task2vec"
SELECTOR_NAMES = {"imagenet": "the ImageNet expert", "task2vec": "TASK2VEC (symmetric distance)",
                  "task2vec_asym": "asymmetric TASK2VEC", "model2vec": "MODEL2VEC",
                  "static_prior": "the static prior (best mean rank, the same for every task)"}


def embedding_selectors() -> tuple[str, ...]:
    """The selectors that can rank experts for an upload: those that need only its embedding
    (``selectors.EMBEDDING_SELECTORS``), without chance."""
    from precompute.selectors import EMBEDDING_SELECTORS

    return tuple(s for s in EMBEDDING_SELECTORS if s != "chance")


def choose_selector(results: pd.DataFrame) -> tuple[str, pd.Series | None]:
    """The embedding-only selector the library's held-out evaluation found best: the least
    relative error increase over the best expert (Table 1's criterion, the expected cost to a
    user of trusting the pick), ties in registry order. The static prior competes: it needs no
    input at all, and where it wins the page should rank with it and say so, not rank worse
    than the library knows how to. (None, ...) without an evaluation: the default."""
    names = embedding_selectors()
    if results.empty or "selector" not in results:
        return DEFAULT_SELECTOR, None
    rows = results[results["selector"].isin(names)].dropna(subset=["relative_error_increase"])
    if rows.empty:
        return DEFAULT_SELECTOR, None
    order = rows.assign(_pos=rows["selector"].map(names.index))
    best = order.sort_values(["relative_error_increase", "_pos"], kind="stable").iloc[0]
    return str(best["selector"]), best.drop("_pos")


def _held_out(row: pd.Series | None) -> str:
    if row is None:
        return ""
    text = f"held-out relative error increase {100 * row['relative_error_increase']:+.1f}%"
    if pd.notna(row.get("relative_error_increase_lo", np.nan)):
        text += (f" (95% interval {100 * row['relative_error_increase_lo']:+.1f}% to "
                 f"{100 * row['relative_error_increase_hi']:+.1f}%)")
    if pd.notna(row.get("tau", np.nan)):
        text += f", weighted τ {row['tau']:+.3f}"
    return text


def rank_experts(lib: store.Library, embedding) -> dict:
    """Experts ranked for a task's Fisher embedding by ``precompute.selection.rank_experts``
    with the selector :func:`choose_selector` picks, and every other embedding-only selector's
    first choice beside it.

    Returns a dict: ``experts`` (the ranking, or None), ``note`` (why there is none),
    ``selector``, ``selector_note`` (which selector and why: its held-out score, or the
    fallback), ``others`` (DataFrame: selector, first choice, held-out relative error increase
    and weighted tau; selectors this library cannot run are left out).
    """
    empty = {"experts": None, "selector": None, "selector_note": "", "others": None}
    if not lib.has_experts:
        return {**empty, "note": store.expert_hint(lib)}
    from precompute.selection import rank_experts as ranker

    results = store.selection_results(lib)
    chosen, row = choose_selector(results)
    by_name = results.set_index("selector") if not results.empty else pd.DataFrame()
    try:
        with lib.cursor() as cur:
            ranking = ranker(cur, embedding, selector=chosen)
            others = []
            for name in embedding_selectors():
                if name == chosen:
                    continue
                try:
                    first = ranker(cur, embedding, selector=name).iloc[0]
                except Task2VecError:  # learned, and this library has no evaluation for it
                    continue
                held = by_name.loc[name] if name in by_name.index else None
                others.append({"selector": name, "first choice": first["name"],
                               "held-out rel. error increase (%)":
                                   np.nan if held is None else 100 * held["relative_error_increase"],
                               "held-out weighted τ":
                                   np.nan if held is None else held.get("tau", np.nan)})
    except Task2VecError as exc:
        return {**empty, "note": str(exc)}
    except duckdb.Error as exc:  # a library from before the model-selection tables
        return {**empty, "note": f"this library cannot rank experts yet ({str(exc).splitlines()[0]})"}
    label = SELECTOR_NAMES.get(chosen, chosen)
    if row is None:
        why = (f"This library has no held-out evaluation of the selectors (run `python -m "
               f"precompute evaluate --db {lib.path}`): ranked by the default, {label}, the "
               "one selector that needs nothing fitted.")
    else:
        why = (f"Ranked by **{label}**, the best of the selectors that need only the "
               f"embedding in this library's held-out evaluation: {_held_out(row)}.")
    return {"experts": ranking, "note": "", "selector": chosen, "selector_note": why,
            "others": pd.DataFrame(others, columns=["selector", "first choice",
                                                    "held-out rel. error increase (%)",
                                                    "held-out weighted τ"])}


def expert_table(experts: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The ranked experts as the page shows them: the first ``top``, and every model the user
    added (``add-expert``, kind ``user``) wherever it ranks, marked as theirs; an expert the
    selector cannot rank shows why instead of a score."""
    yours = experts["kind"].eq("user") if "kind" in experts else pd.Series(False, experts.index)
    shown = experts[(experts.index < top) | yours]
    out = pd.DataFrame({"rank": shown["rank"].astype("object").where(shown["rank"].notna(), "–"),
                        "expert_id": shown["expert_id"], "name": shown["name"],
                        "yours": np.where(yours[shown.index], "your model", ""),
                        "score": shown["score"].round(4)})
    if "note" in shown and shown["note"].astype(bool).any():
        out["note"] = shown["note"]
    return out.set_index("rank")


def results_table(nearest: pd.DataFrame, experts: pd.DataFrame | None,
                  selector: str | None = None) -> bytes:
    """The upload's results as CSV: nearest tasks, then ranked experts (by ``selector``)."""
    out = io.StringIO()
    out.write("# nearest library tasks (symmetric TASK2VEC distance)\n")
    nearest.rename_axis("task_id").to_csv(out)
    if experts is not None:
        out.write("# experts ranked for this task" + (f" by {selector}" if selector else "") + "\n")
        experts.to_csv(out, index=False)
    return out.getvalue().encode()


def _diversity(meta: dict) -> dict:
    """The embedding's diversity entry as :func:`explorer.store.diversity_text` takes it."""
    d = meta.get("diversity") or {}
    return {"value": d.get("value"), "reason": d.get("reason"), "batch": d.get("batch")}


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
    ranked = rank_experts(lib, fisher)
    buf = io.BytesIO()
    tmp = folder / "embedding.npz"
    fisher.save(tmp)
    buf.write(tmp.read_bytes())
    return {"name": name, "library": lib.path, "size": task.size, "classes": task.classes,
            "class_counts": task.class_counts(), "norm": fisher.norm,
            "diversity": _diversity(fisher.meta), "nearest": nearest,
            "positions": positions, "experts": ranked["experts"], "experts_note": ranked["note"],
            "selector": ranked["selector"], "selector_note": ranked["selector_note"],
            "other_picks": ranked["others"],
            "embedding_npz": buf.getvalue(), "values": fisher.values,
            "seconds": {"load": t_load, "embed": t_embed,
                        "total": time.perf_counter() - t0}}
