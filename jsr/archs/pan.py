"""PAN (Zhao et al., "Efficient Image Super-Resolution Using Pixel Attention", 2020) in the layout of
zhaohengyuan1/PAN's released weights (basicsr ``PAN_arch.py``): NHWC, images in [0, 1].

conv_first, ``nb`` SCPA blocks (self-calibrated convolution with pixel attention), trunk_conv + global skip, one
(x2, x3) or two (x4) nearest-upsampling stages [upconv, pixel attention, LReLU, HRconv, LReLU], conv_last, plus a
bilinear upscale of the input. Everything is local, so tiles with ``receptive_radius`` of overlap stitch exactly.

PAN's x2 and x3 checkpoints have the same keys and shapes (the scale lives only in the interpolation factor), so
``detect`` cannot tell them apart: it returns ``scale=None`` for that layout unless given ``scale=``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.archs import Architecture, StateDict, register
from jsr.archs.compact import MaskedConv, indices, nearest_upsample, shape_of
from jsr.archs.mapping import Target, conv, from_targets
from jsr.ops.resize import masked_upscale

LRELU_SLOPE = 0.2
SCALES = (2, 3, 4)
ONE_STAGE_SCALES = (2, 3)


# ----------------------------------------------------------------------------------------------- layers


def masked_conv(x, mask, features: int, kernel: int, name: str, dtype, conv: str, bias: bool = True):
    """A ``MaskedConv`` (torch's default init) named ``name``; 1x1 convs read no neighbours, so they skip the mask."""
    layer = MaskedConv(features, kernel, use_bias=bias, dtype=dtype, conv=conv, name=name)
    return layer(x, mask if kernel > 1 else None)


def bilinear_upscale(x, scale: int, valid_mask=None):
    """F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False) in NHWC, exact on masked canvases
    (``jsr.ops.resize.masked_upscale``: the same half-pixel coordinates and border clamping)."""
    return masked_upscale(x, scale, "bilinear", valid_mask)


def upscale_stages(scale: int | None) -> tuple[int, ...]:
    """The source's rule: x4 is two x2 stages, x2 and x3 one stage."""
    if scale not in SCALES:
        hint = " (x2 and x3 checkpoints look the same: give the scale)" if scale is None else ""
        raise ValueError(f"PAN supports scales {SCALES}, got {scale}{hint}")
    return (2, 2) if scale == 4 else (scale,)


def lr_radius(hr_radius: int, r: int) -> int:
    """LR pixels that ``hr_radius`` pixels after a x``r`` nearest upsampling can reach: ceil(hr_radius / r)."""
    return -(-hr_radius // r)


class SCPA(nn.Module):
    """Self-calibrated block: a 3x3 branch and a pixel-attention branch on halves of the channels, fused by a 1x1
    conv, plus the identity."""

    nf: int
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        half = self.nf // 2
        opts = dict(dtype=self.dtype, conv=self.conv, bias=False)
        a = nn.leaky_relu(masked_conv(x, mask, half, 1, "conv1_a", **opts), LRELU_SLOPE)
        b = nn.leaky_relu(masked_conv(x, mask, half, 1, "conv1_b", **opts), LRELU_SLOPE)
        a = nn.leaky_relu(masked_conv(a, mask, half, 3, "k1", **opts), LRELU_SLOPE)
        attention = nn.sigmoid(masked_conv(b, mask, half, 1, "k2", self.dtype, self.conv))
        b = masked_conv(b, mask, half, 3, "k3", **opts) * attention
        b = nn.leaky_relu(masked_conv(b, mask, half, 3, "k4", **opts), LRELU_SLOPE)
        return x + masked_conv(jnp.concatenate([a, b], axis=-1), mask, self.nf, 1, "conv3", **opts)


class PAN(nn.Module):
    """Pixel attention network.

    Attributes: in_nc / out_nc image channels, nf body channels, unf reconstruction channels, nb SCPA blocks,
    scale 2, 3 or 4, dtype the compute dtype (parameters stay float32), conv the convolution path
    (``jsr.ops.conv.conv_function``).

    ``__call__(x, train=False, valid_mask=None)``: NHWC images in [0, 1] -> the SR image (float32). ``valid_mask``
    (N, H, W, 1) marks a rectangle of real pixels on a zero-padded canvas; the output's valid region then equals
    running PAN on that rectangle alone (bilinear skip included).
    """

    in_nc: int = 3
    out_nc: int = 3
    nf: int = 40
    unf: int = 24
    nb: int = 16
    scale: int | None = 4
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context per side: conv_first 1, each SCPA 2 (k3 then k4), trunk_conv 1; the three 3x3
        convs after the last upsampling (upconv, HRconv, conv_last) reach ``lr_radius`` of 3 pixels back through
        each stage, and an earlier stage's two convs add 2 at its resolution. The bilinear skip needs 1."""
        hr = 1
        for r in reversed(upscale_stages(self.scale)):
            hr = lr_radius(hr + 2, r)
        return 2 + 2 * self.nb + max(hr, 1)

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        stages = upscale_stages(self.scale)
        if x.ndim != 4 or x.shape[-1] != self.in_nc:
            raise ValueError(f"PAN expects NHWC images with {self.in_nc} channels, got shape {x.shape}")
        opts = dict(dtype=self.dtype, conv=self.conv)
        mask = valid_mask
        image = x.astype(jnp.float32)
        fea = masked_conv(x.astype(self.dtype), mask, self.nf, 3, "conv_first", **opts)
        trunk = fea
        for i in range(self.nb):
            trunk = SCPA(self.nf, self.dtype, self.conv, name=f"SCPA_trunk_{i}")(trunk, mask)
        fea = fea + masked_conv(trunk, mask, self.nf, 3, "trunk_conv", **opts)
        for j, r in enumerate(stages, start=1):
            fea = nearest_upsample(fea, r)
            mask = None if mask is None else nearest_upsample(mask, r)
            fea = masked_conv(fea, mask, self.unf, 3, f"upconv{j}", **opts)
            fea = fea * nn.sigmoid(masked_conv(fea, mask, self.unf, 1, f"att{j}", **opts))
            fea = nn.leaky_relu(fea, LRELU_SLOPE)
            fea = nn.leaky_relu(masked_conv(fea, mask, self.unf, 3, f"HRconv{j}", **opts), LRELU_SLOPE)
        out = masked_conv(fea, mask, self.out_nc, 3, "conv_last", **opts)
        return out.astype(jnp.float32) + bilinear_upscale(image, self.scale, valid_mask)


# ---------------------------------------------------------------------------------------- state_dict mapping


def array_shape(state: StateDict, key: str, ndim: int) -> tuple[int, ...] | None:
    """``state[key]``'s shape when it is an array of ``ndim`` dimensions, else None (detect must not raise)."""
    shape = shape_of(state, key)
    return shape if shape is not None and len(shape) == ndim else None


def consecutive(found: list[int], start: int) -> int:
    """n when ``found`` is exactly start .. start + n - 1, else 0."""
    return len(found) if found == list(range(start, start + len(found))) else 0


def _scale_from_layout(two_stages: bool, scale: int | None) -> int | None:
    if two_stages:
        if scale not in (None, 4):
            raise ValueError(f"PAN: this checkpoint has two upsampling stages (x4), not x{scale}")
        return 4
    if scale is not None and scale not in ONE_STAGE_SCALES:
        raise ValueError(f"PAN: this checkpoint has one upsampling stage (x2 or x3), not x{scale}")
    return scale


def detect(state_dict: StateDict, scale: int | None = None) -> dict[str, Any] | None:
    """PAN's constructor arguments, or None for another family. One-stage checkpoints are x2 or x3 alike: their
    scale is ``scale`` when given, else None (to be supplied before building)."""
    first = array_shape(state_dict, "conv_first.weight", 4)
    up = array_shape(state_dict, "upconv1.weight", 4)
    last = array_shape(state_dict, "conv_last.weight", 4)
    nb = consecutive(indices(state_dict, r"SCPA_trunk\.(\d+)\.conv1_a\.weight"), 0)
    if first is None or up is None or last is None or nb == 0 or array_shape(state_dict, "att1.conv.weight", 4) is None:
        return None
    two_stages = "upconv2.weight" in state_dict
    config = dict(in_nc=first[1], out_nc=last[0], nf=first[0], unf=up[0], nb=nb)
    return config | {"scale": _scale_from_layout(two_stages, scale)}


def scpa_targets(i: int, nf: int) -> dict[str, Target]:
    half = nf // 2
    p, q = f"SCPA_trunk.{i}", f"SCPA_trunk_{i}"
    t = conv(f"{p}.conv1_a", (q, "conv1_a", "conv"), nf, half, 1, bias=False)
    t |= conv(f"{p}.conv1_b", (q, "conv1_b", "conv"), nf, half, 1, bias=False)
    t |= conv(f"{p}.k1.0", (q, "k1", "conv"), half, half, 3, bias=False)
    t |= conv(f"{p}.PAConv.k2", (q, "k2", "conv"), half, half, 1)
    t |= conv(f"{p}.PAConv.k3", (q, "k3", "conv"), half, half, 3, bias=False)
    t |= conv(f"{p}.PAConv.k4", (q, "k4", "conv"), half, half, 3, bias=False)
    return t | conv(f"{p}.conv3", (q, "conv3", "conv"), 2 * half, nf, 1, bias=False)


def targets(in_nc: int, out_nc: int, nf: int, unf: int, nb: int, scale: int | None, **_) -> dict[str, Target]:
    """The torch key -> Flax path table; x2 and x3 (scale None: one of them) map alike."""
    t = conv("conv_first", ("conv_first", "conv"), in_nc, nf, 3)
    for i in range(nb):
        t |= scpa_targets(i, nf)
    t |= conv("trunk_conv", ("trunk_conv", "conv"), nf, nf, 3)
    cin = nf
    for j in range(1, (2 if scale == 4 else 1) + 1):
        t |= conv(f"upconv{j}", (f"upconv{j}", "conv"), cin, unf, 3)
        t |= conv(f"att{j}.conv", (f"att{j}", "conv"), unf, unf, 1)
        t |= conv(f"HRconv{j}", (f"HRconv{j}", "conv"), unf, unf, 3)
        cin = unf
    return t | conv("conv_last", ("conv_last", "conv"), unf, out_nc, 3)


to_flax = from_targets(targets)


ARCH = register(
    Architecture(
        name="pan",
        module=PAN,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("conv_first.weight", "SCPA_trunk.0.conv1_a.weight", "upconv1.weight", "att1.conv.weight"),
        value_range=(0.0, 1.0),
        exact_tiling=True,
        cpu_winograd=False,  # its 24- and 40-channel convs run faster by XLA (benchmarks/archs.py)
    )
)
