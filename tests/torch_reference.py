"""PyTorch modules with SRGAN-PyTorch's and torchvision's exact attribute names, written for the parity tests.

They reproduce the state_dict layout of the released weights (and the source's shared-PReLU quirk), so that the
converter is tested against the real key names and shapes, not against itself.
"""

import torch
from torch import nn


class Conv(nn.Module):
    """The source's `conv`: body = [Conv2d(k, stride, pad k//2, bias), optional BN, optional act]."""

    def __init__(self, cin, cout, k, bn=False, act=None, stride=1):
        super().__init__()
        layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=True)]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        if act is not None:
            layers.append(act)
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class ResBlock(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.body = nn.Sequential(Conv(c, c, 3, bn=True, act=act), Conv(c, c, 3, bn=True, act=None))

    def forward(self, x):
        return self.body(x) + x


class Upsampler(nn.Module):
    def __init__(self, c, r, act):
        super().__init__()
        self.body = nn.Sequential(Conv(c, c * r * r, 3), nn.PixelShuffle(r), act)

    def forward(self, x):
        return self.body(x)


class Generator(nn.Module):
    """shared_prelu=True reproduces the source: ONE PReLU module used by every layer."""

    def __init__(self, img_feat=3, n_feats=64, num_block=16, scale=4, shared_prelu=True):
        super().__init__()
        shared = nn.PReLU()
        act = (lambda: shared) if shared_prelu else nn.PReLU
        self.conv01 = Conv(img_feat, n_feats, 9, act=act())
        self.body = nn.Sequential(*[ResBlock(n_feats, act()) for _ in range(num_block)])
        self.conv02 = Conv(n_feats, n_feats, 3, bn=True)
        factors = [2, 2] if scale == 4 else [scale]
        self.tail = nn.Sequential(*[Upsampler(n_feats, r, act()) for r in factors])
        self.last_conv = Conv(n_feats, img_feat, 3, act=nn.Tanh())

    def forward(self, x):
        x = self.conv01(x)
        skip = x
        feat = self.conv02(self.body(x)) + skip
        return self.last_conv(self.tail(feat)), feat


class DiscrimBlock(nn.Module):
    def __init__(self, cin, cout, act):
        super().__init__()
        self.body = nn.Sequential(Conv(cin, cout, 3, bn=True, act=act), Conv(cout, cout, 3, bn=True, act=act, stride=2))

    def forward(self, x):
        return self.body(x)


class Discriminator(nn.Module):
    def __init__(self, img_feat=3, n_feats=64, num_of_block=3, patch_size=96):
        super().__init__()
        act = nn.LeakyReLU()
        self.conv01 = Conv(img_feat, n_feats, 3, act=act)
        self.conv02 = Conv(n_feats, n_feats, 3, act=act, stride=2)
        self.body = nn.Sequential(
            *[DiscrimBlock(n_feats * 2**i, n_feats * 2 ** (i + 1), act) for i in range(num_of_block)]
        )
        self.linear_size = (patch_size // 2 ** (num_of_block + 1)) ** 2 * n_feats * 2**num_of_block
        self.tail = nn.Sequential(nn.Linear(self.linear_size, 1024), act, nn.Linear(1024, 1), nn.Sigmoid())

    def forward(self, x):
        x = self.body(self.conv02(self.conv01(x)))
        return self.tail(x.reshape(-1, self.linear_size))


VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG19(nn.Module):
    """torchvision's vgg19 layout: `features` Sequential and a (small, ignored) `classifier`."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(8, 4))

    def taps(self, x, indices):
        """Outputs of `features` after the layers at `indices` (relu2_2 = 8, relu5_4 = 35)."""
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in indices:
                out[i] = x
            if i >= max(indices):
                break
        return out


def randomize_(model: nn.Module, seed: int = 0, prelu_per_layer: bool = False, he_init: bool = False) -> nn.Module:
    """Non-trivial weights AND BatchNorm statistics, so that a wrong mapping of any tensor shows up.

    he_init: He-normal conv/linear weights, so a deep plain stack (the discriminator) keeps its input's signal
    instead of mapping every image to the same output.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if he_init and isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.05 + 0.4 * torch.rand(1, generator=g) if prelu_per_layer else torch.tensor([0.2]))
    model.eval()
    return model
