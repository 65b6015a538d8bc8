"""VDSR in twtygqyy/pytorch-vdsr's layout ('vdsr', Y channel in [0, 1], input ALREADY bicubic-upscaled).

The network: conv3x3(1 -> 64) + ReLU, 18 x [conv3x3(64 -> 64) + ReLU], conv3x3(64 -> 1), all without bias, plus
the input. Keys: ``input.weight``, ``residual_layer.{i}.conv.weight``, ``output.weight``.

Pre-upsampling contract: the module maps an HR-sized image to an HR-sized image. ``scale`` is the factor the caller
bicubic-upscales the LR luma by before calling it (``pre_upsample = True``); one released model serves x2, x3 and
x4 alike, so ``detect`` cannot read a scale off the weights and leaves it to the caller (default 4).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.archs import Architecture, StateDict, register
from jsr.archs.compact import MaskedConv, indices, shape_of
from jsr.archs.mapping import Target, conv, from_targets

# The source's initialisation: normal(0, sqrt(2 / (k * k * out_channels))).
VDSR_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# LR pixels per side that a bicubic (Keys, a = -0.5) upscale reads around an output pixel's centre.
BICUBIC_RADIUS = 2


class VDSR(nn.Module):
    """VDSR on the luma channel.

    Attributes:
      num_features: channels of the body.
      num_residual: the 64 -> 64 conv + ReLU layers between the input and output convs.
      scale: the bicubic factor the caller applies before the module (the module itself keeps the size).
      dtype: compute dtype (parameters stay float32).
      conv: convolution path for ``jsr.ops.conv.conv_function``.

    ``__call__(x, train=False, valid_mask=None)``: NHWC (N, H, W, 1) bicubic-upscaled Y in [0, 1] -> (N, H, W, 1).
    ``valid_mask`` (N, H, W, 1) is at the same (HR) size as ``x``.
    """

    pre_upsample = True  # the input is the bicubic-upscaled image, not the LR one

    num_features: int = 64
    num_residual: int = 18
    scale: int = 4
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def hr_receptive_radius(self) -> int:
        """Pixels of the module's own (HR) input per side: one per 3x3 conv."""
        return self.num_residual + 2

    @property
    def receptive_radius(self) -> int:
        """LR pixels per side of the whole pipeline, bicubic x ``scale`` then this module (an upper bound)."""
        return math.ceil(self.hr_receptive_radius / self.scale) + BICUBIC_RADIUS

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"VDSR expects NHWC luma images (N, H, W, 1), got shape {x.shape}")
        layer = dict(use_bias=False, kernel_init=VDSR_INIT, dtype=self.dtype, conv=self.conv)
        image = x.astype(jnp.float32)
        y = nn.relu(MaskedConv(self.num_features, 3, name="input", **layer)(x.astype(self.dtype), valid_mask))
        for i in range(self.num_residual):
            y = nn.relu(MaskedConv(self.num_features, 3, name=f"residual_layer_{i}", **layer)(y, valid_mask))
        y = MaskedConv(1, 3, name="output", **layer)(y, valid_mask)
        return y.astype(jnp.float32) + image


def detect(state: StateDict) -> dict[str, Any] | None:
    """Config from the keys and shapes: ``input`` (f, 1, 3, 3), ``residual_layer.{0..n-1}.conv``, ``output``."""
    first = shape_of(state, "input.weight")
    if first is None or len(first) != 4 or first[1:] != (1, 3, 3) or "input.bias" in state:
        return None
    f = first[0]
    if shape_of(state, "output.weight") != (1, f, 3, 3):
        return None
    layers = indices(state, r"residual_layer\.(\d+)\.conv\.weight")
    if layers != list(range(len(layers))):
        return None
    if any(shape_of(state, f"residual_layer.{i}.conv.weight") != (f, f, 3, 3) for i in layers):
        return None
    return {"num_features": f, "num_residual": len(layers)}


def targets(num_features: int, num_residual: int, **_) -> dict[str, Target]:
    f = num_features
    t = conv("input", ("input", "conv"), 1, f, 3, bias=False)
    for i in range(num_residual):
        t |= conv(f"residual_layer.{i}.conv", (f"residual_layer_{i}", "conv"), f, f, 3, bias=False)
    return t | conv("output", ("output", "conv"), f, 1, 3, bias=False)


def to_flax(state: StateDict, config: dict[str, Any]) -> dict:
    return from_targets(targets)(state, config)


ARCH = register(
    Architecture(
        name="vdsr",
        module=VDSR,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("input.weight", "residual_layer.0.conv.weight", "output.weight"),
        value_range=(0.0, 1.0),
        colour="y",
        exact_tiling=True,
    )
)
