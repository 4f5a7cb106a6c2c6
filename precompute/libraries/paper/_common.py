"""What the paper-dataset readers share: constants, file checks with readable errors, and
the seeded balanced sampling of the binary-attribute tasks (see the package docstring)."""
from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...errors import Task2VecError
from ...tasks import shown_name
from ..base import Record

SOURCES = ("inaturalist", "cub", "imaterialist", "deepfashion")
PAPER_TASK_COUNTS = {"inaturalist": 207, "cub": 25, "imaterialist": 228, "deepfashion": 1000}
# Per class and split, for the binary tasks: the paper's tasks mostly have "hundreds or thousands
# of samples"; a cap keeps embedding 1,228 attribute tasks affordable. None: no cap.
DEFAULT_MAX_PER_CLASS = 1000
POSITIVE, NEGATIVE = "yes", "no"

_TRAIN, _TEST = 0, 1
_SPLIT_NAMES = ("train", "test")


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
