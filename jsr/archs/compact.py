"""Real-ESRGAN's SRVGGNetCompact ('srvgg_compact', RGB in [0, 1]), and the masked layers the small networks share.

The network: conv3x3(3 -> nf) + PReLU(nf), ``num_conv`` x [conv3x3(nf -> nf) + PReLU(nf)], conv3x3(nf -> 3*s*s),
PixelShuffle(s), plus the input upsampled by NEAREST x s. The PyTorch keys are ``body.{i}.weight/bias`` with convs
at even and per-channel PReLUs at odd indices; Flax layers keep those indices (``body_{i}``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.archs import Architecture, StateDict, register
from jsr.archs.mapping import Target, conv, from_targets
from jsr.models.layers import ChannelPReLU, Conv
from jsr.models.srresnet import pixel_shuffle
from jsr.ops.conv import conv_function

# PyTorch's Conv2d default (kaiming_uniform with a = sqrt(5)), so training from scratch starts where torch would.
TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def apply_mask(x, mask):
    """Zero ``x`` outside ``mask``: a conv then sees exactly the zero padding it would see on the unpadded image."""
    return x if mask is None else x * mask.astype(x.dtype)


def nearest_upsample(x, r: int):
    """x ``r`` by pixel repetition: out[h, w] = in[h // r, w // r] (PyTorch's 'nearest' for integer factors)."""
    return x if r == 1 else jnp.repeat(jnp.repeat(x, r, axis=1), r, axis=2)


class MaskedConv(nn.Module):
    """A stride-1, same-padded conv whose input is zeroed outside ``mask`` first (see ``apply_mask``)."""

    features: int
    kernel: int
    use_bias: bool = True
    kernel_init: Any = TORCH_CONV_INIT
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        pad = self.kernel // 2
        return Conv(
            self.features,
            (self.kernel, self.kernel),
            padding=((pad, pad), (pad, pad)),
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            conv_general_dilated=conv_function(self.conv),
            name="conv",
        )(apply_mask(x, mask))


def channel_prelu(torch_key: str, flax_path: tuple[str, ...], c: int) -> dict[str, Target]:
    return {torch_key: Target("params", (*flax_path, "negative_slope"), (c,))}


def indices(state: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` over the keys of ``state``."""
    return sorted({int(m.group(1)) for k in state if isinstance(k, str) and (m := re.fullmatch(pattern, k))})


def shape_of(state: StateDict, key: str) -> tuple[int, ...] | None:
    """The shape of ``state[key]``, or None when absent or not array-like (detect must not raise)."""
    value = state.get(key)
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


# ------------------------------------------------------------------------------------------- the network


class SRVGGNetCompact(nn.Module):
    """SRVGGNetCompact with PReLU activations (the released Real-ESRGAN compact models).

    Attributes:
      num_feat: channels of the body.
      num_conv: body convs between the first and the last conv.
      scale: upscaling factor (PixelShuffle factor and nearest-upsampling factor of the skip).
      channels: image channels (in and out are equal: the skip adds the upsampled input).
      dtype: compute dtype (parameters stay float32).
      conv: convolution path for ``jsr.ops.conv.conv_function`` ('xla', 'fast', 'winograd').

    ``__call__(x, train=False, valid_mask=None)``: NHWC images in [0, 1] -> (N, H*s, W*s, channels). With
    ``valid_mask`` (N, H, W, 1), the valid region of the output equals running on the unpadded image.
    """

    num_feat: int = 64
    num_conv: int = 16
    scale: int = 4
    channels: int = 3
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context per side: one per 3x3 conv; the pixel shuffle and nearest skip stay in-pixel."""
        return self.num_conv + 2

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"SRVGGNetCompact expects NHWC images with {self.channels} channels, got {x.shape}")
        image = x.astype(jnp.float32)
        y = x.astype(self.dtype)
        widths = [self.num_feat] * (self.num_conv + 1) + [self.channels * self.scale**2]
        for j, features in enumerate(widths):
            y = MaskedConv(features, 3, dtype=self.dtype, conv=self.conv, name=f"body_{2 * j}")(y, valid_mask)
            if j < len(widths) - 1:
                y = ChannelPReLU(name=f"body_{2 * j + 1}")(y)
        y = pixel_shuffle(y, self.scale).astype(jnp.float32)
        # The canvas's padding is outside the valid region, so upsampling it whole is exact there.
        return y + nearest_upsample(image, self.scale)


# ------------------------------------------------------------------------------------------- conversion


def detect(state: StateDict) -> dict[str, Any] | None:
    """Config from the keys and shapes: convs at even ``body`` indices, (nf,) PReLU slopes at odd ones."""
    convs = indices(state, r"body\.(\d+)\.weight")
    first = shape_of(state, "body.0.weight")
    if not convs or first is None or len(first) != 4 or first[2:] != (3, 3) or convs[-1] % 2:
        return None
    nf, channels, last = first[0], first[1], convs[-1]
    if convs != list(range(last + 1)) or channels != 3:
        return None
    for i in range(1, last, 2):
        if shape_of(state, f"body.{i}.weight") != (nf,):
            return None
    for i in range(2, last, 2):
        if shape_of(state, f"body.{i}.weight") != (nf, nf, 3, 3):
            return None
    tail = shape_of(state, f"body.{last}.weight")
    if tail is None or len(tail) != 4 or tail[1:] != (nf, 3, 3) or tail[0] % channels:
        return None
    scale = math.isqrt(tail[0] // channels)
    if scale < 1 or scale * scale * channels != tail[0]:
        return None
    return {"num_feat": nf, "num_conv": last // 2 - 1, "scale": scale, "channels": channels}


def targets(num_feat: int, num_conv: int, scale: int, channels: int = 3, **_) -> dict[str, Target]:
    nf = num_feat
    t = conv("body.0", ("body_0", "conv"), channels, nf, 3) | channel_prelu("body.1.weight", ("body_1",), nf)
    for j in range(1, num_conv + 1):
        t |= conv(f"body.{2 * j}", (f"body_{2 * j}", "conv"), nf, nf, 3)
        t |= channel_prelu(f"body.{2 * j + 1}.weight", (f"body_{2 * j + 1}",), nf)
    last = 2 * (num_conv + 1)
    return t | conv(f"body.{last}", (f"body_{last}", "conv"), nf, channels * scale * scale, 3)


def to_flax(state: StateDict, config: dict[str, Any]) -> dict:
    return from_targets(targets)(state, config)


ARCH = register(
    Architecture(
        name="srvgg_compact",
        module=SRVGGNetCompact,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("body.0.weight", "body.1.weight", "body.2.weight"),
        value_range=(0.0, 1.0),
        colour="rgb",
        exact_tiling=True,
    )
)
