"""PyTorch references for SRVGGNetCompact (Real-ESRGAN), VDSR (twtygqyy/pytorch-vdsr) and FSRCNN (yjn870), with
their publishers' attribute names, written from those repositories' model code for the parity tests."""

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's realesrgan/archs/srvgg_arch.py with act_type='prelu'."""

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)])
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(nn.PReLU(num_parameters=num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x):
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


class ConvReLUBlock(nn.Module):
    """vdsr.py's Conv_ReLU_Block."""

    def __init__(self, features=64):
        super().__init__()
        self.conv = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv(x))


class VDSR(nn.Module):
    """vdsr.py's Net: the layout of the released model_epoch_50.pth."""

    def __init__(self, features=64, num_residual=18):
        super().__init__()
        self.residual_layer = nn.Sequential(*[ConvReLUBlock(features) for _ in range(num_residual)])
        self.input = nn.Conv2d(1, features, 3, 1, 1, bias=False)
        self.output = nn.Conv2d(features, 1, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.input(x))
        out = self.residual_layer(out)
        return self.output(out) + x


class FSRCNN(nn.Module):
    """FSRCNN-pytorch's models.py."""

    def __init__(self, scale_factor, num_channels=1, d=56, s=12, m=4):
        super().__init__()
        self.first_part = nn.Sequential(nn.Conv2d(num_channels, d, kernel_size=5, padding=5 // 2), nn.PReLU(d))
        mid = [nn.Conv2d(d, s, kernel_size=1), nn.PReLU(s)]
        for _ in range(m):
            mid.extend([nn.Conv2d(s, s, kernel_size=3, padding=3 // 2), nn.PReLU(s)])
        mid.extend([nn.Conv2d(s, d, kernel_size=1), nn.PReLU(d)])
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(
            d, num_channels, kernel_size=9, stride=scale_factor, padding=9 // 2, output_padding=scale_factor - 1
        )

    def forward(self, x):
        return self.last_part(self.mid_part(self.first_part(x)))


def randomize_(module: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
    """He-normal weights times ``gain``, small random biases, PReLU slopes uniform in [0.05, 0.5]: outputs that vary
    across the image without blowing up, so a wrong pixel anywhere shows up in a comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.PReLU):
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 0.45 + 0.05)
            elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = layer.weight[0].numel() if isinstance(layer, nn.Conv2d) else layer.weight[:, 0].numel()
                std = gain * math.sqrt(2.0 / fan_in)
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
                if layer.bias is not None:
                    layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.05)
    return module.eval()
