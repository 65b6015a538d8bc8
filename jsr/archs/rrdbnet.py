"""ESRGAN's RRDBNet ('rrdbnet', RGB in [0, 1]) as BasicSR / Real-ESRGAN build it: x4, and x2 / x1 by a
pixel-unshuffle of the input (factor 2 / 4) in front of the same x4 network.

conv_first, ``num_block`` RRDBs (three residual dense blocks of five 3x3 convs, ``num_grow_ch`` growth channels,
LeakyReLU 0.2, residuals scaled by 0.2), conv_body + skip, two [nearest x2, conv, LeakyReLU] stages, conv_hr +
LeakyReLU, conv_last. Released files: Real-ESRGAN's RealESRGAN_x4plus / x2plus / x4plus_anime_6B (BasicSR keys under
'params_ema'), ESRGAN's RRDB_ESRGAN_x4 (the original ``model.N`` sequential), xinntao/ESRGAN's later and BSRGAN's
(``RRDB_trunk`` / ``trunk_conv`` / ``upconv1`` / ``HRconv``). All three layouts build the same module.

Everything is local, so tiles stitch exactly: ``receptive_radius`` LR pixels of context, with tiles and canvases
aligned to ``alignment`` (the unshuffle factor; sides that are not multiples of it are refused).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.archs import Architecture, StateDict, register
from jsr.archs.compact import MaskedConv, apply_mask, indices, nearest_upsample, shape_of
from jsr.archs.mapping import IGNORED_SUFFIXES, Target, conv, from_targets
from jsr.archs.pan import lr_radius

LRELU_SLOPE = 0.2
RESIDUAL_SCALE = 0.2  # both the dense block's and the RRDB's residuals (the source's constant)
UNSHUFFLE = {4: 1, 2: 2, 1: 4}  # scale -> pixel-unshuffle factor of the input (BasicSR's rule)


# ----------------------------------------------------------------------------------------------- layers


def unshuffle_factor(scale: int) -> int:
    if scale not in UNSHUFFLE:
        raise ValueError(f"RRDBNet supports scales {sorted(UNSHUFFLE)}, got {scale}")
    return UNSHUFFLE[scale]


def pixel_unshuffle(x, f: int):
    """PyTorch's pixel_unshuffle in NHWC: out[h, w, c*f*f + i*f + j] = in[h*f + i, w*f + j, c]."""
    n, hh, ww, c = x.shape
    x = x.reshape(n, hh // f, f, ww // f, f, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(n, hh // f, ww // f, c * f * f)


def pool_mask(mask, f: int):
    """A pixel of the unshuffled image is valid when any of its f x f sources is (partial groups then read the
    zeros of the canvas: an image whose sides are not multiples of f runs as if zero-padded to them)."""
    if mask is None or f == 1:
        return mask
    n, hh, ww, _ = mask.shape
    return mask.reshape(n, hh // f, f, ww // f, f, 1).max(axis=(2, 4))


def check_canvas(x, channels: int, f: int) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"RRDBNet expects NHWC images with {channels} channels, got shape {x.shape}")
    if x.shape[1] % f or x.shape[2] % f:
        raise ValueError(
            f"RRDBNet x{4 // f} pixel-unshuffles its input by {f}: image / canvas sides must be multiples of {f}, "
            f"got {x.shape[1]}x{x.shape[2]} (pad the image, and align tiles and their overlap to {f})"
        )


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each reading the block input and every earlier output; residual scaled by 0.2."""

    num_feat: int
    num_grow_ch: int
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        # each piece is masked once here, so the growing concatenations need no mask of their own
        feats = [apply_mask(x, mask)]
        for k in range(1, 5):
            y = MaskedConv(self.num_grow_ch, 3, dtype=self.dtype, conv=self.conv, name=f"conv{k}")(
                jnp.concatenate(feats, axis=-1)
            )
            feats.append(apply_mask(nn.leaky_relu(y, LRELU_SLOPE), mask))
        out = MaskedConv(self.num_feat, 3, dtype=self.dtype, conv=self.conv, name="conv5")(
            jnp.concatenate(feats, axis=-1)
        )
        return out * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    num_feat: int
    num_grow_ch: int
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, mask=None):
        out = x
        for j in (1, 2, 3):
            out = ResidualDenseBlock(self.num_feat, self.num_grow_ch, self.dtype, self.conv, name=f"rdb{j}")(out, mask)
        return out * RESIDUAL_SCALE + x


# ------------------------------------------------------------------------------------------- the network


class RRDBNet(nn.Module):
    """RRDBNet (BasicSR's ``RRDBNet(num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch)``).

    Attributes:
      num_in_ch / num_out_ch: image channels (before the unshuffle).
      scale: 4, or 2 / 1 (input pixel-unshuffled by 2 / 4 in front of the x4 network).
      num_feat, num_block, num_grow_ch: body width, RRDB count, dense-block growth channels.
      layout: the checkpoint key layout it was converted from ('basicsr', 'esrgan', 'esrgan_old'); no effect on
        the computation, kept so the model directory records it.
      dtype: compute dtype (parameters stay float32); conv: the convolution path (``jsr.ops.conv.conv_function``).

    ``__call__(x, train=False, valid_mask=None)``: NHWC images in [0, 1] with sides multiple of ``alignment`` ->
    (N, H*scale, W*scale, num_out_ch). With ``valid_mask`` (N, H, W, 1) the valid region of the output equals
    running on the unpadded image.
    """

    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    layout: str = "basicsr"
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def alignment(self) -> int:
        """The pixel-unshuffle factor: canvas sides, tile starts and overlaps must be multiples of it."""
        return unshuffle_factor(self.scale)

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context per side for a tile aligned to ``alignment``: conv_first 1, 15 per RRDB (5 chained
        convs per dense block), conv_body 1, plus the three convs at x4 and conv_up1 at x2 reached back through the
        nearest upsamplings (``lr_radius``: 3 at x4 -> 2 at x2, + 1 -> 2 at x1), all at the unshuffled resolution,
        hence times the unshuffle factor. (A single LR pixel's block reaches up to alignment - 1 further.)"""
        hr = lr_radius(lr_radius(3, 2) + 1, 2)
        return self.alignment * (2 + 15 * self.num_block + hr)

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        f = self.alignment
        check_canvas(x, self.num_in_ch, f)
        opts = dict(dtype=self.dtype, conv=self.conv)
        nf = self.num_feat
        mask = valid_mask
        x = x.astype(self.dtype)
        if f > 1:
            x, mask = pixel_unshuffle(apply_mask(x, mask), f), pool_mask(mask, f)
        feat = MaskedConv(nf, 3, **opts, name="conv_first")(x, mask)
        body = feat
        for i in range(self.num_block):
            body = RRDB(nf, self.num_grow_ch, **opts, name=f"body_{i}")(body, mask)
        feat = feat + MaskedConv(nf, 3, **opts, name="conv_body")(body, mask)
        for name in ("conv_up1", "conv_up2"):
            feat, mask = nearest_upsample(feat, 2), None if mask is None else nearest_upsample(mask, 2)
            feat = nn.leaky_relu(MaskedConv(nf, 3, **opts, name=name)(feat, mask), LRELU_SLOPE)
        feat = nn.leaky_relu(MaskedConv(nf, 3, **opts, name="conv_hr")(feat, mask), LRELU_SLOPE)
        return MaskedConv(self.num_out_ch, 3, **opts, name="conv_last")(feat, mask).astype(jnp.float32)


# ---------------------------------------------------------------------------------------- state_dict mapping


@dataclasses.dataclass(frozen=True)
class Layout:
    """Torch key prefixes of one layout; ``rdb`` is formatted with i (RRDB), j (dense block 1-3), k (conv 1-5),
    ``conv_body`` with num_block."""

    conv_first: str
    rdb: str
    conv_body: str
    conv_up1: str
    conv_up2: str
    conv_hr: str
    conv_last: str

    def rdb_pattern(self) -> str:
        """A regex capturing the RRDB index of dense block 1's conv1 weights."""
        return re.escape(self.rdb.format(i="@", j=1, k=1)).replace("@", r"(\d+)") + r"\.weight"


LAYOUTS = {
    "basicsr": Layout(
        "conv_first", "body.{i}.rdb{j}.conv{k}", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"
    ),
    "esrgan": Layout(
        "conv_first", "RRDB_trunk.{i}.RDB{j}.conv{k}", "trunk_conv", "upconv1", "upconv2", "HRconv", "conv_last"
    ),
    # ESRGAN's first release: one nn.Sequential (upsampling stages at 2-4 and 5-7, LeakyReLUs at 9)
    "esrgan_old": Layout(
        "model.0",
        "model.1.sub.{i}.RDB{j}.conv{k}.0",
        "model.1.sub.{num_block}",
        "model.3",
        "model.6",
        "model.8",
        "model.10",
    ),
}


def targets(
    num_in_ch: int, num_out_ch: int, scale: int, num_feat: int, num_block: int, num_grow_ch: int, layout: str, **_
) -> dict[str, Target]:
    names, nf, gc, f = LAYOUTS[layout], num_feat, num_grow_ch, unshuffle_factor(scale)
    t = conv(names.conv_first, ("conv_first", "conv"), num_in_ch * f * f, nf, 3)
    for i in range(num_block):
        for j in (1, 2, 3):
            for k in range(1, 6):
                torch_prefix = names.rdb.format(i=i, j=j, k=k)
                cout = nf if k == 5 else gc
                t |= conv(torch_prefix, (f"body_{i}", f"rdb{j}", f"conv{k}", "conv"), nf + (k - 1) * gc, cout, 3)
    t |= conv(names.conv_body.format(num_block=num_block), ("conv_body", "conv"), nf, nf, 3)
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        t |= conv(getattr(names, name), (name, "conv"), nf, nf, 3)
    return t | conv(names.conv_last, ("conv_last", "conv"), nf, num_out_ch, 3)


def matches(state: StateDict, table: dict[str, Target]) -> bool:
    """Whether ``state`` has exactly the keys and shapes of ``table`` (so a near-miss is another family's)."""
    keys = {k for k in state if isinstance(k, str) and not k.endswith(IGNORED_SUFFIXES)}
    return keys == set(table) and all(shape_of(state, k) == t.shape for k, t in table.items())


def detect_layout(state: StateDict, layout: str) -> dict[str, Any] | None:
    names = LAYOUTS[layout]
    first = shape_of(state, f"{names.conv_first}.weight")
    last = shape_of(state, f"{names.conv_last}.weight")
    grow = shape_of(state, names.rdb.format(i=0, j=1, k=1) + ".weight")
    found = indices(state, names.rdb_pattern())
    if None in (first, last, grow) or len(first) != 4 or len(last) != 4 or len(grow) != 4 or not found:
        return None
    # conv_first sees num_in_ch * f * f channels; in and out channels are equal in every released file
    ratio, rest = divmod(first[1], last[0]) if last[0] else (0, 1)
    scale = {1: 4, 4: 2, 16: 1}.get(ratio) if rest == 0 else None
    if scale is None or found != list(range(len(found))):
        return None
    config = dict(num_in_ch=last[0], num_out_ch=last[0], scale=scale, num_feat=first[0], num_block=len(found))
    config |= dict(num_grow_ch=grow[0], layout=layout)
    return config if matches(state, targets(**config)) else None


def detect(state: StateDict) -> dict[str, Any] | None:
    """Config from keys and shapes, for any of the three layouts: num_feat = conv_first's outputs, num_block = the
    RRDB count, num_grow_ch = conv1's outputs, channels = conv_last's outputs, scale from conv_first's inputs
    (channels x 1 / 4 / 16 -> x4 / x2 / x1). Every key and shape must then match, else None."""
    for layout in LAYOUTS:
        config = detect_layout(state, layout)
        if config is not None:
            return config
    return None


to_flax = from_targets(targets)


ARCH = register(
    Architecture(
        name="rrdbnet",
        module=RRDBNet,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_up1.weight"),
        value_range=(0.0, 1.0),
        colour="rgb",
        exact_tiling=True,
        cpu_winograd=False,  # its 32-channel dense-block convs run faster by XLA (benchmarks/archs.py)
    )
)
