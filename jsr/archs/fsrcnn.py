"""FSRCNN in yjn870/FSRCNN-pytorch's layout ('fsrcnn', Y channel in [0, 1], LR in, HR out).

The network: first_part conv5x5(1 -> d) + PReLU(d); mid_part conv1x1(d -> s) + PReLU(s), m x [conv3x3(s -> s) +
PReLU(s)], conv1x1(s -> d) + PReLU(d); last_part ConvTranspose2d(d -> 1, kernel 9, stride = scale, padding 4,
output_padding = scale - 1), which makes exactly (H*scale, W*scale).

The scale is a stride, so no shape holds it (the x2, x3 and x4 files have identical shapes). ``detect`` reads it off
the values instead: a working upscaler keeps a flat image flat and at its level, and only the true stride splits
the 9x9 deconvolution kernel into scale*scale phases that all reproduce that level (``scale_fit``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from jsr.archs import Architecture, StateDict, register
from jsr.archs.compact import MaskedConv, apply_mask, indices, shape_of
from jsr.archs.mapping import Target, build_variables, conv
from jsr.models.layers import ChannelPReLU
from jsr.ops.conv import conv_function

DECONV_KERNEL = 9
DECONV_PADDING = DECONV_KERNEL // 2
# The source's initialisation: normal(0, sqrt(2 / (out_channels * k * k))) for convs, N(0, 0.001) for the deconv.
FSRCNN_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
DECONV_INIT = nn.initializers.normal(stddev=0.001)
SCALE_CANDIDATES = tuple(range(1, 9))
FLAT_LEVELS = (0.25, 0.5, 0.75)
# The released files reproduce a flat level within ~0.01 at their own scale and miss it by > 0.1 at any other.
SCALE_FIT_TOLERANCE = 0.05


def deconv_reach(scale: int) -> int:
    """LR pixels per side the deconvolution reads for the HR pixels of one LR pixel: output o sees the inputs i
    with |o + padding - i*scale| inside the kernel, i.e. padding // scale left and (k - 1 - padding + scale - 1)
    // scale right."""
    left = DECONV_PADDING // scale
    right = (DECONV_KERNEL - 1 - DECONV_PADDING + scale - 1) // scale
    return max(left, right)


def transposed_conv(x, kernel, bias, scale: int, conv_fn=None):
    """PyTorch's ConvTranspose2d(k, stride=scale, padding=k//2, output_padding=scale-1) in NHWC.

    ``kernel`` is (k, k, Cin, Cout), PyTorch's (Cin, Cout, k, k) with the spatial axes moved first: a transposed
    conv is the conv of the ``scale``-dilated input with that kernel flipped, padded k-1-p before and
    k-1-p+output_padding after.
    """
    k = kernel.shape[0]
    lo = k - 1 - k // 2
    y = (conv_fn or lax.conv_general_dilated)(
        x,
        kernel[::-1, ::-1].astype(x.dtype),
        window_strides=(1, 1),
        padding=((lo, lo + scale - 1), (lo, lo + scale - 1)),
        lhs_dilation=(scale, scale),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + bias.astype(y.dtype)


class FSRCNN(nn.Module):
    """FSRCNN on the luma channel.

    Attributes:
      scale: upscaling factor (the deconvolution's stride).
      d: feature channels of the first part and of the deconvolution's input.
      s: shrunk channels of the mapping layers.
      m: 3x3 mapping layers.
      dtype: compute dtype (parameters stay float32).
      conv: convolution path for ``jsr.ops.conv.conv_function`` (the dilated deconvolution always runs on XLA's).

    ``__call__(x, train=False, valid_mask=None)``: NHWC (N, H, W, 1) Y in [0, 1] -> (N, H*scale, W*scale, 1).
    """

    scale: int = 3
    d: int = 56
    s: int = 12
    m: int = 4
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context per side: 2 (5x5) + one per 3x3 mapping layer + the deconvolution's reach."""
        return 2 + self.m + deconv_reach(self.scale)

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"FSRCNN expects NHWC luma images (N, H, W, 1), got shape {x.shape}")
        layer = dict(kernel_init=FSRCNN_INIT, dtype=self.dtype, conv=self.conv)
        y = MaskedConv(self.d, 5, name="first_part_0", **layer)(x.astype(self.dtype), valid_mask)
        y = ChannelPReLU(name="first_part_1")(y)
        widths = [(self.s, 1)] + [(self.s, 3)] * self.m + [(self.d, 1)]
        for j, (features, k) in enumerate(widths):
            y = MaskedConv(features, k, name=f"mid_part_{2 * j}", **layer)(y, valid_mask)
            y = ChannelPReLU(name=f"mid_part_{2 * j + 1}")(y)
        y = _Deconv(self.scale, self.conv, name="last_part")(apply_mask(y, valid_mask))
        return y.astype(jnp.float32)


class _Deconv(nn.Module):
    scale: int
    conv: str = "xla"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", DECONV_INIT, (DECONV_KERNEL, DECONV_KERNEL, x.shape[-1], 1), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (1,), jnp.float32)
        return transposed_conv(x, kernel, bias, self.scale, conv_function(self.conv))


# ------------------------------------------------------------------------------------------- conversion


def _layout(state: StateDict) -> dict[str, int] | None:
    """d, s, m from the keys and shapes, or None when ``state`` is not in the source's layout."""
    first, last = shape_of(state, "first_part.0.weight"), shape_of(state, "last_part.weight")
    if first is None or last is None or len(first) != 4 or first[1:] != (1, 5, 5):
        return None
    d = first[0]
    shrink = shape_of(state, "mid_part.0.weight")
    if shrink is None or len(shrink) != 4 or shrink[1:] != (d, 1, 1) or last != (d, 1, DECONV_KERNEL, DECONV_KERNEL):
        return None
    s, mids = shrink[0], indices(state, r"mid_part\.(\d+)\.weight")
    if not mids or mids != list(range(len(mids))) or len(mids) % 2 or len(mids) < 4:
        return None
    m = len(mids) // 2 - 2
    if any(shape_of(state, f"mid_part.{2 * j}.weight") != (s, s, 3, 3) for j in range(1, m + 1)):
        return None
    if shape_of(state, f"mid_part.{len(mids) - 2}.weight") != (d, s, 1, 1):
        return None
    return {"d": d, "s": s, "m": m}


def _prelu(x, slope):
    return np.where(x >= 0, x, slope * x)


def _flat_features(state: StateDict, level: float, m: int) -> np.ndarray:
    """The deconvolution's input on the interior of a flat image: every conv reduces to its kernel's sum."""
    f = np.array([level], np.float64)
    for conv_key, prelu_key in [("first_part.0", "first_part.1")] + [
        (f"mid_part.{2 * j}", f"mid_part.{2 * j + 1}") for j in range(m + 2)
    ]:
        w = np.asarray(state[f"{conv_key}.weight"], np.float64).sum(axis=(2, 3))
        f = _prelu(w @ f + np.asarray(state[f"{conv_key}.bias"], np.float64), state[f"{prelu_key}.weight"])
    return f


def _phase_levels(state: StateDict, features: np.ndarray, scale: int) -> np.ndarray:
    """The scale*scale output phases of a flat input: output o takes the kernel taps k = o + padding (mod scale)."""
    kernel = np.einsum("c,chw->hw", features, np.asarray(state["last_part.weight"], np.float64)[:, 0])
    phase = (np.arange(DECONV_KERNEL) - DECONV_PADDING) % scale
    sums = np.array([[kernel[np.ix_(phase == p, phase == q)].sum() for q in range(scale)] for p in range(scale)])
    return sums + float(np.asarray(state["last_part.bias"]).reshape(-1)[0])


def scale_fit(state: StateDict, m: int) -> dict[int, float]:
    """Per candidate scale, the worst miss over flat levels and output phases (small only at the trained scale)."""
    try:
        levels = [(v, _flat_features(state, v, m)) for v in FLAT_LEVELS]
        fit = {r: max(float(np.abs(_phase_levels(state, f, r) - v).max()) for v, f in levels) for r in SCALE_CANDIDATES}
    except (KeyError, ValueError, TypeError):  # missing biases / odd shapes: to_flax will name the key
        return {}
    return {r: e for r, e in fit.items() if np.isfinite(e)}


def detect(state: StateDict) -> dict[str, Any] | None:
    """d, s, m from the keys and shapes; scale: the best fit of ``scale_fit`` (3, the source's default, if none)."""
    layout = _layout(state)
    if layout is None:
        return None
    fit = scale_fit(state, layout["m"])
    return {"scale": min(fit, key=fit.get) if fit else 3, **layout}


def targets(scale: int, d: int, s: int, m: int, **_) -> dict[str, Target]:
    t = conv("first_part.0", ("first_part_0", "conv"), 1, d, 5)
    t |= {"first_part.1.weight": Target("params", ("first_part_1", "negative_slope"), (d,))}
    widths = [(d, s, 1)] + [(s, s, 3)] * m + [(s, d, 1)]
    for j, (cin, cout, k) in enumerate(widths):
        t |= conv(f"mid_part.{2 * j}", (f"mid_part_{2 * j}", "conv"), cin, cout, k)
        t |= {f"mid_part.{2 * j + 1}.weight": Target("params", (f"mid_part_{2 * j + 1}", "negative_slope"), (cout,))}
    # (Cin, Cout, kh, kw) -> (kh, kw, Cin, Cout): a transposed conv's weight is NOT OIHW; the flip is in the module.
    deconv = lambda a: np.ascontiguousarray(a.transpose(2, 3, 0, 1))  # noqa: E731
    t |= {"last_part.weight": Target("params", ("last_part", "kernel"), (d, 1, DECONV_KERNEL, DECONV_KERNEL), deconv)}
    return t | {"last_part.bias": Target("params", ("last_part", "bias"), (1,))}


def to_flax(state: StateDict, config: dict[str, Any]) -> dict:
    return build_variables(state, targets(**config))


ARCH = register(
    Architecture(
        name="fsrcnn",
        module=FSRCNN,
        role="generator",
        detect=detect,
        to_flax=to_flax,
        signature_keys=("first_part.0.weight", "mid_part.0.weight", "last_part.weight"),
        value_range=(0.0, 1.0),
        colour="y",
        # Convolutions, per-channel PReLUs and a stride-`scale` transposed conv: every output pixel depends on the
        # LR pixels within `receptive_radius`, and HR tiles aligned to LR pixels stitch exactly.
        exact_tiling=True,
    )
)
