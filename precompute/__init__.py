"""Images -> numbers: probe networks, TASK2VEC embeddings, task distances.

Public API::

    from precompute import embed, distances
    e = embed("path/to/task", probe="efficientnet_lite0", method="rademacher")

The names below are resolved on first use (PEP 562), so that ``import precompute.errors`` or
``precompute.store`` (the explorer's cold path) does not import torch (about 4 s) or numba.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {"Task2VecError": "errors", "EmbedConfig": "task2vec", "TaskEmbedding": "task2vec",
         "embed": "task2vec", "embed_methods": "task2vec"}

__all__ = [*_LAZY, "distances", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "distances":
        return importlib.import_module(".distances", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
