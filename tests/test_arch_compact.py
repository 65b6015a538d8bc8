"""SRVGGNetCompact (Real-ESRGAN): PyTorch parity through torch.save / torch.load(weights_only=True), detection,
masked-canvas exactness, tiling within the receptive radius, and the released realesr-animevideov3 weights."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jsr.archs import compact

SRGAN_LIKE = {"conv01.body.0.weight": np.zeros((64, 3, 9, 9), np.float32), "conv01.body.1.weight": np.zeros(1)}


def _torch():
    import torch

    return torch


def nchw(x):
    return _torch().from_numpy(np.array(x.transpose(0, 3, 1, 2)))  # a copy: torch wants writable memory


def torch_forward(model, x):
    with _torch().no_grad():
        return model(nchw(x)).numpy().transpose(0, 2, 3, 1)


def roundtrip(model, tmp_path):
    """The state_dict as the converter sees it: saved, read back with weights_only=True, as numpy."""
    t = _torch()
    t.save(model.state_dict(), tmp_path / "model.pth")
    return {k: v.numpy() for k, v in t.load(tmp_path / "model.pth", weights_only=True).items()}


def converted(state):
    config = compact.detect(state)
    assert config is not None
    return config, compact.SRVGGNetCompact(**config), compact.to_flax(state, config)


def run(module, variables, x, mask=None):
    return np.asarray(module.apply(variables, jnp.asarray(x), valid_mask=None if mask is None else jnp.asarray(mask)))


def random_model(num_feat, num_conv, scale, seed):
    import torch_archs_compact_y as ref

    return ref.randomize_(ref.SRVGGNetCompact(num_feat=num_feat, num_conv=num_conv, upscale=scale), seed, gain=0.7)


@pytest.mark.torch
@pytest.mark.parametrize("num_feat,num_conv,scale", [(16, 4, 2), (24, 16, 4), (8, 2, 3)])
def test_torch_parity(tmp_path, num_feat, num_conv, scale):
    model = random_model(num_feat, num_conv, scale, seed=num_conv)
    config, module, variables = converted(roundtrip(model, tmp_path))
    assert config == {"num_feat": num_feat, "num_conv": num_conv, "scale": scale, "channels": 3}
    x = np.random.default_rng(0).uniform(0, 1, (2, 19, 23, 3)).astype(np.float32)  # odd sizes
    want, got = torch_forward(model, x), run(module, variables, x)
    assert got.shape == (2, 19 * scale, 23 * scale, 3)
    assert np.std(want - np.repeat(np.repeat(x, scale, 1), scale, 2)) > 0.05, "the body barely contributes"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def canvas(x, top, left, height, width):
    """``x`` zero-padded into a (height, width) canvas at (top, left), and its valid mask."""
    n, h, w, c = x.shape
    out = np.zeros((n, height, width, c), np.float32)
    mask = np.zeros((n, height, width, 1), np.float32)
    out[:, top : top + h, left : left + w] = x
    mask[:, top : top + h, left : left + w] = 1
    return out, mask


def valid_region(out, top, left, lr_shape, scale):
    """The HR pixels of the LR region at (top, left) of size ``lr_shape``."""
    h, w = lr_shape[1:3]
    return out[:, top * scale : (top + h) * scale, left * scale : (left + w) * scale]


@pytest.mark.torch
def test_masked_canvas_and_tiles_are_exact(tmp_path):
    scale = 2
    model = random_model(16, 4, scale, seed=3)
    _, module, variables = converted(roundtrip(model, tmp_path))
    x = np.random.default_rng(1).uniform(0, 1, (1, 17, 21, 3)).astype(np.float32)
    whole = run(module, variables, x)
    padded, mask = canvas(x, 3, 5, 32, 32)
    out = valid_region(run(module, variables, padded, mask), 3, 5, x.shape, scale)
    np.testing.assert_allclose(out, whole, atol=1e-5, rtol=0)
    # A tile carrying receptive_radius LR pixels of context reproduces its part of the whole output.
    r, top, bottom = module.receptive_radius, 7, 11
    tile = run(module, variables, x[:, top - r : bottom + r])[:, r * scale : (r + bottom - top) * scale]
    np.testing.assert_allclose(tile, whole[:, top * scale : bottom * scale], atol=1e-5, rtol=0)


@pytest.mark.torch
def test_to_flax_names_the_key(tmp_path):
    state = roundtrip(random_model(8, 2, 2, seed=0), tmp_path)
    config = compact.detect(state)
    with pytest.raises(ValueError, match=r"body\.3\.weight"):
        compact.to_flax({**state, "body.3.weight": np.zeros(5, np.float32)}, config)
    with pytest.raises(ValueError, match=r"body\.2\.bias"):
        compact.to_flax({k: v for k, v in state.items() if k != "body.2.bias"}, config)


def test_detect_refuses_foreign_and_broken_dicts():
    conv = lambda o, i: np.zeros((o, i, 3, 3), np.float32)  # noqa: E731
    good = {"body.0.weight": conv(8, 3), "body.1.weight": np.zeros(8), "body.2.weight": conv(12, 8)}
    assert compact.detect(good) == {"num_feat": 8, "num_conv": 0, "scale": 2, "channels": 3}
    assert compact.detect(SRGAN_LIKE) is None
    assert compact.detect({}) is None
    assert compact.detect({"body.0.weight": "not a tensor", 3: None}) is None
    assert compact.detect({**good, "body.1.weight": np.zeros(1)}) is None  # a scalar PReLU is another network
    assert compact.detect({**good, "body.2.weight": conv(10, 8)}) is None  # 10 is not 3 * s * s
    assert compact.detect({k: v for k, v in good.items() if k != "body.1.weight"}) is None  # relu: no slopes


def _photo(referee):
    """A real photo: Set14 comic at x4 LR (MATLAB bicubic), RGB in [0, 1]."""
    rgb = np.asarray(Image.open(referee / "images/Set14/LR_bicubic/X4/comicx4.png").convert("RGB"))
    return (rgb[None].astype(np.float32) / 255.0)[:, :64, :64]


@pytest.mark.torch
@pytest.mark.referee
def test_released_animevideov3_matches_pytorch(referee):
    import torch_archs_compact_y as ref

    t = _torch()
    params = t.load(referee / "checkpoints/Real-ESRGAN/realesr-animevideov3.pth", map_location="cpu", weights_only=True)
    state = {k: v.numpy() for k, v in params["params"].items()}
    config, module, variables = converted(state)
    assert config == {"num_feat": 64, "num_conv": 16, "scale": 4, "channels": 3}
    model = ref.SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4).eval()
    model.load_state_dict(params["params"])
    x = _photo(referee)
    want, got = torch_forward(model, x), run(module, variables, x)
    to_u8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.int16)  # noqa: E731
    assert np.abs(to_u8(got) - to_u8(want)).max() <= 1
    assert np.abs(got - want).max() < 1e-4
    # The masked canvas holds for the real weights too.
    padded, mask = canvas(x, 4, 9, 80, 80)
    out = valid_region(run(module, variables, padded, mask), 4, 9, x.shape, 4)
    np.testing.assert_allclose(out, got, atol=1e-5, rtol=0)
