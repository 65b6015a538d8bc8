"""SRResNet generator in the layout of SRGAN-PyTorch's released weights (NHWC, images in [-1, 1]).

Layer names mirror the PyTorch attribute names (conv01, body_i, conv02, tail_j, last_conv) so that
parameter-path patterns such as ``tail`` / ``last_conv`` mean the same thing in both worlds.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.models.layers import Conv, PReLU
from jsr.ops.conv import conv_function
from jsr.ops.resize import masked_upscale

# PyTorch BatchNorm2d defaults (running-stat momentum 0.1 == Flax momentum 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
PRELU_INIT = 0.25
# SRGAN-PyTorch initialises every conv weight from N(0, 0.02) and every bias at zero.
CONV_INIT = nn.initializers.normal(stddev=0.02)


def pixel_shuffle(x: jnp.ndarray, r: int) -> jnp.ndarray:
    """PyTorch's PixelShuffle in NHWC: out[h*r+i, w*r+j, c] = in[h, w, c*r*r + i*r + j].

    This is NOT ``depth_to_space``'s channel order; using PyTorch's keeps released weights valid as-is.
    """
    n, h, w, crr = x.shape
    c = crr // (r * r)
    x = x.reshape(n, h, w, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # n, h, i, w, j, c
    return x.reshape(n, h * r, w * r, c)


def upsample_factors(scale: int, pow2_stages: bool = False) -> tuple[int, ...]:
    """SRGAN-PyTorch's rule: x4 is two x2 stages, any other scale one PixelShuffle(scale); with ``pow2_stages``
    (the SRGAN paper layout) log2(scale) x2 stages."""
    if scale < 2:
        raise ValueError(f"scale must be >= 2, got {scale}")
    if pow2_stages:
        if scale & (scale - 1):
            raise ValueError(f"pow2_stages needs a power-of-two scale, got {scale}")
        return (2,) * (scale.bit_length() - 1)
    return (2, 2) if scale == 4 else (scale,)


def bicubic_upscale(x: jnp.ndarray, scale: int, valid_mask=None) -> jnp.ndarray:
    """Bicubic x``scale`` upscale, exact on masked canvases (``jsr.ops.resize.masked_upscale``)."""
    return masked_upscale(x, scale, "bicubic", valid_mask)


class _MaskedConv(nn.Module):
    """A same-padded conv whose input is zeroed outside ``mask`` first.

    Zeroing the input of every conv makes a zero-padded canvas compute exactly what the network computes on
    the valid region alone (conv zero padding == zeros on the canvas). This is what lets tiles and batches of
    differently sized images share one compiled shape without changing a single output pixel.
    """

    features: int
    kernel: int
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        if mask is not None:
            x = x * mask.astype(x.dtype)
        pad = self.kernel // 2
        return Conv(
            self.features,
            (self.kernel, self.kernel),
            padding=((pad, pad), (pad, pad)),
            kernel_init=CONV_INIT,
            dtype=self.dtype,
            conv_general_dilated=conv_function(self.conv),
            name="conv",
        )(x)


class ResidualBlock(nn.Module):
    """[conv, BN, PReLU, conv, BN] + identity; no activation after the add (as in the source)."""

    n_feats: int
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        bn = dict(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype)
        y = _MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv1")(x, mask)
        y = nn.BatchNorm(name="bn1", **bn)(y)
        y = PReLU(negative_slope_init=PRELU_INIT, name="prelu")(y)
        y = _MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv2")(y, mask)
        y = nn.BatchNorm(name="bn2", **bn)(y)
        return x + y


class Generator(nn.Module):
    """SRResNet / SRGAN generator.

    Attributes:
      n_feats: channels of the body.
      num_blocks: residual blocks.
      scale: upscaling factor (2, 3, 4, 8, ...).
      channels: image channels (3 for the released weights).
      bicubic_skip: learn the residual over a bicubic upscale of the input (BasicSR's MSRResNet idea; the output
        is then ``last_conv + bicubic`` without tanh). Off in the released layout; it trains much faster from
        scratch, which is what the CPU quickstart needs.
      post_body: what follows the post-body conv: 'bn' (SRGAN-PyTorch) or 'prelu' (the SRGAN paper's layout as
        leftthomas/SRGAN wrote it).
      tail_kernel: the last conv's kernel (3 in SRGAN-PyTorch, 9 in the paper layout).
      output_01: output (tanh + 1) / 2, i.e. images in [0, 1] (the paper layout) instead of tanh's [-1, 1].
      pow2_stages: upsample in log2(scale) x2 stages for every power-of-two scale (the paper layout).
      dtype: compute dtype (parameters stay float32).
      conv: convolution path, 'xla' (``lax.conv_general_dilated``), 'fast' (``jsr.ops.conv.fast_conv``: the same
        forward, another weight-gradient formulation; reverse-mode only) or 'winograd' ('fast' with the 3x3 convs'
        forward and both gradients by ``jsr.ops.winograd``, fewer multiplications, equal to ~1e-5; CPU inference and
        training; reverse-mode only). Parameters are the same either way.

    ``__call__(x, train=False, return_features=False, valid_mask=None)`` takes NHWC images in [-1, 1] and
    returns the SR image in [-1, 1] (tanh), plus the LR-resolution feature map (after the global skip) when
    ``return_features``. ``valid_mask`` (N, H, W, 1) marks real pixels of a zero-padded canvas: the valid region
    of the output then equals running the network on the unpadded image.
    """

    n_feats: int = 64
    num_blocks: int = 16
    scale: int = 4
    channels: int = 3
    bicubic_skip: bool = False
    post_body: str = "bn"
    tail_kernel: int = 3
    output_01: bool = False
    pow2_stages: bool = False
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.output_01 else (-1.0, 1.0)

    @property
    def upsample_factors(self) -> tuple[int, ...]:
        return upsample_factors(self.scale, self.pow2_stages)

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context one output pixel depends on, in each direction (an upper bound).

        conv01 (9x9) reaches 4, each residual block 2, conv02 1; every 3x3 conv above LR resolution (one per
        upsampler) at most one more LR pixel once the HR grid is aligned to LR pixels, and last_conv
        ceil(half its kernel / scale).
        """
        last = -(-(self.tail_kernel // 2) // self.scale)
        return 4 + 2 * self.num_blocks + 1 + len(self.upsample_factors) + last

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False, valid_mask=None):
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(f"Generator expects NHWC images with {self.channels} channels, got shape {x.shape}")
        mask = valid_mask
        prelu = dict(negative_slope_init=PRELU_INIT)
        image = x.astype(jnp.float32)
        x = x.astype(self.dtype)
        x = _MaskedConv(self.n_feats, 9, self.dtype, self.conv, name="conv01")(x, mask)
        x = PReLU(name="conv01_prelu", **prelu)(x)
        skip = x
        for i in range(self.num_blocks):
            x = ResidualBlock(self.n_feats, self.dtype, self.conv, name=f"body_{i}")(x, train, mask)
        x = _MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv02")(x, mask)
        if self.post_body == "prelu":
            x = PReLU(name="conv02_prelu", **prelu)(x)
        else:
            bn = dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype, name="conv02_bn")
            x = nn.BatchNorm(use_running_average=not train, **bn)(x)
        features = x + skip
        x = features
        for j, r in enumerate(self.upsample_factors):
            x = _MaskedConv(self.n_feats * r * r, 3, self.dtype, self.conv, name=f"tail_{j}")(x, mask)
            x = pixel_shuffle(x, r)
            x = PReLU(name=f"tail_{j}_prelu", **prelu)(x)
            if mask is not None:
                mask = jnp.repeat(jnp.repeat(mask, r, axis=1), r, axis=2)
        x = _MaskedConv(self.channels, self.tail_kernel, self.dtype, self.conv, name="last_conv")(x, mask)
        if self.bicubic_skip:
            sr = x.astype(jnp.float32) + bicubic_upscale(image, self.scale, valid_mask)
        else:
            sr = jnp.tanh(x).astype(jnp.float32)
            sr = (sr + 1.0) / 2.0 if self.output_01 else sr
        if return_features:
            return sr, features.astype(jnp.float32)
        return sr
