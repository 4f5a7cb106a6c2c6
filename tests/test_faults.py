"""Crashes and failing disks during a build: nothing is lost, nothing half-written is published.

The reference is the CLI's build run in this process. One build runs as the real CLI in a
subprocess and is killed with SIGKILL mid-way (then finished by a second process, which also
checks that a subprocess embeds as this process does), and one rebuild runs in a subprocess
while the file is read; the other crashes are injected in-process at chosen points (after k
task commits, inside a task's transaction, while writing the maps, just before the publishing
rename), which covers every stage deterministically. Each crashed build is run again and must
equal the uninterrupted one. The in-process builds embed each task once for real and then
reuse it (conftest.remembered_embed_methods): the crash points are in the writing, not in the
embedding.
"""
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import duckdb
import numpy as np
import pytest
from PIL import Image

from precompute import __main__ as cli
from precompute import build, store
from precompute.errors import Task2VecError

from conftest import remembered_embed_methods
from test_build import digit_specs, read_all

pytestmark = pytest.mark.slow
KILL_AFTER = 2  # the real SIGKILL trial: tasks done (of 5) when the build is killed


@pytest.fixture(scope="module")
def library(digits, tmp_path_factory):
    """A user library on disk: 5 digit-pair tasks of 30 PNG images each."""
    root = tmp_path_factory.mktemp("faults") / "library"
    images, labels = digits
    for a, b in [(0, 1), (3, 8), (1, 7), (4, 9), (2, 5)]:
        for c in (a, b):
            folder = root / f"{a}-vs-{b}" / str(c)
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[:15]:
                Image.fromarray(images[i]).save(folder / f"{i}.png")
    return root


def command(library, db, seed: int = 0, quiet: bool = True) -> list[str]:
    return [sys.executable, "-m", "precompute", "build", str(library), "--db", str(db),
            "--input-size", "32", "--maps", "tsne", "--seed", str(seed), *(["--quiet"] * quiet)]


def comparable(db) -> dict:
    """Everything but the run log (a resumed build logs two runs)."""
    content = read_all(db)
    content.pop("runs")
    content["embeddings"] = [(t, m, np.asarray(v).tobytes(), lvl)
                             for t, m, v, lvl in content["embeddings"]]
    return content


@pytest.fixture(scope="module")
def uninterrupted(library, tmp_path_factory):
    """The reference: the CLI's build run in this process, every task embedded for real (and
    remembered for the in-process crash tests)."""
    db = tmp_path_factory.mktemp("ref") / "lib.duckdb"
    with pytest.MonkeyPatch.context() as m:
        m.setattr(build, "embed_methods", remembered_embed_methods)
        assert cli.main(command(library, db)[3:]) == 0
    return comparable(db), db


def test_sigkill_mid_build_resumes_to_the_same_library(library, uninterrupted, tmp_path):
    """The CLI in a subprocess, SIGKILLed once its progress bar shows KILL_AFTER of the 5
    tasks done; the same command then finishes, embedding the rest in a new process."""
    reference, _ = uninterrupted
    db = tmp_path / "lib.duckdb"
    proc = subprocess.Popen(command(library, db, quiet=False), stderr=subprocess.PIPE)
    seen = b""
    while proc.poll() is None:
        seen += proc.stderr.read1(4096)
        done = [int(n) for n in re.findall(rb"embedding tasks:.*?\| *(\d+)/5", seen)]
        if done and max(done) >= KILL_AFTER:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, seen.decode(errors="replace")[-500:]
    assert not db.exists()  # never a partial file at the published path
    assert db.with_name(db.name + ".building").exists()  # the work so far is kept
    subprocess.run(command(library, db), check=True, timeout=600)
    assert comparable(db) == reference
    assert not db.with_name(db.name + ".building").exists()


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the build catches it."""


def _crash_after_tasks(k: int, inside: bool):
    """store.write_task that commits ``k`` tasks, then dies: before the next task's transaction,
    or (``inside``) half-way through it, after its task and embedding rows."""
    real, calls = store.write_task, {"n": 0}

    def write_task(con, task, embeddings, thumbnails):
        calls["n"] += 1
        if calls["n"] <= k:
            return real(con, task, embeddings, thumbnails)
        if not inside:
            raise Killed

        def dying():
            yield thumbnails[0]
            raise Killed
        return real(con, task, embeddings, dying())
    return {"write_task": write_task}


def _always(exc_type):
    def fail(*args, **kwargs):
        raise exc_type
    return fail


CRASHES = {  # name -> replacements in precompute.store while the crashing build runs
    "before the first commit": lambda: _crash_after_tasks(0, inside=False),
    "after 2 task commits": lambda: _crash_after_tasks(2, inside=False),
    "inside the 4th task's transaction": lambda: _crash_after_tasks(3, inside=True),
    "after the last task, writing the maps": lambda: {"write_map": _always(Killed)},
    "just before the publishing rename": lambda: {"os": types.SimpleNamespace(replace=_always(Killed))},
}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_a_crash_at_any_stage_resumes_to_the_same_library(crash, library, uninterrupted, tmp_path,
                                                          monkeypatch, remembered_embeddings):
    reference, _ = uninterrupted
    db = tmp_path / "lib.duckdb"
    argv = command(library, db)[3:]  # the CLI's arguments, run in this process
    with monkeypatch.context() as m:
        for name, replacement in CRASHES[crash]().items():
            m.setattr(store, name, replacement)
        with pytest.raises(Killed):
            cli.main(argv)
    assert not db.exists()  # nothing published
    assert db.with_name(db.name + ".building").exists()  # the work so far is kept
    assert cli.main(argv) == 0
    assert comparable(db) == reference
    assert not db.with_name(db.name + ".building").exists()
    assert not db.with_name(db.name + ".publishing").exists()


def test_reading_the_library_during_a_rebuild_keeps_working(library, uninterrupted, tmp_path):
    reference, built = uninterrupted
    db = tmp_path / "lib.duckdb"
    shutil.copyfile(built, db)
    counts, errors, stop = [], [], threading.Event()

    def reader():  # what the app does: read-only connections, one query each
        while not stop.is_set():
            try:
                con = duckdb.connect(str(db), read_only=True)
                counts.append(con.cursor().execute("SELECT count(*) FROM embeddings").fetchone()[0])
                con.close()
            except Exception as exc:  # noqa: BLE001 - any failure is what we look for
                errors.append(repr(exc))
            time.sleep(0.05)

    thread = threading.Thread(target=reader)
    thread.start()
    try:  # rebuild with another seed: other numbers, published over the file being read
        subprocess.run(command(library, db, seed=1), check=True, timeout=600)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(counts) > 10 and set(counts) == {10}
    assert comparable(db)["embeddings"] != reference["embeddings"]


def test_disk_full_mid_build_keeps_the_published_file(digits, tmp_path, monkeypatch,
                                                      remembered_embeddings):
    db = tmp_path / "lib.duckdb"
    specs = digit_specs(digits, n_tasks=3)
    build.build_library(specs, db, library="digits", input_size=32, maps=(), progress=False)
    before = db.read_bytes()
    real = build.store.write_task
    calls = {"n": 0}

    def disk_fills_up(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise duckdb.IOException("Could not write file: No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(build.store, "write_task", disk_fills_up)
    # the library grows by 3 tasks; the disk fills up while the second is written
    with pytest.raises(Task2VecError, match="No space left on device.*unchanged.*resumes"):
        build.build_library(digit_specs(digits, n_tasks=6), db, library="digits",
                            input_size=32, maps=(), progress=False)
    assert db.read_bytes() == before
    # once there is space again, the same command resumes and finishes
    monkeypatch.setattr(build.store, "write_task", real)
    build.build_library(digit_specs(digits, n_tasks=6), db, library="digits", input_size=32,
                        maps=(), progress=False)
    assert len(read_all(db)["tasks"]) == 6
    # the first build's 3 tasks and the new task written before the failure were kept
    assert read_all(db)["runs"] == [(3,), (2,)]


def test_read_only_output_is_a_clear_error(digits):
    with pytest.raises(Task2VecError, match="cannot open /sys/lib.duckdb.building"):
        build.build_library(digit_specs(digits, n_tasks=2), "/sys/lib.duckdb", library="digits",
                            input_size=32, maps=(), progress=False)
