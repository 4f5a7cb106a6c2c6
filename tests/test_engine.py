"""The executor seam (precompute.engine): the same units on a Ray cluster give the same library.

One local Ray instance with 2 CPUs serves the module (loopback only; its dashboard, on
127.0.0.1, serves the state API the fault test uses to find a worker). A small real library
(6 tasks: 3 digit pairs and 3 Fashion-MNIST pairs, 20 images per class, 32 px, files on disk)
is built, its experts trained and its matrix filled once in this process with the local
executor and once with the Ray executor; the files must be equal, bit for bit. Faults: a
worker killed mid-unit (retried), the driver killed mid-build (resumed by the same command), a
unit failing on bad input (one line, exit 2).

Ray runs one unit per CPU with one torch thread each, so the local reference runs with one
torch thread too: on CPU the Fisher's reductions round differently with 2 threads (about
0.05 % of the bfloat16 filter values differ in their last bit, measured), which is torch's
property, not the engine's.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from conftest import write_pair_manifest
from precompute import build, engine, experts, store
from precompute.libraries.user import read_user_library

SIDE = 32
PAIRS = {"digits": [(0, 1), (3, 8), (1, 7)], "fashion": [(0, 1), (7, 9), (5, 9)]}
PER_CLASS = 20
ROOT = Path(engine.__file__).resolve().parents[1]  # this checkout: workers import it


def write_library(root: Path, digits) -> Path:
    """A path,label,task,taxonomy manifest of PNG files (the workers read the files)."""
    return write_pair_manifest(root, digits, PAIRS["digits"], PAIRS["fashion"], PER_CLASS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs for the module; yields its address."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process on 127.0.0.1
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    import logging

    import ray

    temp = tempfile.mkdtemp(prefix="t2v-test-ray-")  # short: Ray's socket paths
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port, _temp_dir=temp, log_to_driver=False,
             configure_logging=True, logging_level=logging.ERROR)
    ctx = ray.get_runtime_context()
    STATE_API["address"] = f"http://127.0.0.1:{port}"
    try:
        yield ctx.gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


STATE_API: dict = {}  # the module cluster's dashboard, which serves Ray's state API


def ray_tasks(**filters) -> list:
    """The module cluster's Ray tasks with these field values (its own state API: another Ray
    instance on the machine, such as a user's, is not asked)."""
    from ray.util.state import list_tasks

    return list_tasks(address=STATE_API["address"], limit=10_000,
                      filters=[(k, "=", v) for k, v in filters.items()])


def stages(specs, manifest, db: Path, cache: Path, executor, threads: int | None = None) -> None:
    """build, experts, matrix; ``threads``: torch's threads in this process for each stage (the
    build's numba distance kernel sets OpenMP's thread count back to all cores)."""
    if threads:
        torch.set_num_threads(threads)
    build.build_library(specs, db, library=str(manifest), input_size=SIDE, maps=("tsne",),
                        progress=False, executor=executor)
    with store.updating(db) as con:
        if threads:
            torch.set_num_threads(threads)
        experts.build_experts(con, specs, cache, num_experts=2, sources=2, steps=20,
                              progress=False, executor=executor)
        experts.compute_matrix(con, specs, cache, progress=False, executor=executor)


BUILD_TABLES = ("tasks", "embeddings", "thumbnails", "maps", "neighbours")


def contents(db: Path, tables=None) -> dict:
    """The tables' computed values (not timings, devices or run logs)."""
    con = duckdb.connect(str(db), read_only=True)
    q = {
        "tasks": "SELECT * FROM tasks",
        "embeddings": "SELECT task_id, method, value, trivial_level, norm FROM embeddings",
        "thumbnails": "SELECT * FROM thumbnails",
        "maps": "SELECT * FROM maps",
        "neighbours": "SELECT * FROM neighbours",
        "experts": "SELECT expert_id, name, kind, source_tasks, meta->>'weights_sha256', "
                   "meta->>'images_per_source', meta->>'train_error_last_steps' FROM experts",
        "expert_embeddings": "SELECT * FROM expert_embeddings",
        "performance": "SELECT expert_id, task_id, test_error, train_error FROM performance",
        "feature_scores": "SELECT expert_id, task_id, logme, knn_accuracy, hscore, leep, nce "
                          "FROM feature_scores",
    }
    try:
        return {k: con.execute(f"{v} ORDER BY ALL").fetchall() for k, v in q.items()
                if tables is None or k in tables}
    finally:
        con.close()


@pytest.fixture(scope="module")
def library(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    manifest = write_library(root / "images", digits)
    return {"root": root, "manifest": manifest, "specs": read_user_library(manifest)}


@pytest.fixture(scope="module")
def local(library):
    """The three stages with the local executor (one torch thread, as a Ray worker has)."""
    db = library["root"] / "local.duckdb"
    threads = torch.get_num_threads()
    try:
        stages(library["specs"], library["manifest"], db, library["root"] / "cache-local", None,
               threads=1)
    finally:
        torch.set_num_threads(threads)
    return contents(db)


def test_ray_equals_local_for_build_experts_and_matrix(library, local, cluster):
    db = library["root"] / "ray.duckdb"
    ex = engine.RayExecutor(cluster, progress=False)
    try:
        assert ex.workers == 2
        stages(library["specs"], library["manifest"], db, library["root"] / "cache-ray", ex)
    finally:
        ex.close()
    result = contents(db)
    assert len(result["embeddings"]) == 12 and len(result["maps"]) == 12  # 6 tasks x 2 spaces
    assert len(result["experts"]) == 3 and len(result["performance"]) == 18
    assert all(r[4] for r in result["experts"] if r[2] == "finetuned")  # weights written
    for table in local:
        assert result[table] == local[table], table
    # the units ran as Ray tasks: 6 embeddings, 3 experts, 6 trunk caches, 3 matrix chunks
    # (task events reach the state API within a second or so)
    deadline = time.monotonic() + 20
    while True:
        names = [t.name for t in ray_tasks(state="FINISHED")]
        counts = [names.count(n) for n in ("embed_task", "train_one", "trunk_unit", "matrix_chunk")]
        if counts == [6, 3, 6, 3] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counts == [6, 3, 6, 3]
    assert not db.with_name(db.name + ".building").exists()
    assert not db.with_name(db.name + ".updating").exists()


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, killed and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_worker_killed_mid_build_is_retried_and_the_library_is_the_same(library, local, cluster,
                                                                         capfd):
    """A thread finds a running unit through Ray's state API and SIGKILLs its worker. Ray's
    message about the dead worker goes to the run's Ray logs, not the terminal."""
    import ray._private.worker as ray_worker

    db = library["root"] / "killed.duckdb"
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not killed:
            running = ray_tasks(state="RUNNING", name="embed_task")
            if running and running[0].worker_pid:
                os.kill(running[0].worker_pid, signal.SIGKILL)
                killed.append(running[0].worker_pid)
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    ex = engine.RayExecutor(cluster, progress=False)
    thread.start()
    try:
        build.build_library(library["specs"], db, library=str(library["manifest"]),
                            input_size=SIDE, maps=("tsne",), progress=False, executor=ex)
    finally:
        stop.set()
        thread.join()
        ex.close()
    assert killed, "no running unit was found to kill"
    assert not _alive(killed[0])  # that worker is gone
    errors = Path(ray_worker._global_node.get_logs_dir_path()) / "ray-errors.log"
    deadline = time.monotonic() + 20  # Ray publishes the message from its own thread
    while not (errors.is_file() and "died" in errors.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "died" in errors.read_text()
    assert "died" not in capfd.readouterr().out
    attempts = [t.attempt_number for t in ray_tasks(name="embed_task")]
    assert max(attempts) >= 1  # Ray ran the killed unit again
    result = contents(db, BUILD_TABLES)
    for table in BUILD_TABLES:
        assert result[table] == local[table], table
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT tasks_embedded FROM runs").fetchall() == [(6,)]
    finally:
        con.close()


def test_the_driver_killed_mid_build_on_ray_resumes_to_the_same_library(library, local, cluster,
                                                                        tmp_path):
    """SIGKILL the driver (the CLI, the only writer) once Ray has finished some of its units:
    the work file keeps what was committed, and the same command embeds only the rest."""
    def finished() -> int:
        return len(ray_tasks(state="FINISHED", name="embed_task"))

    db = tmp_path / "lib.duckdb"
    work = db.with_name(db.name + ".building")
    args = ("build", str(library["manifest"]), "--db", str(db), "--input-size", str(SIDE),
            "--maps", "tsne", "--quiet", "--engine", "ray", "--ray-address", cluster)
    before = finished()
    proc = subprocess.Popen([sys.executable, "-m", "precompute", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while finished() - before < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the driver commits each result as it arrives
    assert proc.poll() is None, "the build ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not db.exists() and work.exists()
    con = duckdb.connect(str(work), read_only=True)
    committed = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
    con.close()
    assert 1 <= committed < 6, committed

    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    result = contents(db, BUILD_TABLES)
    for table in BUILD_TABLES:
        assert result[table] == local[table], table
    con = duckdb.connect(str(db), read_only=True)
    try:  # the killed run logged nothing; the resumed one embedded only the rest
        assert con.execute("SELECT tasks_embedded FROM runs").fetchall() == [(6 - committed,)]
    finally:
        con.close()
    assert not work.exists()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "precompute", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_bad_task_on_ray_is_one_line_exit_2_and_finished_tasks_are_kept(library, cluster,
                                                                            tmp_path):
    """A unit that fails on bad input: the task is named, exit 2; the tasks that finished are
    in the work file and the same command, once the file is fixed, embeds only the rest."""
    images = tmp_path / "images"
    shutil.copytree(library["manifest"].parent, images)
    manifest = images / "library.csv"
    lines = manifest.read_text().splitlines()
    # every class-7 image (only this task has them): some are in its train split, which the
    # build decodes
    bad = [line.split(",")[0] for line in lines if ",7,fashion-7-vs-9," in line]
    good = {name: (images / name).read_bytes() for name in bad}
    for name in bad:
        (images / name).write_text("not an image")
    db = tmp_path / "lib.duckdb"
    args = ("build", str(manifest), "--db", str(db), "--input-size", str(SIDE), "--maps", "tsne",
            "--quiet", "--engine", "ray", "--ray-address", cluster)
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "fashion-7-vs-9" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    work = db.with_name(db.name + ".building")
    assert not db.exists() and work.exists()
    con = duckdb.connect(str(work), read_only=True)
    kept = {r[0] for r in con.execute("SELECT task_id FROM tasks").fetchall()}
    con.close()
    assert kept and "fashion-7-vs-9" not in kept

    for name, data in good.items():
        (images / name).write_bytes(data)
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM tasks").fetchone()[0] == 6
        assert con.execute("SELECT tasks_embedded FROM runs ORDER BY run_id").fetchall() \
            == [(6 - len(kept),)]
    finally:
        con.close()


def test_engine_options_are_checked():
    from conftest import expect_error

    expect_error(lambda: engine.executor("spark"), "unknown engine 'spark'", "local, ray")
    expect_error(lambda: engine.executor("local", address="auto"), "--ray-address needs --engine ray")
    expect_error(lambda: engine.RayExecutor(device="cuda:1"), "--device cuda")
    expect_error(lambda: engine.RayExecutor(device="cpu", gpus_per_task=1.5), "--gpus-per-task")


def test_a_spec_travels_as_file_names_not_images(library):
    spec = library["specs"][0]
    shipped = engine.portable(spec)
    records = shipped.records()
    assert records == list(spec.records())
    assert all(isinstance(r.image, str) and Path(r.image).is_file() for r in records)
    import pickle

    assert len(pickle.dumps(shipped)) < 200 * len(records)  # paths, not pixels
