"""The CUB-200-2011 reader of the paper's task library (layout and tasks: the package
docstring)."""
from __future__ import annotations

import csv
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ...errors import Task2VecError
from ...tasks import shown_name
from ..base import Record, TaskSpec
from ._common import _bind, _absolute, _require_file, _text_lines, _check_images

_CUB_LAYOUT = (
    "expected the official CUB-200-2011 files in <root>/CUB_200_2011/ or <root>/: images.txt, "
    "image_class_labels.txt, classes.txt, train_test_split.txt and the images/ folder")


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
