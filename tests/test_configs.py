"""Every config loads (full and tiny), follows the recipes it cites, and the tiny variants train."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jsr.config import load_config_file
from jsr.data import prepare
from jsr.train import TrainingError, resolve, train_and_evaluate

CONFIGS = [
    "quickstart", "quickstart_deltastn", "pokemon", "pokemon_deltastn", "div2k_srresnet", "div2k_srgan", "esrgan_psnr",
    "esrgan",
]  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", ["", "tiny"])
def test_every_config_loads_and_is_consistent(repo_root, name, variant):
    config = load_config_file(repo_root / "configs" / f"{name}.py", variant)
    if config.init_from and not Path(config.init_from).exists():  # released weights the user converts first
        with pytest.raises(TrainingError, match="config.init_from: model directory"):
            resolve(config)
        config.init_from = ""
    resolve(config)
    assert config.batch_size % 4 == 0  # splits over the 4 simulated test devices
    if variant == "tiny":
        assert config.num_train_steps <= 6 and config.model.num_blocks <= 2


def test_pokemon_is_the_seed_recipe(repo_root):
    c = load_config_file(repo_root / "configs" / "pokemon.py")
    assert (c.stage, c.batch_size, c.data.patch_size, c.discriminator.patch_size) == ("gan", 24, 0, 256)
    assert (c.loss.pixel, c.loss.vgg, c.loss.adversarial, c.loss.tv) == (1.0, 0.006, 1e-3, 0.0)
    assert tuple(c.optim.trainable) == ("^tail", "^last_conv") and c.init_from
    a = c.data.augment
    assert a.enabled and a.fill == "white" and a.mode == "derive"
    assert (a.rotation_deg, tuple(a.translate), a.scale, a.shear_deg) == (180.0, (0.2, 0.2), 0.3, 40.0)
    assert (a.perspective_distortion, a.perspective_prob, a.grayscale_prob, a.hflip_prob, a.vflip_prob) == (
        0.5,
        0.5,
        0.1,
        0.5,
        0.5,
    )
    assert (c.optim.d.learning_rate, c.optim.d.gamma) == (5e-5, 0.1)
    assert c.optim.d.step_size == 200 * c.optim.steps_per_epoch  # StepLR(200 epochs)
    assert (c.optim.plateau.factor, c.optim.plateau.patience) == (0.5, 10) and c.optim.d_passes == "study"


@pytest.fixture(scope="module")
def pokemon_data_dir(tmp_path_factory):
    """The real builder, fed synthetic 475x475 RGBA artwork (never the copyrighted images)."""
    art = tmp_path_factory.mktemp("art")
    rng = np.random.default_rng(0)
    for i in range(1, 11):
        rgba = rng.integers(0, 256, (475, 475, 4), dtype=np.uint8)
        rgba[..., 3] = 0
        rgba[100:380, 120:360, 3] = 255
        Image.fromarray(rgba, "RGBA").save(art / f"{i}.png")
    out = tmp_path_factory.mktemp("tfds")
    prepare.main(["--dataset=pokemon", f"--manual-dir={art}", f"--data-dir={out}"])
    return out


@pytest.mark.slow
def test_pokemon_tiny_trains_with_the_seed_augmentation(repo_root, tmp_path, pokemon_data_dir):
    config = load_config_file(repo_root / "configs" / "pokemon.py", "tiny")
    config.data.data_dir = str(pokemon_data_dir)
    scores = train_and_evaluate(config, tmp_path / "run")
    assert scores["val/bicubic_psnr_y"] > 10 and np.isfinite(scores["val/psnr_y"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "d_loss" in m] == [1, 2, 3]


def test_unprepared_data_sets_say_how_to_prepare(repo_root, tmp_path):
    config = load_config_file(repo_root / "configs" / "pokemon.py", "tiny")
    config.data.data_dir = str(tmp_path / "empty")
    with pytest.raises(TrainingError, match="jsr.data.prepare"):
        train_and_evaluate(config, tmp_path / "a")
    config = load_config_file(repo_root / "configs" / "div2k_srresnet.py", "tiny")
    config.data.data_dir = str(tmp_path / "empty")
    with pytest.raises(TrainingError, match=r"jsr\[div2k\]"):
        train_and_evaluate(config, tmp_path / "b")


def test_deltastn_refuses_the_reverse_mode_only_conv(repo_root, tmp_path):
    config = load_config_file(repo_root / "configs" / "quickstart_deltastn.py", "tiny")
    config.model.conv = "fast"
    with pytest.raises(TrainingError, match="conv='xla'"):
        train_and_evaluate(config, tmp_path / "run")


def test_conv_auto_is_winograd_on_cpu_and_xla_for_deltastn_and_accelerators(repo_root, tmp_path):
    from jsr.ops.conv import resolve_conv
    from jsr.train import resolve

    assert load_config_file(repo_root / "configs" / "quickstart.py").model.conv == "fast"  # pinned: a short run
    assert load_config_file(repo_root / "configs" / "pokemon.py").model.conv == "auto"
    config = load_config_file(repo_root / "configs" / "quickstart.py")
    config.model.conv = "auto"
    assert resolve(config).model.conv == "winograd"  # tests run on CPU
    bf16 = load_config_file(repo_root / "configs" / "quickstart.py")
    bf16.compute_dtype, bf16.model.conv = "bfloat16", "auto"
    assert resolve(bf16).model.conv in ("fast", "onednn")  # Winograd is float32 only
    assert resolve(load_config_file(repo_root / "configs" / "esrgan_psnr.py")).model.conv == "fast"  # RRDBNet: off
    assert resolve_conv("auto", "cpu") == "winograd" and resolve_conv("auto", "cpu", winograd_pays=False) == "fast"
    assert resolve(load_config_file(repo_root / "configs" / "quickstart_deltastn.py")).model.conv == "xla"
    assert resolve_conv("auto", "gpu") == "xla" and resolve_conv("fast", "gpu") == "fast"
    # oneDNN taking a bfloat16 run's CPU convolutions: 'auto' is its path on a CPU only, never in forward mode
    assert resolve_conv("auto", "cpu", library_convs=True) == "onednn"
    assert resolve_conv("auto", "gpu", library_convs=True) == "xla"
    assert resolve_conv("auto", "cpu", needs_forward_mode=True, library_convs=True) == "xla"
    with pytest.raises(ValueError, match="conv='onednn' is a CPU path"):
        resolve_conv("onednn", "gpu")
    config = load_config_file(repo_root / "configs" / "quickstart.py", "tiny")
    config.model.conv = "fft"
    with pytest.raises(TrainingError, match=r"config\.model\.conv='fft': choose from"):
        train_and_evaluate(config, tmp_path / "run")
