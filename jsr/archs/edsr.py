"""EDSR (Lim et al. 2017; 'edsr', RGB in [0, 1]) as BasicSR's ``EDSR`` and EDSR-PyTorch's build it.

The mean shift x' = (x - rgb_mean) * img_range, conv_first, ``num_block`` residual blocks [conv, ReLU, conv] x
res_scale + identity, conv_after_body + skip, PixelShuffle upsampling (log2(scale) x2 stages, or one x3 stage, each
a conv to r*r*num_feat channels first), conv_last, then out / img_range + rgb_mean. Everything is local, so tiles
with ``receptive_radius`` of overlap stitch exactly.

Layouts: BasicSR's (``conv_first``, ``body.{i}.conv1``, ``conv_after_body``, ``upsample.{0,2}``, ``conv_last``;
released under 'params') and EDSR-PyTorch's (``head.0``, ``body.{i}.body.{0,2}``, ``body.{num_block}``,
``tail.0.{0,2}``, ``tail.1`` and the mean shift as 1x1 convs ``sub_mean`` / ``add_mean``, images in [0, rgb_range]).

res_scale is not in the weights: ``detect`` takes 0.1 for num_feat >= 256 (EDSR's full 32 x 256 model, BasicSR's
EDSR_Lx and EDSR-PyTorch's edsr_x*), 1.0 otherwise (the 16 x 64 baselines), as both publishers trained them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jsr.archs import Architecture, StateDict, register
from jsr.archs.compact import MaskedConv, indices, nearest_upsample, shape_of
from jsr.archs.mapping import IGNORED_SUFFIXES, Target, conv, from_targets
from jsr.archs.pan import lr_radius
from jsr.models.srresnet import pixel_shuffle

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
FULL_NUM_FEAT = 256  # num_feat from which the released models use res_scale 0.1
MEAN_SHIFT_KEYS = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")


def upscale_stages(scale: int) -> tuple[int, ...]:
    """BasicSR's / EDSR-PyTorch's Upsample: powers of two as x2 stages, 3 as one stage."""
    if scale >= 2 and scale & (scale - 1) == 0:
        return (2,) * (scale.bit_length() - 1)
    if scale == 3:
        return (3,)
    raise ValueError(f"EDSR supports scales 2^n and 3, got {scale}")


def released_res_scale(num_feat: int) -> float:
    return 0.1 if num_feat >= FULL_NUM_FEAT else 1.0


# ------------------------------------------------------------------------------------------- the network


class ResidualBlockNoBN(nn.Module):
    num_feat: int
    res_scale: float
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        opts = dict(dtype=self.dtype, conv=self.conv)
        out = nn.relu(MaskedConv(self.num_feat, 3, **opts, name="conv1")(x, mask))
        return x + MaskedConv(self.num_feat, 3, **opts, name="conv2")(out, mask) * self.res_scale


class EDSR(nn.Module):
    """EDSR (BasicSR's ``EDSR(num_in_ch, num_out_ch, num_feat, num_block, upscale, res_scale, img_range,
    rgb_mean)``).

    Attributes:
      num_in_ch / num_out_ch: image channels (3: the mean shift is per RGB channel).
      num_feat, num_block: body width and residual block count.
      scale: 2^n or 3.
      res_scale: residual scaling of the blocks; img_range, rgb_mean: the mean shift.
      layout: the checkpoint key layout it was converted from ('basicsr', 'edsr_pytorch'); no effect on the
        computation, kept so the model directory records it.
      dtype: compute dtype (parameters stay float32); conv: the convolution path (``jsr.ops.conv.conv_function``).

    ``__call__(x, train=False, valid_mask=None)``: NHWC images in [0, 1] -> (N, H*scale, W*scale, num_out_ch).
    With ``valid_mask`` (N, H, W, 1) the valid region of the output equals running on the unpadded image.
    """

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 16
    scale: int = 4
    res_scale: float = 1.0
    img_range: float = 255.0
    rgb_mean: tuple[float, ...] = DIV2K_MEAN
    layout: str = "basicsr"
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context per side: conv_first 1, 2 per block, conv_after_body 1; conv_last (1 pixel at the
        output) and each stage's conv reached back through the pixel shuffles (``lr_radius``): 2 for every scale."""
        hr = 1
        for r in reversed(upscale_stages(self.scale)):
            hr = lr_radius(hr, r) + 1
        return 2 + 2 * self.num_block + hr

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        stages = upscale_stages(self.scale)
        if x.ndim != 4 or x.shape[-1] != self.num_in_ch:
            raise ValueError(f"EDSR expects NHWC images with {self.num_in_ch} channels, got shape {x.shape}")
        opts = dict(dtype=self.dtype, conv=self.conv)
        nf, mask = self.num_feat, valid_mask
        mean = jnp.asarray(self.rgb_mean, jnp.float32)
        # the shift makes the canvas's zero padding non-zero: conv_first's mask zeroes it again
        x = ((x.astype(jnp.float32) - mean) * self.img_range).astype(self.dtype)
        x = MaskedConv(nf, 3, **opts, name="conv_first")(x, mask)
        res = x
        for i in range(self.num_block):
            res = ResidualBlockNoBN(nf, self.res_scale, **opts, name=f"body_{i}")(res, mask)
        res = MaskedConv(nf, 3, **opts, name="conv_after_body")(res, mask) + x
        for j, r in enumerate(stages):
            res = pixel_shuffle(MaskedConv(nf * r * r, 3, **opts, name=f"upsample_{2 * j}")(res, mask), r)
            mask = None if mask is None else nearest_upsample(mask, r)
        out = MaskedConv(self.num_out_ch, 3, **opts, name="conv_last")(res, mask).astype(jnp.float32)
        return out / self.img_range + mean


# ---------------------------------------------------------------------------------------- state_dict mapping


@dataclasses.dataclass(frozen=True)
class Layout:
    """Torch key prefixes of one layout; ``block`` is formatted with i (block), c (conv 1-2) and idx (its index in
    EDSR-PyTorch's Sequential), ``conv_after_body`` with num_block, ``upsample`` with n (index in the Upsample)."""

    conv_first: str
    block: str
    conv_after_body: str
    upsample: str
    conv_last: str


LAYOUTS = {
    "basicsr": Layout("conv_first", "body.{i}.conv{c}", "conv_after_body", "upsample.{n}", "conv_last"),
    "edsr_pytorch": Layout("head.0", "body.{i}.body.{idx}", "body.{num_block}", "tail.0.{n}", "tail.1"),
}


def targets(
    num_in_ch: int, num_out_ch: int, num_feat: int, num_block: int, scale: int, layout: str, **_
) -> dict[str, Target]:
    names, nf = LAYOUTS[layout], num_feat
    t = conv(names.conv_first, ("conv_first", "conv"), num_in_ch, nf, 3)
    for i in range(num_block):
        for c in (1, 2):
            t |= conv(names.block.format(i=i, c=c, idx=2 * c - 2), (f"body_{i}", f"conv{c}", "conv"), nf, nf, 3)
    t |= conv(names.conv_after_body.format(num_block=num_block), ("conv_after_body", "conv"), nf, nf, 3)
    for j, r in enumerate(upscale_stages(scale)):
        t |= conv(names.upsample.format(n=2 * j), (f"upsample_{2 * j}", "conv"), nf, nf * r * r, 3)
    return t | conv(names.conv_last, ("conv_last", "conv"), nf, num_out_ch, 3)


def matches(state: StateDict, table: dict[str, Target]) -> bool:
    """Whether ``state`` (less the mean shift) has exactly the keys and shapes of ``table``."""
    keys = {k for k in state if isinstance(k, str) and not k.endswith(IGNORED_SUFFIXES) and k not in MEAN_SHIFT_KEYS}
    return keys == set(table) and all(shape_of(state, k) == t.shape for k, t in table.items())


def mean_shift(state: StateDict) -> dict[str, Any] | None:
    """img_range and rgb_mean of EDSR-PyTorch's MeanShift convs (identity weights, biases -/+ rgb_range * mean):
    rgb_range 255 (every released file) or 1, told apart by the biases' size; the defaults when they are absent."""
    if not any(k in state for k in MEAN_SHIFT_KEYS):
        return dict(img_range=255.0, rgb_mean=DIV2K_MEAN)
    try:
        weights = [np.asarray(state[k], np.float64).reshape(3, 3) for k in ("sub_mean.weight", "add_mean.weight")]
        sub, add = (np.asarray(state[k], np.float64).reshape(3) for k in ("sub_mean.bias", "add_mean.bias"))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(np.allclose(w, np.eye(3), atol=1e-6) for w in weights) or not np.allclose(add, -sub, atol=1e-4):
        return None  # a std other than 1 or unpaired shifts: not the released form
    img_range = 255.0 if np.abs(sub).max() > 1.0 else 1.0
    return dict(img_range=img_range, rgb_mean=tuple(round(float(-b / img_range), 6) for b in sub))


def upsample_scale(state: StateDict, names: Layout, num_feat: int) -> int | None:
    """2^(stage count) when every stage conv has 4 * num_feat outputs, 3 for a single 9 * num_feat one."""
    pattern = names.upsample.replace(".", r"\.").format(n=r"(\d+)") + r"\.weight"
    found = indices(state, pattern)
    if not found or found != list(range(0, 2 * len(found), 2)):
        return None
    first = shape_of(state, f"{names.upsample.format(n=0)}.weight")
    if first is not None and first[0] == 9 * num_feat and len(found) == 1:
        return 3
    return 2 ** len(found) if first is not None and first[0] == 4 * num_feat else None


def detect_layout(state: StateDict, layout: str) -> dict[str, Any] | None:
    names = LAYOUTS[layout]
    first = shape_of(state, f"{names.conv_first}.weight")
    last = shape_of(state, f"{names.conv_last}.weight")
    block_key = names.block.format(i="@", c=1, idx=0).replace(".", r"\.").replace("@", r"(\d+)") + r"\.weight"
    blocks = indices(state, block_key)
    if first is None or last is None or len(first) != 4 or len(last) != 4 or first[1] != 3 or last[0] != 3:
        return None
    scale, shift = upsample_scale(state, names, first[0]), mean_shift(state) if layout == "edsr_pytorch" else {}
    if scale is None or shift is None or not blocks or blocks != list(range(len(blocks))):
        return None
    config = dict(num_in_ch=3, num_out_ch=3, num_feat=first[0], num_block=len(blocks), scale=scale)
    config |= dict(res_scale=released_res_scale(first[0]), img_range=255.0, rgb_mean=DIV2K_MEAN) | shift
    config["layout"] = layout
    return config if matches(state, targets(**config)) else None


def detect(state: StateDict) -> dict[str, Any] | None:
    """Config from keys and shapes (either layout): num_feat = conv_first's outputs, num_block = the residual
    blocks, scale from the upsampling convs; res_scale by the released rule (module docstring); the mean shift
    of EDSR-PyTorch files from their MeanShift convs. Every key and shape must then match, else None."""
    for layout in LAYOUTS:
        config = detect_layout(state, layout)
        if config is not None:
            return config
    return None


to_flax = from_targets(targets, ignored=lambda key: key in MEAN_SHIFT_KEYS)


ARCH = register(
    Architecture(
        name="edsr",
        module=EDSR,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight", "upsample.0.weight"),
        value_range=(0.0, 1.0),
        colour="rgb",
        exact_tiling=True,
    )
)
