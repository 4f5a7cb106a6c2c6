"""ResNet-18/34 (the paper's probe family) from torchvision, with a weights file: this machine
cannot download them, so the file is looked up in the torch hub cache or given as ``weights``."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import Task2VecError
from .base import Pooled, Probe, load_state_dict, load_strict
from .registry import register_probe

NAMES = ("resnet18", "resnet34")


def weights_file(name: str) -> Path:
    import torchvision

    enum = {"resnet18": torchvision.models.ResNet18_Weights,
            "resnet34": torchvision.models.ResNet34_Weights}[name]
    filename = os.path.basename(enum.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def split(bb: nn.Module, stages: int = 1) -> tuple[nn.Module, nn.Module]:
    """(trunk, tail) sharing the weights: the tail is the last ``stages`` of layer1..layer4
    (1: ``layer4``; 2: ``layer3`` + ``layer4``)."""
    layers = [bb.layer1, bb.layer2, bb.layer3, bb.layer4]
    if not 1 <= stages <= len(layers):
        raise Task2VecError(f"the tail can hold 1 to {len(layers)} stages, not {stages}")
    cut = len(layers) - stages
    trunk = nn.Sequential(bb.conv1, bb.bn1, bb.relu, bb.maxpool, *layers[:cut])
    return trunk, Pooled(*layers[cut:])


@register_probe(*NAMES)
def create_resnet(name: str, weights: str | None, pretrained: bool) -> Probe:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        path = Path(weights) if weights else weights_file(name)
        if not path.is_file():
            raise Task2VecError(
                f"ImageNet weights for {name} not found at {path}; this machine cannot download "
                f"them: place {weights_file(name).name} there (or pass --weights FILE)")
        load_strict(net, load_state_dict(path), "", name)
    classifier = net.fc
    net.fc = nn.Identity()
    return Probe(name, net, classifier, feature_dim=classifier.in_features, input_size=224,
                 splitter=split)
