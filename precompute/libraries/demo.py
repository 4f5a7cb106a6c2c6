"""The offline demo task library: the paper's collection of tasks (section 4) in miniature.

Built only from real data that installs offline (Debian packages and scikit-learn), in four
families with the structure of the paper's four datasets:

- ``fashion_mnist``: one domain, many label sets, like iMaterialist and DeepFashion. Binary
  attribute tasks (footwear, has-sleeves, warm-vs-summer, ...), one-vs-rest, pairs, triples
  and grouped multi-way tasks, all on Fashion-MNIST images (Debian ``dataset-fashion-mnist``).
  The tasks share their domain and are naturally correlated; ``meta["related"]`` lists them.
  Most draw their images from the classes they are about; the ``all-images`` branch draws
  every task's images evenly from all ten classes, so there only the labels differ.
- ``glyphs``: disjoint domains with a real taxonomy, like iNaturalist. One character
  classification task per writing system, rendered from Noto fonts (Debian
  ``fonts-noto-core``) with seeded augmentations; the taxonomy is the genealogy of scripts in
  ``script_genealogy.csv``, so :func:`taxonomic_distance` gives the paper's Fig. 2 axis.
- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (upscaled), a few tasks.
- ``emoji``: colour renders of Noto Color Emoji with Unicode's group > subgroup taxonomy, a
  task per subgroup and per group (:mod:`.emoji`, Debian ``fonts-noto-color-emoji`` and
  ``unicode-data``).

Task sizes are heavy-tailed like the paper's (most tasks hundreds of images, a few thousands):
quantiles of a truncated Pareto distribution on ``TASK_SIZES``, dealt to the tasks by the seed
and capped by the images a task can draw from. :func:`read_demo_library` only builds the
:class:`TaskSpec` list (well under a second); images are read, sampled or rendered inside each
``records()`` call, deterministically: the same task gives identical arrays on every call.
"""
from __future__ import annotations

import csv
import gzip
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import Task2VecError
from .base import Record, TaskSpec

__all__ = [
    "read_demo_library",
    "taxonomic_distance",
    "skipped_scripts",
    "render_glyph",
    "script_genealogy",
    "fashion_mnist_pool",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "FONT_DIRS",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
# fonts-noto-core installs TrueType files in the first; fonts-noto-cjk (Han, kana, Hangul), if
# present, installs .ttc files in the second.
FONT_DIRS = (Path("/usr/share/fonts/truetype/noto"), Path("/usr/share/fonts/opentype/noto"))

FAMILIES = ("fashion_mnist", "glyphs", "digits", "emoji")

# Full-scale task sizes (images, train + test): quantiles of a Pareto distribution with tail
# index SIZE_TAIL_INDEX truncated to TASK_SIZES. With the 360 tasks dealt them: median 159
# images, 51 tasks of 1,000 or more, 7 of 5,000 or more, 210,088 images in all (about 35
# minutes of embedding on a 2-core CPU at 1 s per 100 images). The 24 whole-pool tasks add
# WHOLE_POOL_SIZE images each.
TASK_SIZES = (50, 8000)
SIZE_TAIL_INDEX = 0.55
TEST_FRACTION = 0.2  # of each class, seeded per task; at least 1 test and 2 train images
MIN_PER_CLASS = 3  # 2 train + 1 test: the least a class needs, whatever the scale
# Test images per task at full scale (times ``scale`` below 1), on top of the dealt size: the
# standard error of a measured error rate p is sqrt(p (1 - p) / n), at most 2.9 points at
# n = 300 (p = 0.5) and 2.3 at p = 0.2, so one image no longer moves an error by 10 points.
# Only the digits pool (1,797 images) can run short; those tasks take what the pool has left.
MIN_TEST = 300

GLYPH_SIDE = 32  # rendered glyph images are GLYPH_SIDE x GLYPH_SIDE grayscale uint8
GLYPH_CLASSES = (5, 20)  # characters per script task, drawn per task (inclusive)
DIGIT_SIDE = 32  # the 8x8 digits are upscaled to this side


# --------------------------------------------------------------------------- public API


def read_demo_library(
    seed: int = 0,
    scale: float = 1.0,
    *,
    families: Sequence[str] = FAMILIES,
    fashion_mnist_dir: str | Path = FASHION_MNIST_DIR,
    font_dirs: Sequence[str | Path] = FONT_DIRS,
) -> list[TaskSpec]:
    """The demo task library: Fashion-MNIST attribute tasks, one glyph task per script, digits,
    emoji.

    Args:
        seed: decides each task's size, its characters (glyphs), its images and its
            train/test split; the same seed gives the same library, image for image.
        scale: multiplies every task's size (e.g. 0.02 for tests); a class never gets fewer
            than MIN_PER_CLASS images (2 train, 1 test).
        families: the families to include (default: all of FAMILIES); leaving one out
            changes no other task, and its data need not be installed.
        fashion_mnist_dir: folder with Fashion-MNIST's four ``*-ubyte.gz`` files.
        font_dirs: folders searched for the Noto font files named in ``script_genealogy.csv``;
            scripts whose font is missing are left out (see :func:`skipped_scripts`).

    Returns:
        TaskSpecs, fashion_mnist first, then glyphs, digits and emoji. ``meta`` of each holds
        ``num_images``, ``num_train``, ``num_test``, ``classes`` (the task's labels), ``seed``,
        ``source`` and ``related`` (ids of related tasks of the same family), plus
        family-specific fields (``attribute_group`` and ``defining_classes``; ``script``,
        ``characters`` and ``fonts``; ``group``, ``subgroup`` and ``emoji``).
    """
    seed = _check_seed(seed)
    families = _check_families(families)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale <= 100):
        raise Task2VecError(f"scale must be a number in (0, 100], got {scale!r}")
    fashion_dir = Path(fashion_mnist_dir)
    if "fashion_mnist" in families:
        _check_fashion_files(fashion_dir)
    scripts, _ = _glyph_inventory(seed, _font_dirs_key(font_dirs))
    if not scripts and "glyphs" in families:
        raise Task2VecError(
            f"no Noto script fonts found in {', '.join(map(str, font_dirs))}; "
            "install the Debian package fonts-noto-core (make setup)")

    # One entry per task: (family, task definition, capacity); capacity None = unlimited.
    plans: list[tuple[str, object, int | None]] = []
    plans += [("fashion_mnist", t, t.capacity(_FASHION_PER_CLASS)) for t in _FASHION_TASKS]
    plans += [("glyphs", s, None) for s in scripts]
    plans += [("digits", t, t.capacity(_DIGITS_PER_CLASS)) for t in _DIGIT_TASKS]

    sizes = _deal_sizes([cap for _, _, cap in plans], np.random.default_rng([seed, 0]))
    # The whole-pool tasks came later, and all have one size (WHOLE_POOL_SIZE), so the others
    # keep the sizes they were dealt.
    at = len(_FASHION_TASKS)
    plans[at:at] = [("fashion_mnist", t, None) for t in _WHOLE_POOL_TASKS]
    sizes[at:at] = [WHOLE_POOL_SIZE] * len(_WHOLE_POOL_TASKS)
    specs = []
    for (family, task, _), size in zip(plans, sizes):
        if family == "fashion_mnist":
            specs.append(_fashion_spec(task, size, seed, scale, fashion_dir))
        elif family == "glyphs":
            specs.append(_glyph_spec(task, size, seed, scale))
        else:
            specs.append(_digit_spec(task, size, seed, scale))
    # The first three families are dealt their sizes together (over the scripts whose fonts
    # are installed), so leaving one out changes no other's; emoji, added later, deals its own.
    specs = [s for s in specs if s.family in families]
    if "emoji" in families:
        from .emoji import read_emoji_tasks  # it imports this module's size helpers
        specs += read_emoji_tasks(seed, scale)
    _link_related(specs)
    return specs


def taxonomic_distance(path_a: Sequence[str], path_b: Sequence[str]) -> int:
    """Tree distance between two taxonomy nodes: the edges from one up to their deepest common
    ancestor and down to the other (the x-axis of the paper's Fig. 2).

    Paths run from the root down, e.g. ``("Phoenician", "Greek", "Latin")``. Paths with
    different roots meet at an implicit common root above them.

    >>> taxonomic_distance(("A", "B", "C"), ("A", "B", "D", "E"))
    3
    """
    a, b = _check_path(path_a, "path_a"), _check_path(path_b, "path_b")
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return len(a) + len(b) - 2 * common


def skipped_scripts(font_dirs: Sequence[str | Path] = FONT_DIRS) -> dict[str, str]:
    """Scripts of ``script_genealogy.csv`` left out of the glyphs family, with the reason."""
    return dict(_glyph_inventory(0, _font_dirs_key(font_dirs))[1])


@dataclass(frozen=True)
class ScriptRow:
    """One row of ``script_genealogy.csv``: a writing system and its place in the genealogy."""

    script: str
    font_file: str
    ranges: tuple[tuple[int, int], ...]  # inclusive code point ranges
    path: tuple[str, ...]  # root -> ... -> script


@lru_cache(maxsize=1)
def script_genealogy() -> tuple[ScriptRow, ...]:
    """The rows of ``script_genealogy.csv`` shipped with this package."""
    text = resources.files(__package__).joinpath("script_genealogy.csv").read_text("utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = []
    for row in csv.DictReader(lines):
        ranges = tuple(tuple(int(x, 16) for x in r.split("-")) for r in row["ranges"].split())
        path = tuple(p.strip() for p in row["path"].split(" > "))
        if path[-1] != row["script"]:
            raise ValueError(f"script_genealogy.csv: path of {row['script']} ends in {path[-1]}")
        rows.append(ScriptRow(row["script"], row["font_file"], ranges, path))
    return tuple(rows)


# --------------------------------------------------------------------------- task sizes


def _size_quantiles(n: int) -> np.ndarray:
    """n task sizes: evenly spaced quantiles (both ends included) of the truncated Pareto."""
    lo, hi = TASK_SIZES
    a = SIZE_TAIL_INDEX
    u = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    # Inverse CDF of the Pareto(a) truncated to [lo, hi].
    x = lo * (1.0 - u * (1.0 - (lo / hi) ** a)) ** (-1.0 / a)
    return np.round(x).astype(int)


def _deal_sizes(capacities: list[int | None], rng: np.random.Generator) -> list[int]:
    """Deal the size quantiles to the tasks in a seeded order, largest first, each to the next
    task that can hold it; a size no task can hold goes to the roomiest one, capped."""
    sizes = sorted(_size_quantiles(len(capacities)), reverse=True)
    order = list(rng.permutation(len(capacities)))
    out = [0] * len(capacities)
    room = [math.inf if c is None else c for c in capacities]
    for size in sizes:
        pick = next((t for t in order if room[t] >= size), None)
        if pick is None:
            pick = max(order, key=lambda t: room[t])
        out[pick] = int(min(size, room[pick]))
        order.remove(pick)
    return out


def _scaled(size: int, scale: float, minimum: int, capacity: int | None) -> int:
    n = max(int(round(size * scale)), minimum)
    return n if capacity is None else min(n, capacity)


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _test_count(n: int) -> int:
    """Test images of a class of n >= 3: about TEST_FRACTION, at least 1, leaving 2 to train."""
    return min(max(1, int(round(TEST_FRACTION * n))), n - 2)


def _test_shortfall(have: int, scale: float) -> int:
    """Test images a task with ``have`` of them must add to reach MIN_TEST (scaled below 1).

    The added images come from their own generator (stream 3) and after the task's other
    records, so its training images, their order and the dealt sizes stay what they were."""
    return max(0, math.ceil(MIN_TEST * min(scale, 1.0)) - have)


def _task_rng(seed: int, task_id: str, stream: int = 0) -> np.random.Generator:
    # crc32, not hash(): Python's string hash changes between processes.
    return np.random.default_rng([seed, zlib.crc32(task_id.encode()), stream])


# --------------------------------------------------------------------------- labelled pools
# Fashion-MNIST and digits tasks draw labelled images from a pool: each task label is a group
# of source classes; a task is balanced over its labels, and within a label over its classes.


@dataclass(frozen=True)
class PoolTask:
    group: str  # attribute group, the middle of the taxonomy path
    slug: str  # last part of the task id
    name: str  # human-readable
    labels: tuple[tuple[str, tuple[int, ...]], ...]  # (label, source class ids)
    defining: tuple[int, ...]  # the classes the task is about (for relatedness)
    # True: the images are drawn evenly from every source class whatever the labels, so all
    # such tasks share one image distribution (iMaterialist's attributes over one pool);
    # False: balanced over labels, then over each label's classes.
    whole_pool: bool = False

    def capacity(self, per_class: Sequence[int]) -> int:
        """Most images the task can draw without repeating one."""
        if self.whole_pool:
            ids = [i for _, group in self.labels for i in group]
            return len(ids) * min(per_class[i] for i in ids)
        return len(self.labels) * min(
            len(ids) * min(per_class[i] for i in ids) for _, ids in self.labels)

    def room(self, per_class: Sequence[int], scale: float) -> int:
        """Most images the task may take while leaving the pool enough for its test split:
        MIN_TEST (scaled) or half the capacity, whichever is less (binds only for digits)."""
        cap = self.capacity(per_class)
        return max(cap - min(math.ceil(MIN_TEST * min(scale, 1.0)), cap // 2), self.min_size())

    def min_size(self) -> int:
        """The smallest task that gives every label MIN_PER_CLASS images."""
        if self.whole_pool:
            smallest = min(len(ids) for _, ids in self.labels)
            return MIN_PER_CLASS * math.ceil(sum(len(ids) for _, ids in self.labels) / smallest)
        return MIN_PER_CLASS * len(self.labels)

    def quotas(self, n: int) -> list[list[int]]:
        """Images per source class, label by label, for a task of n images."""
        if self.whole_pool:
            flat = iter(_split_evenly(n, sum(len(ids) for _, ids in self.labels)))
            return [[next(flat) for _ in ids] for _, ids in self.labels]
        return [_split_evenly(q, len(ids))
                for q, (_, ids) in zip(_split_evenly(n, len(self.labels)), self.labels)]

    def extra_test(self, n: int, pool_sizes: Sequence[int], scale: float) -> list[list[int]]:
        """Test images added per source class, label by label (see :func:`_test_shortfall`):
        evenly over labels and their classes, or over every class for a whole-pool task (its
        test images keep the shared distribution); never more than a class has left."""
        quotas = self.quotas(n)
        short = _test_shortfall(sum(_test_count(sum(q)) for q in quotas), scale)
        if self.whole_pool:
            flat = iter(_split_evenly(short, sum(len(q) for q in quotas)))
            extra = [[next(flat) for _ in q] for q in quotas]
        else:
            extra = [_split_evenly(x, len(q)) for q, x in zip(quotas, _split_evenly(short, len(quotas)))]
        return [[min(e, pool_sizes[c] - q) for c, q, e in zip(ids, qs, es)]
                for (_, ids), qs, es in zip(self.labels, quotas, extra)]


def _pool_records(task: PoolTask, n: int, seed: int, task_id: str, scale: float,
                  pool: tuple[np.ndarray, list[np.ndarray]]) -> list[Record]:
    images, by_class = pool
    rng, more = _task_rng(seed, task_id), _task_rng(seed, task_id, stream=3)
    records, extra = [], []
    extras = task.extra_test(n, [len(ids) for ids in by_class], scale)
    for (label, ids), quotas, adds in zip(task.labels, task.quotas(n), extras):
        chosen = [rng.choice(by_class[c], q, replace=False) for c, q in zip(ids, quotas)]
        picked = np.concatenate(chosen)
        rng.shuffle(picked)
        n_test = _test_count(len(picked))
        records += [Record(images[i], label, "test" if j < n_test else "train")
                    for j, i in enumerate(picked)]
        for c, taken, k in zip(ids, chosen, adds):  # more test images, none of the task's own
            extra += [Record(images[i], label, "test")
                      for i in more.choice(np.setdiff1d(by_class[c], taken), k, replace=False)]
    return [records[i] for i in rng.permutation(len(records))] + extra


def _pool_meta(task: PoolTask, n: int, class_names: Sequence[str], pool_sizes: Sequence[int],
               scale: float) -> dict:
    added = sum(map(sum, task.extra_test(n, pool_sizes, scale)))
    n_test = sum(_test_count(sum(q)) for q in task.quotas(n)) + added
    return {
        "num_images": n + added, "num_train": n + added - n_test, "num_test": n_test,
        "added_test": added,
        "classes": sorted(label for label, _ in task.labels),
        "attribute_group": task.group,
        "defining_classes": [class_names[i] for i in task.defining],
        "label_classes": {label: [class_names[i] for i in ids] for label, ids in task.labels},
    }


def _binary(group: str, slug: str, name: str, pos: Sequence[int], neg: Sequence[int],
            pos_label: str | None = None, neg_label: str | None = None) -> PoolTask:
    return PoolTask(group, slug, name,
                    ((pos_label or name, tuple(pos)), (neg_label or f"not {name}", tuple(neg))),
                    tuple(pos))


def _multiway(group: str, slug: str, name: str, labels: dict[str, Sequence[int]]) -> PoolTask:
    return PoolTask(group, slug, name, tuple((k, tuple(v)) for k, v in labels.items()),
                    tuple(sorted({c for v in labels.values() for c in v})))


# --------------------------------------------------------------------------- fashion_mnist

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_SLUGS = ("tshirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle-boot")
_FASHION_PER_CLASS = (7000,) * 10  # 6,000 train + 1,000 test images per class, checked on load
_FASHION_FILES = {"train-images": "train-images-idx3-ubyte.gz",
                  "train-labels": "train-labels-idx1-ubyte.gz",
                  "test-images": "t10k-images-idx3-ubyte.gz",
                  "test-labels": "t10k-labels-idx1-ubyte.gz"}


def _fashion_tasks() -> tuple[PoolTask, ...]:
    T, TR, P, D, C, SA, S, SN, B, A = range(10)
    garments, tops, footwear = (T, TR, P, D, C, S), (T, P, C, S), (SA, SN, A)
    everything = tuple(range(10))
    tasks = [
        # Categorical attributes, as multi-way tasks (iMaterialist's "type", "category").
        _multiway("category", "all-categories", "all categories",
                  {FASHION_CLASSES[i]: (i,) for i in everything}),
        _multiway("category", "garment-type", "garment type",
                  {FASHION_CLASSES[i]: (i,) for i in garments}),
        _multiway("category", "top-type", "top type", {FASHION_CLASSES[i]: (i,) for i in tops}),
        _multiway("category", "footwear-type", "footwear type",
                  {FASHION_CLASSES[i]: (i,) for i in footwear}),
        _multiway("category", "item-kind", "garment, footwear or bag",
                  {"garment": garments, "footwear": footwear, "bag": (B,)}),
        _multiway("category", "body-region", "body region",
                  {"upper body": tops, "legs": (TR,), "full body": (D,), "feet": footwear,
                   "carried": (B,)}),
        _multiway("category", "season", "season",
                  {"warm": (P, C, A), "summer": (T, D, SA), "all-season": (TR, S, SN, B)}),
        # Binary attributes within the footwear sub-domain, and footwear vs everything else.
        _binary("footwear", "is-footwear", "footwear", footwear, (T, TR, P, D, C, S, B)),
        _binary("footwear", "open-toe", "open toe", (SA,), (SN, A)),
        _binary("footwear", "covers-ankle", "covers ankle", (A,), (SA, SN)),
        _binary("footwear", "athletic", "athletic shoe", (SN,), (SA, A)),
        # Binary attributes of garment shape.
        _binary("garment-shape", "upper-body", "upper body", tops, (TR, D, SA, SN, B, A)),
        _binary("garment-shape", "has-sleeves", "has sleeves", tops, (TR, SA, SN, B, A)),
        _binary("garment-shape", "long-sleeves", "long sleeves", (P, C, S), (T,)),
        _binary("garment-shape", "open-front", "open front", (C, S), (T, P)),
        _binary("garment-shape", "covers-legs", "covers legs", (TR, D), tops),
        _binary("garment-shape", "one-piece", "one piece", (D,), (T, TR, P, C, S)),
        # Binary attributes of use.
        _binary("use", "warm-vs-summer", "warm vs summer", (P, C, A), (T, D, SA),
                "warm", "summer"),
        _binary("use", "outerwear", "outerwear", (C,), (T, P, S)),
        _binary("use", "knitwear", "knitwear", (P,), (T, C, S)),
        _binary("use", "outer-layer", "outer layer", (P, C), (T, S)),
    ]
    for i in everything:
        tasks.append(_binary("one-vs-rest", _FASHION_SLUGS[i], FASHION_CLASSES[i], (i,),
                             tuple(j for j in everything if j != i), neg_label="other"))
    for ids in combinations(everything, 2):
        tasks.append(_multiway("pair", "-vs-".join(_FASHION_SLUGS[i] for i in ids),
                               " vs ".join(FASHION_CLASSES[i] for i in ids),
                               {FASHION_CLASSES[i]: (i,) for i in ids}))
    for ids in combinations(everything, 3):
        tasks.append(_multiway("triple", "-".join(_FASHION_SLUGS[i] for i in ids),
                               " / ".join(FASHION_CLASSES[i] for i in ids),
                               {FASHION_CLASSES[i]: (i,) for i in ids}))
    return tuple(tasks)


def _whole_pool_tasks() -> tuple[PoolTask, ...]:
    """Binary attributes over all ten classes' images, like iMaterialist's attributes: every
    task sees the same image distribution (one tenth per class), only the labels differ.
    Attribute groups: which footwear, which top, which other item; one task per set of
    positive classes (all non-empty sets of footwear and of other items, tops by ones and
    twos), everything else negative."""
    T, TR, P, D, C, SA, S, SN, B, A = range(10)
    everything = tuple(range(10))
    tasks = []
    for group, members, sizes in (("footwear", (SA, SN, A), (1, 2, 3)),
                                  ("tops", (T, P, C, S), (1, 2)),
                                  ("other", (TR, D, B), (1, 2, 3))):
        for k in sizes:
            for pos in combinations(members, k):
                label = " or ".join(FASHION_CLASSES[i] for i in pos)
                neg = tuple(i for i in everything if i not in pos)
                tasks.append(PoolTask(f"{WHOLE_POOL}/{group}", "-".join(_FASHION_SLUGS[i] for i in pos),
                                      f"{label} (all images)", ((label, pos), ("other", neg)), pos,
                                      whole_pool=True))
    return tuple(tasks)


WHOLE_POOL = "all-images"  # first part of the whole-pool tasks' attribute group
# One size for every whole-pool task: they are a controlled test of the shared-domain claim
# (only the labels differ). With heavy-tailed sizes the small tasks (a handful of positive
# images) group by size, not by attribute (docs/RESULTS.md).
WHOLE_POOL_SIZE = 1000
_FASHION_TASKS = _fashion_tasks()
_WHOLE_POOL_TASKS = _whole_pool_tasks()


@lru_cache(maxsize=2)
def _fashion_pool(root: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """All 70,000 Fashion-MNIST images (train then test), read-only, and the ids per class."""
    def read(key: str, offset: int) -> np.ndarray:
        with gzip.open(Path(root) / _FASHION_FILES[key]) as fh:
            return np.frombuffer(fh.read(), np.uint8, offset=offset)

    try:
        images = np.concatenate([read("train-images", 16), read("test-images", 16)])
        labels = np.concatenate([read("train-labels", 8), read("test-labels", 8)])
    except (OSError, EOFError) as exc:
        raise Task2VecError(f"cannot read Fashion-MNIST in {root}: {exc}") from None
    images = images.reshape(-1, 28, 28)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    if len(images) != len(labels) or [len(ids) for ids in by_class] != list(_FASHION_PER_CLASS):
        raise Task2VecError(f"Fashion-MNIST in {root} is not the 70,000-image release")
    images.setflags(write=False)  # records share these arrays
    return images, by_class


def fashion_mnist_pool(root: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, list[np.ndarray]]:
    """All 70,000 Fashion-MNIST images (uint8 ``[70000, 28, 28]``: the 60,000 training images,
    then the 10,000 test images; read-only) and the image ids of each class; a clear error
    naming the Debian package when the files are missing."""
    _check_fashion_files(Path(root))
    return _fashion_pool(str(root))


def _check_fashion_files(root: Path) -> None:
    missing = [f for f in _FASHION_FILES.values() if not (root / f).is_file()]
    if missing:
        raise Task2VecError(f"Fashion-MNIST not found: {root} lacks {', '.join(missing)}; "
                            "install the Debian package dataset-fashion-mnist (make setup)")


def _fashion_records(task: PoolTask, n: int, seed: int, task_id: str, scale: float,
                     root: str) -> list[Record]:
    return _pool_records(task, n, seed, task_id, scale, _fashion_pool(root))


def _fashion_spec(task: PoolTask, size: int, seed: int, scale: float, root: Path) -> TaskSpec:
    task_id = f"fashion_mnist/{task.group}/{task.slug}"
    n = _scaled(size, scale, task.min_size(), task.room(_FASHION_PER_CLASS, scale))
    meta = _pool_meta(task, n, FASHION_CLASSES, _FASHION_PER_CLASS, scale) | {
        "seed": seed, "dealt_size": size, "source": f"Fashion-MNIST ({root})"}
    return TaskSpec(task_id, "fashion_mnist", task.name,
                    ("fashion_mnist", *task.group.split("/"), task.name),
                    partial(_fashion_records, task, n, seed, task_id, scale, str(root)), meta)


# --------------------------------------------------------------------------- digits

DIGIT_CLASSES = tuple(str(d) for d in range(10))
# Images per digit in load_digits(), checked on load; known here so that building the specs
# does not import scikit-learn (1.5 s).
_DIGITS_PER_CLASS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


def _digit_tasks() -> tuple[PoolTask, ...]:
    digits = range(10)
    tasks = [
        _multiway("category", "all-digits", "all digits", {str(d): (d,) for d in digits}),
        _binary("attribute", "parity", "even", (0, 2, 4, 6, 8), (1, 3, 5, 7, 9), "even", "odd"),
        _binary("attribute", "small-vs-large", "below 5", (0, 1, 2, 3, 4), (5, 6, 7, 8, 9),
                "below 5", "5 or more"),
        # 4 is drawn open or closed, 2 and 5 mix straight and curved strokes: left out.
        _binary("attribute", "closed-loop", "closed loop", (0, 6, 8, 9), (1, 2, 3, 5, 7)),
        _binary("attribute", "straight-vs-curved", "straight strokes", (1, 4, 7), (0, 3, 6, 8, 9),
                "straight", "curved"),
    ]
    for a, b in ((3, 8), (1, 7), (4, 9), (5, 6), (3, 5), (2, 7), (0, 6), (8, 9)):
        tasks.append(_multiway("pair", f"{a}-vs-{b}", f"{a} vs {b}", {str(a): (a,), str(b): (b,)}))
    for d in digits:
        tasks.append(_binary("one-vs-rest", str(d), str(d), (d,),
                             tuple(e for e in digits if e != d), neg_label="other"))
    return tuple(tasks)


_DIGIT_TASKS = _digit_tasks()


@lru_cache(maxsize=1)
def _digits_pool() -> tuple[np.ndarray, list[np.ndarray]]:
    """The 1,797 scikit-learn digits as uint8 [N, DIGIT_SIDE, DIGIT_SIDE], read-only."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    small = np.clip(np.round(data.images * (255 / 16)), 0, 255).astype(np.uint8)
    images = np.stack([
        np.asarray(Image.fromarray(im).resize((DIGIT_SIDE, DIGIT_SIDE),
                                              Image.Resampling.BILINEAR)) for im in small])
    images.setflags(write=False)
    by_class = [np.flatnonzero(data.target == d) for d in range(10)]
    if tuple(len(ids) for ids in by_class) != _DIGITS_PER_CLASS:
        raise Task2VecError("scikit-learn's load_digits() is not the 1,797-image release")
    return images, by_class


def _digit_records(task: PoolTask, n: int, seed: int, task_id: str, scale: float) -> list[Record]:
    return _pool_records(task, n, seed, task_id, scale, _digits_pool())


def _digit_spec(task: PoolTask, size: int, seed: int, scale: float) -> TaskSpec:
    task_id = f"digits/{task.group}/{task.slug}"
    n = _scaled(size, scale, task.min_size(), task.room(_DIGITS_PER_CLASS, scale))
    meta = _pool_meta(task, n, DIGIT_CLASSES, _DIGITS_PER_CLASS, scale) | {
        "seed": seed, "dealt_size": size, "source": "scikit-learn load_digits (UCI optical digits)"}
    return TaskSpec(task_id, "digits", task.name, ("digits", task.group, task.name),
                    partial(_digit_records, task, n, seed, task_id, scale), meta)


# --------------------------------------------------------------------------- glyphs


@dataclass(frozen=True)
class GlyphScript:
    row: ScriptRow
    fonts: tuple[str, ...]  # primary font first, then Bold / Serif variants that exist
    characters: tuple[str, ...]  # up to GLYPH_CLASSES[1], in seeded order, all with a glyph

    @property
    def task_id(self) -> str:
        return "glyphs/" + re.sub(r"[^a-z0-9]+", "-", self.row.script.lower()).strip("-")


def _font_dirs_key(font_dirs: Sequence[str | Path]) -> tuple[str, ...]:
    if isinstance(font_dirs, (str, Path)):
        font_dirs = (font_dirs,)
    return tuple(str(Path(d)) for d in font_dirs)


def _find_font(name: str, font_dirs: tuple[str, ...]) -> str | None:
    for d in font_dirs:
        p = Path(d) / name
        if p.is_file():
            return str(p)
    return None


def _font_variants(primary: str) -> tuple[str, ...]:
    """The primary font, then its Bold weight and the Serif (or Sans) design where installed:
    the real style variation a glyph task sees, like photos of one species by many cameras."""
    p = Path(primary)
    m = re.fullmatch(r"Noto(Sans|Serif)(\w*)-Regular(\.tt[fc])", p.name)
    if not m:
        return (primary,)
    design, script, ext = m.groups()
    other = "Serif" if design == "Sans" else "Sans"
    names = [f"Noto{design}{script}-Bold{ext}", f"Noto{other}{script}-Regular{ext}",
             f"Noto{other}{script}-Bold{ext}"]
    return (primary, *(str(p.with_name(n)) for n in names if p.with_name(n).is_file()))


@lru_cache(maxsize=4096)
def _font(path: str, size: int):
    from PIL import ImageFont

    # The basic layout engine: one code point, one glyph, and no fallback font, so a missing
    # character shows as the font's .notdef box (which _has_glyph recognises).
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


_MISSING = chr(0x10FFFD)  # a private-use code point no Noto font maps
_CHECK_SIZE = 24


@lru_cache(maxsize=512)
def _notdef_mask(path: str) -> tuple:
    m = _font(path, _CHECK_SIZE).getmask(_MISSING)
    return m.size, bytes(m)


@lru_cache(maxsize=65536)
def _glyph_key(path: str, ch: str) -> tuple | None:
    """The glyph's mask (size, bytes) at a fixed size, or None if the font has no real glyph."""
    m = _font(path, _CHECK_SIZE).getmask(ch)
    if m.getbbox() is None:
        return None
    key = m.size, bytes(m)
    return None if key == _notdef_mask(path) else key


def _letters(row: ScriptRow) -> list[str]:
    return [chr(c) for a, b in row.ranges for c in range(a, b + 1)
            if unicodedata.category(chr(c)).startswith("L")]


@lru_cache(maxsize=8)
def _glyph_inventory(seed: int, font_dirs: tuple[str, ...]
                     ) -> tuple[tuple[GlyphScript, ...], tuple[tuple[str, str], ...]]:
    """Scripts with an installed font and at least GLYPH_CLASSES[0] distinct glyphs, with up to
    GLYPH_CLASSES[1] characters each in a seeded order; and (script, reason) for the rest."""
    scripts, skipped = [], []
    for row in script_genealogy():
        path = _find_font(row.font_file, font_dirs)
        if path is None:
            skipped.append((row.script, f"font {row.font_file} not installed"))
            continue
        letters = _letters(row)
        rng = np.random.default_rng([seed, zlib.crc32(row.script.encode()), 1])
        chosen, seen = [], set()
        for i in rng.permutation(len(letters)):
            key = _glyph_key(path, letters[i])
            if key is not None and key not in seen:  # distinct glyphs only
                seen.add(key)
                chosen.append(letters[i])
                if len(chosen) == GLYPH_CLASSES[1]:
                    break
        if len(chosen) < GLYPH_CLASSES[0]:
            skipped.append((row.script, f"only {len(chosen)} letters with a glyph in "
                                        f"{row.font_file}, need {GLYPH_CLASSES[0]}"))
            continue
        scripts.append(GlyphScript(row, _font_variants(path), tuple(chosen)))
    return tuple(scripts), tuple(skipped)


def _char_label(ch: str, script: str) -> str:
    return unicodedata.name(ch, f"{script.upper()} U+{ord(ch):04X}")


def _glyph_spec(script: GlyphScript, size: int, seed: int, scale: float) -> TaskSpec:
    task_id = script.task_id
    rng = _task_rng(seed, task_id, stream=2)
    k = int(rng.integers(GLYPH_CLASSES[0], GLYPH_CLASSES[1] + 1))
    # Full-scale tasks keep >= 4 images per character (sizes start at 50, so k >= 12 there).
    k = max(GLYPH_CLASSES[0], min(k, size // 4, len(script.characters)))
    chars = script.characters[:k]
    n = _scaled(size, scale, MIN_PER_CLASS * k, None)
    per_class = _split_evenly(n, k)
    n_test = sum(_test_count(q) for q in per_class)
    added = _test_shortfall(n_test, scale)
    labels = [_char_label(ch, script.row.script) for ch in chars]
    meta = {
        "num_images": n + added, "num_train": n - n_test, "num_test": n_test + added,
        "added_test": added,
        "classes": sorted(labels), "seed": seed, "dealt_size": size,
        "script": script.row.script, "characters": [f"U+{ord(c):04X}" for c in chars],
        "fonts": [Path(f).name for f in script.fonts],
        "source": f"Noto fonts ({Path(script.fonts[0]).parent})",
    }
    return TaskSpec(task_id, "glyphs", script.row.script, script.row.path,
                    partial(_glyph_records, chars, tuple(labels), script.fonts, n, added, seed,
                            task_id),
                    meta)


def _glyph_records(chars: tuple[str, ...], labels: tuple[str, ...], fonts: tuple[str, ...],
                   n: int, added: int, seed: int, task_id: str) -> list[Record]:
    rng, more = _task_rng(seed, task_id), _task_rng(seed, task_id, stream=3)
    records, extra = [], []
    for ch, label, count, k in zip(chars, labels, _split_evenly(n, len(chars)),
                                   _split_evenly(added, len(chars))):
        faces = [f for f in fonts if f == fonts[0] or _glyph_key(f, ch) is not None]
        n_test = _test_count(count)
        for j in range(count):
            image = render_glyph(ch, faces[int(rng.integers(len(faces)))], rng)
            records.append(Record(image, label, "test" if j < n_test else "train"))
        extra += [Record(render_glyph(ch, faces[int(more.integers(len(faces)))], more), label,
                         "test") for _ in range(k)]
    return [records[i] for i in rng.permutation(len(records))] + extra


def render_glyph(ch: str, font_path: str, rng: np.random.Generator,
                 side: int = GLYPH_SIDE) -> np.ndarray:
    """One augmented rendering of a character: uint8 [side, side], white glyph on black.

    Augmentations, drawn from ``rng``: glyph extent 55-85% of the side, rotation within
    +-12 degrees, translation within +-8% of the side, stroke thickening (0-2 px at 2x) and a
    slight Gaussian blur. Drawn at twice the side and box-downsampled, for anti-aliasing; then
    stretched so that the brightest pixel is 255.
    """
    from PIL import Image, ImageDraw, ImageFilter

    big = 2 * side
    extent = rng.uniform(0.55, 0.85) * big
    stroke = int(rng.choice(3, p=(0.5, 0.3, 0.2)))
    angle = float(rng.uniform(-12.0, 12.0))
    dx, dy = rng.uniform(-0.08, 0.08, size=2) * big
    blur = float(rng.uniform(0.0, 0.8))

    ref = 64
    l, t, r, b = _font(font_path, ref).getbbox(ch)
    font_size = int(np.clip(round(ref * extent / max(r - l, b - t, 1)), 4, 4 * big))
    font = _font(font_path, font_size)
    l, t, r, b = font.getbbox(ch, stroke_width=stroke)
    image = Image.new("L", (big, big))
    ImageDraw.Draw(image).text((big / 2 - (l + r) / 2 + dx, big / 2 - (t + b) / 2 + dy), ch,
                               font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
    image = image.resize((side, side), Image.Resampling.BOX)
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image)
    peak = int(pixels.max())
    if 0 < peak < 255:  # thin strokes (hieroglyph outlines, alef) fade when downsampled
        pixels = (pixels.astype(np.uint16) * 255 // peak).astype(np.uint8)
    return pixels


# --------------------------------------------------------------------------- relatedness

RELATED_JACCARD = 0.5  # pool tasks about mostly the same classes count as related
# Tasks this close in their family's tree are related: scripts that are siblings or parent and
# child in the genealogy; an emoji group task and its subgroup tasks, which render the same emoji
# (sibling subgroups share none).
RELATED_TREE_DISTANCE = {"glyphs": 2, "emoji": 1}
_COMBINATORIAL_GROUPS = {"one-vs-rest", "pair", "triple"}


def _pool_related(a: TaskSpec, b: TaskSpec) -> bool:
    """Same curated attribute group (the paper's binarised categorical attributes), or defining
    classes that overlap by Jaccard >= RELATED_JACCARD (pair 3-vs-8 and triple 3/5/8)."""
    ga, gb = a.meta["attribute_group"], b.meta["attribute_group"]
    if ga == gb and ga not in _COMBINATORIAL_GROUPS:
        return True
    ca, cb = set(a.meta["defining_classes"]), set(b.meta["defining_classes"])
    return len(ca & cb) / len(ca | cb) >= RELATED_JACCARD


def _link_related(specs: list[TaskSpec]) -> None:
    for family in FAMILIES:
        members = [s for s in specs if s.family == family]
        if family in RELATED_TREE_DISTANCE:
            def related(a, b, limit=RELATED_TREE_DISTANCE[family]):
                return taxonomic_distance(a.taxonomy, b.taxonomy) <= limit
        else:
            related = _pool_related
        for a in members:
            a.meta["related"] = [b.task_id for b in members if b is not a and related(a, b)]


# --------------------------------------------------------------------------- validation


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise Task2VecError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_families(families) -> tuple[str, ...]:
    if isinstance(families, str) or not isinstance(families, Sequence) or not families or not set(
            families) <= set(FAMILIES):
        raise Task2VecError(f"families must be a non-empty list of {', '.join(FAMILIES)}; "
                            f"got {families!r}")
    return tuple(families)


def _check_path(path, what: str) -> tuple[str, ...]:
    if isinstance(path, str) or not isinstance(path, Sequence) or not path or not all(
            isinstance(p, str) and p for p in path):
        raise Task2VecError(f"{what} must be a non-empty sequence of node names, got {path!r}")
    return tuple(path)
