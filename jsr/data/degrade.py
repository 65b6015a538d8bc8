"""Per-example degradations on device: HR -> Gaussian blur -> bicubic downscale -> additive Gaussian noise -> LR.

The classical degradation model of real-world SR training (blur, downscale, noise; Real-ESRGAN chains more), in
pure JAX for the jitted step, every example with its own ``blur_sigma`` (HR pixels, isotropic) and ``noise_sigma``
(standard deviation on the LR in [0, 1] units). Images are float32 HWC / BHWC in [0, 1].

    lr = degrade_batch(key, hr, {"blur_sigma": (B,), "noise_sigma": (B,)}, scale=4)

A blur sigma of 0 and a noise sigma of 0 give ``augment.device_downscale(hr)`` exactly. The blur kernel is a truncated
Gaussian of radius ``BLUR_RADIUS`` (3 sigma of the largest sigma it is meant for), normalised to sum 1, applied
separably with symmetric edges (scipy.ndimage's 'reflect').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jsr.data.augment import device_downscale

PARAMS = ("blur_sigma", "noise_sigma")
BLUR_RADIUS = 8  # 3 sigma of sigma 2.7 HR px; larger sigmas are truncated at this radius


def gaussian_kernel(sigma: jax.Array | float, radius: int = BLUR_RADIUS) -> jax.Array:
    """(2 radius + 1,) normalised 1-D Gaussian of std ``sigma`` pixels; sigma <= 0 gives the identity (a delta)."""
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    safe = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)  # exp(-x^2 / 2e-6) underflows to 0 off the centre
    kernel = jnp.exp(-0.5 * jnp.square(x / safe))
    return kernel / jnp.sum(kernel)


def blur(image: jax.Array, sigma: jax.Array | float, radius: int = BLUR_RADIUS) -> jax.Array:
    """Gaussian blur of one HWC image (separable, symmetric edges)."""
    kernel = gaussian_kernel(sigma, radius)
    h, w = image.shape[:2]
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    taps = range(2 * radius + 1)
    rows = sum(kernel[t] * padded[t : t + h] for t in taps)
    return sum(kernel[t] * rows[:, t : t + w] for t in taps)


def degrade(
    key: jax.Array, hr: jax.Array, blur_sigma: jax.Array | float, noise_sigma: jax.Array | float, scale: int
) -> jax.Array:
    """One HWC example: blur, bicubic downscale by ``scale``, add N(0, noise_sigma^2), clip to [0, 1]."""
    lr = device_downscale(blur(hr, blur_sigma), scale)
    return jnp.clip(lr + noise_sigma * jax.random.normal(key, lr.shape, lr.dtype), 0.0, 1.0)


def degrade_batch(key: jax.Array, hr: jax.Array, params: dict, *, scale: int) -> jax.Array:
    """(B, H, W, C) -> (B, H / scale, W / scale, C), example b degraded with ``params[name][b]`` and its own key."""
    batch = hr.shape[0]
    values = {}
    for name in PARAMS:
        value = jnp.broadcast_to(jnp.asarray(params.get(name, 0.0), jnp.float32), (batch,))
        values[name] = value
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise ValueError(f"unknown degradation parameters {sorted(unknown)}; known: {list(PARAMS)}")
    keys = jax.random.split(key, batch)
    one = lambda k, image, b, n: degrade(k, image, b, n, scale)
    return jax.vmap(one)(keys, hr, values["blur_sigma"], values["noise_sigma"])
