"""Checkpoints trained by others, converted by `jsr.convert` (architecture detected) and scored by `jsr.evaluate`,
reproduce their publishers' figures; MATLAB-bicubic LR equals the benchmark files; every architecture tiles as
declared. Reads ../shared/referee (fixture `referee`)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from jsr.checkpoints import load_model
from jsr.convert import main as convert_main
from jsr.evaluate import main as evaluate_main
from jsr.inference import Upscaler

pytestmark = [pytest.mark.referee, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(referee, tmp_path_factory):
    """name -> model directory, converted once per module from the referee checkpoints without --model."""
    root = tmp_path_factory.mktemp("converted")
    files = {
        "pan2": "PAN/PANx2_DF2K.pth",
        "pan3": "PAN/PANx3_DF2K.pth",
        "pan4": "PAN/PANx4_DF2K.pth",
        "imdn2": "IMDN/IMDN_x2.pth",
        "leftthomas4": "leftthomas_SRGAN/netG_epoch_4_100.pth",
        "compact": "Real-ESRGAN/realesr-animevideov3.pth",
    }
    out = {}
    for name, file in files.items():
        assert convert_main(["--input", str(referee / "checkpoints" / file), "--output", str(root / name)]) == 0
        out[name] = root / name
    return out


def evaluate(tmp_path, dataset, *args):
    out = tmp_path / f"eval{len(list(tmp_path.iterdir()))}"
    assert evaluate_main(["--dataset", dataset, "--output", str(out), "--figures", "0", *map(str, args)]) == 0
    return json.loads((out / "results.json").read_text())["models"]


def pairs(referee, name, scale):
    images = referee / "images" / name
    return f"pairs:{images / 'HR'},{images / 'LR_bicubic' / f'X{scale}'}"


# PAN's own test logs (in the referee folder beside the checkpoints): PSNR-Y / SSIM-Y, border = scale
PAN_LOGS = [
    ("pan4", "Set5", 4, 32.131149, 0.894811),
    ("pan4", "Set14", 4, 28.610749, 0.782151),
    ("pan2", "Set5", 2, 38.000670, None),
    ("pan3", "Set5", 3, 34.400281, None),
]


@pytest.mark.parametrize("name,data,scale,psnr,ssim", PAN_LOGS, ids=[f"{n}-{d}" for n, d, *_ in PAN_LOGS])
def test_pan_reproduces_its_test_logs(tmp_path, referee, converted, name, data, scale, psnr, ssim):
    got = evaluate(tmp_path, pairs(referee, data, scale), "--scale", scale, "--model", f"pan={converted[name]}")
    assert abs(got["pan"]["mean"]["psnr_y"] - psnr) <= 2e-3
    if ssim is not None:
        assert abs(got["pan"]["mean"]["ssim_y"] - ssim) <= 2e-5


@pytest.mark.parametrize("data,psnr,ssim", [("Set5", 38.00, 0.9605), ("Set14", 33.63, 0.9177)])
def test_imdn_x2_reproduces_its_published_table(tmp_path, referee, converted, data, psnr, ssim):
    got = evaluate(tmp_path, pairs(referee, data, 2), "--scale", 2, "--model", f"imdn={converted['imdn2']}")
    mean = got["imdn"]["mean"]
    assert round(mean["psnr_y"], 2) == psnr  # the published precision
    assert round(mean["ssim_y"], 4) == ssim


def test_leftthomas_x4_monarch_in_its_own_convention(tmp_path, referee, converted):
    """RGB, no border, float outputs: its README's 29.5944 dB (PyTorch on this CPU gives our 29.5942)."""
    got = evaluate(
        tmp_path, pairs(referee, "Set14", 4), "--border", 0, "--no-quantise", "--model", f"g={converted['leftthomas4']}"
    )
    assert abs(got["g"]["per_image"]["monarch"]["psnr_rgb"] - 29.5944) <= 5e-4


SRGAN_PYTORCH = [("set5", "Set5", "srres", 31.96), ("set14", "Set14", "srres", 28.48), ("set5", "Set5", "srgan", 29.93),
                 ("set14", "Set14", "srgan", 26.95)]  # fmt: skip


@pytest.mark.parametrize("prefix,data,model,published", SRGAN_PYTORCH, ids=[f"{m}-{d}" for _, d, m, _ in SRGAN_PYTORCH])
def test_srgan_pytorch_committed_outputs_score_its_readme(tmp_path, referee, prefix, data, model, published):
    """Its outputs are res_%04d.png in sorted-name order, saved by truncation: named by stem here, scored at v + 0.5."""
    images = referee / "images"
    named = tmp_path / "named"
    named.mkdir()
    for i, hr in enumerate(sorted((images / data / "HR").glob("*.png"))):
        (named / hr.name).symlink_to(images / "SRGAN-PyTorch_results" / f"{prefix}_{model}_result" / f"res_{i:04d}.png")
    got = evaluate(tmp_path, pairs(referee, data, 4), "--sr", f"{model}={named}", "--sr-truncated", model)
    assert abs(got[model]["mean"]["psnr_y"] - published) <= 0.01  # 31.953 / 28.478 / 29.929 / 26.951 here


def test_matlab_downscale_equals_the_benchmark_lr_files(tmp_path, referee, converted):
    folder = evaluate(
        tmp_path,
        f"folder:{referee / 'images' / 'Set5' / 'HR'}",
        "--downscale",
        "matlab",
        "--model",
        f"pan={converted['pan4']}",
    )
    paired = evaluate(tmp_path, pairs(referee, "Set5", 4), "--model", f"pan={converted['pan4']}")
    for name in ("pan", "bicubic"):
        assert folder[name]["per_image"] == paired[name]["per_image"]


@pytest.mark.torch
def test_realesr_animevideov3_on_a_photo_equals_pytorch_within_one_grey_level(tmp_path, referee, converted):
    import torch
    from torch_archs_compact_y import SRVGGNetCompact

    photo = referee / "images" / "Set5" / "LR_bicubic" / "X4" / "birdx4.png"
    result = subprocess.run(
        [sys.executable, "-m", "jsr.upscale", "--weights", converted["compact"], "--input", photo,
         "--output", tmp_path / "bird.png"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours = np.asarray(Image.open(tmp_path / "bird.png"), np.int16)
    net = SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4)
    path = referee / "checkpoints" / "Real-ESRGAN" / "realesr-animevideov3.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["params"])
    lr = torch.from_numpy(np.asarray(Image.open(photo).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255)
    with torch.no_grad():
        theirs = net.eval()(lr)[0].clamp(0, 1).numpy().transpose(1, 2, 0)
    theirs = np.rint(theirs * 255).astype(np.int16)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1


@pytest.mark.parametrize("name", ["pan4", "leftthomas4", "compact", "imdn2"])
def test_tiles_stitch_as_each_architecture_declares(referee, converted, name):
    """Exact architectures: tiled == whole within 1 grey level. IMDN (global channel statistics): the documented
    error bound of its tiles."""
    module, variables = load_model(converted[name])
    lr = np.asarray(Image.open(referee / "images" / "Set5" / "LR_bicubic" / "X4" / "babyx4.png").convert("RGB"))
    lr = lr.astype(np.float32)[:96, :96] / 255
    whole = Upscaler(module, variables, conv="xla").upscale(lr, out_dtype=np.uint8).astype(np.int16)
    tiled = Upscaler(module, variables, conv="xla", tile=40, force_tiles=True).upscale(lr, out_dtype=np.uint8)
    error = np.abs(whole - tiled.astype(np.int16))
    if name == "imdn2":
        assert 0 < error.max() <= 8 and error.mean() < 0.5  # measured: see README, Architectures
    else:
        assert error.max() <= 1


def test_a_network_with_global_operations_runs_whole_by_default(referee, converted):
    """IMDN on Set14's barbara (360x288 LR, larger than one tile window): the Upscaler's default runs it whole."""
    import jax.numpy as jnp

    module, variables = load_model(converted["imdn2"])
    lr = np.asarray(Image.open(referee / "images" / "Set14" / "LR_bicubic" / "X2" / "barbarax2.png").convert("RGB"))
    lr = lr.astype(np.float32) / 255
    upscaler = Upscaler(module, variables, conv="xla")
    assert max(lr.shape[:2]) > upscaler.window
    direct = np.asarray(module.apply(variables, jnp.asarray(lr[None])))[0]
    got = upscaler.upscale(lr)
    assert np.abs(got - np.clip(direct, 0, 1)).max() < 1e-4


def test_a_converted_checkpoint_fine_tunes_on_cbsd68_with_frozen_layers(tmp_path, referee, converted):
    """leftthomas x4, tail + last conv trained on CBSD68 crops, validated on Set5: end to end through the CLIs."""
    images = referee / "images"
    before = evaluate(tmp_path, pairs(referee, "Set5", 4), "--model", f"g={converted['leftthomas4']}")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jsr.train", f"--config={ROOT / 'configs' / 'quickstart.py'}", f"--workdir={run}",
         f"--config.init_from={converted['leftthomas4']}", "--config.data.source=folder",
         f"--config.data.folder={images / 'CBSD68'}", f"--config.data.val_folder={images / 'Set5' / 'HR'}",
         f"--config.data.val_lr_folder={images / 'Set5' / 'LR_bicubic' / 'X4'}", "--config.num_train_steps=30",
         "--config.eval_every_steps=30", "--config.log_every_steps=10", "--config.checkpoint_every_steps=30",
         "--config.batch_size=4", "--config.optim.trainable=('tail|last_conv',)"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    after = evaluate(tmp_path, pairs(referee, "Set5", 4), "--model", f"g={run / 'best'}")
    assert after["g"]["mean"]["psnr_y"] > before["g"]["mean"]["psnr_y"] + 0.05
    _, old = load_model(converted["leftthomas4"])
    _, new = load_model(run / "best")
    frozen, trained = ("body_0", "conv01", "conv02"), ("tail_0", "tail_1", "last_conv")
    for name in frozen:
        for a, b in zip(*(jax.tree.leaves(v["params"][name]) for v in (old, new)), strict=True):
            np.testing.assert_array_equal(a, b)
    assert all(
        not np.array_equal(old["params"][n]["conv"]["kernel"], new["params"][n]["conv"]["kernel"]) for n in trained
    )


@pytest.mark.torch
def test_leftthomas_x4_monarch_ssim_in_its_repository_convention(referee, converted):
    """Its README's SSIM 0.9044 is pytorch_ssim's (11x11 Gaussian, sigma 1.5, zero-padded 'same' windows over RGB in
    [0, 1], C1 = 0.01^2, C2 = 0.03^2): that formula, in PyTorch, applied to jsr's float output."""
    import math

    import torch
    import torch.nn.functional as F

    module, variables = load_model(converted["leftthomas4"])
    images = referee / "images" / "Set14"
    lr = np.asarray(Image.open(images / "LR_bicubic" / "X4" / "monarchx4.png").convert("RGB"), np.float32) / 255
    hr = np.asarray(Image.open(images / "HR" / "monarch.png").convert("RGB"), np.float32) / 255
    sr = Upscaler(module, variables, conv="xla").upscale(lr)
    g = torch.tensor([math.exp(-((x - 5) ** 2) / (2 * 1.5**2)) for x in range(11)])
    g = (g / g.sum())[:, None]
    window = (g @ g.T)[None, None].expand(3, 1, 11, 11).contiguous()
    a, b = (torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None] for x in (sr, hr))
    blur = lambda x: F.conv2d(x, window, padding=5, groups=3)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert round(float(ssim.mean()), 4) == 0.9044


@pytest.mark.slow
def test_delta_stn_fine_tunes_a_converted_checkpoint_with_frozen_layers(tmp_path, referee, converted):
    """leftthomas x4 (a [0, 1] model) through jsr.train with Delta-STN and a frozen body: the body and its BatchNorm
    statistics stay bit-identical, the tail moves, the hyperparameters move, and the model still upscales well
    (training the [0, 1] model against [-1, 1] targets, as Delta-STN's loss once did, costs dBs in 30 steps)."""
    images = referee / "images"
    before = evaluate(tmp_path, pairs(referee, "Set5", 4), "--model", f"g={converted['leftthomas4']}")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jsr.train", f"--config={ROOT / 'configs' / 'quickstart_deltastn.py'}",
         f"--workdir={run}", f"--config.init_from={converted['leftthomas4']}", "--config.data.source=folder",
         f"--config.data.folder={images / 'CBSD68'}", f"--config.data.val_folder={images / 'Set5' / 'HR'}",
         f"--config.data.val_lr_folder={images / 'Set5' / 'LR_bicubic' / 'X4'}", "--config.num_train_steps=30",
         "--config.eval_every_steps=30", "--config.log_every_steps=10", "--config.checkpoint_every_steps=30",
         "--config.batch_size=4", "--config.deltastn.warmup_steps=10", "--config.optim.g.learning_rate=1e-4",
         "--config.optim.trainable=('tail|last_conv',)",
         # start near Set5's clean LR: a degraded training LR alone costs dBs on the clean validation images
         "--config.deltastn.hypers.blur_sigma=(0.0, 3.0, 0.05)",
         "--config.deltastn.hypers.noise_sigma=(0.0, 0.1, 0.001)",
         "--config.deltastn.hypers.rotation_deg=(0.0, 45.0, 1.0)"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    after = evaluate(tmp_path, pairs(referee, "Set5", 4), "--model", f"g={run / 'best'}")
    assert after["g"]["mean"]["psnr_y"] > before["g"]["mean"]["psnr_y"] - 0.1
    _, old = load_model(converted["leftthomas4"])
    _, new = load_model(run / "best")
    for name in ("body_0", "body_4", "conv01", "conv02"):
        for a, b in zip(*(jax.tree.leaves(v["params"][name]) for v in (old, new)), strict=True):
            np.testing.assert_array_equal(a, b)
    jax.tree.map(np.testing.assert_array_equal, old["batch_stats"], new["batch_stats"])
    kernel = lambda v: v["params"]["last_conv"]["conv"]["kernel"]  # noqa: E731
    assert not np.array_equal(kernel(old), kernel(new))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rotation = [m["hp/rotation_deg"] for m in logged if "hp/rotation_deg" in m]
    assert rotation[0] != rotation[-1]
