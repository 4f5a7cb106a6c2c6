"""The interface every probe network shares (timm-style: created by name, same small surface)."""
from __future__ import annotations

import torch
from torch import nn

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
    """

    def __init__(self, name: str, backbone: nn.Module, classifier: nn.Linear | None,
                 feature_dim: int, input_size: int,
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD):
        super().__init__()
        self.name = name
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError(f"probe {self.name!r} has no classifier head")
        return self.classifier(self.backbone(x))
