"""ESRGAN's recipe on RRDBNet: the PSNR stage (L1), then the GAN stage (relativistic average GAN with the U-Net SN
discriminator, L1 on pre-activation VGG19 features, L1 pixels), end to end through jsr-train on tiny configs."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsr import losses
from jsr.checkpoints import load_model
from jsr.models import VGG19Features


def train(repo_root, config, workdir, *overrides):
    return subprocess.run(
        [sys.executable, "-m", "jsr.train", f"--config={repo_root / 'configs' / config}:tiny", f"--workdir={workdir}",
         *overrides],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_rrdbnet_trains_the_psnr_then_the_gan_stage(tmp_path, repo_root):
    psnr = train(repo_root, "esrgan_psnr.py", tmp_path / "psnr")
    assert psnr.returncode == 0, psnr.stderr[-3000:]
    gan = train(repo_root, "esrgan.py", tmp_path / "gan", f"--config.init_from={tmp_path / 'psnr'}")
    assert gan.returncode == 0, gan.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "gan" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in logged if "g_loss" in line]
    assert train_lines and all({"pixel_l1", "vgg", "adversarial", "d_loss"} <= set(line) for line in train_lines)
    first, _ = load_model(tmp_path / "psnr")
    second, variables = load_model(tmp_path / "gan")
    assert type(first).__name__ == type(second).__name__ == "RRDBNet" and second.num_block == first.num_block
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_relativistic_losses_are_basicsr_formulas():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(4, 8, 8, 1)), rng.normal(size=(4, 8, 8, 1))

    def bce(x, label):  # BCEWithLogits by its definition
        return np.mean(np.maximum(x, 0) - x * label + np.log1p(np.exp(-np.abs(x))))

    d = 0.5 * (bce(real - fake.mean(), 1) + bce(fake - real.mean(), 0))
    g = 0.5 * (bce(real - fake.mean(), 0) + bce(fake - real.mean(), 1))
    np.testing.assert_allclose(losses.relativistic_discriminator(jnp.asarray(real), jnp.asarray(fake)), d, rtol=1e-5)
    np.testing.assert_allclose(losses.relativistic_generator(jnp.asarray(real), jnp.asarray(fake)), g, rtol=1e-5)


def test_pre_activation_taps_are_the_conv_outputs_before_their_relu():
    module = VGG19Features()
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)), jnp.float32)
    variables = module.init(jax.random.PRNGKey(0), x, taps=("relu5_4",))
    out = module.apply(variables, x, taps=("conv5_4", "relu5_4", "conv2_2"))
    np.testing.assert_array_equal(jax.nn.relu(out["conv5_4"]), out["relu5_4"])
    assert float(jnp.min(out["conv5_4"])) < 0 and set(out) == {"conv5_4", "relu5_4", "conv2_2"}
