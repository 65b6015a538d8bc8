"""PAN and IMDN in PyTorch with their publishers' attribute names (zhaohengyuan1/PAN ``PAN_arch.py``,
Zheng222/IMDN ``model/architecture.py`` + ``model/block.py``), written from those files for the parity tests:
their state_dicts have the released key names and shapes, so jsr's converter is tested against the real layout.
"""

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------------------ PAN


class PA(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.conv = nn.Conv2d(nf, nf, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.conv(x))


class PAConv(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.k2 = nn.Conv2d(nf, nf, 1)
        self.k3 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)
        self.k4 = nn.Conv2d(nf, nf, 3, padding=1, bias=False)

    def forward(self, x):
        return self.k4(self.k3(x) * torch.sigmoid(self.k2(x)))


class SCPA(nn.Module):
    def __init__(self, nf):
        super().__init__()
        half = nf // 2
        self.conv1_a = nn.Conv2d(nf, half, 1, bias=False)
        self.conv1_b = nn.Conv2d(nf, half, 1, bias=False)
        self.k1 = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, bias=False))
        self.PAConv = PAConv(half)
        self.conv3 = nn.Conv2d(2 * half, nf, 1, bias=False)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x):
        a = self.lrelu(self.k1(self.lrelu(self.conv1_a(x))))
        b = self.lrelu(self.PAConv(self.lrelu(self.conv1_b(x))))
        return self.conv3(torch.cat([a, b], dim=1)) + x


class PAN(nn.Module):
    def __init__(self, in_nc=3, out_nc=3, nf=40, unf=24, nb=16, scale=4):
        super().__init__()
        self.scale = scale
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.SCPA_trunk = nn.Sequential(*[SCPA(nf) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upconv1 = nn.Conv2d(nf, unf, 3, 1, 1)
        self.att1 = PA(unf)
        self.HRconv1 = nn.Conv2d(unf, unf, 3, 1, 1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(unf, unf, 3, 1, 1)
            self.att2 = PA(unf)
            self.HRconv2 = nn.Conv2d(unf, unf, 3, 1, 1)
        self.conv_last = nn.Conv2d(unf, out_nc, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def stage(self, fea, r, upconv, att, hrconv):
        fea = upconv(F.interpolate(fea, scale_factor=r, mode="nearest"))
        return self.lrelu(hrconv(self.lrelu(att(fea))))

    def forward(self, x):
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.SCPA_trunk(fea))
        if self.scale == 4:
            fea = self.stage(fea, 2, self.upconv1, self.att1, self.HRconv1)
            fea = self.stage(fea, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            fea = self.stage(fea, self.scale, self.upconv1, self.att1, self.HRconv1)
        skip = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(fea) + skip


# ----------------------------------------------------------------------------------------------------- IMDN


def conv_layer(cin, cout, k):
    return nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)


def stdv_channels(x):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) ** 2).sum(dim=(2, 3), keepdim=True).div(x.size(2) * x.size(3)).pow(0.5)


class CCALayer(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, channel // reduction, 1),
            nn.ReLU(),
            nn.Conv2d(channel // reduction, channel, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.conv_du(stdv_channels(x) + self.avg_pool(x))


class IMDModule(nn.Module):
    def __init__(self, in_channels, distillation_rate=0.25):
        super().__init__()
        self.d = int(in_channels * distillation_rate)
        self.r = in_channels - self.d
        self.c1 = conv_layer(in_channels, in_channels, 3)
        self.c2 = conv_layer(self.r, in_channels, 3)
        self.c3 = conv_layer(self.r, in_channels, 3)
        self.c4 = conv_layer(self.r, self.d, 3)
        self.act = nn.LeakyReLU(0.05)
        self.c5 = conv_layer(in_channels, in_channels, 1)
        self.cca = CCALayer(self.d * 4)

    def forward(self, x):
        d1, r1 = torch.split(self.act(self.c1(x)), (self.d, self.r), dim=1)
        d2, r2 = torch.split(self.act(self.c2(r1)), (self.d, self.r), dim=1)
        d3, r3 = torch.split(self.act(self.c3(r2)), (self.d, self.r), dim=1)
        out = torch.cat([d1, d2, d3, self.c4(r3)], dim=1)
        return self.c5(self.cca(out)) + x


class IMDN(nn.Module):
    """IMDB1..IMDB{num_modules} as attributes (the source hard-codes six)."""

    def __init__(self, in_nc=3, nf=64, num_modules=6, out_nc=3, upscale=4):
        super().__init__()
        self.num_modules = num_modules
        self.fea_conv = conv_layer(in_nc, nf, 3)
        for i in range(1, num_modules + 1):
            setattr(self, f"IMDB{i}", IMDModule(nf))
        self.c = nn.Sequential(nn.Conv2d(nf * num_modules, nf, 1), nn.LeakyReLU(0.05))
        self.LR_conv = conv_layer(nf, nf, 3)
        self.upsampler = nn.Sequential(conv_layer(nf, out_nc * upscale**2, 3), nn.PixelShuffle(upscale))

    def forward(self, x):
        fea = self.fea_conv(x)
        outs, h = [], fea
        for i in range(1, self.num_modules + 1):
            h = getattr(self, f"IMDB{i}")(h)
            outs.append(h)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea)
