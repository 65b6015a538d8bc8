"""An architecture registered from this test module alone goes through every CLI: trained 2 steps by jsr-train,
saved, its PyTorch state_dict converted by jsr-convert (detected, no --model) and upscaled by jsr-upscale, equal to
its PyTorch twin. No other file knows it exists: that is the plug-in promise of jsr/archs."""

from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jsr import archs, checkpoints
from jsr.archs.compact import MaskedConv, nearest_upsample
from jsr.archs.mapping import conv, from_targets
from jsr.models.srresnet import pixel_shuffle

NAME = "toy_plugin_test"


class ToyNet(nn.Module):
    """conv3x3(3 -> num_feat) -> ReLU -> conv3x3(num_feat -> 3 s^2) -> PixelShuffle(s), + nearest upsampling."""

    num_feat: int = 4
    scale: int = 4
    dtype: Any = jnp.float32
    conv: str = "xla"

    @property
    def receptive_radius(self) -> int:
        return 2

    @nn.compact
    def __call__(self, x, train: bool = False, valid_mask=None):
        y = MaskedConv(self.num_feat, 3, dtype=self.dtype, conv=self.conv, name="head")(x, valid_mask)
        y = MaskedConv(3 * self.scale**2, 3, dtype=self.dtype, conv=self.conv, name="tail")(nn.relu(y), valid_mask)
        return pixel_shuffle(y, self.scale).astype(jnp.float32) + nearest_upsample(x.astype(jnp.float32), self.scale)


def detect(state) -> dict | None:
    head, tail = state.get("toy.head.weight"), state.get("toy.tail.weight")
    if head is None or tail is None or len(np.shape(head)) != 4:
        return None
    return {"num_feat": int(np.shape(head)[0]), "scale": int(round((np.shape(tail)[0] // 3) ** 0.5))}


def targets(num_feat: int, scale: int, **_) -> dict:
    return conv("toy.head", ("head", "conv"), 3, num_feat, 3) | conv(
        "toy.tail", ("tail", "conv"), num_feat, 3 * scale**2, 3
    )


ARCH = archs.Architecture(
    name=NAME,
    module=ToyNet,
    role="generator",
    detect=detect,
    to_flax=from_targets(targets),
    signature_keys=("toy.head.weight", "toy.tail.weight"),
    value_range=(0.0, 1.0),
    exact_tiling=True,
)


@pytest.fixture
def registered():
    """The toy in the registry for this test only (other tests, e.g. the benchmark's coverage check, never see it)."""
    archs.register(ARCH)
    yield ARCH
    archs.REGISTRY.pop(NAME)


def torch_twin(num_feat: int, scale: int):
    import torch
    from torch import nn as tnn

    class Toy(tnn.Module):
        def __init__(self):
            super().__init__()
            self.head = tnn.Conv2d(3, num_feat, 3, padding=1)
            self.tail = tnn.Conv2d(num_feat, 3 * scale * scale, 3, padding=1)

        def forward(self, x):
            y = torch.nn.functional.pixel_shuffle(self.tail(torch.relu(self.head(x))), scale)
            return y + torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")

    torch.manual_seed(0)
    outer = tnn.Module()
    outer.toy = Toy()
    return outer


@pytest.mark.torch
def test_a_toy_architecture_from_a_test_module_goes_through_every_cli(registered, repo_root, tmp_path):
    import torch

    from jsr.convert import main as convert
    from jsr.train import main as train
    from jsr.upscale import main as upscale

    # jsr-train: 2 steps of the toy, built from config.model.arch alone; best/ is a model directory of it
    run = tmp_path / "run"
    argv = [
        f"--config={repo_root / 'configs' / 'quickstart.py'}:tiny",
        f"--workdir={run}",
        f"--config.model.arch={NAME}",
    ]
    assert train([*argv, "--config.num_train_steps=2", "--config.eval_every_steps=2", "--no-compile-cache"]) == 0
    saved = json.loads((run / "best" / "jsr_model.json").read_text())
    assert (saved["arch"], saved["config"], saved["conv"]) == (NAME, {"scale": 4}, "fast")
    module, variables = checkpoints.load_model(run / "best")
    assert isinstance(module, ToyNet) and variables["params"]["head"]["conv"]["kernel"].shape == (3, 3, 3, 4)

    # jsr-convert: a PyTorch state_dict of the toy, detected without --model
    twin = torch_twin(num_feat=6, scale=4)
    torch.save(twin.state_dict(), tmp_path / "toy.pth")
    assert convert(["--input", str(tmp_path / "toy.pth"), "--output", str(tmp_path / "converted")]) == 0
    converted = json.loads((tmp_path / "converted" / "jsr_model.json").read_text())
    assert (converted["arch"], converted["config"]) == (NAME, {"num_feat": 6, "scale": 4})

    # jsr-upscale, tiled: equal to the PyTorch twin on the same photo (up to the uint8 rounding of the saved PNG)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (21, 26, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "photo_x4.png"
    assert upscale(["--weights", str(tmp_path / "converted"), "--input", str(tmp_path / "photo.png"), "--output",
                    str(out), "--tile", "8"]) == 0  # fmt: skip
    with Image.open(out) as im:
        got = np.asarray(im.convert("RGB")).astype(np.int16)
    with torch.no_grad():
        x = torch.from_numpy(photo.astype(np.float32) / 255).permute(2, 0, 1)[None]
        want = twin.toy(x)[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255
    assert got.shape == (84, 104, 3)
    assert np.abs(got - want).max() <= 1.0
