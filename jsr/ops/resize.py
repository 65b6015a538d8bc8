"""Upscaling inside networks (bicubic / bilinear skips) that stays exact on zero-padded canvases."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_upscale(x: jnp.ndarray, scale: int, method: str, valid_mask=None) -> jnp.ndarray:
    """``jax.image.resize`` by ``scale`` (NHWC); with a mask, the taps are renormalised over valid pixels.

    jax.image.resize renormalises the taps that fall inside the image at its border (for bilinear that equals
    PyTorch's clamping of source indices; PyTorch's bicubic replicates the border instead); kernel and rectangular
    mask both being separable, taps renormalised over a valid rectangle are exactly the taps jax.image.resize uses
    on the unpadded image, so a zero-padded canvas gives the unpadded result.
    """
    n, h, w, _ = x.shape
    resize = lambda a: jax.image.resize(a, (n, h * scale, w * scale, a.shape[-1]), method)  # noqa: E731
    if valid_mask is None:
        return resize(x)
    mask = valid_mask.astype(x.dtype)
    weight = resize(mask)
    # valid pixels keep at least ~0.43 of the kernel mass (a bicubic corner at x4): the floor only guards the
    # division in the padding, whose values are discarded
    return jnp.where(weight > 0.1, resize(x * mask) / jnp.maximum(weight, 0.1), 0.0)
