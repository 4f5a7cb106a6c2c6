"""The uniform record every task library produces (Hugging Face ``datasets``-builder style).

A reader turns one source's official files into :class:`TaskSpec` objects; everything
downstream (the build pipeline, the store, the explorer) sees only these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..tasks import TaskData, decode_image, resize_array

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


def load_splits(spec: TaskSpec, input_size: int,
                splits: Sequence[str] = SPLITS) -> dict[str, TaskData]:
    """Decode a task's records into one :class:`TaskData` per split asked for."""
    records = list(spec.records())
    return {split: task_data(spec.task_id, records, split, input_size) for split in splits
            if any(r.split == split for r in records)}


def task_data(name: str, records: Sequence[Record], split: str, input_size: int) -> TaskData:
    """The ``split`` of a task's records, decoded. Every split uses the task's full, sorted
    class list, so label ids agree across splits."""
    classes = sorted({r.label for r in records})
    index = {c: i for i, c in enumerate(classes)}
    rows = [r for r in records if r.split == split]
    images = np.stack([resize_array(r.image, input_size) if isinstance(r.image, np.ndarray)
                       else decode_image(r.image, input_size) for r in rows])
    return TaskData(name=name, images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                    labels=torch.tensor([index[r.label] for r in rows], dtype=torch.long),
                    classes=classes, source=name)
