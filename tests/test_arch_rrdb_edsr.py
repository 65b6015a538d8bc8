"""RRDBNet (ESRGAN / Real-ESRGAN) and EDSR as architecture plug-ins: detection at the released sizes, conversion
from the released wrappers, parity with PyTorch, exact zero-padded canvases, receptive radii and tiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsr.archs import REGISTRY, edsr, rrdbnet
from jsr.inference import Upscaler

MEAN = edsr.DIV2K_MEAN
EDSR_DEFAULTS = dict(num_in_ch=3, num_out_ch=3, img_range=255.0, rgb_mean=MEAN, layout="basicsr")
RELEASED_RRDB = {  # Real-ESRGAN's, ESRGAN's and BSRGAN's files
    "RealESRGAN_x4plus": dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32, layout="basicsr"),
    "RealESRGAN_x2plus": dict(scale=2, num_feat=64, num_block=23, num_grow_ch=32, layout="basicsr"),
    "RealESRGAN_x4plus_anime_6B": dict(scale=4, num_feat=64, num_block=6, num_grow_ch=32, layout="basicsr"),
    "RRDB_ESRGAN_x4": dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32, layout="esrgan_old"),
    "BSRGAN": dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32, layout="esrgan"),
}
RELEASED_EDSR = {  # BasicSR's EDSR_Mx / EDSR_Lx and EDSR-PyTorch's files
    "EDSR_Mx2": dict(num_feat=64, num_block=16, scale=2, res_scale=1.0),
    "EDSR_Lx4": dict(num_feat=256, num_block=32, scale=4, res_scale=0.1),
    "edsr_x3 (EDSR-PyTorch)": dict(num_feat=256, num_block=32, scale=3, res_scale=0.1, layout="edsr_pytorch"),
}


def rrdb_config(**kw) -> dict:
    return dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=16, num_block=2, num_grow_ch=8, layout="basicsr") | kw


def edsr_config(**kw) -> dict:
    return EDSR_DEFAULTS | dict(num_feat=16, num_block=2, scale=2, res_scale=1.0) | kw


def shape_only(targets: dict) -> dict[str, np.ndarray]:
    """A state_dict with the layout of ``targets`` whose arrays take no memory (detection reads shapes only)."""
    return {key: np.broadcast_to(np.float32(0), t.shape) for key, t in targets.items()}


def flax_shapes(targets: dict) -> dict:
    """The variables' shapes ``to_flax`` builds from ``targets`` (convs OIHW -> HWIO), without building them."""
    tree: dict = {}
    for t in targets.values():
        node = tree.setdefault(t.collection, {})
        for name in t.path[:-1]:
            node = node.setdefault(name, {})
        node[t.path[-1]] = (*t.shape[2:], t.shape[1], t.shape[0]) if len(t.shape) == 4 else t.shape
    return tree


def random_variables(module, seed: int = 0) -> dict:
    """Every parameter random (biases too: they are what makes a canvas's padding non-zero)."""
    params = jax.eval_shape(module.init, jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 3)))["params"]
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 10.0
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return {"params": jax.tree.map(fill, params)}


# ------------------------------------------------------------------------------------------------ detection


def test_registered():
    assert REGISTRY["rrdbnet"] is rrdbnet.ARCH and REGISTRY["edsr"] is edsr.ARCH
    assert rrdbnet.ARCH.exact_tiling and edsr.ARCH.exact_tiling
    assert rrdbnet.ARCH.value_range == edsr.ARCH.value_range == (0.0, 1.0)


@pytest.mark.parametrize("name", list(RELEASED_RRDB) + list(RELEASED_EDSR))
def test_detect_released_sizes(name):
    """The released files' layouts at their real sizes: detect's config builds a module whose parameters have
    exactly the converted shapes (shapes only: nothing is allocated or computed)."""
    if name in RELEASED_RRDB:
        arch, config = rrdbnet, rrdb_config(**RELEASED_RRDB[name])
    else:
        arch, config = edsr, EDSR_DEFAULTS | RELEASED_EDSR[name]
    table = arch.targets(**config)
    state = shape_only(table)
    if config["layout"] == "edsr_pytorch":
        bias = 255.0 * np.asarray(MEAN, np.float32)
        eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
        state |= {"sub_mean.weight": eye, "sub_mean.bias": -bias, "add_mean.weight": eye, "add_mean.bias": bias}
    assert arch.detect(state) == config
    module = arch.ARCH.build(config)
    expected = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    assert jax.tree.map(lambda a: a.shape, expected) == flax_shapes(table)


def test_detect_refuses_foreign_dicts():
    rrdb_sd = shape_only(rrdbnet.targets(**rrdb_config()))
    edsr_sd = shape_only(edsr.targets(**edsr_config()))
    assert rrdbnet.detect(edsr_sd) is None and edsr.detect(rrdb_sd) is None
    srgan = {"conv01.body.0.weight": np.zeros((64, 3, 9, 9), np.float32)}
    junk = {"conv_first.weight": "not a tensor", "body.0.conv1.weight": np.zeros(3), 7: None}
    for foreign in (srgan, junk, {}):
        assert rrdbnet.detect(foreign) is None and edsr.detect(foreign) is None
    # near misses: ESRGAN+'s extra conv1x1, a missing conv, an unsupported x3 RRDBNet, a non-RGB EDSR
    plus = dict(rrdb_sd, **{"body.0.rdb1.conv1x1.weight": np.zeros((8, 16, 1, 1), np.float32)})
    missing = {k: v for k, v in rrdb_sd.items() if k != "conv_hr.weight"}
    x3 = dict(rrdb_sd, **{"conv_first.weight": np.zeros((16, 27, 3, 3), np.float32)})
    grey = shape_only(edsr.targets(**edsr_config(num_in_ch=1, num_out_ch=1)))
    assert rrdbnet.detect(plus) is None and rrdbnet.detect(missing) is None and rrdbnet.detect(x3) is None
    assert edsr.detect(grey) is None


def test_detect_reads_scale_and_mean_shift():
    for scale in (4, 2, 1):
        assert rrdbnet.detect(shape_only(rrdbnet.targets(**rrdb_config(scale=scale))))["scale"] == scale
    for scale in (2, 3, 4, 8):
        assert edsr.detect(shape_only(edsr.targets(**edsr_config(scale=scale))))["scale"] == scale
    pytorch = shape_only(edsr.targets(**edsr_config(layout="edsr_pytorch")))
    eye = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    mean = np.float32([0.5, 0.25, 0.125])
    unit = {"sub_mean.weight": eye, "sub_mean.bias": -mean, "add_mean.weight": eye, "add_mean.bias": mean}
    assert edsr.detect(pytorch | unit) == edsr_config(layout="edsr_pytorch", img_range=1.0, rgb_mean=(0.5, 0.25, 0.125))
    assert edsr.detect(pytorch) == edsr_config(layout="edsr_pytorch")  # no MeanShift keys: the defaults
    assert edsr.detect(pytorch | unit | {"add_mean.weight": 2 * eye}) is None  # a std other than 1


def test_to_flax_names_the_key():
    config = rrdb_config()
    state = {k: np.zeros(t.shape, np.float32) for k, t in rrdbnet.targets(**config).items()}
    with pytest.raises(ValueError, match="body.1.rdb3.conv5.bias"):
        rrdbnet.to_flax(dict(state, **{"body.1.rdb3.conv5.bias": np.zeros(5, np.float32)}), config)
    with pytest.raises(ValueError, match="conv_up2.weight"):
        rrdbnet.to_flax({k: v for k, v in state.items() if k != "conv_up2.weight"}, config)


def test_receptive_radius():
    rrdb = lambda **kw: rrdbnet.RRDBNet(**rrdb_config(**kw)).receptive_radius  # noqa: E731
    # x4plus, x2plus (in input pixels: twice the unshuffled reach), anime_6B, x1
    assert [rrdb(num_block=23), rrdb(num_block=23, scale=2), rrdb(num_block=6), rrdb(num_block=23, scale=1)] == [
        349,
        698,
        94,
        1396,
    ]
    assert [edsr.EDSR(num_block=16, scale=s).receptive_radius for s in (2, 3, 4, 8)] == [36] * 4
    assert edsr.EDSR(num_block=32).receptive_radius == 68


def reach(module, variables, f: int, size: int, centre: int) -> tuple[int, int]:
    """How far before / after the aligned f x f group at ``centre`` the inputs its output block depends on lie."""
    s = module.scale
    here = slice(centre * s, (centre + f) * s)
    image = jnp.asarray(np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32))
    grad = jax.grad(lambda x: module.apply(variables, x)[0, here, here].sum())(image)
    rows, cols = np.nonzero(np.abs(np.asarray(grad)).sum(axis=(0, 3)))
    return centre - min(rows.min(), cols.min()), max(rows.max(), cols.max()) - (centre + f - 1)


@pytest.mark.parametrize("scale", [4, 2])
def test_rrdbnet_receptive_radius_is_its_reach(scale):
    module = rrdbnet.RRDBNet(**rrdb_config(scale=scale, num_feat=8, num_block=1, num_grow_ch=4))
    f, radius = module.alignment, module.receptive_radius
    size = 2 * radius + 3 * f
    assert reach(module, random_variables(module), f, size, radius + f) == (radius, radius)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_receptive_radius_is_its_reach(scale):
    module = edsr.EDSR(**edsr_config(scale=scale, num_feat=8))
    radius = module.receptive_radius
    assert reach(module, random_variables(module, scale), 1, 2 * radius + 3, radius + 1) == (radius, radius)


# ----------------------------------------------------------------------------------------- PyTorch parity


def saved_and_loaded(model, wrapper: str | None, tmp_path) -> dict[str, np.ndarray]:
    """The state_dict saved as the released files are (inside ``{wrapper: ...}``), read back with weights_only."""
    import torch

    state = model.state_dict()
    torch.save(state if wrapper is None else {wrapper: state}, tmp_path / "weights.pth")
    loaded = torch.load(tmp_path / "weights.pth", map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in (loaded if wrapper is None else loaded[wrapper]).items()}


def run_torch(model, lr_nchw: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model.eval()(torch.from_numpy(lr_nchw)).numpy()


def run_jsr(arch, state: dict, lr_nchw: np.ndarray) -> np.ndarray:
    """Detected, converted and run on NCHW ``lr``, the output NCHW."""
    config = arch.detect(state)
    variables = arch.to_flax(state, config)
    out = jax.jit(arch.ARCH.build(config).apply)(variables, jnp.asarray(lr_nchw.transpose(0, 2, 3, 1)))
    return np.asarray(out).transpose(0, 3, 1, 2)


RRDB_PARITY = {  # name: (config, LR size); x2 / x1 sides are multiples of the unshuffle factor
    "x4": (rrdb_config(), (11, 13)),
    "x2": (rrdb_config(scale=2), (14, 10)),
    "x1": (rrdb_config(scale=1), (16, 12)),
    "anime_6B-like": (rrdb_config(num_block=6, num_grow_ch=32), (9, 12)),
    "x4 ESRGAN layout": (rrdb_config(layout="esrgan_old"), (10, 9)),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(RRDB_PARITY))
def test_rrdbnet_matches_pytorch(name, tmp_path):
    import torch
    import torch_archs_rrdb_edsr as ref

    config, (h, w) = RRDB_PARITY[name]
    torch.manual_seed(len(name))
    model = ref.RRDBNet(3, 3, config["scale"], config["num_feat"], config["num_block"], config["num_grow_ch"])
    state = saved_and_loaded(model, "params_ema", tmp_path)
    if config["layout"] == "esrgan_old":
        state = ref.old_esrgan_keys(state, config["num_block"])
    assert rrdbnet.detect(state) == config
    lr = np.random.default_rng(1).random((2, 3, h, w), dtype=np.float32)
    want = run_torch(model, lr)
    got = run_jsr(rrdbnet, state, lr)
    print(f"RRDBNet {name}: max |jsr - torch| = {np.abs(got - want).max():.2e}, output std {want.std():.3f}")
    assert got.shape == want.shape and want.std() > 0.01
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


EDSR_PARITY = {  # name: (config, LR size)
    "baseline x2": (edsr_config(), (11, 13)),
    "baseline x4": (edsr_config(scale=4, num_block=3), (9, 8)),
    "full x2 (256 features, res_scale 0.1)": (edsr_config(num_feat=256, num_block=2, res_scale=0.1), (7, 9)),
    "EDSR-PyTorch x3": (edsr_config(scale=3, layout="edsr_pytorch"), (10, 7)),
    "EDSR-PyTorch x2, rgb_range 1": (edsr_config(layout="edsr_pytorch", img_range=1.0), (8, 8)),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(EDSR_PARITY))
def test_edsr_matches_pytorch(name, tmp_path):
    import torch
    import torch_archs_rrdb_edsr as ref

    config, (h, w) = EDSR_PARITY[name]
    torch.manual_seed(len(name))
    nf, nb, s, res_scale = (config[k] for k in ("num_feat", "num_block", "scale", "res_scale"))
    lr = np.random.default_rng(2).random((2, 3, h, w), dtype=np.float32)
    if config["layout"] == "basicsr":
        model = ref.EDSR(3, 3, nf, nb, s, res_scale)
        state = saved_and_loaded(model, "params", tmp_path)
        want = run_torch(model, lr)
    else:  # plain state_dict, images in [0, rgb_range]
        rgb_range = config["img_range"]
        model = ref.EDSRPyTorch(nb, nf, s, rgb_range, res_scale)
        state = saved_and_loaded(model, None, tmp_path)
        want = run_torch(model, lr * rgb_range) / rgb_range
    assert edsr.detect(state) == config
    got = run_jsr(edsr, state, lr)
    print(f"EDSR {name}: max |jsr - torch| = {np.abs(got - want).max():.2e}, output std {want.std():.3f}")
    assert got.shape == want.shape and want.std() > 0.01
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------- masked canvas


def canvas_error(module, variables, h: int, w: int, corners) -> float:
    """One h x w image on a zero canvas at each of ``corners``: max |valid region - the unpadded run|."""
    s = module.scale
    image = np.random.default_rng(1).random((1, h, w, 3), dtype=np.float32)
    canvas = np.zeros((len(corners), 24, 28, 3), np.float32)
    mask = np.zeros((len(corners), 24, 28, 1), np.float32)
    for b, (top, left) in enumerate(corners):
        canvas[b, top : top + h, left : left + w] = image[0]
        mask[b, top : top + h, left : left + w] = 1.0
    apply = jax.jit(module.apply)
    out = np.asarray(apply(variables, jnp.asarray(canvas), valid_mask=jnp.asarray(mask)))
    alone = np.asarray(apply(variables, jnp.asarray(image)))[0]
    crops = [out[b, t * s : (t + h) * s, left * s : (left + w) * s] for b, (t, left) in enumerate(corners)]
    error = max(float(np.abs(crop - alone).max()) for crop in crops)
    print(f"{type(module).__name__} x{s} canvas: max |valid region - unpadded| = {error:.2e}")
    return error


@pytest.mark.parametrize("scale", [4, 2, 1])
def test_rrdbnet_masked_canvas_is_exact(scale):
    module = rrdbnet.RRDBNet(**rrdb_config(scale=scale))
    corners = [(0, 0), (4, 8)] if scale == 1 else [(0, 0), (6, 4)]
    assert canvas_error(module, random_variables(module, scale), 12, 16, corners) < 1e-5


@pytest.mark.parametrize("scale", [2, 3])
def test_edsr_masked_canvas_is_exact(scale):
    module = edsr.EDSR(**edsr_config(scale=scale, res_scale=0.5))
    assert canvas_error(module, random_variables(module, scale), 13, 17, [(0, 0), (5, 3)]) < 1e-5


def test_rrdbnet_unaligned_sides():
    """Sides that are not multiples of the unshuffle factor: refused as an input, and on a canvas the same as the
    image zero-padded to the next multiple (what makes tiles of such an image stitch)."""
    module = rrdbnet.RRDBNet(**rrdb_config(scale=2))
    variables = random_variables(module)
    with pytest.raises(ValueError, match="multiples of 2"):
        module.apply(variables, jnp.zeros((1, 13, 14, 3)))
    image = np.random.default_rng(3).random((1, 13, 15, 3), dtype=np.float32)
    canvas, mask = np.zeros((1, 20, 20, 3), np.float32), np.zeros((1, 20, 20, 1), np.float32)
    canvas[:, 2:15, 4:19], mask[:, 2:15, 4:19] = image, 1.0
    out = np.asarray(module.apply(variables, jnp.asarray(canvas), valid_mask=jnp.asarray(mask)))[0, 4:30, 8:38]
    padded = np.pad(image, ((0, 0), (0, 1), (0, 1), (0, 0)))
    assert np.abs(out - np.asarray(module.apply(variables, jnp.asarray(padded)))[0, :26, :30]).max() < 1e-5


# ------------------------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize(
    "arch, config, size",
    [
        (rrdbnet, rrdb_config(), (40, 36)),
        (rrdbnet, rrdb_config(scale=2), (39, 35)),
        (edsr, edsr_config(res_scale=0.5), (40, 36)),
    ],
    ids=["rrdbnet x4", "rrdbnet x2 odd sides", "edsr x2"],
)
def test_tiles_stitch_to_the_whole_image(arch, config, size):
    module = arch.ARCH.build(config)
    variables = random_variables(module, 5)
    image = np.random.default_rng(4).random((*size, 3), dtype=np.float32)
    whole = Upscaler(module, variables, conv="xla").upscale(image, out_dtype=np.uint8)
    tiler = Upscaler(module, variables, conv="xla", tile=16, force_tiles=True)
    assert tiler.exact and tiler.overlap == module.receptive_radius
    tiled = tiler.upscale(image, out_dtype=np.uint8)
    assert tiled.shape == whole.shape == (size[0] * module.scale, size[1] * module.scale, 3)
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    print(f"{type(module).__name__} x{module.scale} {size}, 16-px tiles: max {diff.max()} grey levels")
    assert diff.max() <= 1
    assert whole.std() > 5  # an image-dependent output, not a constant
