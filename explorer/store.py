"""Read-only access to a library file (DuckDB), cached per (path, modification time).

The explorer never writes to the library: every connection is ``read_only=True`` and every query
runs on its own ``cursor()`` and is fetched fully (DuckDB 2.0: one connection cannot serve two
threads at once). Cold start reads only the small tables (tasks, maps, experts); the embedding
matrix and the all-pairs distances are loaded on demand: the matrix in a background thread
started with the first page, the 1,500 x 1,500 distance matrix (about 5 s) only on the taxonomy
page.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import streamlit as st

# Light modules (no torch, no numba): the cold path may import them.
from precompute import store as pstore
from precompute.errors import Task2VecError

REQUIRED_TABLES = ("library_info", "tasks", "embeddings", "maps")


def expert_hint(lib: "Library") -> str:
    """Why a page has no expert errors, and the command that adds them."""
    if not lib.has_experts and "experts" in lib.tables and len(experts(lib)):
        return ("this library has experts but no performance matrix yet (the experts' test "
                "errors); add it with `python -m precompute matrix LIBRARY --db FILE`, then "
                "`evaluate` (see README.md); the other pages work without it")
    return ("this library has no experts yet; build them with `python -m precompute experts "
            "LIBRARY --db FILE`, then `matrix` and `evaluate` (see README.md); the other pages "
            "work without them")


SIMILAR_SIZE_MIN = 10  # library tasks of a similar size that diversity_text compares with


def diversity_text(lib: "Library", value: float | None, *, reason: str | None = None,
                   batch: int | None = None, size: int | None = None) -> str:
    """The diversity coefficient in words: its value and where it falls among the library's
    tasks, or why there is none (``reason``: the embedding's, e.g. too few images).

    With the task's ``size`` (training images) it is placed among the library tasks of half to
    twice that size when there are at least ``SIMILAR_SIZE_MIN`` of them: the coefficient
    follows task size (docs/RESULTS.md, "Dataset diversity"), so tasks of similar size are the
    fair comparison."""
    if value is None or not np.isfinite(value):
        if isinstance(reason, str) and reason:
            return f"diversity not defined: {reason}"
        return ("no diversity coefficient (embedded before it: `python -m precompute build` "
                "with the library's settings adds it)")
    valued = lib.tasks[lib.tasks["diversity"].notna()]
    others, among = valued["diversity"], f"the library's {len(valued)} tasks"
    if size:
        similar = valued[valued["num_train"].between(size / 2, size * 2)]
        if len(similar) >= SIMILAR_SIZE_MIN:
            others = similar["diversity"]
            among = (f"the library's {len(similar)} tasks of {similar['num_train'].min():,} to "
                     f"{similar['num_train'].max():,} training images")
    text = f"diversity {value:.3f}"
    if len(others):
        text += f" (more than {100 * float((others < value).mean()):.0f}% of {among})"
    if batch:
        text += f", batches of {batch} images"
    return text


@dataclass(frozen=True, eq=False)
class Library:
    """The small, always-needed parts of a library file, in task-id order.

    Attributes:
        path: the file; ``mtime`` its modification time (part of every cache key).
        info: ``library_info`` as a dict (probe, methods, input_size, seed, ...).
        tasks: one row per task, index ``task_id``: family, name, taxonomy (tuple root -> task),
            classes, class_counts, num_train, num_test, size (= num_train), norm (L1 of the
            Fisher embedding, the paper's difficulty measure), diversity (the diversity
            coefficient; NaN for tasks embedded before it or too small, diversity_reason says
            which), best_error (min test error over
            experts, NaN without experts).
        maps: columns space ('task' | 'domain'), algorithm ('tsne' | 'umap'), task_id, x, y.
        tables: names of the tables present in the file.
        task_method: the Fisher method the task map and distances use.
        expert_rows: rows of the performance matrix (0: no experts yet, even if the tables exist).
    """

    path: str
    mtime: float
    info: dict
    tasks: pd.DataFrame
    maps: pd.DataFrame
    tables: frozenset
    task_method: str
    expert_rows: int = 0


    @property
    def name(self) -> str:
        return str(self.info.get("library") or Path(self.path).stem)

    @property
    def has_experts(self) -> bool:
        return self.expert_rows > 0

    @property
    def families(self) -> list[str]:
        return sorted(self.tasks["family"].unique())

    @property
    def taxonomy_depth(self) -> int:
        return int(self.tasks["taxonomy"].map(len).max() or 0)

    def query(self, sql: str, params=None) -> pd.DataFrame:
        """One read-only query on its own cursor, fetched fully."""
        with _connection(self.path, self.mtime).cursor() as cur:
            return cur.execute(sql, params or []).df()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own on the shared read-only connection (close it after use)."""
        return _connection(self.path, self.mtime).cursor()

    def map_xy(self, space: str, algorithm: str) -> pd.DataFrame:
        """``x, y`` indexed by task_id, for the tasks present on that map (may be empty)."""
        m = self.maps[(self.maps.space == space) & (self.maps.algorithm == algorithm)]
        return m.set_index("task_id")[["x", "y"]]

    def algorithms(self) -> list[str]:
        """Map algorithms present for the task space, t-SNE first."""
        have = set(self.maps.loc[self.maps.space == "task", "algorithm"])
        return [a for a in ("tsne", "umap") if a in have] + sorted(have - {"tsne", "umap"})


def file_mtime(path: str | os.PathLike) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        raise Task2VecError(f"no library file at {path}") from None


def open_library(path: str | os.PathLike) -> Library:
    """The library at ``path`` (cached until the file changes); Task2VecError if unusable."""
    path = str(Path(path).expanduser().resolve())
    return _load_library(path, file_mtime(path))


@st.cache_resource(max_entries=4, show_spinner=False)
def _connection(path: str, mtime: float) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(path, read_only=True)
    except Exception as exc:  # duckdb raises its own types for foreign or locked files
        raise Task2VecError(f"cannot open {Path(path).name} as a library: "
                           f"{str(exc).splitlines()[0]}") from None


@st.cache_resource(max_entries=4, show_spinner=False)
def _load_library(path: str, mtime: float) -> Library:
    con = _connection(path, mtime)

    def fetch(sql: str, params=None) -> pd.DataFrame:
        with con.cursor() as cur:
            return cur.execute(sql, params or []).df()

    tables = frozenset(fetch("SELECT table_name FROM information_schema.tables")["table_name"])
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise Task2VecError(f"{Path(path).name} is not a task library (no {', '.join(missing)} "
                           "table); build one with `python -m precompute build`")
    with con.cursor() as cur:
        info = pstore.get_info(cur)
    task_method = pstore.task_method(info)
    tasks = fetch("SELECT task_id, family, name, taxonomy, classes, class_counts, num_train, "
                  "num_test FROM tasks ORDER BY task_id").set_index("task_id")
    if tasks.empty:
        raise Task2VecError(f"{Path(path).name} holds no tasks yet")
    for col in ("taxonomy", "classes", "class_counts"):
        tasks[col] = tasks[col].map(lambda v: tuple(v) if v is not None else ())
    tasks["size"] = tasks["num_train"].astype(int)
    norms = fetch("SELECT task_id, norm, TRY_CAST(json_extract(meta, '$.diversity.value') AS "
                  "DOUBLE) AS diversity, json_extract_string(meta, '$.diversity.reason') AS "
                  "diversity_reason FROM embeddings WHERE method = ?", [task_method])
    norms = norms.set_index("task_id").reindex(tasks.index)
    tasks["norm"], tasks["diversity"] = norms["norm"], norms["diversity"].astype(float)
    tasks["diversity_reason"] = norms["diversity_reason"]
    tasks["best_error"] = np.nan
    expert_rows = 0
    if {"experts", "performance"} <= tables:
        best = fetch("SELECT task_id, min(test_error) AS e, count(*) AS n FROM performance "
                     "GROUP BY task_id")
        expert_rows = int(best["n"].sum())
        tasks["best_error"] = best.set_index("task_id")["e"].reindex(tasks.index).astype(float)
    maps = fetch("SELECT space, algorithm, task_id, x, y FROM maps")
    return Library(path, mtime, info, tasks, maps, tables, task_method, expert_rows)


# ------------------------------------------------------------------------------ embeddings


_MATRICES: dict[tuple, tuple[list[str], np.ndarray]] = {}
_MATRIX_LOCK = threading.Lock()


def embedding_matrix(lib: Library, method: str) -> tuple[list[str], np.ndarray]:
    """(task ids, float32 [tasks, filters]) for one method, decoded from bfloat16 once.

    A process-wide cache (not ``st.cache_resource``) so that :func:`prefetch` can fill it from
    a background thread; the lock makes a page that needs it wait for the prefetch instead of
    decoding twice.
    """
    return _decode_matrix(lib, method, _connection(lib.path, lib.mtime))


def _decode_matrix(lib: Library, method: str, con, warm: bool = False) -> tuple[list[str], np.ndarray]:
    key = (lib.path, lib.mtime, method)
    with _MATRIX_LOCK:
        if key not in _MATRICES:
            with con.cursor() as cur:
                ids, matrix = pstore.embedding_matrix(cur, method)
            for old in [k for k in _MATRICES if k[0] == lib.path and k[1] != lib.mtime]:
                del _MATRICES[old]  # the file changed: drop the stale copy (hundreds of MB)
            _MATRICES[key] = (ids, matrix)
        ids, matrix = _MATRICES[key]
    if warm and len(ids) > 1:  # load the compiled distance kernel before the first task card
        from precompute import distances

        distances.symmetric_matrix(matrix[:2], matrix[:1])
    return _MATRICES[key]


def prefetch(lib: Library) -> None:
    """Start decoding the Fisher matrix in the background so the first task card is quick."""
    if (lib.path, lib.mtime, lib.task_method) in _MATRICES or _MATRIX_LOCK.locked():
        return
    con = _connection(lib.path, lib.mtime)  # resolved here: st caches belong to script threads
    threading.Thread(target=_decode_matrix, args=(lib, lib.task_method, con, True), daemon=True,
                     name="task2vec-prefetch").start()


def task_embedding(lib: Library, task_id: str, method: str) -> np.ndarray:
    ids, matrix = embedding_matrix(lib, method)
    return matrix[ids.index(task_id)]


def distance_row(lib: Library, values: np.ndarray, method: str | None = None) -> pd.Series:
    """Distance from one embedding to every library task, indexed by task_id.

    Fisher methods: symmetric TASK2VEC distance (paper section 3.3); domain: cosine distance.
    """
    from precompute import distances

    method = method or lib.task_method
    ids, matrix = embedding_matrix(lib, method)
    # The library as the first argument: the kernel parallelises over its rows (3x faster
    # than one row against all; d_sym is symmetric).
    if method == "domain":
        row = distances.cosine_matrix(matrix, values)[:, 0]
    else:
        row = distances.symmetric_matrix(matrix, values[None])[:, 0]
    return pd.Series(row, index=ids, name="distance")


def nearest_tasks(lib: Library, task_id: str, k: int = 10) -> pd.DataFrame:
    """The k nearest library tasks to ``task_id``: read from the ``neighbours`` table the
    build writes, or (older files, larger k) one distance row, not the whole matrix."""
    if "neighbours" in lib.tables:
        stored = lib.query("SELECT neighbour, distance FROM neighbours WHERE task_id = ? "
                           "ORDER BY rank LIMIT ?", [task_id, k])
        if len(stored) == min(k, len(lib.tasks) - 1):
            return describe_tasks(lib, stored.set_index("neighbour").rename_axis("task_id")["distance"])
    row = distance_row(lib, task_embedding(lib, task_id, lib.task_method)).drop(task_id)
    return describe_tasks(lib, row.nsmallest(k))


def describe_tasks(lib: Library, dist: pd.Series) -> pd.DataFrame:
    """name, family, size of the tasks in ``dist`` (task_id -> distance), with the distance."""
    out = lib.tasks.loc[dist.index, ["name", "family", "size"]].copy()
    out.insert(0, "distance", dist.values)
    return out


@st.cache_resource(max_entries=2, show_spinner=False)
def _all_pairs(path: str, mtime: float, method: str) -> tuple[list[str], np.ndarray]:
    from precompute import distances

    lib = _load_library(path, mtime)
    ids, matrix = embedding_matrix(lib, method)
    dist = distances.cosine_matrix(matrix) if method == "domain" else distances.symmetric_matrix(matrix)
    return ids, dist.astype(np.float32)


def distance_matrix(lib: Library, method: str | None = None) -> pd.DataFrame:
    """All-pairs distance (symmetric TASK2VEC, or cosine for 'domain'), task-id order."""
    ids, dist = _all_pairs(lib.path, lib.mtime, method or lib.task_method)
    return pd.DataFrame(dist, index=ids, columns=ids)


def thumbnails(lib: Library, task_id: str) -> list[tuple[str, bytes]]:
    if "thumbnails" not in lib.tables:
        return []
    rows = lib.query("SELECT label, png FROM thumbnails WHERE task_id = ? ORDER BY position", [task_id])
    return [(label, bytes(png)) for label, png in rows.itertuples(index=False)]


# ------------------------------------------------------------------------------ experts


def experts(lib: Library) -> pd.DataFrame:
    """expert_id (index), name, kind, source_tasks; empty without the experts table."""
    if "experts" not in lib.tables:
        return pd.DataFrame(columns=["name", "kind", "source_tasks"])
    return _cached_query(lib.path, lib.mtime, "SELECT expert_id, name, kind, source_tasks FROM experts "
                         "ORDER BY expert_id").set_index("expert_id")


def performance(lib: Library) -> pd.DataFrame:
    """expert_id, task_id, test_error (+ the expert's name); empty without the table."""
    if not lib.has_experts:
        return pd.DataFrame(columns=["expert_id", "task_id", "test_error", "name"])
    return _cached_query(lib.path, lib.mtime,
                         "SELECT p.expert_id, p.task_id, p.test_error, e.name FROM performance p "
                         "JOIN experts e USING (expert_id) ORDER BY p.task_id, p.test_error")


def task_experts(lib: Library, task_id: str) -> pd.DataFrame:
    """The experts' test errors on one task, best first."""
    perf = performance(lib)
    return perf[perf.task_id == task_id][["name", "test_error"]].reset_index(drop=True)


# the field's metrics evaluate keeps in selection_results.meta (fractions, tau unitless);
# files evaluated before them lack these keys and get no such columns
SELECTION_META = ("regret", "regret_std", "tau", "tau_std", "tau_tasks")
SELECTION_INTERVALS = ("relative_error_increase", "regret", "tau")


def selection_results(lib: Library) -> pd.DataFrame:
    """One row per evaluated selector: the table's columns (relative_error_increase, its _std,
    top1, top3, seconds) and, where the file's evaluation recorded them, regret, tau, their
    _std, tau_tasks and the bootstrap intervals as ``<metric>_lo`` / ``<metric>_hi``."""
    if "selection_results" not in lib.tables:
        return pd.DataFrame()
    df = _cached_query(lib.path, lib.mtime, "SELECT * FROM selection_results").copy()
    metas = [json.loads(m) if isinstance(m, str) and m else {} for m in df.pop("meta")] if "meta" in df else []
    for key in SELECTION_META:
        if any(key in m for m in metas):
            df[key] = [np.nan if m.get(key) is None else float(m[key]) for m in metas]
    for key in SELECTION_INTERVALS:
        if any(m.get(f"{key}_ci") for m in metas):
            ci = [m.get(f"{key}_ci") or [None, None] for m in metas]
            df[f"{key}_lo"] = [np.nan if c[0] is None else float(c[0]) for c in ci]
            df[f"{key}_hi"] = [np.nan if c[1] is None else float(c[1]) for c in ci]
    return df


def selector_picks(lib: Library) -> pd.DataFrame:
    """selector, task_id, expert_id of each selector's first choice per task."""
    if "selector_rankings" not in lib.tables:
        return pd.DataFrame(columns=["selector", "task_id", "expert_id"])
    return _cached_query(lib.path, lib.mtime, "SELECT selector, task_id, ranking[1] AS expert_id "
                         "FROM selector_rankings")


@st.cache_data(max_entries=32, show_spinner=False)
def _cached_query(path: str, mtime: float, sql: str) -> pd.DataFrame:
    with _connection(path, mtime).cursor() as cur:
        return cur.execute(sql).df()
