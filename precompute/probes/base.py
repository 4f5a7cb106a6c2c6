"""The interface every probe network shares (timm-style: created by name, same small surface)."""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from ..errors import Task2VecError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Probe(nn.Module):
    """A pre-trained network used to embed tasks (paper section 3.1).

    Attributes:
        name: registry name, recorded in every embedding.
        backbone: maps normalised images ``[B, 3, H, W]`` to pooled features ``[B, feature_dim]``.
        classifier: the network's own ImageNet head (``nn.Linear``), or ``None``.
        mean, std: per-channel normalisation applied to images scaled to [0, 1].
        input_size: the side (pixels) the network was trained at; embeddings may use another.

    The task embedding has one value per filter of ``filter_layers()``: every ``Conv2d`` output
    channel and every ``BatchNorm2d`` channel of the backbone, in module order.

    ``splitter``: ``(backbone, stages) -> (trunk, tail)``, the architecture's cut (:meth:`split`),
    for backbones that are not this project's own modules (torchvision's ResNet).
    """

    def __init__(self, name: str, backbone: nn.Module, classifier: nn.Linear | None,
                 feature_dim: int, input_size: int,
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD,
                 splitter: Callable[[nn.Module, int], tuple[nn.Module, nn.Module]] | None = None):
        super().__init__()
        self.name = name
        self._splitter = splitter
        self.backbone = backbone
        self.classifier = classifier
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, H, W]`` -> normalised float (dtype of the mean buffer)."""
        return (images_uint8.to(self.mean.dtype) / 255.0 - self.mean) / self.std

    def filter_layers(self) -> list[tuple[str, nn.Module]]:
        """Ordered (name, module) pairs of the backbone's filter-bearing layers."""
        return [(n, m) for n, m in self.backbone.named_modules()
                if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]

    def filter_counts(self) -> list[int]:
        return [m.weight.shape[0] for _, m in self.filter_layers()]

    @property
    def num_filters(self) -> int:
        return sum(self.filter_counts())

    def split(self, stages: int = 1) -> tuple[nn.Module, nn.Module]:
        """(trunk, tail) with ``tail(trunk(x)) == backbone(x)``; both share the probe's weights.

        The trunk is frozen and shared by all experts; the tail, the last ``stages`` stages of
        the backbone, is what an expert fine-tunes (paper section 4.2). Each architecture says
        where its stages begin: its backbone's own ``split(stages)`` or the
        ``splitter(backbone, stages)`` it registered; a plain ``nn.Sequential`` backbone is
        cut before its ``stages``-th last convolution.
        """
        if stages < 1:
            raise Task2VecError(f"the tail needs at least 1 stage, not {stages}")
        if hasattr(self.backbone, "split"):
            return self.backbone.split(stages)
        if self._splitter is not None:
            return self._splitter(self.backbone, stages)
        bb = self.backbone
        if isinstance(bb, nn.Sequential):
            convs = [i for i, m in enumerate(bb) if isinstance(m, nn.Conv2d)]
            if len(convs) >= stages:
                cut = convs[-stages]
                return nn.Sequential(*bb[:cut]), Pooled(*bb[cut:])
        raise Task2VecError(f"probe {self.name!r} cannot be split into a frozen trunk and a "
                            f"tail of {stages} stage(s)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError(f"probe {self.name!r} has no classifier head")
        return self.classifier(self.backbone(x))


class Pooled(nn.Sequential):
    """A tail whose output is globally average-pooled (or flattened), like a backbone's."""

    def forward(self, x):
        x = super().forward(x)
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


# weights files, shared by every architecture


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    # weights_only: never unpickle arbitrary objects from a file.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise Task2VecError(f"cannot read weights file {path}: {exc}") from None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, what: str) -> set:
    """Load the keys under ``prefix`` into ``module`` strictly; return the keys used."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise Task2VecError(f"weights do not match {what}: {str(exc).splitlines()[0]}") from None
    return {prefix + k for k in own}
