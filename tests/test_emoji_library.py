"""Tests for precompute.libraries.emoji: the demo library's colour family with a semantic taxonomy."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from precompute.errors import Task2VecError
from precompute.libraries import emoji, load_splits
from precompute.libraries.demo import (FAMILIES, MIN_PER_CLASS, TASK_SIZES, _size_quantiles,
                                       read_demo_library, taxonomic_distance)

MAMMALS = "emoji/animals-nature/animal-mammal"
ANIMALS = "emoji/animals-nature"
GROUPS = {"Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
          "Travel & Places", "Activities", "Objects", "Symbols", "Flags"}


@pytest.fixture(scope="module")
def full():
    return {s.task_id: s for s in emoji.read_emoji_tasks(seed=0, scale=1.0)}


@pytest.fixture(scope="module")
def small():
    return {s.task_id: s for s in emoji.read_emoji_tasks(seed=0, scale=0.05)}


def images_of(records):
    return np.stack([r.image for r in records])


# --------------------------------------------------------------------------- the tasks


def test_taxonomy_is_group_then_subgroup_without_component(full):
    groups = {s.taxonomy[1] for s in full.values()}
    assert groups == GROUPS  # every group but Component
    for s in full.values():
        assert s.family == "emoji" and s.name == s.taxonomy[-1]
        if len(s.taxonomy) == 2:  # a group task: which subgroup is this?
            assert s.meta["subgroup"] is None and len(s.meta["classes"]) >= 2
        else:  # a subgroup task: which emoji of the subgroup?
            assert s.taxonomy == ("emoji", s.meta["group"], s.meta["subgroup"])
            assert emoji.EMOJI_CLASSES[0] <= len(s.meta["classes"]) <= emoji.EMOJI_CLASSES[1]
    assert sum(len(s.taxonomy) == 2 for s in full.values()) == len(GROUPS)
    assert len(full) == 99  # Debian 12's packages: 90 subgroups have >= 5 base emoji
    animals = full[ANIMALS]
    # The group task's labels are the subgroups, animal-amphibian (only the frog) included.
    assert "animal-mammal" in animals.meta["classes"] and "animal-amphibian" in animals.meta[
        "classes"]
    assert "emoji/animals-nature/animal-amphibian" not in full
    mammals = {e.name for e in emoji.emoji_inventory() if e.subgroup == "animal-mammal"}
    assert set(full[MAMMALS].meta["classes"]) < mammals and len(mammals) > 20  # a choice of 20


def test_tree_distances_and_related_tasks(full):
    mammals, birds, fruit = full[MAMMALS], full["emoji/animals-nature/animal-bird"], full[
        "emoji/food-drink/food-fruit"]
    animals = full[ANIMALS]
    assert taxonomic_distance(animals.taxonomy, mammals.taxonomy) == 1  # parent
    assert taxonomic_distance(mammals.taxonomy, birds.taxonomy) == 2  # same group
    assert taxonomic_distance(mammals.taxonomy, fruit.taxonomy) == 4  # other group
    # read through demo.py, the group task is related to exactly its subgroup tasks: they
    # render the same emoji (the shared-domain check)
    specs = {s.task_id: s for s in read_demo_library(seed=0, scale=0.01, families=["emoji"])}
    subgroup_tasks = {t for t in specs if t.startswith(ANIMALS + "/")}
    assert set(specs[ANIMALS].meta["related"]) == subgroup_tasks
    assert specs[MAMMALS].meta["related"] == [ANIMALS]


def test_component_and_skin_tones_are_left_out():
    raw = Path(emoji.EMOJI_TEST).read_text("utf-8")
    assert "# group: Component" in raw and "1F44B 1F3FB" in raw  # the file has both
    inventory = emoji.emoji_inventory()
    assert len(inventory) == 1870
    assert not any(0x1F3FB <= ord(c) <= 0x1F3FF for e in inventory for c in e.text)
    assert "Component" not in {e.group for e in inventory}
    names = {e.name for e in inventory}
    assert {"waving hand", "grinning face", "dog face", "flag: Japan"} <= names
    assert "waving hand: light skin tone" not in names
    # what the font cannot draw as one bitmap is left out: .notdef (empty in this font), and
    # two emoji in a row (a sequence without a glyph of its own)
    font = str(emoji.EMOJI_FONT)
    assert emoji._base_render(font, "\U0010FFFD") is None
    assert emoji._base_render(font, "\U0001F600\U0001F600") is None
    assert emoji._base_render(font, "\U0001F600").mode == "RGBA"


def test_sizes_are_heavy_tailed_and_scale_down_to_the_floor(full, small):
    # the dealt sizes; test images added to reach demo.MIN_TEST come on top
    sizes = np.array([s.meta["num_images"] - s.meta["added_test"] for s in full.values()])
    assert sizes.min() == TASK_SIZES[0] and sizes.max() == TASK_SIZES[1]
    assert np.median(sizes) < 300 < sizes.mean()
    assert sizes.sum() == _size_quantiles(len(full)).sum() == 60_452  # no task at its floor
    for s in [*full.values(), *small.values()]:
        assert s.meta["num_images"] - s.meta["added_test"] >= MIN_PER_CLASS * len(s.meta["classes"]), s.task_id
        assert s.meta["num_train"] + s.meta["num_test"] == s.meta["num_images"]
    # the small tasks sit at 3 images per class; the largest keep scaling
    dealt = {t: s.meta["num_images"] - s.meta["added_test"] for t, s in small.items()}
    assert min(dealt[t] / len(s.meta["classes"]) for t, s in small.items()) == 3
    assert max(dealt.values()) == round(0.05 * TASK_SIZES[1])


# --------------------------------------------------------------------------- records


def test_records_follow_the_seed(small):
    task = small[MAMMALS]
    first = task.records()
    again = emoji.read_emoji_tasks(seed=0, scale=0.05)
    again = next(s for s in again if s.task_id == MAMMALS).records()
    assert [(r.label, r.split) for r in first] == [(r.label, r.split) for r in again]
    assert np.array_equal(images_of(first), images_of(again))
    # another seed, the same task and size: other renders (not only another size or choice)
    args = (tuple(task.meta["emoji"]), tuple(map(tuple, task.meta["emoji"].values())),
            task.meta["num_images"] - task.meta["added_test"], task.meta["added_test"], 1,
            MAMMALS, str(emoji.EMOJI_FONT))
    other = emoji._emoji_records(*args)
    assert [r.label for r in other] != [r.label for r in first]
    assert not {r.image.tobytes() for r in other} & {r.image.tobytes() for r in first}


def test_records_are_colour_splits_per_class_and_cover_the_group(small):
    for task_id in (MAMMALS, ANIMALS):
        spec = small[task_id]
        records = spec.records()
        assert len(records) == spec.meta["num_images"]
        counts = Counter((r.label, r.split) for r in records)
        for label in spec.meta["classes"]:
            assert counts[label, "train"] >= 2 and counts[label, "test"] >= 1, (task_id, label)
        images = images_of(records).astype(int)
        assert images.shape[1:] == (emoji.EMOJI_SIDE, emoji.EMOJI_SIDE, 3)
        assert np.abs(images[..., 0] - images[..., 1]).mean() > 20  # real colour, not gray
        assert np.abs(images[..., 1] - images[..., 2]).mean() > 20
        # load_splits keeps the three channels apart (thumbnails in colour)
        x = load_splits(spec, 32)["train"].images
        assert not torch.equal(x[:, 0], x[:, 1]) and not torch.equal(x[:, 1], x[:, 2])


def test_two_renders_differ_but_keep_the_class():
    """Augmentation makes a class more than one picture, and the emoji still tells the classes
    apart: 1-nearest-neighbour on 8x8 renders beats chance (measured 0.29 against 0.1)."""
    members = [e for e in emoji.emoji_inventory() if e.subgroup == "animal-mammal"][:10]
    rng = np.random.default_rng(0)
    per_class = 8
    images = np.stack([emoji.render_emoji(e.text, rng) for e in members for _ in range(per_class)])
    labels = np.repeat(np.arange(len(members)), per_class)
    first = images[labels == 0]
    assert all(not np.array_equal(first[0], other) for other in first[1:])
    # 8x8 block means less each channel's mean (the background colour), normalised
    small = images.reshape(len(images), 8, 4, 8, 4, 3).mean(axis=(2, 4))
    small = (small - small.mean(axis=(1, 2), keepdims=True)).reshape(len(images), -1)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    similarity = small @ small.T
    np.fill_diagonal(similarity, -np.inf)
    accuracy = np.mean(labels[similarity.argmax(axis=1)] == labels)
    assert accuracy > 2 / len(members), accuracy


# --------------------------------------------------------------------------- readers


def test_missing_font_or_data_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji, "EMOJI_FONT", tmp_path / "NotoColorEmoji.ttf")
    with pytest.raises(Task2VecError, match="apt-get install fonts-noto-color-emoji"):
        read_demo_library(seed=0, scale=0.01)
    monkeypatch.undo()
    monkeypatch.setattr(emoji, "EMOJI_TEST", tmp_path / "emoji-test.txt")
    with pytest.raises(Task2VecError, match="apt-get install unicode-data"):
        emoji.read_emoji_tasks(seed=0, scale=0.01)
    (tmp_path / "emoji-test.txt").write_text("# not the file\n", "utf-8")
    with pytest.raises(Task2VecError, match="unicode-data"):
        emoji.read_emoji_tasks(seed=0, scale=0.01)


def test_families_leave_the_family_out(tmp_path, monkeypatch):
    everything = read_demo_library(seed=0, scale=0.01)
    assert set(FAMILIES) == {s.family for s in everything}
    monkeypatch.setattr(emoji, "EMOJI_FONT", tmp_path / "missing.ttf")  # not needed then
    old = read_demo_library(seed=0, scale=0.01, families=("fashion_mnist", "glyphs", "digits"))
    assert "emoji" not in {s.family for s in old}
    assert [(s.task_id, s.meta) for s in old] == [
        (s.task_id, s.meta) for s in everything if s.family != "emoji"]
    monkeypatch.undo()
    only = read_demo_library(seed=0, scale=0.01, families=["emoji"],
                             fashion_mnist_dir=tmp_path)  # Fashion-MNIST not needed either
    assert [s.task_id for s in only] == [s.task_id for s in everything if s.family == "emoji"]
    for bad in ("emoji", [], ["emoji", "flowers"]):
        with pytest.raises(Task2VecError, match="families"):
            read_demo_library(families=bad)


def test_build_command_passes_families():
    from precompute.__main__ import _library_specs, _parser

    args = _parser().parse_args(["build", "demo", "--db", "x.duckdb", "--families", "emoji"])
    assert {s.family for s in _library_specs(args, args.seed)} == {"emoji"}
    args = _parser().parse_args(["build", "demo", "--db", "x.duckdb"])
    assert {s.family for s in _library_specs(args, args.seed)} == set(FAMILIES)
