"""Readers for the paper's task library (section 4): 1,460 tasks from four datasets.

"In total, our collection of tasks has 1460 tasks (207 iNaturalist, 25 CUB, 228 iMaterialist,
1000 DeepFashion)." Each reader turns one dataset's *official* files into :class:`TaskSpec`
objects; records are built only when a task's ``records()`` is called, from annotations each
reader parses once and shares among its tasks. One module per dataset (``inaturalist``,
``cub``, ``imaterialist``, ``deepfashion``), what they share in ``_common``; :data:`READERS`
maps a source name to its folder names and reader.

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

import os
from collections.abc import Sequence

from ...errors import Task2VecError
from ..base import TaskSpec
from ._common import DEFAULT_MAX_PER_CLASS, PAPER_TASK_COUNTS, SOURCES, _absolute
from .cub import read_cub
from .deepfashion import read_deepfashion
from .imaterialist import read_imaterialist
from .inaturalist import read_inaturalist

__all__ = [
    "read_inaturalist", "read_cub", "read_imaterialist", "read_deepfashion", "read_paper_library",
    "PAPER_TASK_COUNTS", "SOURCES", "DEFAULT_MAX_PER_CLASS", "READERS",
]


# source -> (its folder under the library root, first found; reader; whether the reader takes
# seed and max_per_class: the binary-attribute tasks are sampled)
READERS = {
    "inaturalist": (("inat2018",), read_inaturalist, False),
    "cub": (("CUB_200_2011", "cub"), read_cub, False),
    "imaterialist": (("imaterialist",), read_imaterialist, True),
    "deepfashion": (("deepfashion",), read_deepfashion, True),
}


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
    unknown = [s for s in sources if s not in READERS]
    if unknown or not sources:
        raise Task2VecError(
            f"unknown source {unknown[0]!r}; choose from {', '.join(SOURCES)}" if unknown else
            f"no sources given; choose from {', '.join(SOURCES)}")
    base = _absolute(root, "paper task library",
                     "expected a folder with " + ", ".join(f"{r[0][0]}/" for r in READERS.values()))
    specs: list[TaskSpec] = []
    for source in dict.fromkeys(sources):
        names, reader, sampled = READERS[source]
        folder = next((base / n for n in names if (base / n).is_dir()), None)
        if folder is None:
            raise Task2VecError(
                f"paper task library: missing folder {base / names[0]} for {source}"
                + (f" (or {' or '.join(str(base / n) for n in names[1:])})" if names[1:] else "")
                + "; put each dataset in its subfolder or leave it out of sources")
        specs += (reader(folder, seed=seed, max_per_class=max_per_class) if sampled
                  else reader(folder))
    return specs
