"""Per-channel sums at memory speed on XLA:CPU, and bias adds whose gradients are float32 sums in any compute dtype
(``bias_add_float32``; ``bias_add``: the same forward, its gradient by ``channel_sum`` through a custom VJP).

XLA:CPU rewrites a reduction over an axis longer than 32 into 32-wide reduce-windows that run far below memory
speed: in the bfloat16 SRResNet step, the bias gradient of the 64 -> 256 conv read through the pixel shuffle took
15-24 ms instead of under 1 (benchmarks/results, README). ``channel_sum`` sums in stages of at most ``STAGE`` rows, so
no reduced axis reaches that threshold and XLA hands each stage to its fast reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

STAGE = 16  # rows summed per stage: below XLA:CPU's 32-element reduce-window threshold


def channel_sum(x: jnp.ndarray) -> jnp.ndarray:
    """The float32 sum of ``x`` over every axis but the last: (..., C) -> (C,)."""
    rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    while rows.shape[0] > STAGE:
        rows = jnp.pad(rows, ((0, -rows.shape[0] % STAGE), (0, 0)))  # zeros change no sum
        rows = rows.reshape(-1, STAGE, rows.shape[-1]).sum(axis=1)
    return rows.sum(axis=0)


def bias_add_float32(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """``y + bias`` over the last axis, added in float32 and rounded once to ``y``'s dtype: XLA's gradient of it
    (forward mode too) is a float32 sum; in float32 it is the plain add."""
    wide = jnp.promote_types(y.dtype, jnp.float32)
    return (y.astype(wide) + bias.astype(wide)).astype(y.dtype)


@jax.custom_vjp
def bias_add(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """``bias_add_float32`` whose gradient is the float32 ``channel_sum`` of the output gradient, in ``bias``'s own
    dtype (reverse mode only)."""
    return bias_add_float32(y, bias)


def _bias_add_fwd(y, bias):
    return bias_add(y, bias), bias


def _bias_add_bwd(bias, g):
    return g, channel_sum(g).astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)
