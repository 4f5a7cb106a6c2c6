"""A user's own library as a CSV manifest."""
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
    expect_error(lambda: read_user_library(tmp_path / "a.csv"), "missing column(s) task")
    (tmp_path / "b.csv").write_text("path,label,task\nghost.png,a,t\n")
    expect_error(lambda: read_user_library(tmp_path / "b.csv"), "line 2", "ghost.png")
    expect_error(lambda: read_user_library(tmp_path / "nope"), "no such file")
