"""A user's own library: a CSV manifest or a folder of task folders, read by the upload readers."""
import numpy as np
import pytest
from PIL import Image

from precompute.libraries.user import read_user_library

from conftest import expect_error


def write_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(folder / f"{i}.png")


def test_manifest_groups_rows_into_tasks_with_taxonomy(tmp_path):
    write_images(tmp_path / "img", 10)
    rows = ["path,label,task,taxonomy"]
    rows += [f"img/{i}.png,{'a' if i < 5 else 'b'},shapes,vision/toy/shapes" for i in range(10)]
    rows += [f"img/{i}.png,{'x' if i % 2 else 'y'},parity,vision/toy/parity" for i in range(6)]
    (tmp_path / "lib.csv").write_text("\n".join(rows) + "\n")
    specs = read_user_library(tmp_path / "lib.csv", seed=1)
    assert [s.task_id for s in specs] == ["parity", "shapes"]
    shapes = specs[1]
    assert shapes.taxonomy == ("vision", "toy", "shapes") and shapes.family == "vision"
    records = shapes.records()
    assert sum(r.split == "test" for r in records) == 2  # 20 % of each 5-image class
    assert records == read_user_library(tmp_path / "lib.csv", seed=1)[1].records()  # seeded
    assert sum(r.split == "test" for r in specs[0].records()) == 0  # classes of 3 stay in train


def test_manifest_errors(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\nx.png,a\n")
    expect_error(lambda: read_user_library(tmp_path / "a.csv"), "no 'task' column",
                 "path,label,task[,taxonomy]")
    (tmp_path / "b.csv").write_text("path,label,task\nghost.png,a,t\n")
    expect_error(lambda: read_user_library(tmp_path / "b.csv"), "line 2", "ghost.png")
    expect_error(lambda: read_user_library(tmp_path / "nope"), "no such file")
    write_images(tmp_path / "img", 3)
    (tmp_path / "c.csv").write_text("path,label,task\nimg/0.png,a,t\nimg/1.png,a,t\nimg/2.png,b,t\n")
    expect_error(lambda: read_user_library(tmp_path / "c.csv"), "task t of CSV", "'b'")
    (tmp_path / "d.csv").write_text("path,label,task\nimg/0.png,a,\n")
    expect_error(lambda: read_user_library(tmp_path / "d.csv"), "line 2", "empty task")


def test_folder_library_reads_each_task_as_an_upload(tmp_path):
    for task, classes in (("shapes", "ab"), ("parity", "xyz")):
        for c in classes:
            write_images(tmp_path / "lib" / task / c, 5)
    (tmp_path / "lib" / "README.txt").write_text("not a task")  # ignored, as next to classes
    specs = read_user_library(tmp_path / "lib", seed=0)
    assert [(s.task_id, s.taxonomy, s.meta["num_images"]) for s in specs] == [
        ("parity", ("user", "parity"), 15), ("shapes", ("user", "shapes"), 10)]
    assert sorted({r.label for r in specs[0].records()}) == ["x", "y", "z"]
    assert sum(r.split == "test" for r in specs[0].records()) == 3  # one of each 5-image class


@pytest.mark.parametrize("make, phrases", [
    (lambda lib: write_images(lib / "shapes" / "a" / "inner", 3), ("nested folder", "shapes/a/inner")),
    (lambda lib: write_images(lib / "shapes" / "solo", 1), ("solo",)),
    (lambda lib: write_images(lib, 1), ("not inside a task folder",)),
])
def test_folder_library_refuses_what_an_upload_refuses(tmp_path, make, phrases):
    lib = tmp_path / "lib"
    for c in "ab":
        write_images(lib / "shapes" / c, 4)
    make(lib)
    expect_error(lambda: read_user_library(lib), *phrases)
