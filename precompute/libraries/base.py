"""The uniform record every task library produces (Hugging Face ``datasets``-builder style).

A reader turns one source's official files into :class:`TaskSpec` objects; everything
downstream (the build pipeline, the store, the explorer) sees only these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..tasks import TaskData, decode_image

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Record:
    """One labelled image of one task.

    Attributes:
        image: a file path, or a uint8 array ``[H, W]`` (grayscale) or ``[H, W, 3]`` (RGB).
        label: the class name within the task.
        split: ``"train"`` or ``"test"``.
    """

    image: str | np.ndarray
    label: str
    split: str


@dataclass(frozen=True)
class TaskSpec:
    """One task of a library.

    Attributes:
        task_id: stable, unique id within the library, e.g. ``"inat2018/Rodentia"``.
        family: the source family used for colouring, e.g. ``"inaturalist"``, ``"glyphs"``.
        name: a short human-readable name.
        taxonomy: path from the root of the family's taxonomy or attribute grouping down to this
            task, e.g. ``("Animalia", "Chordata", "Mammalia", "Rodentia")``.
        records: a callable returning the task's records (deferred: reading is the slow part).
        meta: anything else worth showing (attribute group, source dataset, ...).
    """

    task_id: str
    family: str
    name: str
    taxonomy: tuple[str, ...]
    records: Callable[[], Sequence[Record]] = field(compare=False, repr=False)
    meta: dict = field(default_factory=dict, compare=False)


def load_splits(spec: TaskSpec, input_size: int) -> dict[str, TaskData]:
    """Decode a task's records into one :class:`TaskData` per split.

    Every split uses the task's full, sorted class list, so label ids agree across splits.
    """
    records = list(spec.records())
    classes = sorted({r.label for r in records})
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split in SPLITS:
        rows = [r for r in records if r.split == split]
        if rows:
            images = np.stack([_decode(r.image, input_size) for r in rows])
            out[split] = TaskData(
                name=spec.task_id, images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                labels=torch.tensor([index[r.label] for r in rows], dtype=torch.long),
                classes=classes, source=spec.family)
    return out


def _decode(image: str | np.ndarray, input_size: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return _resize_array(image, input_size)
    return decode_image(image, input_size)


def _resize_array(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(image)
    return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
