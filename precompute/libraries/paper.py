"""Readers for the paper's task library (section 4): 1,460 tasks from four datasets.

"In total, our collection of tasks has 1460 tasks (207 iNaturalist, 25 CUB, 228 iMaterialist,
1000 DeepFashion)." Each reader turns one dataset's *official* files into :class:`TaskSpec`
objects; records are built only when a task's ``records()`` is called, from annotations each
reader parses once and shares among its tasks.

=================  =======================================================  ==================
reader             tasks                                                    paper
=================  =======================================================  ==================
read_inaturalist   one per taxonomic order with >= 2 species (species       207
                   classification inside the order)
read_cub           one per bird order with >= 2 species, plus one per       25
                   passeriform family with >= 2 species (gives 12 + 13 = 25)
read_imaterialist  one binary task per label id (yes/no)                    228
read_deepfashion   one binary task per attribute (yes/no)                   1000
=================  =======================================================  ==================

Expected download layouts (``root`` is the folder the user names)::

    inat2018/                      iNaturalist 2018 (github.com/visipedia/inat_comp, 2018)
        train2018.json  val2018.json  [categories.json]
        train_val2018/<supercategory>/<category id>/<hash>.jpg   (as in file_name)
    CUB_200_2011/  (or the files directly in root)                CUB-200-2011
        images.txt  image_class_labels.txt  classes.txt  train_test_split.txt
        images/<NNN.Class_name>/<file>.jpg
    imaterialist/                  iMaterialist Fashion 2018 (Kaggle, FGVC5)
        train.json  validation.json  [labels.csv]
        train/<imageId>.jpg  validation/<imageId>.jpg   (as saved by the usual download script)
    deepfashion/                   DeepFashion, Category and Attribute Prediction Benchmark
        Anno/ (or Anno_coarse/)  list_attr_cloth.txt  list_attr_img.txt
        Eval/list_eval_partition.txt
        img/...  or  Img/img/...   (img.zip extracted; paths as in list_attr_img.txt)

Binary tasks (iMaterialist, DeepFashion) are balanced per split: ``k`` positives and ``k``
negatives, ``k = min(#positives, #negatives, max_per_class)``, drawn without replacement by a
generator seeded with ``(seed, crc32(task_id), split)``: the same seed gives the same records,
whichever other tasks are read. Every problem with the files raises :class:`Task2VecError`
naming the missing file (full path) or the file and line that is malformed.
"""
from __future__ import annotations

import csv
import json
import os
import re
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import Task2VecError
from ..tasks import shown_name
from .base import Record, TaskSpec

__all__ = [
    "read_inaturalist", "read_cub", "read_imaterialist", "read_deepfashion", "read_paper_library",
    "PAPER_TASK_COUNTS", "SOURCES", "DEFAULT_MAX_PER_CLASS",
]

SOURCES = ("inaturalist", "cub", "imaterialist", "deepfashion")
PAPER_TASK_COUNTS = {"inaturalist": 207, "cub": 25, "imaterialist": 228, "deepfashion": 1000}
# Per class and split, for the binary tasks: the paper's tasks mostly have "hundreds or thousands
# of samples"; a cap keeps embedding 1,228 attribute tasks affordable. None: no cap.
DEFAULT_MAX_PER_CLASS = 1000
POSITIVE, NEGATIVE = "yes", "no"

_TRAIN, _TEST = 0, 1
_SPLIT_NAMES = ("train", "test")

_INAT_LAYOUT = (
    "expected the official iNaturalist 2018 files: <root>/train2018.json, <root>/val2018.json "
    "(categories with kingdom/phylum/class/order either inside train2018.json or in "
    "<root>/categories.json), images under <root>/train_val2018/ as named by file_name")
_CUB_LAYOUT = (
    "expected the official CUB-200-2011 files in <root>/CUB_200_2011/ or <root>/: images.txt, "
    "image_class_labels.txt, classes.txt, train_test_split.txt and the images/ folder")
_IMAT_LAYOUT = (
    "expected the iMaterialist Fashion 2018 Kaggle files <root>/train.json and "
    "<root>/validation.json, with images saved as <root>/train/<imageId>.jpg and "
    "<root>/validation/<imageId>.jpg")
_DF_LAYOUT = (
    "expected DeepFashion's Category and Attribute Prediction Benchmark: "
    "<root>/Anno/list_attr_cloth.txt and <root>/Anno/list_attr_img.txt (or Anno_coarse/), "
    "<root>/Eval/list_eval_partition.txt, images under <root>/img/ or <root>/Img/img/")


# --------------------------------------------------------------------------- iNaturalist 2018


def read_inaturalist(root: str | os.PathLike) -> list[TaskSpec]:
    """One task per taxonomic order of iNaturalist 2018: classify the species of that order.

    Train records come from ``train2018.json``, test records from ``val2018.json`` (the official
    test set has no labels); a record's label is the species (category ``name``). Categories are
    read from ``categories.json`` when present (the taxonomy release), else from the
    ``categories`` of ``train2018.json``; each needs ``kingdom``, ``phylum``, ``class`` and
    ``order``. Taxonomy path: ``(kingdom, phylum, class, order)``; task id
    ``"inat2018/order/<order>"``.

    Rule: a species counts when it has at least one training image (species without any are
    left out of the task, their validation images too), and an order becomes a task when it has
    at least 2 such species. The paper reports 207 order tasks but does not state its filter
    (the public reference code ships a fixed list of 208 order indices, orders ranked by
    training-image count, without the rule that chose them), so the count this rule gives on
    the full data is not known to be 207.

    Raises:
        Task2VecError: a missing file (its full path is named), invalid JSON (file and line), a
            category without its taxonomy fields, or an annotation naming an unknown image or
            category.
    """
    data = _INatAnnotations(_absolute(root, "iNaturalist 2018", _INAT_LAYOUT))
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for cat_id in sorted(data.train):  # species with training images
        groups[data.taxonomy[cat_id]].append(cat_id)
    groups = {path: ids for path, ids in groups.items() if len(ids) >= 2}
    order_paths = Counter(path[-1] for path in groups)
    specs = []
    for path, ids in groups.items():
        order = path[-1]
        # An order name under two classes (a data error, but possible) gets its full path.
        task_id = f"inat2018/order/{order}" if order_paths[order] == 1 else "inat2018/" + "/".join(path)
        specs.append(TaskSpec(
            task_id=task_id, family="inaturalist", name=order, taxonomy=path,
            records=_bind(data.records, tuple(ids)),
            meta={"dataset": "iNaturalist 2018", "level": "order", "num_classes": len(ids),
                  "train_images": sum(len(data.train[i]) for i in ids),
                  "test_images": sum(len(data.test.get(i, ())) for i in ids)}))
    return sorted(specs, key=lambda s: s.task_id)


class _INatAnnotations:
    """train2018.json / val2018.json / categories.json, parsed once."""

    DATASET = "iNaturalist 2018"

    def __init__(self, root: Path):
        self.root = root
        train_path = _require_file(root / "train2018.json", self.DATASET, _INAT_LAYOUT)
        val_path = _require_file(root / "val2018.json", self.DATASET, _INAT_LAYOUT)
        train_doc = _load_json(train_path, self.DATASET)
        categories_path = root / "categories.json"
        if categories_path.is_file():
            categories = _load_json(categories_path, self.DATASET)
            if isinstance(categories, dict):
                categories = categories.get("categories")
            source = categories_path
        else:
            categories = train_doc.get("categories") if isinstance(train_doc, dict) else None
            source = train_path
        self.name, self.taxonomy = self._parse_categories(categories, source)
        self.train = self._files_per_category(train_doc, train_path)
        del train_doc  # the parsed JSON is several times the size of what is kept
        self.test = self._files_per_category(_load_json(val_path, self.DATASET), val_path)

    def records(self, cat_ids: tuple[int, ...]) -> list[Record]:
        labels = _unique_labels([(i, self.name[i]) for i in cat_ids])
        records = [Record(image=str(self.root / f), label=labels[i], split=split)
                   for split, per_cat in (("train", self.train), ("test", self.test))
                   for i in cat_ids for f in per_cat.get(i, ())]
        _check_images([r.image for r in records], self.DATASET, "train2018.json/val2018.json",
                      _INAT_LAYOUT)
        return records

    def _parse_categories(self, categories, source: Path):
        if not isinstance(categories, list) or not categories:
            raise Task2VecError(
                f"{self.DATASET}: no 'categories' list in {source}; {_INAT_LAYOUT}")
        keys = ("id", "name", "kingdom", "phylum", "class", "order")
        names, taxonomy = {}, {}
        for i, cat in enumerate(categories):
            missing = [k for k in keys if not isinstance(cat, dict) or k not in cat]
            if missing:
                hint = ("; the competition's train2018.json has no taxonomy: put the official "
                        "categories.json next to it" if source.name == "train2018.json" else "")
                raise Task2VecError(
                    f"{self.DATASET}: category #{i} in {source} has no "
                    f"{', '.join(repr(k) for k in missing)}{hint}")
            names[cat["id"]] = str(cat["name"])
            taxonomy[cat["id"]] = tuple(str(cat[k]) for k in ("kingdom", "phylum", "class", "order"))
        return names, taxonomy

    def _files_per_category(self, doc, path: Path) -> dict[int, list[str]]:
        images = doc.get("images") if isinstance(doc, dict) else None
        annotations = doc.get("annotations") if isinstance(doc, dict) else None
        for key, value in (("images", images), ("annotations", annotations)):
            if not isinstance(value, list):
                raise Task2VecError(f"{self.DATASET}: no '{key}' list in {path}; {_INAT_LAYOUT}")
        try:
            file_of = {im["id"]: im["file_name"] for im in images}
        except (KeyError, TypeError):
            i = next(i for i, im in enumerate(images)
                     if not isinstance(im, dict) or "id" not in im or "file_name" not in im)
            raise Task2VecError(
                f"{self.DATASET}: images entry #{i} in {path} has no 'id' or 'file_name'") from None
        per_cat: dict[int, list[str]] = defaultdict(list)
        for i, ann in enumerate(annotations):  # about 440k in train2018.json: 0.2 s
            try:
                image_id, cat_id = ann["image_id"], ann["category_id"]
            except (KeyError, TypeError):
                raise Task2VecError(
                    f"{self.DATASET}: annotations entry #{i} in {path} has no 'image_id' or "
                    "'category_id'") from None
            if image_id not in file_of:
                raise Task2VecError(
                    f"{self.DATASET}: annotations entry #{i} in {path} names image_id "
                    f"{image_id!r}, which is not in its 'images' list")
            if cat_id not in self.name:
                raise Task2VecError(
                    f"{self.DATASET}: annotations entry #{i} in {path} names category_id "
                    f"{cat_id!r}, which is not among the categories")
            per_cat[cat_id].append(file_of[image_id])
        return dict(per_cat)


# --------------------------------------------------------------------------- CUB-200-2011

_CUB_TAXONOMY_CSV = Path(__file__).with_name("cub_taxonomy.csv")


def read_cub(root: str | os.PathLike) -> list[TaskSpec]:
    """CUB-200-2011 tasks: species classification inside bird orders and passeriform families.

    CUB has no taxonomy file; the order and family of each of its 200 classes come from
    ``cub_taxonomy.csv`` next to this module (modern checklists: AOS/Clements 2018, e.g. New
    World sparrows in Passerellidae, tanagers of genus Piranga in Cardinalidae, the chat in
    Icteriidae; "Tree_Sparrow" is taken as the American Tree Sparrow).

    Rule: one task per order with >= 2 species that have training images, plus one per family of
    Passeriformes with >= 2 such species: 12 orders + 13 families = 25 tasks on the full data,
    the paper's count. Taxonomy path ``("Animalia", "Chordata", "Aves", order[, family])`` so
    CUB tasks sit next to iNaturalist's Aves tasks; ids ``"cub/order/<order>"`` and
    ``"cub/family/<family>"``. Labels are class names without their number
    (``"Black_footed_Albatross"``); splits from ``train_test_split.txt``.

    Raises:
        Task2VecError: a missing file (full path), a malformed line (file and line number),
            ids that disagree between the files, or a class not in the taxonomy table.
    """
    data = _CubAnnotations(_absolute(root, "CUB-200-2011", _CUB_LAYOUT))
    taxonomy = _cub_taxonomy()
    species = sorted({c for c, s in data.labels if s == "train"})
    unknown = [c for c in species if c not in taxonomy]
    if unknown:
        raise Task2VecError(
            f"CUB-200-2011: class {unknown[0]!r} of {data.base / 'classes.txt'} is not in the "
            f"taxonomy table {_CUB_TAXONOMY_CSV}; the reader expects CUB-200-2011's 200 classes")
    by_order, by_family = defaultdict(list), defaultdict(list)
    for name in species:
        order, family = taxonomy[name]
        by_order[order].append(name)
        if order == "Passeriformes":
            by_family[family].append(name)
    aves = ("Animalia", "Chordata", "Aves")
    specs = []
    for level, groups in (("order", by_order), ("family", by_family)):
        for group, names in sorted(groups.items()):
            if len(names) < 2:
                continue
            path = aves + (group,) if level == "order" else aves + ("Passeriformes", group)
            members = set(names)
            counts = Counter(s for c, s in data.labels if c in members)
            specs.append(TaskSpec(
                task_id=f"cub/{level}/{group}", family="cub", name=group, taxonomy=path,
                records=_bind(data.records, frozenset(names)),
                meta={"dataset": "CUB-200-2011", "level": level, "num_classes": len(names),
                      "train_images": counts["train"], "test_images": counts["test"]}))
    return specs


@lru_cache(maxsize=1)
def _cub_taxonomy() -> dict[str, tuple[str, str]]:
    with open(_CUB_TAXONOMY_CSV, encoding="utf-8", newline="") as f:
        return {row["class_name"]: (row["order"], row["family"]) for row in csv.DictReader(f)}


class _CubAnnotations:
    """The four CUB index files, parsed once."""

    DATASET = "CUB-200-2011"

    def __init__(self, root: Path):
        nested = root / "CUB_200_2011"
        self.base = nested if nested.is_dir() else root
        files = {name: _require_file(self.base / name, self.DATASET, _CUB_LAYOUT) for name in
                 ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")}
        classes = {k: re.sub(r"^\d+\.", "", v) for k, v, _ in
                   _id_table(files["classes.txt"], "<class_id> <NNN.Class_name>")}
        paths = {}
        for image_id, path, line_no in _id_table(files["images.txt"], "<image_id> <path>"):
            if image_id in paths:
                raise Task2VecError(f"{self.DATASET}: {files['images.txt']} line {line_no}: "
                                    f"image id {image_id} appears twice")
            paths[image_id] = path
        class_of = _id_table(files["image_class_labels.txt"], "<image_id> <class_id>", int)
        is_train = _id_table(files["train_test_split.txt"], "<image_id> <is_training_image>", int)
        self._check_ids(paths, class_of, files["image_class_labels.txt"])
        self._check_ids(paths, is_train, files["train_test_split.txt"])
        label_of = {k: v for k, v, _ in class_of}
        for _, class_id, line_no in class_of:
            if class_id not in classes:
                raise Task2VecError(
                    f"{self.DATASET}: {files['image_class_labels.txt']} line {line_no}: class "
                    f"{class_id} is not in {files['classes.txt']}")
        split_of = {}
        for image_id, flag, line_no in is_train:
            if flag not in (0, 1):
                raise Task2VecError(
                    f"{self.DATASET}: {files['train_test_split.txt']} line {line_no}: "
                    f"is_training_image must be 0 or 1, got {flag}")
            split_of[image_id] = "train" if flag else "test"
        # (path, class name, split) in images.txt order
        self.images = [(path, classes[label_of[i]], split_of[i]) for i, path in paths.items()]
        self.labels = [(c, s) for _, c, s in self.images]

    def records(self, names: frozenset[str]) -> list[Record]:
        folder = self.base / "images"
        records = [Record(image=str(folder / p), label=c, split=s)
                   for p, c, s in self.images if c in names]
        _check_images([r.image for r in records], self.DATASET, "images.txt", _CUB_LAYOUT)
        return records

    def _check_ids(self, paths: dict, table: list[tuple[int, object, int]], path: Path) -> None:
        seen = set()
        for image_id, _, line_no in table:
            if image_id not in paths or image_id in seen:
                problem = "is not in images.txt" if image_id not in paths else "appears twice"
                raise Task2VecError(
                    f"{self.DATASET}: {path} line {line_no}: image id {image_id} {problem}")
            seen.add(image_id)
        if len(seen) != len(paths):
            missing = next(i for i in paths if i not in seen)
            raise Task2VecError(f"{self.DATASET}: {path} has no line for image {missing} of images.txt")


def _id_table(path: Path, expected: str,
              convert: Callable[[str], object] = str) -> list[tuple[int, object, int]]:
    """``(id, value, line number)`` of each ``<int id> <value>`` line of a CUB index file."""
    rows = []
    for line_no, line in _text_lines(path, "CUB-200-2011"):
        parts = line.split(maxsplit=1)
        if not parts:
            continue  # blank line
        try:
            if len(parts) != 2:
                raise ValueError
            rows.append((int(parts[0]), convert(parts[1].strip()), line_no))
        except ValueError:
            raise Task2VecError(
                f"CUB-200-2011: {path} line {line_no}: expected '{expected}', got "
                f"{shown_name(line.strip())!r}") from None
    return rows


# --------------------------------------------------------------------------- iMaterialist 2018


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


# --------------------------------------------------------------------------- DeepFashion

ATTRIBUTE_TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}


def read_deepfashion(root: str | os.PathLike, *, seed: int = 0,
                     max_per_class: int | None = DEFAULT_MAX_PER_CLASS) -> list[TaskSpec]:
    """One binary task per attribute of DeepFashion's Category and Attribute Prediction benchmark.

    Attribute values are 1 (positive), -1 (negative) and 0 (unknown: never used). Positives
    and a seeded, equally large sample of negatives make each split (module docstring); train =
    the partition's ``train`` + ``val`` images, test = ``test``. Taxonomy
    ``("deepfashion", <attribute type>)`` with types texture, fabric, shape, part, style; id
    ``"deepfashion/<type>/<attribute name, spaces as _>"``. An attribute becomes a task when it
    has at least one positive training image: all 1,000 on the full data.

    ``list_attr_img.txt`` (289,222 lines x 1,000 values, about 0.9 GB) is parsed in chunks with
    numpy and kept as two bit matrices (positive, negative), about 36 MB each.
    """
    seed, max_per_class = _check_sampling(seed, max_per_class)
    data = _DeepFashionAnnotations(_absolute(root, "DeepFashion", _DF_LAYOUT))
    specs, seen = [], Counter()
    for j, (name, kind) in enumerate(data.attributes):
        pos_train, neg_train = data.counts[_TRAIN, :, j]
        if pos_train == 0:
            continue
        type_name = ATTRIBUTE_TYPES[kind]
        task_id = f"deepfashion/{type_name}/{name.replace(' ', '_')}"
        seen[task_id] += 1
        if seen[task_id] > 1:  # a repeated name within a type keeps ids unique and stable
            task_id += f"~{seen[task_id]}"
        sizes = [_balanced_size(int(data.counts[s, 0, j]), int(data.counts[s, 1, j]), max_per_class)
                 for s in (_TRAIN, _TEST)]
        specs.append(TaskSpec(
            task_id=task_id, family="deepfashion", name=name, taxonomy=("deepfashion", type_name),
            records=_bind(data.records, task_id, j, seed, max_per_class),
            meta={"dataset": "DeepFashion", "attribute_index": j, "attribute_group": type_name,
                  "num_classes": 2, "positives_train": int(pos_train),
                  "positives_test": int(data.counts[_TEST, 0, j]),
                  "train_images": 2 * sizes[0], "test_images": 2 * sizes[1], "seed": seed,
                  "max_per_class": max_per_class}))
    return specs


class _DeepFashionAnnotations:
    """list_attr_cloth.txt, list_attr_img.txt and list_eval_partition.txt, parsed once."""

    DATASET = "DeepFashion"
    CHUNK_BYTES = 8 * 1024**2  # list_attr_img.txt is read this much at a time

    def __init__(self, root: Path):
        self.root = root
        anno = next((root / d for d in ("Anno", "Anno_coarse") if (root / d).is_dir()), root / "Anno")
        cloth = _require_file(anno / "list_attr_cloth.txt", self.DATASET, _DF_LAYOUT)
        img = _require_file(anno / "list_attr_img.txt", self.DATASET, _DF_LAYOUT)
        partition = _require_file(root / "Eval" / "list_eval_partition.txt", self.DATASET, _DF_LAYOUT)
        self.attributes = self._parse_cloth(cloth)
        split_of = self._parse_partition(partition)
        self.names: list[str] = []
        self.split = np.zeros(0, np.int8)
        self.positive = self.negative = np.zeros((0, 0), np.uint8)
        # counts[split, 0 = positive / 1 = negative, attribute]
        self.counts = np.zeros((2, 2, len(self.attributes)), np.int64)
        self._parse_values(img, split_of, partition)
        self._image_base: Path | None = None

    def records(self, task_id: str, j: int, seed: int, cap: int | None) -> list[Record]:
        byte, shift = j >> 3, 7 - (j & 7)  # np.packbits is big-endian within a byte
        is_pos = ((self.positive[:, byte] >> shift) & 1).astype(bool)
        is_neg = ((self.negative[:, byte] >> shift) & 1).astype(bool)
        base = self._images_base()
        records = []
        for s in (_TRAIN, _TEST):
            in_split = self.split == s
            pos, neg = _balanced_sample(np.flatnonzero(is_pos & in_split),
                                        np.flatnonzero(is_neg & in_split), cap, _rng(seed, task_id, s))
            for indices, answer in ((pos, POSITIVE), (neg, NEGATIVE)):
                records += [Record(image=str(base / self.names[i]), label=answer,
                                   split=_SPLIT_NAMES[s]) for i in indices]
        _check_images([r.image for r in records], self.DATASET, "list_attr_img.txt", _DF_LAYOUT)
        return records

    def _images_base(self) -> Path:
        """``root`` or ``root/Img``: wherever img.zip was extracted (looked up once)."""
        if self._image_base is None:
            first = self.names[0]
            for base in (self.root, self.root / "Img"):
                if (base / first).is_file():
                    self._image_base = base
                    break
            else:
                raise Task2VecError(
                    f"{self.DATASET}: image {shown_name(first)} of list_attr_img.txt is neither at "
                    f"{self.root / first} nor at {self.root / 'Img' / first}; extract Img/img.zip "
                    "so that its img/ folder sits in the root or in Img/")
        return self._image_base

    def _parse_cloth(self, path: Path) -> list[tuple[str, int]]:
        lines = [(n, ln) for n, ln in _text_lines(path, self.DATASET) if ln.strip()]
        declared = _declared_count(path, lines, self.DATASET)
        attributes = []
        for line_no, line in lines[2:]:
            *words, kind = line.split()
            if not words or kind not in {str(k) for k in ATTRIBUTE_TYPES}:
                raise Task2VecError(
                    f"{self.DATASET}: {path} line {line_no}: expected '<attribute name> <type 1-5>', "
                    f"got {shown_name(line.strip())!r}")
            attributes.append((" ".join(words), int(kind)))
        if len(attributes) != declared:
            raise Task2VecError(
                f"{self.DATASET}: {path} line 1 declares {declared} attributes but the file lists "
                f"{len(attributes)}")
        return attributes

    def _parse_partition(self, path: Path) -> dict[str, int]:
        lines = [(n, ln) for n, ln in _text_lines(path, self.DATASET) if ln.strip()]
        _declared_count(path, lines, self.DATASET)
        codes = {"train": _TRAIN, "val": _TRAIN, "test": _TEST}
        split_of = {}
        for line_no, line in lines[2:]:
            parts = line.split()
            if len(parts) != 2 or parts[1] not in codes:
                raise Task2VecError(
                    f"{self.DATASET}: {path} line {line_no}: expected '<image name> train|val|test', "
                    f"got {shown_name(line.strip())!r}")
            split_of[parts[0]] = codes[parts[1]]
        return split_of

    def _parse_values(self, path: Path, split_of: dict[str, int], partition: Path) -> None:
        n_attrs = len(self.attributes)
        positive, negative, splits = [], [], []
        with open(path, "rb") as f:
            first = f.readline()
            try:
                declared = int(first)
            except ValueError:
                raise Task2VecError(
                    f"{self.DATASET}: {path} line 1: expected the number of images, got "
                    f"{shown_name(first.decode('utf-8', 'replace').strip())!r}") from None
            f.readline()  # line 2: column names
            line_no = 2
            while lines := f.readlines(self.CHUNK_BYTES):
                names, values, numbers = [], [], []
                for line in lines:
                    line_no += 1
                    parts = line.split(None, 1)
                    if not parts:
                        continue  # blank line
                    if len(parts) == 1:
                        raise Task2VecError(
                            f"{self.DATASET}: {path} line {line_no}: an image name without its "
                            f"{n_attrs} attribute values")
                    names.append(parts[0].decode("utf-8", "surrogateescape"))
                    values.append(parts[1])
                    numbers.append(line_no)
                if not names:
                    continue
                if not values[-1].endswith(b"\n"):
                    values[-1] += b"\n"  # last line of a file without a final newline
                pos, neg = _parse_value_block(b"".join(values), n_attrs, path, numbers)
                try:
                    split = np.fromiter((split_of[n] for n in names), np.int8, len(names))
                except KeyError:
                    missing = next(n for n in names if n not in split_of)
                    raise Task2VecError(
                        f"{self.DATASET}: image {shown_name(missing)} of {path} has no line in "
                        f"{partition}") from None
                for s in (_TRAIN, _TEST):
                    self.counts[s, 0] += pos[split == s].sum(axis=0)
                    self.counts[s, 1] += neg[split == s].sum(axis=0)
                positive.append(np.packbits(pos, axis=1))
                negative.append(np.packbits(neg, axis=1))
                splits.append(split)
                self.names += names
        if len(self.names) != declared:
            raise Task2VecError(
                f"{self.DATASET}: {path} line 1 declares {declared} images but the file lists "
                f"{len(self.names)}")
        if not self.names:
            raise Task2VecError(f"{self.DATASET}: {path} lists no images; {_DF_LAYOUT}")
        self.positive = np.concatenate(positive)
        self.negative = np.concatenate(negative)
        self.split = np.concatenate(splits)


# Bytes that may appear in the value part of a list_attr_img.txt line.
_VALUE_BYTES = np.zeros(256, bool)
_VALUE_BYTES[list(b" \t\r\n-01")] = True
_MINUS, _ZERO, _ONE, _NEWLINE = (np.uint8(ord(c)) for c in "-01\n")
_SPACES = tuple(np.uint8(ord(c)) for c in " \t\r")


def _parse_value_block(block: bytes, n_attrs: int, path: Path,
                       line_numbers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Value parts of many lines (each ending in ``\\n``) -> bool [lines, n_attrs] (pos, neg).

    Every value is one digit, '0' or '1', optionally preceded by '-': each byte becomes a code
    (1, -1, 0 on digits, 2 on newlines), and keeping only digits and newlines leaves the value
    matrix with one extra column of 2s, so a handful of whole-buffer numpy passes parse the
    block with no per-value Python work.
    """
    buf = np.frombuffer(block, np.uint8)
    one, minus, newline = buf == _ONE, buf == _MINUS, buf == _NEWLINE
    digit = one | (buf == _ZERO)
    # Malformed: a byte outside " \t\r\n-01" (counting is cheaper than a table lookup), two
    # digits in a row ("10", "11"), a digit glued to a sign ("1-1"), or a sign not followed by
    # "1" ("-0", "--", "- 1").
    known = sum(int(np.count_nonzero(m)) for m in (digit, minus, newline))
    known += sum(int(np.count_nonzero(buf == c)) for c in _SPACES)
    glued = (digit[:-1] & (digit[1:] | minus[1:])) | (minus[:-1] & ~one[1:])
    if known != buf.size or glued.any():
        bad = ~_VALUE_BYTES[buf]
        bad[:-1] |= glued
        at = int(np.argmax(bad))
        row = int(np.count_nonzero(newline[:at]))
        raise Task2VecError(
            f"DeepFashion: {path} line {line_numbers[row]}: attribute values must be 1, -1 or 0 "
            f"separated by spaces; found {shown_name(bytes(buf[max(at - 3, 0):at + 4]).decode('latin-1'))!r}")
    signed = np.empty_like(one)  # a '1' preceded by '-'
    signed[0] = False
    signed[1:] = minus[:-1]
    code = one.view(np.int8) - 2 * signed.view(np.int8) + 2 * newline.view(np.int8)
    stream = np.compress(digit | newline, code)  # twice as fast as code[mask]
    rows = len(line_numbers)
    table = stream.reshape(rows, n_attrs + 1) if stream.size == rows * (n_attrs + 1) else None
    if table is None or not np.all(table[:, -1] == 2):
        # Newline codes sit exactly at the row ends only if every line has n_attrs values.
        ends = np.flatnonzero(stream == 2)
        per_line = np.diff(ends, prepend=-1) - 1
        row = int(np.argmax(per_line != n_attrs))
        raise Task2VecError(
            f"DeepFashion: {path} line {line_numbers[row]}: expected {n_attrs} attribute values "
            f"(one per attribute of list_attr_cloth.txt), found {per_line[row]}")
    values = table[:, :-1]
    return values == 1, values == -1


# --------------------------------------------------------------------------- the whole library

_SUBFOLDERS = {"inaturalist": ("inat2018",), "cub": ("CUB_200_2011", "cub"),
               "imaterialist": ("imaterialist",), "deepfashion": ("deepfashion",)}


def read_paper_library(root: str | os.PathLike, sources: Sequence[str] = SOURCES, *, seed: int = 0,
                       max_per_class: int | None = DEFAULT_MAX_PER_CLASS) -> list[TaskSpec]:
    """The paper's library from one folder holding the four datasets (section 4).

    ``root/inat2018``, ``root/CUB_200_2011`` (or ``root/cub``), ``root/imaterialist`` and
    ``root/deepfashion``, each in its reader's layout (module docstring). ``sources`` picks a
    subset, from ``SOURCES``; every source asked for must be there. ``seed`` and
    ``max_per_class`` go to the binary-attribute readers.
    """
    if isinstance(sources, str):
        sources = (sources,)
    unknown = [s for s in sources if s not in _SUBFOLDERS]
    if unknown or not sources:
        raise Task2VecError(
            f"unknown source {unknown[0]!r}; choose from {', '.join(SOURCES)}" if unknown else
            f"no sources given; choose from {', '.join(SOURCES)}")
    base = _absolute(root, "paper task library",
                     "expected a folder with " + ", ".join(f"{n[0]}/" for n in _SUBFOLDERS.values()))
    specs: list[TaskSpec] = []
    for source in dict.fromkeys(sources):
        names = _SUBFOLDERS[source]
        folder = next((base / n for n in names if (base / n).is_dir()), None)
        if folder is None:
            raise Task2VecError(
                f"paper task library: missing folder {base / names[0]} for {source}"
                + (f" (or {' or '.join(str(base / n) for n in names[1:])})" if names[1:] else "")
                + "; put each dataset in its subfolder or leave it out of sources")
        if source == "inaturalist":
            specs += read_inaturalist(folder)
        elif source == "cub":
            specs += read_cub(folder)
        elif source == "imaterialist":
            specs += read_imaterialist(folder, seed=seed, max_per_class=max_per_class)
        else:
            specs += read_deepfashion(folder, seed=seed, max_per_class=max_per_class)
    return specs


# --------------------------------------------------------------------------- shared helpers


def _bind(method: Callable[..., list[Record]], *args) -> Callable[[], list[Record]]:
    """A ``records`` callable: the reader's cached annotations, built into records on demand."""
    return lambda: method(*args)


def _absolute(root: str | os.PathLike, dataset: str, layout: str) -> Path:
    if not isinstance(root, (str, os.PathLike)):
        raise Task2VecError(f"{dataset}: root must be a folder path, got {type(root).__name__}")
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    if not path.is_dir():
        raise Task2VecError(f"{dataset}: root folder not found: {shown_name(path)}; {layout}")
    return path


def _require_file(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_file():
        raise Task2VecError(f"{dataset}: missing file {shown_name(path)}; {layout}")
    return path


def _require_dir(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_dir():
        raise Task2VecError(f"{dataset}: missing folder {shown_name(path)}; {layout}")
    return path


def _load_json(path: Path, dataset: str):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise Task2VecError(
            f"{dataset}: {shown_name(path)} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise Task2VecError(f"{dataset}: {shown_name(path)} is not UTF-8 JSON") from None


def _text_lines(path: Path, dataset: str) -> list[tuple[int, str]]:
    """``(line number, line)`` pairs of a UTF-8 text file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return list(enumerate(f, start=1))
    except UnicodeDecodeError:
        raise Task2VecError(f"{dataset}: {shown_name(path)} is not UTF-8 text") from None


def _declared_count(path: Path, lines: list[tuple[int, str]], dataset: str) -> int:
    """DeepFashion lists start with a count line and a column-name line."""
    try:
        return int(lines[0][1])
    except (IndexError, ValueError):
        got = shown_name(lines[0][1].strip()) if lines else ""
        raise Task2VecError(
            f"{dataset}: {shown_name(path)} line 1: expected a count, got {got!r}") from None


def _check_images(paths: Sequence[str], dataset: str, listed_in: str, layout: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise Task2VecError(
            f"{dataset}: image {shown_name(missing[0])} listed in {listed_in} not found{more}; {layout}")


def _unique_labels(pairs: list[tuple[int, str]]) -> dict[int, str]:
    """Category id -> label; a name shared by two categories gets its id appended."""
    counts = Counter(name for _, name in pairs)
    return {i: name if counts[name] == 1 else f"{name} (id {i})" for i, name in pairs}


def _check_sampling(seed: object, max_per_class: object) -> tuple[int, int | None]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Task2VecError(f"seed must be a non-negative integer, got {seed!r}")
    if max_per_class is not None and (isinstance(max_per_class, bool)
                                      or not isinstance(max_per_class, (int, np.integer))
                                      or max_per_class < 1):
        raise Task2VecError(f"max_per_class must be a positive integer or None, got {max_per_class!r}")
    return int(seed), None if max_per_class is None else int(max_per_class)


def _rng(seed: int, task_id: str, split: int) -> np.random.Generator:
    # Seeded per task and split, so a task's sample does not depend on which others are read.
    return np.random.default_rng([seed, zlib.crc32(task_id.encode("utf-8")), split])


def _balanced_size(n_pos: int, n_neg: int, cap: int | None) -> int:
    k = min(n_pos, n_neg)
    return k if cap is None else min(k, cap)


def _balanced_sample(pos: np.ndarray, neg_pool: np.ndarray, cap: int | None,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``k`` positives and ``k`` negatives, ``k = min(#pos, #neg, cap)``, each sorted."""
    k = _balanced_size(len(pos), len(neg_pool), cap)
    if k < len(pos):
        pos = np.sort(rng.choice(pos, k, replace=False))
    return pos, np.sort(rng.choice(neg_pool, k, replace=False))
