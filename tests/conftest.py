"""Shared fixtures: small real tasks built from data that installs offline."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from precompute.errors import Task2VecError
from precompute.probes import Probe
from precompute.tasks import TaskData, task_from_arrays

SIDE = 32  # small input keeps the CPU suite fast; the probes accept any size >= 32


@pytest.fixture(scope="session")
def digits():
    d = load_digits()
    return (d.images / 16 * 255).astype(np.uint8), d.target


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist


@pytest.fixture(scope="session")
def fashion():
    """The first 300 Fashion-MNIST test images and labels (another domain than digits)."""
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), np.uint8, offset=8)
    return images[:300], labels[:300]


@pytest.fixture(scope="session")
def digits_task(digits) -> TaskData:
    images, labels = digits
    return task_from_arrays(images[:300], labels[:300], input_size=SIDE, name="digits")


def constant_task(task: TaskData) -> TaskData:
    """Every image labelled the same: the task carries no information about the label."""
    return TaskData(name="constant", images=task.images,
                    labels=torch.zeros(task.size, dtype=torch.long), classes=["all"],
                    source="<memory>")


def tiny_probe(seed: int = 0) -> Probe:
    """A small conv net whose exact diagonal Fisher is cheap to compute by enumeration."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in backbone:
        if isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode statistics
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return Probe("tiny", backbone, None, feature_dim=6, input_size=SIDE).eval()


def expect_error(call, *phrases: str) -> str:
    """Assert ``call()`` raises Task2VecError whose one-line message holds every phrase."""
    with pytest.raises(Task2VecError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    return message
