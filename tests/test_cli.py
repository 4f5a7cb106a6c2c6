"""``python -m precompute embed``: real subprocess, real files, exit codes."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from precompute import TaskEmbedding


def make_task(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            # classes differ in mean colour so the head has something to learn
            base = np.array([200, 40, 40]) if cls == "red" else np.array([40, 40, 200])
            pixels = np.clip(base + rng.normal(0, 30, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "precompute", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_embed_writes_file_and_prints_summary(tmp_path):
    task = make_task(tmp_path / "colours", {"red": 12, "blue": 10})
    out = tmp_path / "colours.npz"
    proc = run("embed", str(task), "--input-size", "32", "--seed", "7", "--out", str(out),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    e = TaskEmbedding.load(out)
    assert e.meta["seed"] == 7 and e.meta["num_images"] == 22 and e.meta["classes"] == ["blue", "red"]
    assert e.meta["class_counts"] == [10, 12]
    assert e.values.shape == (42016,) and np.all(e.values >= e.trivial)
    assert "42016 filters" in proc.stdout and str(out) in proc.stdout
    assert "fisher" in proc.stderr  # progress bars go to stderr


@pytest.mark.parametrize("layout, phrase", [
    ("missing", "no such file or folder"),
    ("one_class", "at least 2 classes"),
    ("one_image", "has 1 image"),
    ("text_file", "not an image"),
    ("csv_missing_file", "ghost.png"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, layout, phrase):
    root = tmp_path / "task"
    if layout == "one_class":
        make_task(root, {"red": 3})
    elif layout == "one_image":
        make_task(root, {"red": 3, "blue": 1})
    elif layout == "text_file":
        make_task(root, {"red": 3, "blue": 3})
        (root / "red" / "notes.txt").write_text("hello")
    elif layout == "csv_missing_file":
        make_task(root, {"red": 3, "blue": 3})
        csv = tmp_path / "labels.csv"
        csv.write_text("path,label\ntask/red/0.png,red\ntask/blue/0.png,blue\nghost.png,blue\n")
        root = csv
    out = tmp_path / "out.npz"
    proc = run("embed", str(root), "--input-size", "32", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and phrase in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.npz*"))


def test_unwritable_output_folder(tmp_path):
    task = make_task(tmp_path / "colours", {"red": 3, "blue": 3})
    proc = run("embed", str(task), "--out", str(tmp_path / "nowhere" / "e.npz"), cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_build_a_user_library_folder(tmp_path):
    """``build`` on a folder of task folders: a DuckDB file with every task and both maps."""
    import duckdb

    library = tmp_path / "library"
    for t in range(5):
        make_task(library / f"task{t}", {"red": 6 + t, "blue": 6})
    db = tmp_path / "lib.duckdb"
    proc = run("build", str(library), "--db", str(db), "--input-size", "32", "--quiet",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "5 tasks written" in proc.stdout
    con = duckdb.connect(str(db), read_only=True)
    tasks = con.execute("SELECT task_id, num_train, num_test FROM tasks ORDER BY task_id").fetchall()
    # 20 % of each class (rounded down) is held out for test
    assert tasks[0] == ("task0", 10, 2) and tasks[4] == ("task4", 13, 3)
    maps = con.execute("SELECT space, algorithm, count(*) FROM maps GROUP BY ALL ORDER BY ALL").fetchall()
    assert maps == [("domain", "tsne", 5), ("domain", "umap", 5), ("task", "tsne", 5), ("task", "umap", 5)]
    con.close()
    assert not (tmp_path / "lib.duckdb.building").exists()


def test_build_bad_library_is_one_line_exit_2(tmp_path):
    proc = run("build", str(tmp_path / "nowhere"), "--db", str(tmp_path / "x.duckdb"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.duckdb").exists() and not (tmp_path / "x.duckdb.building").exists()
