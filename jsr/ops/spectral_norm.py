"""Spectral normalisation with the semantics of ``torch.nn.utils.spectral_norm`` (Miyato et al. 2018).

The kernel is matricised as (out_channels, everything else); ``u`` (out,) and ``v`` (rest,) are state in the
'batch_stats' collection, so code that already threads BatchNorm statistics carries them unchanged. A training
forward runs ``n_power_iterations`` steps from the stored ``u`` and stores the new ``u`` and ``v``; an eval forward
uses the stored ``u`` and ``v`` as they are (no iteration), exactly as PyTorch does. ``u`` and ``v`` are constants
for the gradient; sigma = u^T W v is differentiated through W, as in PyTorch.

Flax's own ``nn.SpectralNorm`` differs: it iterates in eval mode too and keeps no ``v``, so a converted PyTorch
discriminator would not reproduce PyTorch's eval output.

The power iteration reads only the (replicated) kernel, never the batch: under a data-sharded ``jit`` every device
computes the same ``u`` and nothing is averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jsr.ops.conv import conv_function

EPSILON = 1e-12  # torch.nn.utils.spectral_norm's eps
HIGHEST = jax.lax.Precision.HIGHEST  # matrix-vector products are cheap; TPU's default bf16 passes would bias sigma
# PyTorch's default Conv2d init (kaiming_uniform with a=sqrt(5)): uniform(+-1/sqrt(fan_in))
TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def l2_normalize(x: jnp.ndarray, eps: float = EPSILON) -> jnp.ndarray:
    """torch.nn.functional.normalize: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def kernel_matrix(kernel: jnp.ndarray) -> jnp.ndarray:
    """An HWIO kernel as the (out, kh * kw * in) matrix whose top singular value is normalised."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def power_iteration(w: jnp.ndarray, u: jnp.ndarray, v: jnp.ndarray, steps: int, eps: float = EPSILON):
    """``steps`` power-iteration steps on the matrix ``w`` (out, rest) from ``u``; returns (u, v), unchanged for 0."""
    for _ in range(steps):
        v = l2_normalize(jnp.dot(w.T, u, precision=HIGHEST), eps)
        u = l2_normalize(jnp.dot(w, v, precision=HIGHEST), eps)
    return u, v


def sigma(w: jnp.ndarray, u: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
    """The spectral-norm estimate u^T W v (differentiable in ``w``)."""
    return jnp.dot(u, jnp.dot(w, v, precision=HIGHEST), precision=HIGHEST)


def normalize_kernel(kernel, u, v, steps: int, eps: float = EPSILON):
    """(kernel / sigma, u, v, sigma) after ``steps`` iterations; ``u``, ``v`` are stopped for the gradient."""
    w = kernel_matrix(kernel)
    u, v = jax.lax.stop_gradient(power_iteration(jax.lax.stop_gradient(w), u, v, steps, eps))
    s = sigma(w, u, v)
    return kernel / s, u, v, s


def torch_v_to_hwi(v, in_channels: int, kernel_hw: tuple[int, int]):
    """PyTorch's ``weight_v`` (flattened in (in, kh, kw) order) in this module's (kh, kw, in) order."""
    return v.reshape(in_channels, *kernel_hw).transpose(1, 2, 0).reshape(-1)


class SpectralConv(nn.Module):
    """``spectral_norm(nn.Conv2d(...))`` in NHWC: a 2-D convolution whose kernel is divided by its spectral norm.

    Variables: params ``kernel`` (HWIO, PyTorch's ``weight_orig``) and ``bias``; batch_stats ``u`` (out,) and ``v``
    (kh * kw * in,), PyTorch's ``weight_u`` and ``weight_v`` (the latter permuted by ``torch_v_to_hwi``).
    Call with ``update_stats=True`` (and ``mutable=['batch_stats']``) for a training forward.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = ((1, 1), (1, 1))
    use_bias: bool = True
    n_power_iterations: int = 1
    eps: float = EPSILON
    dtype: Any = jnp.float32
    conv: str = "xla"

    def _unit_vector(self, name: str, size: int):
        # random unit vectors, as PyTorch draws them; make_rng only runs while initialising
        init = lambda: l2_normalize(jax.random.normal(self.make_rng("params"), (size,), jnp.float32), self.eps)
        return self.variable("batch_stats", name, init)

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", TORCH_CONV_INIT, (kh, kw, x.shape[-1], self.features), jnp.float32)
        u, v = self._unit_vector("u", self.features), self._unit_vector("v", kh * kw * x.shape[-1])
        steps = self.n_power_iterations if update_stats else 0
        kernel, new_u, new_v, _ = normalize_kernel(kernel, u.value, v.value, steps, self.eps)
        if update_stats and not self.is_initializing():
            u.value, v.value = new_u, new_v
        conv = conv_function(self.conv) or jax.lax.conv_general_dilated
        y = conv(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            tuple(self.strides),
            tuple(tuple(p) for p in self.padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bound = 1.0 / (kh * kw * x.shape[-1]) ** 0.5  # PyTorch's bias init
            init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
            y = y + self.param("bias", init, (self.features,), jnp.float32).astype(self.dtype)
        return y
