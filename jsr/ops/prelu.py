"""PReLU with its slope product in float32, so that the slope's gradient is a float32 sum.

Flax's ``nn.PReLU`` multiplies in the input's dtype: in bfloat16 the slope's gradient becomes a bfloat16 sum over a
whole feature map, which stalls once the running sum dwarfs each term (SRResNet's tail slopes got about half their
gradient). PyTorch accumulates that sum in float32; so does this.
"""

from __future__ import annotations

import jax.numpy as jnp


def prelu(x: jnp.ndarray, slope: jnp.ndarray) -> jnp.ndarray:
    """``where(x >= 0, x, slope * x)`` in ``x``'s dtype; ``slope`` broadcasts against ``x`` (a scalar or (C,))."""
    negative = (slope.astype(jnp.float32) * x.astype(jnp.float32)).astype(x.dtype)
    return jnp.where(x >= 0, x, negative)
