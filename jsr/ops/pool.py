"""2x2 / stride-2 max pooling whose gradient is elementwise (VGG19's pool), equal to ``nn.max_pool``'s.

``nn.max_pool`` differentiates through ``lax.reduce_window``, whose gradient is XLA's ``select_and_scatter``: on
CPU that runs as a scalar loop (about 10x this module's elementwise gradient on VGG19's pools).
``max_pool_2x2`` takes the max of the four strided views and carries tangents through the element that
``select_and_scatter``'s scan picks (keep the current pick while it is >= the next, in row-major window order):
for finite inputs the FIRST maximum, ties included, as PyTorch's ``MaxPool2d`` too. Defined by a ``custom_jvp``
that is linear in the tangents, so both forward mode (``jax.jvp``) and reverse mode (by transposition) work.
Values propagate NaN (``jnp.maximum``); XLA CPU's ``reduce_window`` max may drop a NaN instead, so on NaN input
the two can differ in value (a NaN loss then surfaces rather than hides), never in where the gradient goes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _corners(x):
    """The four elements of every 2x2 window, in row-major window order, each (N, H/2, W/2, C)."""
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_jvp
def _pool_even(x):
    a, b, c, d = _corners(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


@_pool_even.defjvp
def _pool_even_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    corners, corner_tangents = _corners(x), _corners(dx)
    # select_and_scatter's own scan: keep the current pick while it is >= the next corner (so the first maximum
    # wins ties, and a NaN pick or corner hands over the way XLA's does)
    pick, dy = corners[0], corner_tangents[0]
    for value, tangent in zip(corners[1:], corner_tangents[1:], strict=True):
        keep = pick >= value
        pick, dy = jnp.where(keep, pick, value), jnp.where(keep, dy, tangent)
    return _pool_even(x), dy


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """``nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`` for NHWC ``x`` (odd trailing rows / columns
    are dropped, as VALID pooling drops them)."""
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects NHWC input, got shape {x.shape}")
    n, h, w, c = x.shape
    return _pool_even(x[:, : h - h % 2, : w - w % 2])
