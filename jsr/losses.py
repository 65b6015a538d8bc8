"""Training losses: pure functions of arrays (NHWC, images in [-1, 1] unless stated)."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def pixel_mse(sr: jnp.ndarray, hr: jnp.ndarray) -> jnp.ndarray:
    """Mean squared error in [-1, 1] units (4x the [0, 1] MSE, as the source trains)."""
    return jnp.mean(jnp.square(sr.astype(jnp.float32) - hr.astype(jnp.float32)))


def pixel_l1(sr: jnp.ndarray, hr: jnp.ndarray) -> jnp.ndarray:
    """Mean absolute error in [-1, 1] units (2x the [0, 1] L1; ESRGAN's pixel loss)."""
    return jnp.mean(jnp.abs(sr.astype(jnp.float32) - hr.astype(jnp.float32)))


def feature_l1(sr_features: jnp.ndarray, hr_features: jnp.ndarray) -> jnp.ndarray:
    """L1 over all feature elements (ESRGAN's perceptual criterion, on features before the activation)."""
    return jnp.mean(jnp.abs(sr_features - hr_features))


def feature_mse(sr_features: jnp.ndarray, hr_features: jnp.ndarray) -> jnp.ndarray:
    """MSE over all feature elements (SRGAN's VGG loss; weight 0.006 ~ 1/12.75^2 is applied by the caller)."""
    return jnp.mean(jnp.square(sr_features - hr_features))


def total_variation(x: jnp.ndarray) -> jnp.ndarray:
    """Mean absolute difference between neighbouring pixels (anisotropic TV)."""
    dh = jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]).mean()
    dw = jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]).mean()
    return dh + dw


def generator_adversarial(fake_logits: jnp.ndarray) -> jnp.ndarray:
    """-log D(G(z)) in the numerically stable logits form (the non-saturating GAN loss)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))


def discriminator_bce(real_logits: jnp.ndarray, fake_logits: jnp.ndarray) -> jnp.ndarray:
    """BCE on real (label 1) and fake (label 0) from logits; the source's double sigmoid is not reproduced."""
    real = optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits))
    fake = optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits))
    return jnp.mean(real) + jnp.mean(fake)


def _bce(logits: jnp.ndarray, target: float) -> jnp.ndarray:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def relativistic_discriminator(real_logits: jnp.ndarray, fake_logits: jnp.ndarray) -> jnp.ndarray:
    """ESRGAN's relativistic average D loss: real judged against the mean fake (label 1), fake against the mean real
    (label 0), each weighted 1/2 (BasicSR's ESRGANModel)."""
    real = _bce(real_logits - jnp.mean(fake_logits), 1.0)
    fake = _bce(fake_logits - jnp.mean(real_logits), 0.0)
    return 0.5 * (real + fake)


def relativistic_generator(real_logits: jnp.ndarray, fake_logits: jnp.ndarray) -> jnp.ndarray:
    """ESRGAN's relativistic average G loss: the labels swapped (``real_logits`` carry no gradient)."""
    real = _bce(real_logits - jnp.mean(fake_logits), 0.0)
    fake = _bce(fake_logits - jnp.mean(real_logits), 1.0)
    return 0.5 * (real + fake)
