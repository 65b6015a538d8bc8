"""PAN and IMDN as architecture plug-ins: detection, conversion, parity with PyTorch (random and the released
weights), exact zero-padded canvases, and IMDN's tiling error (global channel statistics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsr.archs import REGISTRY, imdn, pan

PAN_CONFIGS = {  # other sizes than the released nf 40, unf 24, nb 16: detection must read them off the shapes
    2: dict(in_nc=3, out_nc=3, nf=40, unf=24, nb=5, scale=2),
    3: dict(in_nc=3, out_nc=3, nf=16, unf=12, nb=3, scale=3),
    4: dict(in_nc=3, out_nc=3, nf=24, unf=16, nb=4, scale=4),
}
IMDN_CONFIGS = {
    2: dict(in_nc=3, nf=64, num_modules=6, out_nc=3, scale=2),
    3: dict(in_nc=3, nf=32, num_modules=3, out_nc=3, scale=3),
    4: dict(in_nc=3, nf=64, num_modules=6, out_nc=3, scale=4),
}
SMALL_PAN = dict(in_nc=3, out_nc=3, nf=16, unf=12, nb=2)
SMALL_IMDN = dict(in_nc=3, nf=32, num_modules=2, out_nc=3)


def zeros_state_dict(targets: dict) -> dict[str, np.ndarray]:
    """A state_dict with the layout of ``targets`` (keys and torch shapes), for detection tests."""
    return {key: np.zeros(target.shape, np.float32) for key, target in targets.items()}


def random_variables(module, seed: int = 0) -> dict:
    """Every parameter random (biases too: they are what makes a canvas's padding non-zero)."""
    params = jax.eval_shape(module.init, jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 3)))["params"]
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 10.0
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return {"params": jax.tree.map(fill, params)}


def run_jsr(arch, state_dict, config, lr_nchw: np.ndarray) -> np.ndarray:
    """detect's config must be ``config``; the converted network on NCHW ``lr`` -> NCHW output."""
    variables = arch.to_flax(state_dict, config)
    out = jax.jit(arch.build(config).apply)(variables, jnp.asarray(lr_nchw.transpose(0, 2, 3, 1)))
    return np.asarray(out).transpose(0, 3, 1, 2)


def torch_state_dict(model, tmp_path) -> dict[str, np.ndarray]:
    """Saved with torch.save and read back as a checkpoint file would be (weights_only)."""
    import torch

    torch.save(model.state_dict(), tmp_path / "weights.pth")
    state = torch.load(tmp_path / "weights.pth", map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items()}


def run_torch(model, lr_nchw: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.eval()(torch.from_numpy(lr_nchw)).numpy()


# ------------------------------------------------------------------------------------------------ detection


def test_registered():
    assert REGISTRY["pan"] is pan.ARCH and REGISTRY["imdn"] is imdn.ARCH
    assert pan.ARCH.exact_tiling and not imdn.ARCH.exact_tiling


def test_detect_reads_configs_and_refuses_foreign_dicts():
    pan_sd = zeros_state_dict(pan.targets(**PAN_CONFIGS[4]))
    imdn_sd = zeros_state_dict(imdn.targets(**IMDN_CONFIGS[3]))
    one_stage = zeros_state_dict(pan.targets(**PAN_CONFIGS[3]))
    assert pan.detect(pan_sd) == PAN_CONFIGS[4]
    assert imdn.detect(imdn_sd) == IMDN_CONFIGS[3]
    # x2 and x3 share keys and shapes: the scale is unknown unless given
    assert pan.detect(one_stage) == PAN_CONFIGS[3] | {"scale": None}
    assert pan.detect(one_stage, scale=3) == PAN_CONFIGS[3]
    with pytest.raises(ValueError, match="one upsampling stage"):
        pan.detect(one_stage, scale=4)
    srgan = {"conv01.body.0.weight": np.zeros((64, 3, 9, 9), np.float32)}
    junk = {"fea_conv.weight": "not a tensor", "conv_first.weight": np.zeros(3), 7: None}
    for foreign in (srgan, junk, {}):
        assert pan.detect(foreign) is None and imdn.detect(foreign) is None
    assert pan.detect(imdn_sd) is None and imdn.detect(pan_sd) is None


def test_to_flax_names_the_key_and_matches_the_module():
    config = PAN_CONFIGS[3]
    state = zeros_state_dict(pan.targets(**config))
    variables = pan.to_flax(state, config)
    expected = jax.eval_shape(pan.PAN(**config).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, expected)
    imdn_sd = zeros_state_dict(imdn.targets(**IMDN_CONFIGS[3]))
    expected = jax.eval_shape(imdn.IMDN(**IMDN_CONFIGS[3]).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    assert jax.tree.map(np.shape, imdn.to_flax(imdn_sd, IMDN_CONFIGS[3])) == jax.tree.map(np.shape, expected)
    broken = dict(state, **{"trunk_conv.bias": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match="trunk_conv.bias"):
        pan.to_flax(broken, config)
    with pytest.raises(ValueError, match="att1.conv.weight"):
        pan.to_flax({k: v for k, v in state.items() if k != "att1.conv.weight"}, config)
    with pytest.raises(ValueError, match="IMDB9.c1.weight"):
        imdn.to_flax(dict(imdn_sd, **{"IMDB9.c1.weight": np.zeros(1)}), IMDN_CONFIGS[3])


def test_receptive_radius():
    assert [pan.PAN(**PAN_CONFIGS[s]).receptive_radius for s in (2, 3, 4)] == [14, 9, 12]
    assert pan.PAN(nb=16, scale=4).receptive_radius == 36
    assert imdn.IMDN(**IMDN_CONFIGS[4]).receptive_radius == 27


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pan_receptive_radius_is_its_reach(scale):
    """The input pixels one LR pixel's output block depends on (non-zero gradient) lie exactly within the radius."""
    module = pan.PAN(**SMALL_PAN, scale=scale)
    variables, size, centre = random_variables(module, scale), 31, 15
    here = slice(centre * scale, (centre + 1) * scale)

    def block(x):
        return module.apply(variables, x)[0, here, here].sum()

    grad = np.abs(np.asarray(jax.grad(block)(jnp.full((1, size, size, 3), 0.5)))).sum(axis=(0, 3))
    rows, cols = np.nonzero(grad)
    assert max(np.abs(rows - centre).max(), np.abs(cols - centre).max()) == module.receptive_radius


# ----------------------------------------------------------------------------------------- PyTorch parity


@pytest.mark.torch
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pan_matches_pytorch(scale, tmp_path):
    import torch
    import torch_archs_pan_imdn as ref

    torch.manual_seed(scale)
    config = PAN_CONFIGS[scale]
    model = ref.PAN(**config)
    state = torch_state_dict(model, tmp_path)
    assert pan.detect(state, scale=None if scale == 4 else scale) == config
    lr = np.random.default_rng(scale).random((2, 3, 19, 14), dtype=np.float32)
    want = run_torch(model, lr)
    got = run_jsr(pan.ARCH, state, config, lr)
    assert want.std() > 0.05  # a network that computes something image-dependent
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.torch
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imdn_matches_pytorch(scale, tmp_path):
    import torch
    import torch_archs_pan_imdn as ref

    torch.manual_seed(scale)
    config = IMDN_CONFIGS[scale]
    model = ref.IMDN(config["in_nc"], config["nf"], config["num_modules"], config["out_nc"], scale)
    state = torch_state_dict(model, tmp_path)
    assert imdn.detect(state) == config
    lr = np.random.default_rng(scale).random((2, 3, 17, 22), dtype=np.float32)
    want = run_torch(model, lr)
    got = run_jsr(imdn.ARCH, state, config, lr)
    assert want.std() > 0.01
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------- masked canvas


def canvas_matches_unpadded(module, variables, scale: int) -> float:
    """One image on a zero canvas twice, at the origin and off it: max |valid region - unpadded run|."""
    (h, w), corners = (13, 17), [(0, 0), (4, 3)]
    image = np.random.default_rng(1).random((1, h, w, 3), dtype=np.float32)
    canvas = np.zeros((2, 20, 24, 3), np.float32)
    mask = np.zeros((2, 20, 24, 1), np.float32)
    for b, (top, left) in enumerate(corners):
        canvas[b, top : top + h, left : left + w] = image[0]
        mask[b, top : top + h, left : left + w] = 1.0
    apply = jax.jit(module.apply)
    out = np.asarray(apply(variables, jnp.asarray(canvas), valid_mask=jnp.asarray(mask)))
    alone = np.asarray(apply(variables, jnp.asarray(image)))[0]
    crop = lambda b, t, left: out[b, t * scale : (t + h) * scale, left * scale : (left + w) * scale]  # noqa: E731
    return max(float(np.abs(crop(b, *corner) - alone).max()) for b, corner in enumerate(corners))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pan_masked_canvas_is_exact(scale):
    module = pan.PAN(**SMALL_PAN, scale=scale)
    assert canvas_matches_unpadded(module, random_variables(module, scale), scale) < 1e-5


def test_imdn_masked_canvas_is_exact():
    module = imdn.IMDN(**SMALL_IMDN, scale=3)
    assert canvas_matches_unpadded(module, random_variables(module), 3) < 1e-5


# ----------------------------------------------------------------------------------------- released weights


def load_lr(referee, scale: int, name: str = "bird") -> np.ndarray:
    from PIL import Image

    path = referee / "images" / "Set5" / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"
    return (np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def released(referee, arch: str, scale: int) -> dict[str, np.ndarray]:
    import torch

    path = referee / "checkpoints" / ("PAN" if arch == "pan" else "IMDN")
    path = path / (f"PANx{scale}_DF2K.pth" if arch == "pan" else f"IMDN_x{scale}.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}


def reference_model(arch: str, state: dict, scale: int):
    import torch
    import torch_archs_pan_imdn as ref

    model = ref.PAN(scale=scale) if arch == "pan" else ref.IMDN(upscale=scale)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


@pytest.mark.torch
@pytest.mark.referee
@pytest.mark.parametrize("arch", ["pan", "imdn"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_released_weights_match_pytorch(referee, arch, scale):
    state = released(referee, arch, scale)
    module = pan if arch == "pan" else imdn
    config = module.detect(state, scale=scale) if arch == "pan" else module.detect(state)
    assert config["scale"] == scale and config.get("nb", 16) == 16 and config.get("num_modules", 6) == 6
    lr = load_lr(referee, scale)
    want = run_torch(reference_model(arch, state, scale), lr)
    got = run_jsr(module.ARCH, state, config, lr)
    diff = float(np.abs(got - want).max())
    print(f"{arch} x{scale} bird {lr.shape[2:]}: max |jsr - torch| = {diff:.2e}")
    assert diff < 1e-4


# ------------------------------------------------------------------------------------------- IMDN tiling


def owner_tiles(size: int, tile: int, overlap: int) -> tuple[list[int], np.ndarray]:
    """Tile starts along one axis, and for each pixel the tile it is farthest inside (its output comes from)."""
    starts = sorted({*range(0, max(size - tile, 0), tile - overlap), max(size - tile, 0)})
    pixels = np.arange(size)[:, None]
    depth = np.minimum(pixels - np.array(starts), np.array(starts) + tile - 1 - pixels)
    return starts, depth.argmax(axis=1)


def tiled_apply(apply, lr_nhwc: np.ndarray, scale: int, tile: int = 48, overlap: int = 16) -> np.ndarray:
    """Whole-image output assembled from ``tile``-px LR tiles overlapping by ``overlap`` px."""
    _, h, w, _ = lr_nhwc.shape
    (rows, row_owner), (cols, col_owner) = owner_tiles(h, tile, overlap), owner_tiles(w, tile, overlap)
    out = np.zeros((h * scale, w * scale, 3), np.float32)
    hr = lambda lr_index: (lr_index[:, None] * scale + np.arange(scale)).ravel()  # noqa: E731
    for i, top in enumerate(rows):
        ys = hr(np.flatnonzero(row_owner == i))
        for j, left in enumerate(cols):
            xs = hr(np.flatnonzero(col_owner == j))
            piece = np.asarray(apply(lr_nhwc[:, top : top + tile, left : left + tile]))[0]
            out[np.ix_(ys, xs)] = piece[np.ix_(ys - top * scale, xs - left * scale)]
    return out[None]


@pytest.mark.torch
@pytest.mark.referee
def test_imdn_tiling_error_is_measured(referee):
    state = released(referee, "imdn", 2)
    config = imdn.detect(state)
    lr = load_lr(referee, 2).transpose(0, 2, 3, 1)
    variables = imdn.to_flax(state, config)
    apply = jax.jit(lambda x: imdn.ARCH.build(config).apply(variables, x))
    whole = np.asarray(apply(lr))
    diff = np.abs(tiled_apply(apply, lr, 2) - whole)
    print(f"IMDN x2 bird {lr.shape[1:3]}, 48-px tiles, 16-px overlap: max {diff.max():.2e}, mean {diff.mean():.2e}")
    assert 0 < diff.max() < 0.1  # not exact (global statistics), yet small
