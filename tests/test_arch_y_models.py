"""VDSR and FSRCNN (Y channel): PyTorch parity through torch.save / torch.load(weights_only=True), detection, masked
canvases, tiling within the receptive radius, and the released weights (FSRCNN x2/x3/x4, VDSR epoch 50)."""

import sys
import types
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jsr.archs import compact, fsrcnn, vdsr

SRGAN_LIKE = {"conv01.body.0.weight": np.zeros((64, 3, 9, 9), np.float32), "conv01.body.1.weight": np.zeros(1)}


def _torch():
    import torch

    return torch


def ref():
    import torch_archs_compact_y

    return torch_archs_compact_y


def torch_forward(model, x):
    with _torch().no_grad():
        return model(_torch().from_numpy(np.array(x.transpose(0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)


def roundtrip(model, tmp_path):
    """The state_dict as the converter sees it: saved, read back with weights_only=True, as numpy."""
    t = _torch()
    t.save(model.state_dict(), tmp_path / "model.pth")
    return {k: v.numpy() for k, v in t.load(tmp_path / "model.pth", weights_only=True).items()}


def run(module, variables, x, mask=None):
    return np.asarray(module.apply(variables, jnp.asarray(x), valid_mask=None if mask is None else jnp.asarray(mask)))


def canvas(x, top, left, height, width):
    """``x`` zero-padded into a (height, width) canvas at (top, left), and its valid mask."""
    n, h, w, c = x.shape
    out, mask = np.zeros((n, height, width, c), np.float32), np.zeros((n, height, width, 1), np.float32)
    out[:, top : top + h, left : left + w], mask[:, top : top + h, left : left + w] = x, 1
    return out, mask


def valid_region(out, top, left, in_shape, scale):
    h, w = in_shape[1:3]
    return out[:, top * scale : (top + h) * scale, left * scale : (left + w) * scale]


def real_y(referee, name="Set5/LR_bicubic/X2/babyx2.png", size=48):
    """The BT.601 luma of a real photo in [0, 1], (1, size, size, 1)."""
    rgb = np.asarray(Image.open(referee / "images" / name).convert("RGB"), np.float64)[:size, :size] / 255.0
    y = (16.0 + rgb @ np.array([65.481, 128.553, 24.966])) / 255.0
    return y[None, :, :, None].astype(np.float32)


# ----------------------------------------------------------------------------------------------------- VDSR


def vdsr_model(features, num_residual, seed):
    return ref().randomize_(ref().VDSR(features, num_residual), seed)


@pytest.mark.torch
@pytest.mark.parametrize("features,num_residual", [(64, 18), (16, 3)])
def test_vdsr_torch_parity(tmp_path, features, num_residual):
    model = vdsr_model(features, num_residual, seed=num_residual)
    state = roundtrip(model, tmp_path)
    config = vdsr.detect(state)
    assert config == {"num_features": features, "num_residual": num_residual}
    module = vdsr.VDSR(**config, scale=2)
    assert module.pre_upsample and module.hr_receptive_radius == num_residual + 2
    x = np.random.default_rng(0).uniform(0, 1, (2, 33, 27, 1)).astype(np.float32)
    want, got = torch_forward(model, x), run(module, vdsr.to_flax(state, config), x)
    assert got.shape == x.shape and np.std(want - x) > 0.05, "the residual branch barely contributes"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.torch
def test_vdsr_masked_canvas_and_tiles(tmp_path):
    state = roundtrip(vdsr_model(16, 4, seed=2), tmp_path)
    module, variables = vdsr.VDSR(16, 4, scale=2), vdsr.to_flax(state, vdsr.detect(state))
    x = np.random.default_rng(1).uniform(0, 1, (1, 30, 26, 1)).astype(np.float32)
    whole = run(module, variables, x)
    padded, mask = canvas(x, 5, 2, 40, 40)
    np.testing.assert_allclose(valid_region(run(module, variables, padded, mask), 5, 2, x.shape, 1), whole, atol=1e-5)
    r = module.hr_receptive_radius
    tile = run(module, variables, x[:, 10 - r : 20 + r])[:, r:-r]
    np.testing.assert_allclose(tile, whole[:, 10:20], atol=1e-5, rtol=0)


@pytest.mark.torch
def test_vdsr_to_flax_names_the_key(tmp_path):
    state = roundtrip(vdsr_model(8, 2, seed=0), tmp_path)
    config = vdsr.detect(state)
    with pytest.raises(ValueError, match=r"residual_layer\.1\.conv\.weight"):
        vdsr.to_flax({**state, "residual_layer.1.conv.weight": np.zeros((8, 8, 5, 5), np.float32)}, config)
    with pytest.raises(ValueError, match=r"output\.weight"):
        vdsr.to_flax({k: v for k, v in state.items() if k != "output.weight"}, config)


@pytest.fixture
def vdsr_stub_classes(monkeypatch):
    """The classes the released full-module pickle names (``vdsr.Net``, ``vdsr.Conv_ReLU_Block``) as bare Modules:
    unpickling restores their submodules and parameters, and no code of the publisher runs."""
    t = _torch()
    stub = types.ModuleType("vdsr")
    stub.Net = type("Net", (t.nn.Module,), {})
    stub.Conv_ReLU_Block = type("Conv_ReLU_Block", (t.nn.Module,), {})
    monkeypatch.setitem(sys.modules, "vdsr", stub)


@pytest.mark.torch
@pytest.mark.referee
def test_vdsr_released_weights_match_pytorch(referee, vdsr_stub_classes):
    t = _torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # source-changed chatter of a 2017 pickle
        saved = t.load(referee / "checkpoints/VDSR/model_epoch_50.pth", map_location="cpu", weights_only=False)
    state = {k: v.numpy() for k, v in saved["model"].state_dict().items()}
    config = vdsr.detect(state)
    assert config == {"num_features": 64, "num_residual": 18}
    model = ref().VDSR(64, 18).eval()
    model.load_state_dict(saved["model"].state_dict())
    lr = real_y(referee, size=32)
    x = np.asarray(Image.fromarray(lr[0, :, :, 0]).resize((64, 64), Image.BICUBIC))[None, :, :, None]
    want, got = torch_forward(model, x), run(vdsr.VDSR(**config, scale=2), vdsr.to_flax(state, config), x)
    assert np.abs(want - x).max() > 0.02, "the released residual should sharpen a real photo"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------- FSRCNN


def fsrcnn_model(scale, d, s, m, seed):
    return ref().randomize_(ref().FSRCNN(scale, d=d, s=s, m=m), seed)


@pytest.mark.torch
@pytest.mark.parametrize("scale,d,s,m", [(2, 56, 12, 4), (3, 32, 8, 2), (4, 16, 6, 1)])
def test_fsrcnn_torch_parity(tmp_path, scale, d, s, m):
    model = fsrcnn_model(scale, d, s, m, seed=scale)
    state = roundtrip(model, tmp_path)
    config = fsrcnn.detect(state)
    # Random weights do not keep flat images flat, so the scale read off the values is meaningless here.
    assert {k: v for k, v in config.items() if k != "scale"} == {"d": d, "s": s, "m": m}
    config = {**config, "scale": scale}
    x = np.random.default_rng(0).uniform(0, 1, (2, 13, 17, 1)).astype(np.float32)
    want, got = torch_forward(model, x), run(fsrcnn.FSRCNN(**config), fsrcnn.to_flax(state, config), x)
    assert got.shape == (2, 13 * scale, 17 * scale, 1) and np.std(want) > 0.05
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fsrcnn_masked_canvas_and_tiles(tmp_path, scale):
    state = roundtrip(fsrcnn_model(scale, 16, 6, 2, seed=7), tmp_path)
    module = fsrcnn.FSRCNN(scale=scale, d=16, s=6, m=2)
    variables = fsrcnn.to_flax(state, {"scale": scale, "d": 16, "s": 6, "m": 2})
    x = np.random.default_rng(scale).uniform(0, 1, (1, 23, 19, 1)).astype(np.float32)
    whole = run(module, variables, x)
    padded, mask = canvas(x, 3, 6, 32, 32)
    got = valid_region(run(module, variables, padded, mask), 3, 6, x.shape, scale)
    np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)
    r = module.receptive_radius
    tile = run(module, variables, x[:, 11 - r : 14 + r, 9 - r : 11 + r])[
        :, r * scale : -r * scale, r * scale : -r * scale
    ]
    np.testing.assert_allclose(tile, whole[:, 11 * scale : 14 * scale, 9 * scale : 11 * scale], atol=1e-5, rtol=0)
    # One LR pixel less context on the right, and some pixel changes: the radius is not loose on that side.
    short = run(module, variables, x[:, :, : 11 + r - 1])[:, :, : 11 * scale]
    assert np.abs(short - whole[:, :, : 11 * scale]).max() > 1e-4


@pytest.mark.torch
def test_fsrcnn_to_flax_names_the_key(tmp_path):
    state = roundtrip(fsrcnn_model(2, 8, 4, 1, seed=0), tmp_path)
    config = {**fsrcnn.detect(state), "scale": 2}
    with pytest.raises(ValueError, match=r"last_part\.weight"):
        fsrcnn.to_flax({**state, "last_part.weight": np.zeros((8, 1, 7, 7), np.float32)}, config)
    with pytest.raises(ValueError, match=r"mid_part\.3\.weight"):
        fsrcnn.to_flax({k: v for k, v in state.items() if k != "mid_part.3.weight"}, config)


@pytest.mark.torch
@pytest.mark.referee
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fsrcnn_released_weights(referee, scale):
    t = _torch()
    raw = t.load(referee / f"checkpoints/FSRCNN/fsrcnn_x{scale}.pth", map_location="cpu", weights_only=True)
    state = {k: v.numpy() for k, v in raw.items()}
    config = fsrcnn.detect(state)
    assert config == {"scale": scale, "d": 56, "s": 12, "m": 4}
    fit = fsrcnn.scale_fit(state, 4)
    assert fit[scale] < fsrcnn.SCALE_FIT_TOLERANCE < min(e for r, e in fit.items() if r != scale)
    model = ref().FSRCNN(scale).eval()
    model.load_state_dict(raw)
    x = real_y(referee, f"Set5/LR_bicubic/X{scale}/butterflyx{scale}.png", size=40)
    want, got = torch_forward(model, x), run(fsrcnn.FSRCNN(**config), fsrcnn.to_flax(state, config), x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ detection


@pytest.mark.torch
def test_each_detect_refuses_the_others(tmp_path):
    import torch_archs_compact_y as r

    states = {
        "compact": {k: v.numpy() for k, v in r.SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2).state_dict().items()},
        "vdsr": {k: v.numpy() for k, v in r.VDSR(8, 2).state_dict().items()},
        "fsrcnn": {k: v.numpy() for k, v in r.FSRCNN(3, d=8, s=4, m=1).state_dict().items()},
        "srgan": SRGAN_LIKE,
        "empty": {},
        "junk": {"input.weight": None, "first_part.0.weight": "x", "body.0.weight": 3},
    }
    detectors = {"compact": compact.detect, "vdsr": vdsr.detect, "fsrcnn": fsrcnn.detect}
    for name, detect in detectors.items():
        for other, state in states.items():
            assert (detect(state) is not None) == (name == other), (name, other)


# ------------------------------------------------------------------------------------ dtype and conv paths

SMALL = {
    "compact": (compact, compact.SRVGGNetCompact, {"num_feat": 8, "num_conv": 2, "scale": 2}, 3),
    "vdsr": (vdsr, vdsr.VDSR, {"num_features": 8, "num_residual": 2}, 1),
    "fsrcnn": (fsrcnn, fsrcnn.FSRCNN, {"scale": 3, "d": 8, "s": 4, "m": 1}, 1),
}


def random_state(targets, seed=0):
    """A random state_dict with the torch shapes of ``targets``: He-normal weights, PReLU slopes in [0.05, 0.5]."""
    rng = np.random.default_rng(seed)
    fill = {
        4: lambda shape: rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:])),
        1: lambda shape: rng.uniform(0.05, 0.5, shape),
    }
    return {k: fill[len(t.shape)](t.shape).astype(np.float32) for k, t in targets.items()}


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_compute_dtype_and_conv_paths(arch):
    import jax

    family, module, config, channels = SMALL[arch]
    variables = family.to_flax(random_state(family.targets(**config)), config)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, 12, 14, channels)).astype(np.float32))
    want = np.asarray(module(**config).apply(variables, x))
    assert np.std(want) > 0.05
    for path in ("fast", "winograd"):
        np.testing.assert_allclose(module(**config, conv=path).apply(variables, x), want, atol=1e-4, rtol=0)
    half = module(**config, dtype=jnp.bfloat16).apply(variables, x)
    assert half.dtype == jnp.float32 and np.abs(np.asarray(half) - want).max() < 0.05 * np.abs(want).max()
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))
