"""The DeepFashion (Category and Attribute Prediction Benchmark) reader of the paper's task
library (layout and tasks: the package docstring)."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import Task2VecError
from ...tasks import shown_name
from ..base import Record, TaskSpec
from ._common import (DEFAULT_MAX_PER_CLASS, NEGATIVE, POSITIVE, _SPLIT_NAMES, _TEST, _TRAIN,
                      _absolute, _balanced_sample, _balanced_size, _bind, _check_images,
                      _check_sampling, _declared_count, _require_file, _rng, _text_lines)

_DF_LAYOUT = (
    "expected DeepFashion's Category and Attribute Prediction Benchmark: "
    "<root>/Anno/list_attr_cloth.txt and <root>/Anno/list_attr_img.txt (or Anno_coarse/), "
    "<root>/Eval/list_eval_partition.txt, images under <root>/img/ or <root>/Img/img/")


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
