"""A user's own library: a folder of task folders (each with one subfolder per class), or a CSV
manifest with columns ``path,label,task`` and an optional ``taxonomy`` (levels joined by ``/``).

Both are read by the readers uploads use (:func:`precompute.tasks.class_folder_items` and
:func:`precompute.tasks.csv_items`), with their rules: a nested folder inside a class folder,
a file that is not an image, a missing file or a task with fewer than 2 classes of 2 images is
an error naming the file or line, never silently dropped.

Train/test split: per class, a seeded 20 % goes to test (classes with fewer than 3 images stay
in train).
"""
from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from pathlib import Path

from ..errors import Task2VecError
from ..tasks import (IMAGE_EXTENSIONS, Item, class_folder_items, csv_items, shown_name,
                     visible_entries)
from .base import Record, TaskSpec

TEST_FRACTION = 0.2


def read_user_library(path: str | Path, seed: int = 0) -> list[TaskSpec]:
    path = Path(path)
    if not path.exists():
        raise Task2VecError(f"no such file or folder: {shown_name(path)}")
    if path.is_dir():
        items = _items_from_task_folders(path)
    elif path.suffix.lower() == ".csv":
        items = csv_items(path, tasks=True)
    else:
        raise Task2VecError(f"{shown_name(path)}: a user library is a folder of task folders "
                            "or a .csv manifest (path,label,task[,taxonomy])")
    by_task: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_task[item.task].append(item)
    specs = []
    for task, members in sorted(by_task.items()):
        records = _split(members, random.Random(f"{seed}/{task}"))
        taxonomy = members[0].taxonomy
        specs.append(TaskSpec(task_id=task, family=taxonomy[0] if taxonomy else "user",
                              name=task, taxonomy=taxonomy or ("user", task),
                              records=lambda r=records: r,
                              meta={"num_images": len(members)}))
    return specs


def _items_from_task_folders(root: Path) -> list[Item]:
    """``root/<task>/<class>/<image>``: each task folder is read as an upload's class folders."""
    shown = shown_name(root)
    entries = visible_entries(root, shown)
    task_dirs = [e for e in entries if e.is_dir()]
    stray = [e.name for e in entries if not e.is_dir() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS]
    if stray:
        raise Task2VecError(f"image {shown}/{shown_name(stray[0])} is not inside a task folder; "
                            "a user library holds <task>/<class>/<image>")
    if not task_dirs:
        raise Task2VecError(f"no task folders in {shown}: a user library holds one folder per "
                            "task, each with one subfolder per class")
    items = []
    for entry in task_dirs:
        task = shown_name(entry.name)
        items += [dataclasses.replace(item, task=task, taxonomy=("user", task))
                  for item in class_folder_items(Path(entry.path), f"{shown}/{task}")]
    return items


def _split(items: list[Item], rng: random.Random) -> list[Record]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item.path)
    records = []
    for label, images in sorted(by_label.items()):
        images = sorted(images)
        rng.shuffle(images)
        n_test = int(len(images) * TEST_FRACTION) if len(images) >= 3 else 0
        records += [Record(i, label, "test") for i in images[:n_test]]
        records += [Record(i, label, "train") for i in images[n_test:]]
    return records
