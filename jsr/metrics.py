"""Image-quality metrics: pure, jittable functions of NHWC float32 batches in [0, 1].

Conventions (those of the SR papers' MATLAB test code, e.g. EDSR's and RCAN's), fixed so numbers compare with papers
and with the seed's table:

- ``psnr`` / ``ssim`` crop ``border`` pixels from every side (the evaluation uses ``border = scale``, as the seed and
  the papers do); ``mse``, the VGG feature MSEs and the seed's composites use the WHOLE image (the seed's code).
- ``on="y"``: Y of BT.601 on the [16, 235] scale (``rgb_to_y``, equal to ``skimage.color.rgb2ycbcr``), data range 255.
  ``on="rgb"``: the three channels in [0, 1], data range 1 (about 2 dB below Y PSNR on the same images).
- SSIM: Wang et al. 2004, Gaussian window 11x11 (sigma 1.5, truncated at 3.5 sigma), K1 0.01, K2 0.03, population
  covariance; the mean is over the positions whose whole window lies inside the (cropped) image, RGB averaged over
  channels. This is ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``, which filters with reflection and then crops the (win_size - 1) // 2 pixels that
  the reflection touched. dm-pix's ``ssim`` computes the same quantity (it also agrees within ~2e-6) but is not a
  declared dependency and runs ~4x slower on CPU (vmapped 1-D convolutions); here the separable filter is a few
  multiply-adds on shifted slices, and the (co)variances use values centred on the image mean (less float32
  cancellation in ``E[x^2] - E[x]^2``). Tests hold it to scikit-image's float64 result within 1e-5 (seen: < 3e-6).
- These functions take floats as they are; ``quantise`` rounds to the uint8 grid first. The evaluation CLI
  quantises model outputs by default (what papers measure: saved PNGs); ``--no-quantise`` evaluates the floats.
- "VGG22" / "VGG54" = MSE of VGG19 relu2_2 / relu5_4 features (after the ReLU, ImageNet-normalised inputs, over all
  feature elements); the seed's "VGG22" / "VGG54" columns are ``study_composite`` = pixel MSE + 0.006 * feature MSE.

Padded batches: every function takes an optional ``valid`` (B, 2) int array, the true (height, width) of each image
placed at the top-left of a zero-padded canvas; the result is then exactly the result on the unpadded image. This lets
a caller jit once per canvas shape instead of once per image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601 on R, G, B in [0, 1] -> Y in [16, 235]
Y_OFFSET = 16.0
Y_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # 5: scipy's truncation at 3.5 sigma -> an 11x11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03
SEED_FEATURE_WEIGHT = 0.006
VGG_TAPS = {"vgg22": "relu2_2", "vgg54": "relu5_4"}
VGG_LEVELS = 16  # relu5_4 sits after 4 max pools: canvases must be multiples of 16 for exact masking


def rgb_to_y(x):
    """(..., 3) RGB in [0, 1] -> (..., 1) Y in [16, 235] (BT.601, = ``skimage.color.rgb2ycbcr(x)[..., :1]``)."""
    w = jnp.asarray(Y_WEIGHTS, jnp.float32)
    return Y_OFFSET + jnp.sum(x * w, axis=-1, keepdims=True)


def quantise(x):
    """Round to the uint8 grid (what saving a PNG does): clip to [0, 1], round half to even, back to [0, 1].

    Compiled, ``/ 255`` becomes a multiply by 1/255: half the levels land 1 ulp from numpy's ``uint8 / 255``, so an
    image quantised here never equals its own uint8 copy converted by numpy (PSNR ~154 dB, not inf); ``jsr.evaluate``
    therefore quantises on the host.
    """
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0


def region_mask(shape: tuple[int, int], valid, border: int = 0, shrink: int = 0):
    """(B, H, W, 1) float mask of rows [border, h - border - shrink) and columns likewise, per image.

    ``valid`` (B, 2) holds each image's (h, w); ``shrink`` removes positions whose window would leave the image.
    """
    valid = jnp.asarray(valid, jnp.int32)
    rows = jnp.arange(shape[0])[None, :, None, None]
    cols = jnp.arange(shape[1])[None, None, :, None]
    h = valid[:, 0, None, None, None]
    w = valid[:, 1, None, None, None]
    inside = (rows >= border) & (rows < h - border - shrink) & (cols >= border) & (cols < w - border - shrink)
    return inside.astype(jnp.float32)


def _full_valid(x):
    return jnp.broadcast_to(jnp.asarray(x.shape[1:3], jnp.int32), (x.shape[0], 2))


def _masked_mean(values, mask):
    """Per-image mean of ``values`` (B, H, W, C) over ``mask`` (B, H, W, 1) and all channels.

    Sums rows first, then columns: two short float32 reductions instead of one long one (accuracy on big images).
    """
    total = jnp.sum(jnp.sum(values * mask, axis=2), axis=(1, 2))
    count = jnp.sum(jnp.sum(mask, axis=2), axis=(1, 2)) * values.shape[-1]
    return total / count


def mse(sr, hr, valid=None):
    """Per-image pixel MSE over the whole image and all channels (images in [0, 1]; the seed's MSE)."""
    valid = _full_valid(hr) if valid is None else valid
    return _masked_mean(jnp.square(sr - hr), region_mask(hr.shape[1:3], valid))


def psnr(sr, hr, border: int = 0, on: str = "y", valid=None):
    """Per-image PSNR in dB after cropping ``border`` pixels from each side; ``on`` = "y" (range 255) or "rgb" (1).

    Infinite for identical images (as scikit-image).
    """
    valid = _full_valid(hr) if valid is None else valid
    if on == "y":
        # Y(sr) - Y(hr) is linear in the RGB difference: no offset, no cancellation between two ~100-valued images.
        diff, data_range = jnp.sum((sr - hr) * jnp.asarray(Y_WEIGHTS, jnp.float32), axis=-1, keepdims=True), Y_RANGE
    elif on == "rgb":
        diff, data_range = sr - hr, 1.0
    else:
        raise ValueError(f"on must be 'y' or 'rgb', got {on!r}")
    err = _masked_mean(jnp.square(diff), region_mask(hr.shape[1:3], valid, border))
    return 10.0 * jnp.log10(data_range**2 / err)


def _gaussian_taps() -> np.ndarray:
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return k / k.sum()  # as scipy.ndimage.gaussian_filter builds it


def _filter_valid(x):
    """Separable 11x11 Gaussian over H and W, 'valid' positions only: (B, H, W, C) -> (B, H - 10, W - 10, C).

    Written as shifted multiply-adds so it is exact float32 on every backend (no TF32 convolutions on GPUs).
    """
    taps = _gaussian_taps()
    n = 2 * SSIM_RADIUS
    h, w = x.shape[1] - n, x.shape[2] - n
    x = sum(float(k) * x[:, i : i + h] for i, k in enumerate(taps))
    return sum(float(k) * x[:, :, i : i + w] for i, k in enumerate(taps))


def _ssim_map(a, b, data_range: float, centre):
    """SSIM at every valid window position; ``centre`` (B, 1, 1, C) is subtracted before the second moments."""
    a0, b0 = a - centre, b - centre
    # one filter pass over the five moments stacked on channels: a fifth of the ops to compile
    moments = _filter_valid(jnp.concatenate([a0, b0, a0 * a0, b0 * b0, a0 * b0], axis=-1))
    ua, ub, saa, sbb, sab = jnp.split(moments, 5, axis=-1)
    va, vb, vab = saa - ua * ua, sbb - ub * ub, sab - ua * ub
    ma, mb = ua + centre, ub + centre
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return (2 * ma * mb + c1) * (2 * vab + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2))


def ssim(sr, hr, border: int = 0, on: str = "y", valid=None):
    """Per-image mean SSIM after cropping ``border`` pixels from each side; ``on`` = "y" (range 255) or "rgb" (1).

    The image minus the border must be at least 11 pixels on each side (otherwise NaN; scikit-image raises).
    """
    valid = _full_valid(hr) if valid is None else valid
    if on == "y":
        a, b, data_range = rgb_to_y(sr), rgb_to_y(hr), Y_RANGE
    elif on == "rgb":
        a, b, data_range = sr, hr, 1.0
    else:
        raise ValueError(f"on must be 'y' or 'rgb', got {on!r}")
    n = 2 * SSIM_RADIUS
    if a.shape[1] <= n or a.shape[2] <= n:
        raise ValueError(f"SSIM needs images of at least {n + 1}x{n + 1} pixels, got {a.shape[1]}x{a.shape[2]}")
    pixels = region_mask(a.shape[1:3], valid, border)
    centre = (_masked_mean(a, pixels) + _masked_mean(b, pixels))[:, None, None, None] / 2  # any constant is exact
    s = _ssim_map(a, b, data_range, centre)
    # map index i is the window centred on pixel i + 5; it lies inside the cropped image iff i in [border, h-border-10)
    return _masked_mean(s, region_mask(s.shape[1:3], valid, border, shrink=n))


def study_composite(pixel_mse, feature_mse):
    """The seed's "VGG22" / "VGG54": pixel MSE + 0.006 * feature MSE."""
    return pixel_mse + SEED_FEATURE_WEIGHT * feature_mse


def vgg_features(vgg_module, vgg_variables, x, taps: Sequence[str], valid=None) -> dict:
    """VGG19 features of ``x`` in [0, 1] (mapped to [-1, 1] for ``VGG19Features``); {tap: NHWC}.

    With ``valid``, every conv's input is zeroed outside each image's region at that resolution, so a padded canvas
    computes exactly the unpadded image's features there (zero padding at the image edge, floor in the max pools).
    """
    x = x * 2.0 - 1.0
    if valid is None:
        return vgg_module.apply(vgg_variables, x, taps=tuple(taps))
    height, width = x.shape[1:3]
    if height % VGG_LEVELS or width % VGG_LEVELS:
        raise ValueError(f"padded VGG inputs must be multiples of {VGG_LEVELS} pixels, got {height}x{width}")
    valid = jnp.asarray(valid, jnp.int32)

    def mask_conv_inputs(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            y = args[0]
            level = height // y.shape[1]  # 2 ** (number of pools so far); floor(h / 2^k) is the valid size there
            y = y * region_mask(y.shape[1:3], valid // level).astype(y.dtype)
            args = (y, *args[1:])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(mask_conv_inputs):
        return vgg_module.apply(vgg_variables, x, taps=tuple(taps))


def vgg_feature_mses(vgg_module, vgg_variables, sr, hr, taps: Sequence[str] = ("relu2_2", "relu5_4"), valid=None):
    """{tap: per-image MSE of VGG19 features} over all feature elements of the whole image (one forward pass)."""
    fs = vgg_features(vgg_module, vgg_variables, sr, taps, valid)
    fh = vgg_features(vgg_module, vgg_variables, hr, taps, valid)
    out = {}
    for tap in taps:
        diff = jnp.square(fs[tap] - fh[tap])
        if valid is None:
            mask = jnp.ones((*diff.shape[:3], 1), jnp.float32)
        else:
            mask = region_mask(diff.shape[1:3], jnp.asarray(valid, jnp.int32) // (sr.shape[1] // diff.shape[1]))
        out[tap] = _masked_mean(diff, mask)
    return out


def vgg_feature_mse(vgg_module, vgg_variables, sr, hr, tap: str = "relu5_4", valid=None):
    """Per-image MSE of VGG19 ``tap`` features (relu2_2 = "VGG22", relu5_4 = "VGG54") of images in [0, 1]."""
    return vgg_feature_mses(vgg_module, vgg_variables, sr, hr, (tap,), valid)[tap]


def all_metrics(sr, hr, border: int, valid=None, vgg=None) -> dict:
    """Every metric the evaluation reports, per image: {name: (B,)}; ``vgg`` = (module, variables) or None."""
    out = {
        "mse": mse(sr, hr, valid),
        "psnr_rgb": psnr(sr, hr, border, "rgb", valid),
        "psnr_y": psnr(sr, hr, border, "y", valid),
        "ssim_rgb": ssim(sr, hr, border, "rgb", valid),
        "ssim_y": ssim(sr, hr, border, "y", valid),
    }
    if vgg is not None:
        feats = vgg_feature_mses(*vgg, sr, hr, tuple(VGG_TAPS.values()), valid)
        for name, tap in VGG_TAPS.items():
            out[name] = feats[tap]
            out[f"study_{name}"] = study_composite(out["mse"], feats[tap])
    return out
