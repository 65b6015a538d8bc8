"""Converter parity: source-layout PyTorch modules -> torch.save (zip and legacy) -> CLI -> load_model."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsr.checkpoints import MODEL_FILE, load_model
from jsr.convert import main as convert_main

pytestmark = pytest.mark.torch


def _torch():
    import torch

    return torch


def run_cli(repo_root, *args):
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "convert_torch_weights.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def save(module, path, legacy=False):
    t = _torch()
    t.save(module.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    return path


def nchw(x):
    return _torch().from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_generator_cli_parity_shared_prelu(tmp_path, repo_root, legacy):
    import torch_reference as ref

    t = _torch()
    t.manual_seed(0)
    model = ref.randomize_(ref.Generator(), seed=1)
    sd = model.state_dict()
    prelu_keys = [k for k in sd if sd[k].shape == (1,)]
    assert len(prelu_keys) == 19 and len(sd) == 258  # the released layout: one shared scalar under 19 keys
    ckpt = save(model, tmp_path / "SRGAN.pt", legacy=legacy)
    out = tmp_path / "converted"
    result = run_cli(repo_root, "--model", "generator", "--input", ckpt, "--output", out)
    assert result.returncode == 0, result.stderr
    description = json.loads((out / MODEL_FILE).read_text())
    assert description["config"] == {"n_feats": 64, "num_blocks": 16, "scale": 4, "channels": 3}

    module, variables = load_model(out)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 37, 53, 3)).astype(np.float32)  # odd sizes
    with t.no_grad():
        want, want_feat = model(nchw(x))
    got, got_feat = module.apply(variables, jnp.asarray(x), return_features=True)
    want = want.numpy().transpose(0, 2, 3, 1)
    assert got.shape == (2, 148, 212, 3)
    assert want.std() > 0.02, "outputs too flat for the comparison to mean anything"
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got_feat), want_feat.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scale", [2, 3, 8])
def test_generator_per_layer_prelu_and_other_scales(tmp_path, scale):
    import torch_reference as ref

    t = _torch()
    t.manual_seed(scale)
    model = ref.randomize_(
        ref.Generator(n_feats=16, num_block=3, scale=scale, shared_prelu=False), seed=scale, prelu_per_layer=True
    )
    ckpt = save(model, tmp_path / "g.pth")
    assert convert_main(["--model", "generator", "--input", str(ckpt), "--output", str(tmp_path / "out")]) == 0
    module, variables = load_model(tmp_path / "out")
    assert (module.scale, module.num_blocks, module.n_feats) == (scale, 3, 16)
    slopes = {float(variables["params"][f"body_{i}"]["prelu"]["negative_slope"]) for i in range(3)}
    assert len(slopes) == 3  # each layer kept its own slope
    x = np.random.default_rng(1).uniform(-1, 1, (1, 11, 9, 3)).astype(np.float32)
    with t.no_grad():
        want = model(nchw(x))[0].numpy().transpose(0, 2, 3, 1)
    got = np.asarray(module.apply(variables, jnp.asarray(x)))
    assert got.shape == (1, 11 * scale, 9 * scale, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_discriminator_cli_parity(tmp_path, repo_root, legacy):
    import torch_reference as ref

    t = _torch()
    t.manual_seed(2)
    model = ref.randomize_(ref.Discriminator(patch_size=96), seed=2, he_init=True)
    assert sum(p.numel() for p in model.parameters()) == 23_565_377
    rng = np.random.default_rng(2)
    # different brightness and contrast per image, so the four probabilities differ
    x = np.clip(
        rng.uniform(-1, 1, (4, 1, 1, 1)) + rng.uniform(0.05, 1, (4, 1, 1, 1)) * rng.uniform(-1, 1, (4, 96, 96, 3)),
        -1,
        1,
    ).astype(np.float32)
    with t.no_grad():  # centre the logits of these images so the sigmoid is not saturated
        logits = model.tail[:3](model.body(model.conv02(model.conv01(nchw(x)))).reshape(4, -1))[:, 0]
        model.tail[2].bias.sub_(logits.mean())
    ckpt = save(model, tmp_path / "D.pt", legacy=legacy)
    out = tmp_path / "disc"
    result = run_cli(repo_root, "--model", "discriminator", "--input", ckpt, "--output", out)
    assert result.returncode == 0, result.stderr
    module, variables = load_model(out)
    assert module.patch_size == 96
    with t.no_grad():
        want = model(nchw(x)).numpy()
    got = np.asarray(jax.nn.sigmoid(module.apply(variables, jnp.asarray(x))))
    assert want.std() > 0.1 and 0.2 < want.mean() < 0.8
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_vgg19_cli_parity(tmp_path, repo_root):
    import torch_reference as ref

    t = _torch()
    t.manual_seed(3)
    model = ref.VGG19().eval()
    ckpt = tmp_path / "vgg19-dcbb9e9d.pth"
    save(model, ckpt)
    out = tmp_path / "vgg"
    result = run_cli(repo_root, "--model", "vgg19", "--input", ckpt, "--output", out)
    assert result.returncode == 0, result.stderr
    module, variables = load_model(out)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 48, 40, 3)).astype(np.float32)
    mean = t.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = t.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with t.no_grad():
        want = model.taps(((nchw(x) + 1) / 2 - mean) / std, {8, 35})
    got = module.apply(variables, jnp.asarray(x), taps=("relu2_2", "relu5_4"))
    for tap, index in (("relu2_2", 8), ("relu5_4", 35)):
        w = want[index].numpy().transpose(0, 2, 3, 1)
        g = np.asarray(got[tap])
        assert g.shape == w.shape and np.abs(w).max() > 0
        assert np.abs(g - w).max() <= 1e-4 * np.abs(w).max(), tap


def test_safetensors_and_wrapped_state_dicts(tmp_path):
    import torch_reference as ref
    from safetensors.torch import save_file

    t = _torch()
    model = ref.randomize_(ref.Generator(n_feats=8, num_block=2, scale=4), seed=4)
    sd = model.state_dict()
    # safetensors refuses shared storage: clone every tensor
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(tmp_path / "g.safetensors"))
    t.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    t.save({"generator": sd, "optimizer": {"lr": 1e-4}}, tmp_path / "gen.pth")
    x = np.random.default_rng(4).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    with t.no_grad():
        want = model(nchw(x))[0].numpy().transpose(0, 2, 3, 1)
    for name in ("g.safetensors", "wrapped.pth", "gen.pth"):
        out = tmp_path / f"out-{name}"
        assert convert_main(["--model", "generator", "--input", str(tmp_path / name), "--output", str(out)]) == 0
        module, variables = load_model(out)
        np.testing.assert_allclose(np.asarray(module.apply(variables, jnp.asarray(x))), want, atol=1e-5)
