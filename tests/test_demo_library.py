"""Tests for precompute.libraries.demo: the offline demo task library (paper section 4)."""
from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pytest

from precompute.errors import Task2VecError
from precompute.libraries import load_splits
from precompute.libraries import demo
from precompute.libraries.demo import (
    FONT_DIRS, read_demo_library, script_genealogy, skipped_scripts, taxonomic_distance)

ROOT = Path(__file__).resolve().parents[1]
TINY = 0.005  # every task at its floor: 3 images per class
# Scripts fonts-noto-core has always carried; tests rely on no other font.
SURE_SCRIPTS = ("Latin", "Greek", "Cyrillic", "Arabic", "Hebrew", "Devanagari", "Thai")
ONE_PER_FAMILY = ("fashion_mnist/pair/tshirt-vs-shirt", "glyphs/greek", "digits/pair/3-vs-8",
                  "emoji/animals-nature/animal-mammal")


@pytest.fixture(scope="module")
def full():
    return read_demo_library(seed=0)


@pytest.fixture(scope="module")
def tiny():
    return {s.task_id: s for s in read_demo_library(seed=0, scale=TINY)}


def by_id(specs):
    return {s.task_id: s for s in specs}


def stacked(records):
    return np.stack([r.image for r in records]), [(r.label, r.split) for r in records]


# --------------------------------------------------------------------------- the spec list


def test_full_scale_library_has_the_promised_shape(full):
    families = Counter(s.family for s in full)
    assert set(families) == {"fashion_mnist", "glyphs", "digits", "emoji"}
    assert len(full) >= 400
    assert families["glyphs"] >= 60 and families["fashion_mnist"] >= 150
    assert families["digits"] >= 10 and families["emoji"] >= 90
    assert len({s.task_id for s in full}) == len(full)
    scripts = {s.meta["script"] for s in full if s.family == "glyphs"}
    assert set(SURE_SCRIPTS) <= scripts


def test_sizes_are_heavy_tailed_from_50_to_thousands(full):
    train = np.array([s.meta["num_train"] for s in full])
    # the smallest dealt size, 50, less its own test images (20 %, at least one per class)
    assert 30 <= train.min() <= 40
    assert train.max() >= 5000
    assert np.median(train) < 300 < train.mean()  # most tasks small, a few large
    # the CPU embedding budget (the train splits are embedded): 185,264 images in the first
    # three families, 48,342 in emoji
    assert 200_000 <= train.sum() <= 260_000
    for s in full:
        assert s.meta["num_train"] + s.meta["num_test"] == s.meta["num_images"]


def test_every_test_split_can_measure_an_error_to_a_few_points(full):
    short = {s.task_id: s.meta["num_test"] for s in full if s.meta["num_test"] < demo.MIN_TEST}
    # only the digits pool (about 180 images per digit) runs short, and it keeps >= 200
    assert short and all(t.startswith("digits/") for t in short)
    assert min(short.values()) >= 200
    # the standard error of an error rate at the smallest split, worst case p = 0.5
    assert math.sqrt(0.25 / min(short.values())) < 0.036


@pytest.mark.parametrize("task_id", ["fashion_mnist/category/footwear-type",
                                     "digits/pair/2-vs-7", "glyphs/ugaritic"])
def test_added_test_images_leave_the_training_images_as_they_were(task_id, monkeypatch):
    spec = next(s for s in read_demo_library(scale=0.3) if s.task_id == task_id)
    records = list(spec.records())
    monkeypatch.setattr(demo, "_test_shortfall", lambda have, scale: 0)
    fewer = next(s for s in read_demo_library(scale=0.3) if s.task_id == task_id)
    base = list(fewer.records())
    assert spec.meta["num_test"] > fewer.meta["num_test"]
    assert spec.meta["num_train"] == fewer.meta["num_train"]
    assert len(records) == spec.meta["num_images"]
    train = [r for r in records if r.split == "train"]
    assert [(r.label, r.image.tobytes()) for r in train] == \
        [(r.label, r.image.tobytes()) for r in base if r.split == "train"]
    if task_id.startswith("digits/"):  # the added test images are none of the task's own
        seen = {r.image.tobytes() for r in train}
        test = [r.image.tobytes() in seen for r in records if r.split == "test"]
        # drawn from the whole pool instead, about 84 of its 356 images (24 %) would be
        assert sum(test) <= 0.01 * len(test)


def test_sizes_follow_the_seed_but_keep_the_distribution():
    a, b = read_demo_library(seed=0), read_demo_library(seed=1)
    # the dealt sizes (a digits task may take fewer, to leave its test split room in the pool)
    size_a = {s.task_id: s.meta["dealt_size"] for s in a}
    size_b = {s.task_id: s.meta["dealt_size"] for s in b}
    assert size_a != size_b
    assert sorted(size_a.values()) == sorted(size_b.values())


def test_building_specs_is_deterministic(full):
    again = read_demo_library(seed=0)
    assert [s.task_id for s in again] == [s.task_id for s in full]
    assert [s.meta for s in again] == [s.meta for s in full]


def test_bad_arguments_raise_the_project_error(tmp_path):
    for scale in (0, -1, "1", True):
        with pytest.raises(Task2VecError, match="scale"):
            read_demo_library(scale=scale)
    with pytest.raises(Task2VecError, match="seed"):
        read_demo_library(seed=-1)
    with pytest.raises(Task2VecError, match="dataset-fashion-mnist"):
        read_demo_library(fashion_mnist_dir=tmp_path)
    with pytest.raises(Task2VecError, match="fonts-noto-core"):
        read_demo_library(font_dirs=[tmp_path])


# --------------------------------------------------------------------------- records


def test_every_task_has_two_classes_with_train_and_test_images(tiny):
    for spec in tiny.values():
        records = spec.records()
        assert len(records) == spec.meta["num_images"], spec.task_id
        counts = Counter((r.label, r.split) for r in records)
        labels = sorted({r.label for r in records})
        assert labels == spec.meta["classes"] and len(labels) >= 2, spec.task_id
        for label in labels:
            assert counts[label, "train"] >= 2 and counts[label, "test"] >= 1, spec.task_id
        assert sum(counts[label, "test"] for label in labels) == spec.meta["num_test"]
        image = records[0].image
        assert image.dtype == np.uint8, spec.task_id
        assert image.ndim == (3 if spec.family == "emoji" else 2), spec.task_id  # emoji: RGB


def test_records_are_identical_on_every_call_and_change_with_the_seed(tiny):
    other = by_id(read_demo_library(seed=1, scale=TINY))
    for task_id in ONE_PER_FAMILY:
        images, rows = stacked(tiny[task_id].records())
        images_again, rows_again = stacked(tiny[task_id].records())
        assert rows == rows_again and np.array_equal(images, images_again), task_id
        fresh = by_id(read_demo_library(seed=0, scale=TINY))[task_id]
        assert np.array_equal(stacked(fresh.records())[0], images), task_id
        other_images, _ = stacked(other[task_id].records())
        assert other_images.shape != images.shape or not np.array_equal(other_images, images)


def test_pool_tasks_are_balanced_over_labels_and_their_classes():
    spec = by_id(read_demo_library(seed=0, scale=0.2))["fashion_mnist/footwear/is-footwear"]
    counts = Counter(r.label for r in spec.records())
    assert abs(counts["footwear"] - counts["not footwear"]) <= 1
    assert spec.meta["label_classes"]["footwear"] == ["Sandal", "Sneaker", "Ankle boot"]
    assert "Bag" in spec.meta["label_classes"]["not footwear"]


def test_whole_pool_tasks_share_one_image_distribution_and_differ_in_labels():
    specs = by_id(read_demo_library(seed=0, scale=0.2))
    whole = [s for s in specs.values() if s.task_id.startswith("fashion_mnist/all-images/")]
    assert len(whole) == 24
    assert {s.meta["attribute_group"] for s in whole} == {
        "all-images/footwear", "all-images/tops", "all-images/other"}
    spec = specs["fashion_mnist/all-images/footwear/sandal-sneaker"]
    assert spec.taxonomy == ("fashion_mnist", "all-images", "footwear", "Sandal or Sneaker (all images)")
    records = spec.records()
    assert len(records) == spec.meta["num_images"]
    # one tenth of the images per Fashion-MNIST class, whatever the labels: count the source
    # classes through the pixels of the shared pool
    images, by_class = demo._fashion_pool(str(demo.FASHION_MNIST_DIR))
    index = {images[i].tobytes(): c for c, ids in enumerate(by_class) for i in ids}
    per_class = Counter(index[r.image.tobytes()] for r in records)
    assert max(per_class.values()) - min(per_class.values()) <= 1 and len(per_class) == 10
    counts = Counter(r.label for r in records)
    assert abs(counts["Sandal or Sneaker"] - len(records) / 5) <= 2
    assert counts["other"] == len(records) - counts["Sandal or Sneaker"]
    # related: the same attribute group
    related = set(spec.meta["related"])
    assert {s.task_id for s in whole if s.meta["attribute_group"] == "all-images/footwear"
            and s is not spec} <= related
    assert "fashion_mnist/all-images/tops/tshirt" not in related


def test_the_shipped_library_holds_every_demo_task_as_the_reader_deals_it():
    """data/demo.duckdb was built from read_demo_library(seed=0) as it is now: the same tasks,
    with the training and test sizes the reader gives them."""
    specs = {s.task_id: s for s in read_demo_library(seed=0)}
    con = duckdb.connect(str(ROOT / "data" / "demo.duckdb"), read_only=True)
    try:
        built = {t: (n, m) for t, n, m in
                 con.execute("SELECT task_id, num_train, num_test FROM tasks").fetchall()}
    finally:
        con.close()
    assert set(built) == set(specs)
    assert all(built[t] == (s.meta["num_train"], s.meta["num_test"]) for t, s in specs.items())


def test_glyph_images_are_not_blank_and_differ_between_characters(tiny):
    for script in SURE_SCRIPTS:
        spec = next(s for s in tiny.values() if s.meta.get("script") == script)
        records = spec.records()
        means = {}
        for r in records:
            # Thin glyphs (Arabic alef) blurred at 32 px peak near 180, so the bars are low.
            lit = (r.image > 64).mean()
            assert r.image.max() >= 128 and 0.01 < lit < 0.7, (script, r.label)
            means.setdefault(r.label, []).append(r.image.astype(float))
        means = {label: np.mean(images, axis=0) for label, images in means.items()}
        labels = sorted(means)
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                assert np.abs(means[a] - means[b]).mean() > 5, (script, a, b)


def test_load_splits_works_for_one_task_of_each_family(tiny):
    for task_id in ONE_PER_FAMILY:
        spec = tiny[task_id]
        splits = load_splits(spec, 32)
        assert set(splits) == {"train", "test"}
        assert splits["train"].classes == spec.meta["classes"]
        assert splits["train"].size == spec.meta["num_train"]
        assert splits["test"].size == spec.meta["num_test"]
        assert tuple(splits["train"].images.shape[1:]) == (3, 32, 32)
        assert int(splits["train"].labels.max()) == len(spec.meta["classes"]) - 1


# --------------------------------------------------------------------------- taxonomy


def test_taxonomy_paths_are_well_formed(full):
    for s in full:
        assert isinstance(s.taxonomy, tuple) and s.taxonomy, s.task_id
        assert all(isinstance(p, str) and p.strip() == p and p for p in s.taxonomy), s.task_id
        if s.family == "glyphs":
            assert s.taxonomy[-1] == s.name == s.meta["script"]
        elif s.family == "emoji":  # ("emoji", group) or ("emoji", group, subgroup)
            assert s.taxonomy[:2] == ("emoji", s.meta["group"]) and s.taxonomy[-1] == s.name
        else:
            assert s.taxonomy == (s.family, *s.meta["attribute_group"].split("/"), s.name)


def test_script_genealogy_is_a_tree():
    """Every node has one ancestry wherever it appears, and every script one row."""
    rows = script_genealogy()
    assert len({r.script for r in rows}) == len(rows) >= 60
    ancestry = {}
    for r in rows:
        for depth, node in enumerate(r.path):
            assert ancestry.setdefault(node, r.path[:depth]) == r.path[:depth], node
    paths = {r.script: r.path for r in rows}
    assert paths["Latin"][-3:] == ("Greek", "Old Italic", "Latin")
    assert {"Phoenician", "Aramaic", "Brahmi"} <= set(paths["Devanagari"])
    assert "Brahmi" in paths["Thai"] and "Greek" not in paths["Thai"]


def test_genealogy_csv_columns():
    text = (Path(demo.__file__).with_name("script_genealogy.csv")).read_text("utf-8")
    header = next(csv.reader(line for line in text.splitlines() if not line.startswith("#")))
    assert header == ["script", "font_file", "ranges", "path"]


def test_taxonomic_distance_hand_cases():
    assert taxonomic_distance(("A", "B"), ("A", "B")) == 0
    assert taxonomic_distance(("A", "B"), ("A", "B", "C")) == 1  # parent and child
    assert taxonomic_distance(("A", "B", "C"), ("A", "B", "D")) == 2  # siblings
    assert taxonomic_distance(("A", "B", "C"), ("A", "B", "D", "E")) == 3
    assert taxonomic_distance(("A", "B"), ("X", "Y", "Z")) == 5  # roots meet above
    paths = {r.script: r.path for r in script_genealogy()}
    # Latin: ..., Phoenician, Greek, Old Italic, Latin; Cyrillic: ..., Phoenician, Greek, Cyrillic.
    assert taxonomic_distance(paths["Latin"], paths["Cyrillic"]) == 3
    # Hebrew: ..., Phoenician, Aramaic, Hebrew: 3 edges up from Latin and 2 down.
    assert taxonomic_distance(paths["Latin"], paths["Hebrew"]) == 5
    assert taxonomic_distance(paths["Hebrew"], paths["Latin"]) == 5
    for bad in ((), "Latin", ("A", "")):
        with pytest.raises(Task2VecError):
            taxonomic_distance(bad, ("A",))


def test_related_tasks_are_symmetric_and_meaningful(full):
    specs = by_id(full)
    for s in full:
        for other in s.meta["related"]:
            assert s.task_id in specs[other].meta["related"]
            assert specs[other].family == s.family
    pair = specs["fashion_mnist/pair/tshirt-vs-shirt"].meta["related"]
    assert "fashion_mnist/one-vs-rest/shirt" in pair
    assert "fashion_mnist/triple/tshirt-pullover-shirt" in pair
    assert "fashion_mnist/pair/sandal-vs-sneaker" not in pair
    assert "fashion_mnist/footwear/is-footwear" in specs["fashion_mnist/footwear/open-toe"].meta[
        "related"]
    assert "glyphs/imperial-aramaic" in specs["glyphs/hebrew"].meta["related"]
    assert "glyphs/devanagari" not in specs["glyphs/latin"].meta["related"]


# --------------------------------------------------------------------------- missing fonts


def test_scripts_without_a_font_are_skipped_with_a_reason(tmp_path):
    noto = next(Path(d) for d in FONT_DIRS if (Path(d) / "NotoSans-Regular.ttf").is_file())
    for name in ("NotoSans-Regular.ttf", "NotoSansHebrew-Regular.ttf"):
        (tmp_path / name).symlink_to(noto / name)
    specs = read_demo_library(seed=0, scale=TINY, font_dirs=[tmp_path])
    glyphs = {s.meta["script"]: s for s in specs if s.family == "glyphs"}
    assert set(glyphs) == {"Latin", "Greek", "Cyrillic", "Hebrew"}
    assert glyphs["Latin"].meta["fonts"] == ["NotoSans-Regular.ttf"]  # no Bold, no Serif here
    assert len(glyphs["Hebrew"].records()) == glyphs["Hebrew"].meta["num_images"]
    skipped = skipped_scripts([tmp_path])
    assert "NotoSansDevanagari-Regular.ttf not installed" in skipped["Devanagari"]
    assert not set(skipped) & set(glyphs)
    assert len(skipped) + len(glyphs) == len(script_genealogy())
