"""The iMaterialist Fashion 2018 reader of the paper's task library (layout and tasks: the package
docstring)."""
from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ...errors import Task2VecError
from ...tasks import shown_name
from ..base import Record, TaskSpec
from ._common import (DEFAULT_MAX_PER_CLASS, NEGATIVE, POSITIVE, _SPLIT_NAMES, _TEST, _TRAIN,
                      _absolute, _balanced_sample, _balanced_size, _bind, _check_sampling,
                      _load_json, _require_dir, _require_file, _rng, _text_lines)

_IMAT_LAYOUT = (
    "expected the iMaterialist Fashion 2018 Kaggle files <root>/train.json and "
    "<root>/validation.json, with images saved as <root>/train/<imageId>.jpg and "
    "<root>/validation/<imageId>.jpg")



def read_imaterialist(root: str | os.PathLike, *, seed: int = 0,
                      max_per_class: int | None = DEFAULT_MAX_PER_CLASS) -> list[TaskSpec]:
    """One binary task per label id of iMaterialist Fashion 2018: does the image show it?

    Positives are the images carrying the label, negatives a seeded sample of those without it,
    as many as positives (see the module docstring); labels ``"yes"``/``"no"``. Train split from
    ``train.json``, test split from ``validation.json`` (Kaggle's test set has no labels).

    The official files give label ids only (1..228), no names or groups. When
    ``<root>/labels.csv`` exists (columns ``labelId,taskId,labelName,taskName,...``, the label
    map the reference implementation reads), tasks are named after ``labelName`` and grouped by
    ``taskName`` (category, color, gender, material, neckline, pattern, sleeve, style); otherwise
    a task is named ``"label <id>"`` with taxonomy ``("imaterialist", "label")``. Ids are always
    ``"imaterialist/label/<id>"``.

    Many image URLs are dead, so images missing from ``train/``/``validation/`` are skipped
    (with a warning and a count in ``meta``); a label becomes a task when it has at least one
    downloaded training image: all 228 on the full data.
    """
    seed, max_per_class = _check_sampling(seed, max_per_class)
    data = _IMatAnnotations(_absolute(root, "iMaterialist Fashion 2018", _IMAT_LAYOUT))
    specs = []
    for label in sorted(data.positives[_TRAIN]):
        name, group = data.label_map.get(label, (f"label {label}", "label"))
        counts = {split: _balanced_size(len(data.positives[s].get(label, ())),
                                        data.num_images[s] - len(data.positives[s].get(label, ())),
                                        max_per_class)
                  for s, split in enumerate(_SPLIT_NAMES)}
        task_id = f"imaterialist/label/{label}"
        specs.append(TaskSpec(
            task_id=task_id, family="imaterialist", name=name, taxonomy=("imaterialist", group),
            records=_bind(data.records, task_id, label, seed, max_per_class),
            meta={"dataset": "iMaterialist Fashion 2018", "label_id": label,
                  "attribute_group": group, "num_classes": 2,
                  "positives_train": len(data.positives[_TRAIN][label]),
                  "positives_test": len(data.positives[_TEST].get(label, ())),
                  "train_images": 2 * counts["train"], "test_images": 2 * counts["test"],
                  "not_downloaded": dict(data.skipped), "seed": seed,
                  "max_per_class": max_per_class}))
    return specs


class _IMatAnnotations:
    """train.json / validation.json (+ optional labels.csv), parsed once."""

    DATASET = "iMaterialist Fashion 2018"

    def __init__(self, root: Path):
        self.root = root
        self.image_ids: list[list[str]] = []
        self.positives: list[dict[int, np.ndarray]] = []  # per split: label -> image indices
        self.num_images: list[int] = []
        self.skipped: dict[str, int] = {}
        for split, json_name, folder in ((_TRAIN, "train.json", "train"),
                                         (_TEST, "validation.json", "validation")):
            path = _require_file(root / json_name, self.DATASET, _IMAT_LAYOUT)
            image_dir = _require_dir(root / folder, self.DATASET, _IMAT_LAYOUT)
            ids, positives, skipped = self._parse(path, image_dir)
            self.image_ids.append(ids)
            self.positives.append(positives)
            self.num_images.append(len(ids))
            self.skipped[_SPLIT_NAMES[split]] = skipped
        self.label_map = self._read_label_map(root / "labels.csv")

    def records(self, task_id: str, label: int, seed: int, cap: int | None) -> list[Record]:
        records = []
        for s, folder in ((_TRAIN, "train"), (_TEST, "validation")):
            pos = self.positives[s].get(label, np.zeros(0, np.int64))
            has = np.zeros(self.num_images[s], bool)
            has[pos] = True
            pos, neg = _balanced_sample(pos, np.flatnonzero(~has), cap, _rng(seed, task_id, s))
            ids, base = self.image_ids[s], self.root / folder
            for indices, answer in ((pos, POSITIVE), (neg, NEGATIVE)):
                records += [Record(image=str(base / f"{ids[i]}.jpg"), label=answer,
                                   split=_SPLIT_NAMES[s]) for i in indices]
        return records

    def _parse(self, path: Path, image_dir: Path) -> tuple[list[str], dict[int, np.ndarray], int]:
        doc = _load_json(path, self.DATASET)
        images = doc.get("images") if isinstance(doc, dict) else None
        annotations = doc.get("annotations") if isinstance(doc, dict) else None
        for key, value in (("images", images), ("annotations", annotations)):
            if not isinstance(value, list):
                raise Task2VecError(f"{self.DATASET}: no '{key}' list in {path}; {_IMAT_LAYOUT}")
        labels_of: dict[str, list[int]] = {}
        for i, ann in enumerate(annotations):
            try:
                labels_of[str(ann["imageId"])] = sorted({int(x) for x in ann["labelId"]})
            except (KeyError, TypeError, ValueError):
                raise Task2VecError(
                    f"{self.DATASET}: annotations entry #{i} in {path} needs 'imageId' and a "
                    "'labelId' list of integers") from None
        # One directory listing instead of a stat per image (about a million in train).
        on_disk = {e.name[:-4] for e in os.scandir(image_dir) if e.name.endswith(".jpg")}
        ids, image_of, label_of = [], [], []
        for i, im in enumerate(images):
            try:
                image_id = str(im["imageId"])
            except (KeyError, TypeError):
                raise Task2VecError(
                    f"{self.DATASET}: images entry #{i} in {path} has no 'imageId'") from None
            if image_id not in on_disk:
                continue
            labels = labels_of.get(image_id, ())
            image_of += [len(ids)] * len(labels)
            label_of += labels
            ids.append(image_id)
        skipped = len(images) - len(ids)
        if not ids:
            raise Task2VecError(
                f"{self.DATASET}: none of the {len(images)} images of {path} is in {image_dir} "
                f"(expected files named <imageId>.jpg); {_IMAT_LAYOUT}")
        if skipped:
            warnings.warn(f"{self.DATASET}: {skipped} of the {len(images)} images of {path.name} "
                          f"are not in {image_dir} (not downloaded?); they are skipped",
                          stacklevel=3)
        image_of, label_of = np.asarray(image_of, np.int64), np.asarray(label_of, np.int64)
        order = np.argsort(label_of, kind="stable")
        labels, starts = np.unique(label_of[order], return_index=True)
        groups = np.split(image_of[order], starts[1:])
        return ids, {int(lb): g for lb, g in zip(labels, groups)}, skipped

    def _read_label_map(self, path: Path) -> dict[int, tuple[str, str]]:
        if not path.is_file():
            return {}
        label_map = {}
        for line_no, line in _text_lines(path, self.DATASET):
            row = next(csv.reader([line]), [])
            if line_no == 1 or not row:
                continue  # header
            try:
                label_map[int(row[0])] = (row[2].strip(), row[3].strip())
            except (ValueError, IndexError):
                raise Task2VecError(
                    f"{self.DATASET}: {path} line {line_no}: expected "
                    "'labelId,taskId,labelName,taskName', got " f"{shown_name(line.strip())!r}") from None
        return label_map
