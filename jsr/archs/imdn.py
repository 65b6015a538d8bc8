"""IMDN (Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation Network", 2019) in the
layout of Zheng222/IMDN's released weights (``model/architecture.py`` IMDN, ``model/block.py``): NHWC, [0, 1].

fea_conv, ``num_modules`` IMDB blocks (progressive channel splitting, contrast-aware channel attention, 1x1 fusion,
identity), a 1x1 conv over all blocks' outputs, LR_conv + global skip, conv + PixelShuffle(scale).

Not exactly tileable: each block's channel attention reads the mean and the (population) standard deviation of
every channel over the WHOLE image, so a tile sees other statistics than the whole image and its output differs
(slightly: the attention only rescales channels). A zero-padded canvas with ``valid_mask`` is exact: the statistics
are taken over the valid pixels only.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.archs import Architecture, StateDict, register
from jsr.archs.compact import indices
from jsr.archs.mapping import Target, conv, from_targets
from jsr.archs.pan import array_shape, consecutive, masked_conv
from jsr.models.srresnet import pixel_shuffle

LRELU_SLOPE = 0.05
DISTILLATION_RATE = 0.25
CCA_REDUCTION = 16


def split_channels(nf: int) -> tuple[int, int]:
    """(distilled, remaining) channels of an IMDB, as the source rounds them."""
    distilled = int(nf * DISTILLATION_RATE)
    return distilled, nf - distilled


def contrast_plus_mean(x, mask=None):
    """Per-image, per-channel std + mean over the (valid) pixels: (N, 1, 1, C) in float32.

    The source divides by the pixel count (population variance, two passes: mean first); so does this.
    """
    x = x.astype(jnp.float32)
    if mask is None:
        mean = x.mean(axis=(1, 2), keepdims=True)
        variance = jnp.square(x - mean).mean(axis=(1, 2), keepdims=True)
    else:
        mask = mask.astype(jnp.float32)
        count = jnp.maximum(mask.sum(axis=(1, 2), keepdims=True), 1.0)  # an empty canvas must not divide by 0
        mean = (x * mask).sum(axis=(1, 2), keepdims=True) / count
        variance = (jnp.square(x - mean) * mask).sum(axis=(1, 2), keepdims=True) / count
    return jnp.sqrt(variance) + mean


class IMDModule(nn.Module):
    """Information multi-distillation block: three 3x3 convs each keep a quarter of their channels, a fourth
    conv maps the rest to a quarter; the four quarters go through contrast-aware channel attention and a 1x1 conv,
    plus the identity."""

    nf: int
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        distilled, _ = split_channels(self.nf)
        opts = dict(dtype=self.dtype, conv=self.conv)
        kept, rest = [], x
        for name in ("c1", "c2", "c3"):
            out = nn.leaky_relu(masked_conv(rest, mask, self.nf, 3, name, **opts), LRELU_SLOPE)
            kept.append(out[..., :distilled])
            rest = out[..., distilled:]
        kept.append(masked_conv(rest, mask, distilled, 3, "c4", **opts))
        out = jnp.concatenate(kept, axis=-1)
        out = CCALayer(self.dtype, self.conv, name="cca")(out, mask)
        return masked_conv(out, mask, self.nf, 1, "c5", **opts) + x


class CCALayer(nn.Module):
    """Contrast-aware channel attention: x * sigmoid(conv(relu(conv(std + mean)))) per channel."""

    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        c = x.shape[-1]
        y = contrast_plus_mean(x, mask).astype(self.dtype)
        y = nn.relu(masked_conv(y, None, c // CCA_REDUCTION, 1, "conv_du0", self.dtype, self.conv))
        return x * nn.sigmoid(masked_conv(y, None, c, 1, "conv_du2", self.dtype, self.conv))


class IMDN(nn.Module):
    """Information multi-distillation network.

    Attributes: in_nc / out_nc image channels, nf body channels, num_modules IMDB blocks, scale (any >= 1: one
    PixelShuffle), dtype the compute dtype (parameters stay float32), conv the convolution path.

    ``__call__(x, train=False, valid_mask=None)``: NHWC images in [0, 1] -> the SR image (float32). With
    ``valid_mask`` (N, H, W, 1) the output's valid region equals running IMDN on the valid pixels alone.
    """

    in_nc: int = 3
    nf: int = 64
    num_modules: int = 6
    out_nc: int = 3
    scale: int = 4
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context per side of the convolutions alone (fea_conv 1, each IMDB's four 3x3 convs 4,
        LR_conv 1, the upsampler 1); the channel statistics reach further: the whole image."""
        return 1 + 4 * self.num_modules + 1 + 1

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        if x.ndim != 4 or x.shape[-1] != self.in_nc:
            raise ValueError(f"IMDN expects NHWC images with {self.in_nc} channels, got shape {x.shape}")
        opts = dict(dtype=self.dtype, conv=self.conv)
        mask = valid_mask
        fea = masked_conv(x.astype(self.dtype), mask, self.nf, 3, "fea_conv", **opts)
        outs, h = [], fea
        for i in range(1, self.num_modules + 1):
            h = IMDModule(self.nf, self.dtype, self.conv, name=f"IMDB{i}")(h, mask)
            outs.append(h)
        fused = nn.leaky_relu(masked_conv(jnp.concatenate(outs, axis=-1), mask, self.nf, 1, "c", **opts), LRELU_SLOPE)
        lr = masked_conv(fused, mask, self.nf, 3, "LR_conv", **opts) + fea
        out = masked_conv(lr, mask, self.out_nc * self.scale**2, 3, "upsampler", **opts)
        return pixel_shuffle(out, self.scale).astype(jnp.float32)


# ---------------------------------------------------------------------------------------- state_dict mapping


def detect(state_dict: StateDict) -> dict[str, Any] | None:
    """IMDN's constructor arguments from keys and shapes, or None for another family (out_nc = in_nc assumed: the
    upsampler's out_nc * scale^2 channels do not separate the two)."""
    first = array_shape(state_dict, "fea_conv.weight", 4)
    fuse = array_shape(state_dict, "c.0.weight", 4)
    up = array_shape(state_dict, "upsampler.0.weight", 4)
    blocks = consecutive(indices(state_dict, r"IMDB(\d+)\.c1\.weight"), 1)
    attention = array_shape(state_dict, "IMDB1.cca.conv_du.0.weight", 4)
    if first is None or fuse is None or up is None or attention is None or blocks == 0:
        return None
    in_nc, nf = first[1], first[0]
    if in_nc < 1:
        return None
    scale = math.isqrt(up[0] // in_nc)
    if fuse[1] != nf * blocks or scale < 1 or scale * scale * in_nc != up[0]:
        return None
    return dict(in_nc=in_nc, nf=nf, num_modules=blocks, out_nc=in_nc, scale=scale)


def imdb_targets(i: int, nf: int) -> dict[str, Target]:
    distilled, remaining = split_channels(nf)
    p, q = f"IMDB{i}", f"IMDB{i}"
    t = conv(f"{p}.c1", (q, "c1", "conv"), nf, nf, 3)
    t |= conv(f"{p}.c2", (q, "c2", "conv"), remaining, nf, 3)
    t |= conv(f"{p}.c3", (q, "c3", "conv"), remaining, nf, 3)
    t |= conv(f"{p}.c4", (q, "c4", "conv"), remaining, distilled, 3)
    t |= conv(f"{p}.c5", (q, "c5", "conv"), nf, nf, 1)
    c = 4 * distilled
    t |= conv(f"{p}.cca.conv_du.0", (q, "cca", "conv_du0", "conv"), c, c // CCA_REDUCTION, 1)
    return t | conv(f"{p}.cca.conv_du.2", (q, "cca", "conv_du2", "conv"), c // CCA_REDUCTION, c, 1)


def targets(in_nc: int, nf: int, num_modules: int, out_nc: int, scale: int, **_) -> dict[str, Target]:
    """The torch key -> Flax path table."""
    t = conv("fea_conv", ("fea_conv", "conv"), in_nc, nf, 3)
    for i in range(1, num_modules + 1):
        t |= imdb_targets(i, nf)
    t |= conv("c.0", ("c", "conv"), nf * num_modules, nf, 1)
    t |= conv("LR_conv", ("LR_conv", "conv"), nf, nf, 3)
    return t | conv("upsampler.0", ("upsampler", "conv"), nf, out_nc * scale * scale, 3)


to_flax = from_targets(targets)


ARCH = register(
    Architecture(
        name="imdn",
        module=IMDN,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("fea_conv.weight", "IMDB1.c1.weight", "IMDB1.cca.conv_du.0.weight", "c.0.weight"),
        value_range=(0.0, 1.0),
        exact_tiling=False,
    )
)
