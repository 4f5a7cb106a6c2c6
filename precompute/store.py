"""The DuckDB library file: schema and writer (the explorer reads it, read-only).

One file holds a whole task library. Embeddings are fixed-size ``USMALLINT[D]`` arrays holding
bfloat16 bit patterns, D = the probe's number of filters: DuckDB does not compress FLOAT arrays
(149 KB per 42,016-filter embedding, measured), and bfloat16 halves that at 0.4 % relative
error, far below the Monte-Carlo noise of the estimate. :func:`encode` / :func:`decode` are
the only two places that know. The schema is documented in docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

SCHEMA_VERSION = 1


def schema(dim: int) -> str:
    return f"""
    CREATE TABLE IF NOT EXISTS library_info (key VARCHAR PRIMARY KEY, value JSON);
    CREATE TABLE IF NOT EXISTS tasks (
        task_id VARCHAR PRIMARY KEY, family VARCHAR, name VARCHAR, taxonomy VARCHAR[],
        classes VARCHAR[], class_counts INTEGER[], num_train INTEGER, num_test INTEGER, meta JSON);
    CREATE TABLE IF NOT EXISTS embeddings (
        task_id VARCHAR, method VARCHAR, value USMALLINT[{dim}], trivial_level DOUBLE,
        norm DOUBLE, seconds DOUBLE, meta JSON, PRIMARY KEY (task_id, method));
    CREATE TABLE IF NOT EXISTS thumbnails (
        task_id VARCHAR, position INTEGER, label VARCHAR, png BLOB, PRIMARY KEY (task_id, position));
    CREATE TABLE IF NOT EXISTS maps (
        space VARCHAR, algorithm VARCHAR, task_id VARCHAR, x DOUBLE, y DOUBLE,
        PRIMARY KEY (space, algorithm, task_id));
    CREATE TABLE IF NOT EXISTS map_params (
        space VARCHAR, algorithm VARCHAR, params JSON, PRIMARY KEY (space, algorithm));
    CREATE TABLE IF NOT EXISTS neighbours (
        task_id VARCHAR, rank INTEGER, neighbour VARCHAR, distance DOUBLE,
        PRIMARY KEY (task_id, rank));
    CREATE TABLE IF NOT EXISTS runs (
        run_id INTEGER PRIMARY KEY, started TIMESTAMP, finished TIMESTAMP, tasks_embedded INTEGER,
        seconds_per_task DOUBLE, device VARCHAR, summary JSON);
    """


def encode(values: np.ndarray) -> np.ndarray:
    """float32 ``[..., D]`` -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def decode(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def connect(path: str | Path, dim: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute(schema(dim))
    return con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection):
    """Run the block as one transaction: committed if it returns, rolled back if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def set_info(con: duckdb.DuckDBPyConnection, **items) -> None:
    for key, value in items.items():
        con.execute("INSERT OR REPLACE INTO library_info VALUES (?, ?)", [key, json.dumps(value)])


def get_info(con: duckdb.DuckDBPyConnection) -> dict:
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM library_info").fetchall()}


def task_method(info: dict) -> str:
    """The library's task-embedding Fisher method: the first of its build methods that is not
    ``domain``. Files built before the Rademacher estimator record ``montecarlo``."""
    return next((m for m in info.get("methods") or () if m != "domain"), "montecarlo")


# The head settings a library records since 2026-12-02 (``build`` writes EmbedConfig's
# defaults). A file without them was embedded with the head of before: one head fitted on all
# of the task's images, L2 weight 1e-3.
LEGACY_HEAD = {"head_l2": 1e-3, "head_folds": 0}


def head_options(info: dict) -> dict:
    """The EmbedConfig head fields a library's tasks were embedded with: an upload or a user's
    task embedded with them is comparable with the library's tasks."""
    return {k: info.get(k, legacy) for k, legacy in LEGACY_HEAD.items()}


def head_text(info: dict) -> str:
    """The library's head regime in words, for captions."""
    head = head_options(info)
    if head["head_folds"] > 1:
        return f"cross-fitted heads ({head['head_folds']} folds, L2 {head['head_l2']:g})"
    return f"one head scored in-sample (L2 {head['head_l2']:g})"


def done_task_ids(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT task_id FROM tasks").fetchall()}


def write_task(con: duckdb.DuckDBPyConnection, task: dict, embeddings: dict, thumbnails: list) -> None:
    """Write one task and everything computed for it in one transaction (all or nothing)."""
    with transaction(con):
        con.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
            task["task_id"], task["family"], task["name"], list(task["taxonomy"]),
            list(task["classes"]), list(task["class_counts"]), task["num_train"],
            task["num_test"], json.dumps(task.get("meta", {}))])
        for method, e in embeddings.items():
            # The trivial embedding is isotropic, (beta / N0) / lambda^2 on every filter: one number.
            level = None if e.trivial is None else float(e.trivial[0])
            con.execute("INSERT INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)", [
                task["task_id"], method, encode(e.values), level, e.norm,
                sum(e.meta["timings_s"].values()), json.dumps(e.meta)])
        for position, (label, png) in enumerate(thumbnails):
            con.execute("INSERT INTO thumbnails VALUES (?, ?, ?, ?)",
                        [task["task_id"], position, label, png])


def without_diversity(con: duckdb.DuckDBPyConnection, method: str) -> set[str]:
    """Tasks whose ``method`` embedding has no diversity coefficient (built before it)."""
    return {r[0] for r in con.execute(
        "SELECT task_id FROM embeddings WHERE method = ? "
        "AND coalesce(json_type(meta, '$.diversity'), 'NULL') = 'NULL'",
        [method]).fetchall()}


def add_diversity(con: duckdb.DuckDBPyConnection, task_id: str, method: str, diversity: dict,
                  values: np.ndarray) -> bool:
    """Add ``diversity`` to a stored embedding's metadata, keeping the embedding; returns
    whether ``values`` (the same embedding, computed again) equals the stored one bit for bit."""
    meta, stored = con.execute("SELECT meta, value FROM embeddings WHERE task_id = ? AND method = ?",
                               [task_id, method]).fetchone()
    meta = {**json.loads(meta), "diversity": diversity}
    con.execute("UPDATE embeddings SET meta = ? WHERE task_id = ? AND method = ?",
                [json.dumps(meta), task_id, method])
    return bool(np.array_equal(np.asarray(stored, dtype=np.uint16), encode(values)))


def embedding_matrix(con: duckdb.DuckDBPyConnection, method: str) -> tuple[list[str], np.ndarray]:
    """(task ids in task-id order, float32 [tasks, filters]) for one method."""
    table = con.execute("SELECT task_id, value FROM embeddings WHERE method = ? ORDER BY task_id",
                        [method]).fetchnumpy()
    ids = list(table["task_id"])
    if not ids:
        return ids, np.zeros((0, 0), dtype=np.float32)
    return ids, decode(np.stack(table["value"]))


def write_map(con: duckdb.DuckDBPyConnection, space: str, algorithm: str, ids: list[str],
              xy: np.ndarray, params: dict) -> None:
    with transaction(con):
        con.execute("DELETE FROM maps WHERE space = ? AND algorithm = ?", [space, algorithm])
        con.executemany("INSERT INTO maps VALUES (?, ?, ?, ?, ?)",
                        [(space, algorithm, t, float(x), float(y)) for t, (x, y) in zip(ids, xy)])
        con.execute("INSERT OR REPLACE INTO map_params VALUES (?, ?, ?)",
                    [space, algorithm, json.dumps(params)])


NEIGHBOURS = 20  # nearest tasks stored per task (a task card shows 10)


def write_neighbours(con: duckdb.DuckDBPyConnection, ids: list[str], dist: np.ndarray,
                     k: int = NEIGHBOURS) -> None:
    """Replace the ``neighbours`` table: each task's ``k`` nearest other tasks by ``dist``
    (all pairs of the task space, as computed for the maps), nearest first. Ties keep task
    order, so the lists are reproducible."""
    dist = np.array(dist, dtype=np.float64)  # a copy: the diagonal is masked below
    n = len(ids)
    k = max(min(k, n - 1), 0)
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    rows = pd.DataFrame({
        "task_id": np.repeat(np.asarray(ids, dtype=object), k),
        "rank": np.tile(np.arange(k, dtype=np.int32), n),
        "neighbour": np.asarray(ids, dtype=object)[order.ravel()],
        "distance": np.take_along_axis(dist, order, axis=1).ravel()})
    con.register("new_neighbours", rows)
    try:
        with transaction(con):
            con.execute("DELETE FROM neighbours")
            con.execute("INSERT INTO neighbours SELECT task_id, rank, neighbour, distance "
                        "FROM new_neighbours")
    finally:
        con.unregister("new_neighbours")


# ----------------------------------------------------------------------------------------------
# Experts, the performance matrix and model selection (docs/ARCHITECTURE.md, "Experts").


def expert_schema(dim: int) -> str:
    """Tables written by ``python -m precompute experts / matrix / evaluate``.

    ``expert_embeddings.value`` and ``model2vec.bias`` are bfloat16 bits (:func:`encode`) like
    ``embeddings.value``; the Model2Vec bias is in log-Fisher units (m_i = F_i * exp(b_i)).
    """
    return f"""
    CREATE TABLE IF NOT EXISTS experts (
        expert_id VARCHAR PRIMARY KEY, name VARCHAR, kind VARCHAR, source_tasks VARCHAR[],
        meta JSON);
    CREATE TABLE IF NOT EXISTS expert_embeddings (
        expert_id VARCHAR PRIMARY KEY, value USMALLINT[{dim}], trivial_level DOUBLE, norm DOUBLE);
    CREATE TABLE IF NOT EXISTS performance (
        expert_id VARCHAR, task_id VARCHAR, test_error DOUBLE, train_error DOUBLE, seconds DOUBLE,
        PRIMARY KEY (expert_id, task_id));
    CREATE TABLE IF NOT EXISTS feature_scores (
        expert_id VARCHAR, task_id VARCHAR, logme DOUBLE, knn_accuracy DOUBLE,
        feature_seconds DOUBLE, logme_seconds DOUBLE, knn_seconds DOUBLE,
        PRIMARY KEY (expert_id, task_id));
    -- added with H-score, LEEP and NCE: files made before gain the columns (NULL) when opened
    -- for writing; read-only readers must treat them as possibly absent
    ALTER TABLE feature_scores ADD COLUMN IF NOT EXISTS hscore DOUBLE;
    ALTER TABLE feature_scores ADD COLUMN IF NOT EXISTS hscore_seconds DOUBLE;
    ALTER TABLE feature_scores ADD COLUMN IF NOT EXISTS leep DOUBLE;
    ALTER TABLE feature_scores ADD COLUMN IF NOT EXISTS leep_seconds DOUBLE;
    ALTER TABLE feature_scores ADD COLUMN IF NOT EXISTS nce DOUBLE;
    ALTER TABLE feature_scores ADD COLUMN IF NOT EXISTS nce_seconds DOUBLE;
    CREATE TABLE IF NOT EXISTS model2vec (
        expert_id VARCHAR PRIMARY KEY, bias USMALLINT[{dim}], meta JSON);
    CREATE TABLE IF NOT EXISTS selector_rankings (
        selector VARCHAR, task_id VARCHAR, ranking VARCHAR[], PRIMARY KEY (selector, task_id));
    CREATE TABLE IF NOT EXISTS selection_results (
        selector VARCHAR PRIMARY KEY, relative_error_increase DOUBLE,
        relative_error_increase_std DOUBLE, top1 DOUBLE, top3 DOUBLE, seconds DOUBLE, meta JSON);
    """


def open_library(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a finished library file (made by ``build``) for the expert stages.

    Raises :class:`~precompute.errors.Task2VecError` if the file is missing, locked, or has no
    embeddings; with ``read_only=False`` the expert tables are created if absent.
    """
    from .errors import Task2VecError

    path = Path(path)
    if not path.is_file():
        raise Task2VecError(f"no such library file: {path} (build it with python -m precompute build)")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except Exception as exc:  # duckdb raises its own types for locked or foreign files
        raise Task2VecError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if not {"library_info", "tasks", "embeddings"} <= tables:
            raise Task2VecError(f"{path} is not a task library (no embeddings table)")
        info = get_info(con)
        method = task_method(info)
        if not con.execute("SELECT count(*) FROM embeddings WHERE method = ?", [method]).fetchone()[0]:
            raise Task2VecError(f"{path} has no {method} task embeddings; build it with "
                                f"--methods {method},domain")
        if not read_only:
            con.execute(expert_schema(int(info["filters"])))
    except BaseException:
        con.close()
        raise
    return con


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def publish(work: str | Path, db: str | Path) -> None:
    """Replace ``db`` by the finished ``work`` file, atomically and compacted.

    DuckDB keeps the blocks freed by a long run of transactions (the demo build's file was
    104 MiB with 189 of its 414 blocks free); copying the database into a fresh file drops
    them (59 MB). Readers of ``db`` never see a partial file: the copy is made beside it and
    moved over it with ``os.replace``; a reader that has ``db`` open keeps its old version.
    """
    from .errors import Task2VecError

    work, db = Path(work), Path(db)
    fresh = db.with_name(db.name + ".publishing")
    _remove(fresh)
    try:
        con = duckdb.connect(str(fresh))
        try:
            name = con.execute("SELECT current_database()").fetchone()[0]
            con.execute("ATTACH ? AS work (READ_ONLY)", [str(work)])
            con.execute(f'COPY FROM DATABASE work TO "{name}"')
            con.execute("DETACH work")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(fresh, db)
    except (duckdb.Error, OSError) as exc:
        _remove(fresh)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Task2VecError(f"cannot publish {db}: {reason}; the finished work stays in {work}, "
                            "and running the same command again publishes it") from None
    _remove(work)


@contextmanager
def updating(db: str | Path):
    """A connection for a stage that adds to a finished library (experts, matrix, evaluate).

    The stage works on ``FILE.updating``, a copy of ``FILE``, committing as it goes; when it
    returns, the copy is published over ``FILE`` (:func:`publish`). Killed half-way, the next
    run resumes from the copy; meanwhile the app keeps reading ``FILE`` (a writer would lock it).
    """
    from .errors import Task2VecError

    db = Path(db)
    work = db.with_name(db.name + ".updating")
    open_library(db, read_only=True).close()  # a clear error for a missing or foreign file
    # a work file older than the library belongs to an earlier, abandoned run
    if not work.exists() or work.stat().st_mtime < db.stat().st_mtime:
        _remove(work)
        try:
            shutil.copyfile(db, work)
        except OSError as exc:
            _remove(work)
            raise Task2VecError(f"cannot copy {db} to {work}: {exc.strerror}") from None
    con = open_library(work)
    try:
        yield con
        con.execute("CHECKPOINT")
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0]
        raise Task2VecError(f"cannot write {work}: {reason}; {db} is unchanged, and running the "
                            "same command again resumes") from None
    finally:
        con.close()
    publish(work, db)
