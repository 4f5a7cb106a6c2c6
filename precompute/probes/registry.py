"""The probe registry (as timm's ``_registry.py``): ``@register_probe(name, ...)`` on a function
``(name, weights, pretrained) -> Probe`` that knows its architecture's config (weights file,
input normalisation, native resolution); :func:`create` resolves a name in one place."""
from __future__ import annotations

import os
from typing import Callable

from ..errors import Task2VecError
from .base import Probe

_REGISTRY: dict[str, Callable[[str, str | None, bool], Probe]] = {}


def register_probe(*names: str):
    """Register the decorated builder under each of ``names``."""
    def decorate(builder):
        for name in names:
            _REGISTRY[name] = builder
        return builder
    return decorate


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, *, weights: str | os.PathLike | None = None,
           pretrained: bool = True) -> Probe:
    """Create probe ``name`` in eval mode on the CPU.

    Args:
        weights: a state-dict file to use instead of the default location.
        pretrained: ``False`` gives random weights (for timing only; embeddings are meaningless).
    """
    weights = os.fspath(weights) if weights is not None else None
    if name not in _REGISTRY:
        raise Task2VecError(f"unknown probe {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name](name, weights, pretrained).eval()
