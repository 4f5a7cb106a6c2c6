"""A user's own library: a folder of task folders (each with one subfolder per class), or a CSV
manifest with columns ``path,label,task`` and an optional ``taxonomy`` (levels joined by ``/``).

Train/test split: per class, a seeded 20 % goes to test (classes with fewer than 3 images stay
in train).
"""
from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

from ..errors import Task2VecError
from ..tasks import IMAGE_EXTENSIONS
from .base import Record, TaskSpec

TEST_FRACTION = 0.2


def read_user_library(path: str | Path, seed: int = 0) -> list[TaskSpec]:
    path = Path(path)
    if not path.exists():
        raise Task2VecError(f"no such file or folder: {path}")
    if path.is_dir():
        rows = _rows_from_folders(path)
    elif path.suffix.lower() == ".csv":
        rows = _rows_from_manifest(path)
    else:
        raise Task2VecError(f"{path}: a user library is a folder of task folders or a .csv manifest")
    by_task: dict[str, list[tuple[str, str]]] = defaultdict(list)
    taxonomy: dict[str, tuple[str, ...]] = {}
    for image, label, task, tax in rows:
        by_task[task].append((image, label))
        taxonomy.setdefault(task, tax)
    if not by_task:
        raise Task2VecError(f"{path}: no tasks found")
    specs = []
    for task, items in sorted(by_task.items()):
        records = _split(items, random.Random(f"{seed}/{task}"))
        specs.append(TaskSpec(task_id=task, family=taxonomy[task][0] if taxonomy[task] else "user",
                              name=task, taxonomy=taxonomy[task] or ("user", task),
                              records=lambda r=records: r,
                              meta={"num_images": len(items)}))
    return specs


def _rows_from_folders(root: Path):
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for class_dir in sorted(p for p in task_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                    yield str(f), class_dir.name, task_dir.name, ("user", task_dir.name)


def _rows_from_manifest(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "task"} - set(reader.fieldnames or [])
        if missing:
            raise Task2VecError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                                "expected path,label,task[,taxonomy]")
        for line, row in enumerate(reader, start=2):
            image = Path(row["path"])
            image = image if image.is_absolute() else path.parent / image
            if not image.is_file():
                raise Task2VecError(f"{path}, line {line}: image {row['path']} does not exist")
            tax = tuple(t for t in (row.get("taxonomy") or "").split("/") if t)
            yield str(image), row["label"], row["task"], tax


def _split(items: list[tuple[str, str]], rng: random.Random) -> list[Record]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for image, label in items:
        by_label[label].append(image)
    records = []
    for label, images in sorted(by_label.items()):
        images = sorted(images)
        rng.shuffle(images)
        n_test = int(len(images) * TEST_FRACTION) if len(images) >= 3 else 0
        records += [Record(i, label, "test") for i in images[:n_test]]
        records += [Record(i, label, "train") for i in images[n_test:]]
    return records
