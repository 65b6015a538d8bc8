"""The official ``lpips`` package (pip lpips==0.1.4) as the reference of jsr.perceptual, without torchvision.

lpips imports ``torchvision.models`` only to build the trunks' ``features`` Sequentials. torchvision does not load
with a CPU-only torch wheel, so while lpips is imported a stand-in module provides ``vgg16`` / ``alexnet`` with
torchvision's exact ``features`` layout (same indices, so lpips' own slicing applies) and no ImageNet weights; the
stand-in is removed from ``sys.modules`` again afterwards. The LPIPS module is then lpips' own (ScalingLayer,
normalize_tensor, spatial_average, its v0.1 linear heads from lpips/weights/v0.1/*.pth), built with
``pnet_rand=True`` (no download), and its trunk receives the npz's ImageNet weights.
"""

import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

NETS = {"vgg16": "vgg", "alexnet": "alex"}  # jsr name -> lpips name
PREFIX = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")  # cfg "D"


class _Features(nn.Module):
    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features


def _no_imagenet_weights(pretrained):
    if pretrained:
        raise RuntimeError("the stand-in torchvision has no ImageNet weights: build lpips.LPIPS with pnet_rand=True")


def vgg16(pretrained=False, **_):
    """torchvision.models.vgg16's ``features``: conv3x3 pad 1 + ReLU(inplace) per cfg entry, MaxPool2d(2, 2) per M."""
    _no_imagenet_weights(pretrained)
    layers, cin = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return _Features(nn.Sequential(*layers))


def alexnet(pretrained=False, **_):
    """torchvision.models.alexnet's ``features``, index for index."""
    _no_imagenet_weights(pretrained)
    return _Features(
        nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
    )


def import_lpips():
    """The lpips package, imported with the stand-in torchvision (squeezenet/resnet are only looked up when built)."""
    if "lpips" in sys.modules:
        return sys.modules["lpips"]
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.models")}
    package, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    models.vgg16, models.alexnet = vgg16, alexnet
    package.models = models
    sys.modules.update({"torchvision": package, "torchvision.models": models})
    try:
        import lpips
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return lpips


def package_heads(net: str) -> list[np.ndarray]:
    """The lpips package's own v0.1 linear heads for ``net`` (lpips/weights/v0.1/{vgg,alex}.pth), (C,) each."""
    path = Path(import_lpips().__file__).parent / "weights" / "v0.1" / f"{NETS[net]}.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [state[f"lin{i}.model.1.weight"].numpy().reshape(-1) for i in range(5)]


def reference_lpips(net: str, npz_path) -> nn.Module:
    """lpips.LPIPS(net, version 0.1) with the package's heads and the npz's ImageNet trunk, in eval mode."""
    lpips = import_lpips()
    model = lpips.LPIPS(
        pretrained=True, net=NETS[net], version="0.1", lpips=True, spatial=False, pnet_rand=True, verbose=False
    )
    convs = [m for i in range(1, 6) for m in getattr(model.net, f"slice{i}") if isinstance(m, nn.Conv2d)]
    with np.load(npz_path) as z:
        assert len(convs) == sum(k.startswith(PREFIX[net] + "/") and k.endswith("/kernel") for k in z.files)
        with torch.no_grad():
            for k, conv in enumerate(convs):
                kernel = z[f"{PREFIX[net]}/Conv_{k}/kernel"]  # HWIO -> OIHW
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
                conv.bias.copy_(torch.from_numpy(z[f"{PREFIX[net]}/Conv_{k}/bias"]))
    return model.eval()


def to_torch(x: np.ndarray) -> torch.Tensor:
    """NHWC in [0, 1] -> NCHW in [-1, 1], what lpips.LPIPS takes with normalize=False."""
    return torch.from_numpy(np.ascontiguousarray(2.0 * x.transpose(0, 3, 1, 2) - 1.0, dtype=np.float32))


@torch.no_grad()
def lpips_distances(model: nn.Module, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) distances by lpips.LPIPS.forward on NHWC batches in [0, 1]."""
    return model(to_torch(a), to_torch(b), normalize=False).numpy().reshape(-1)


@torch.no_grad()
def trunk_features(model: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """{tap: NHWC} of lpips' trunk (its slices) on its ScalingLayer's output, x NHWC in [0, 1]."""
    out = model.net(model.scaling_layer(to_torch(x)))
    return {tap: f.numpy().transpose(0, 2, 3, 1) for tap, f in zip(out._fields, out, strict=True)}
