"""Per-example degradations on device (jsr.data.degrade) against host references: scipy's Gaussian filter, noise
statistics, the identity at zero, determinism per key; and the trainer's config.data.degrade path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import data as skdata

from jsr.data import augment, default_data_config, degradation, degrade


@pytest.fixture(scope="module")
def photo():
    return (skdata.astronaut()[100:196, 150:246] / 255.0).astype(np.float32)  # 96 x 96 real photo


def scipy_blur(image, sigma):
    truncate = (degrade.BLUR_RADIUS + 0.25) / sigma  # scipy's radius = int(truncate * sigma + 0.5) = BLUR_RADIUS
    return np.stack(
        [
            ndimage.gaussian_filter(image[..., c].astype(np.float64), sigma, mode="reflect", truncate=truncate)
            for c in range(3)
        ],
        axis=-1,
    )


@pytest.mark.parametrize("sigma", [0.5, 1.2, 2.5])
def test_blur_equals_scipy_gaussian_filter(photo, sigma):
    ours = np.asarray(degrade.blur(jnp.asarray(photo), sigma))
    np.testing.assert_allclose(ours, scipy_blur(photo, sigma), atol=2e-6)


def test_every_example_gets_its_own_blur_and_noise(photo):
    hr = jnp.asarray(np.stack([photo] * 4))
    blur = jnp.asarray([0.0, 0.8, 1.6, 2.4])
    clean = np.asarray(degrade.degrade_batch(jax.random.key(0), hr, {"blur_sigma": blur}, scale=4))
    plain = np.asarray(augment.device_downscale(jnp.asarray(photo), 4))
    np.testing.assert_array_equal(clean[0], plain)  # sigma 0: exact
    for b in range(1, 4):
        reference = np.asarray(augment.device_downscale(jnp.asarray(scipy_blur(photo, float(blur[b])), jnp.float32), 4))
        np.testing.assert_allclose(clean[b], reference, atol=1e-5)
    assert all(np.abs(clean[b] - clean[b - 1]).mean() > 1e-3 for b in range(1, 4))  # really different per example


def test_noise_has_each_examples_standard_deviation_and_is_independent():
    grey = jnp.full((4, 256, 256, 3), 0.5, jnp.float32)  # no clipping at 0.5 +- 6 sigma
    sigmas = np.array([0.0, 0.01, 0.02, 0.05], np.float32)
    lr = np.asarray(degrade.degrade_batch(jax.random.key(3), grey, {"noise_sigma": jnp.asarray(sigmas)}, scale=4))
    clean = np.asarray(degrade.degrade_batch(jax.random.key(3), grey, {}, scale=4))  # 0.5 up to rounding
    noise = (lr - clean).reshape(4, -1)
    np.testing.assert_array_equal(noise[0], 0.0)
    for b in range(1, 4):
        assert noise[b].std() == pytest.approx(sigmas[b], rel=0.03)  # 12,288 draws: std of the estimate ~0.6%
        assert abs(noise[b].mean()) < 4 * sigmas[b] / np.sqrt(noise.shape[1])
    assert abs(np.corrcoef(noise[1], noise[2])[0, 1]) < 0.05


def test_same_key_same_degradation_other_key_other_noise(photo):
    hr = jnp.asarray(np.stack([photo] * 2))
    params = {"blur_sigma": 1.0, "noise_sigma": 0.03}
    a = degrade.degrade_batch(jax.random.key(7), hr, params, scale=4)
    b = jax.jit(lambda k, x: degrade.degrade_batch(k, x, params, scale=4))(jax.random.key(7), hr)
    c = degrade.degrade_batch(jax.random.key(8), hr, params, scale=4)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert np.abs(np.asarray(a) - np.asarray(c)).mean() > 0.01
    assert np.abs(np.asarray(a[0]) - np.asarray(a[1])).mean() > 0.01  # each example its own key


def test_unknown_parameter_and_negative_config_values_are_refused(photo):
    with pytest.raises(ValueError, match="blur_sgima"):
        degrade.degrade_batch(jax.random.key(0), jnp.asarray(photo)[None], {"blur_sgima": 1.0}, scale=4)
    cfg = default_data_config()
    assert degradation(cfg) is None  # off by default: the pipeline's LR is used
    assert degradation(cfg, tuned=("noise_sigma",)) == {"blur_sigma": 0.0, "noise_sigma": 0.0}
    cfg.degrade.enabled, cfg.degrade.noise_sigma = True, -0.1
    with pytest.raises(ValueError, match="config.data.degrade.noise_sigma"):
        degradation(cfg)


def test_trainer_remakes_the_lr_from_the_hr_when_degradation_is_on(repo_root):
    """With config.data.degrade on, the step ignores the pipeline's LR (re-made from the HR on device)."""
    from jsr import data as jdata
    from jsr.config import load_config_file
    from jsr.train import build_generator, build_standard

    rng = np.random.default_rng(0)
    losses = {}
    for enabled in (False, True):
        config = load_config_file(repo_root / "configs" / "quickstart.py", "tiny")
        config.data.degrade.enabled, config.data.degrade.blur_sigma = enabled, 1.0
        parts = build_standard(config, build_generator(config))
        p, s = config.data.patch_size, config.data.scale
        hr = rng.integers(0, 256, (config.batch_size, p * s, p * s, 3), dtype=np.uint8)
        aug = jdata.augment_params(config.data.augment, config.batch_size)
        for name, lr in (("zeros", np.zeros((config.batch_size, p, p, 3), np.uint8)), ("noise", hr[:, ::s, ::s])):
            state = jax.tree.map(jnp.copy, parts.state)  # the step donates its state
            _, metrics = parts.train_step(state, {"hr": hr, "lr": lr}, aug, parts.frozen)
            losses[enabled, name] = float(jax.device_get(metrics["g_loss"]))
    assert losses[True, "zeros"] == losses[True, "noise"]  # the given LR is not used
    assert losses[False, "zeros"] != losses[False, "noise"]
