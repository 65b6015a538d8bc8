"""Real-ESRGAN's U-Net discriminator and the spectral norm under it: power iteration against numpy and against
torch.nn.utils.spectral_norm (train-mode sequence, gradient), conversion and eval parity with PyTorch, the
train-mode forward sharded on 4 devices, detection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jsr.archs import REGISTRY, unet_discriminator
from jsr.archs.mapping import oihw_to_hwio
from jsr.ops import spectral_norm as sn

SMALL = dict(num_in_ch=3, num_feat=16, skip_connection=True)


def unit(rng, size: int) -> np.ndarray:
    x = rng.standard_normal(size)
    return (x / np.linalg.norm(x)).astype(np.float32)


def numpy_power_iteration(w: np.ndarray, u: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
    """PyTorch's algorithm in float64 on the (out, in*kh*kw) matrix of an OIHW weight: (u, v, sigma)."""
    w = w.reshape(w.shape[0], -1).astype(np.float64)
    u = u.astype(np.float64)
    for _ in range(steps):
        v = w.T @ u
        v /= np.linalg.norm(v)
        u = w @ v
        u /= np.linalg.norm(u)
    return u, v, float(u @ w @ v)


@pytest.fixture(scope="module")
def kernel_oihw() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((128, 64, 4, 4)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ spectral norm


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_power_iteration_matches_numpy(kernel_oihw, steps):
    rng = np.random.default_rng(1)
    u0, v0 = unit(rng, 128), unit(rng, 64 * 16)
    u_ref, v_ref, s_ref = numpy_power_iteration(kernel_oihw, u0, steps)
    w = sn.kernel_matrix(jnp.asarray(oihw_to_hwio(kernel_oihw)))
    u, v = jax.jit(sn.power_iteration, static_argnums=3)(w, u0, v0, steps)
    assert abs(float(sn.sigma(w, u, v)) - s_ref) / s_ref < 1e-5
    np.testing.assert_allclose(u, u_ref, atol=1e-5)
    np.testing.assert_allclose(v, sn.torch_v_to_hwi(v_ref, 64, (4, 4)), atol=1e-5)


def test_power_iteration_converges_to_top_singular_value(kernel_oihw):
    rng = np.random.default_rng(2)
    u, v = unit(rng, 128), unit(rng, 64 * 16)
    w = sn.kernel_matrix(jnp.asarray(oihw_to_hwio(kernel_oihw)))
    # the top two singular values are within 0.5%: ~1000 steps reach 1e-9 in float64
    step = lambda _, uv: sn.power_iteration(w, *uv, 1)  # noqa: E731
    u, v = jax.jit(lambda u, v: jax.lax.fori_loop(0, 2000, step, (u, v)))(u, v)
    top = np.linalg.svd(kernel_oihw.reshape(128, -1).astype(np.float64), compute_uv=False)[0]
    assert abs(float(sn.sigma(w, u, v)) - top) / top < 1e-5


def torch_sn_conv(weight: np.ndarray, u: np.ndarray, v: np.ndarray):
    import torch
    from torch.nn.utils import spectral_norm

    layer = spectral_norm(torch.nn.Conv2d(weight.shape[1], weight.shape[0], 4, 2, 1, bias=False))
    with torch.no_grad():
        layer.weight_orig.copy_(torch.from_numpy(weight))
        layer.weight_u.copy_(torch.from_numpy(u))
        layer.weight_v.copy_(torch.from_numpy(v))
    return layer


@pytest.mark.torch
def test_train_mode_sequence_matches_torch_under_jit(kernel_oihw):
    import torch

    rng = np.random.default_rng(3)
    u0, v0 = unit(rng, 128), unit(rng, 64 * 16)
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    reference = torch_sn_conv(kernel_oihw, u0, v0).train()
    layer = sn.SpectralConv(128, (4, 4), (2, 2), use_bias=False)
    kernel = jnp.asarray(oihw_to_hwio(kernel_oihw))
    stats = {"u": jnp.asarray(u0), "v": jnp.asarray(sn.torch_v_to_hwi(v0, 64, (4, 4)))}

    def forward(kernel, stats, x):
        y, updates = layer.apply({"params": {"kernel": kernel}, "batch_stats": stats}, x, True, mutable=["batch_stats"])
        return jnp.sum(y * jnp.cos(y)), (y, updates["batch_stats"])

    step = jax.jit(jax.value_and_grad(forward, has_aux=True))
    for _ in range(3):
        weight = reference.weight_orig
        weight.grad = None
        y_ref = reference(torch.from_numpy(x))
        torch.sum(y_ref * torch.cos(y_ref)).backward()
        (_, (y, stats)), grad = step(kernel, stats, jnp.asarray(x.transpose(0, 2, 3, 1)))
        u_ref, v_ref = reference.weight_u.numpy(), reference.weight_v.numpy()
        s_ref = float(u_ref @ kernel_oihw.reshape(128, -1) @ v_ref)
        s = float(sn.sigma(sn.kernel_matrix(kernel), stats["u"], stats["v"]))
        assert abs(s - s_ref) / s_ref < 1e-5
        np.testing.assert_allclose(stats["u"], u_ref, atol=1e-5)
        np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), y_ref.detach().numpy(), atol=1e-5)
        g_ref = oihw_to_hwio(weight.grad.numpy())
        assert np.abs(np.asarray(grad) - g_ref).max() < 1e-5 * np.abs(g_ref).max()


def test_eval_mode_reads_u_and_v_without_iterating(kernel_oihw):
    rng = np.random.default_rng(4)
    u0, v0 = unit(rng, 128), unit(rng, 64 * 16)
    kernel = jnp.asarray(oihw_to_hwio(kernel_oihw))
    normalised, u, v, s = sn.normalize_kernel(kernel, u0, v0, 0)
    assert np.array_equal(u, u0) and np.array_equal(v, v0)
    np.testing.assert_allclose(normalised, kernel / float(u0 @ np.asarray(sn.kernel_matrix(kernel)) @ v0), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ network


def warmed_torch_model(config: dict, seed: int):
    """Random weights, then 3 train-mode forwards so that u and v are power-iterated as after training."""
    import torch
    from torch_unet_discriminator import UNetDiscriminatorSN

    torch.manual_seed(seed)
    model = UNetDiscriminatorSN(**config).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(1, config["num_in_ch"], 32, 32))
    return model


def saved_state_dict(model, tmp_path) -> dict[str, np.ndarray]:
    import torch

    torch.save(model.state_dict(), tmp_path / "net_d.pth")
    state = torch.load(tmp_path / "net_d.pth", map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items()}


@pytest.mark.torch
def test_network_matches_torch_in_eval_and_train_mode(tmp_path):
    import torch

    config = dict(num_in_ch=3, num_feat=64, skip_connection=True)
    model = warmed_torch_model(config, seed=0)
    state = saved_state_dict(model, tmp_path)
    assert unet_discriminator.detect(state) == config
    variables = unet_discriminator.ARCH.to_flax(state, config)
    module = unet_discriminator.ARCH.build(config)
    x = np.random.default_rng(5).random((1, 3, 64, 64), dtype=np.float32)
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))

    with torch.no_grad():
        eval_ref = model.eval()(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
        train_ref = model.train()(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    out = jax.jit(module.apply)(variables, x_nhwc)
    assert out.shape == (1, 64, 64, 1)
    assert np.abs(np.asarray(out) - eval_ref).max() < min(1e-4, 1e-3 * eval_ref.std())  # the logits are small

    train = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
    out, updates = train(variables, x_nhwc)
    assert np.abs(np.asarray(out) - train_ref).max() < min(1e-4, 1e-3 * train_ref.std())
    for name in unet_discriminator.spectral_layers(64):
        np.testing.assert_allclose(updates["batch_stats"][name]["u"], model.get_submodule(name).weight_u, atol=1e-5)


def random_variables(module, seed: int = 0) -> dict:
    """Random kernels and biases, random unit u and v, in the variables' layout (no init compile: ~15 s on CPU)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, module.num_in_ch)))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if path[0].key == "batch_stats":
            return unit(rng, leaf.shape[0])
        fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 10.0
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_init_state_and_shapes():
    layer = sn.SpectralConv(32, (4, 4), (2, 2), use_bias=False)
    variables = jax.jit(layer.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 16)))
    assert variables["params"]["kernel"].shape == (4, 4, 16, 32)
    u, v = variables["batch_stats"]["u"], variables["batch_stats"]["v"]
    assert u.shape == (32,) and v.shape == (4 * 4 * 16,)
    assert abs(float(jnp.linalg.norm(u)) - 1.0) < 1e-6 and abs(float(jnp.linalg.norm(v)) - 1.0) < 1e-6

    module = unet_discriminator.UNetDiscriminatorSN(**SMALL)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    assert set(shapes["batch_stats"]) == set(unet_discriminator.spectral_layers(16))
    assert shapes["batch_stats"]["conv3"]["u"].shape == (128,) and "bias" not in shapes["params"]["conv3"]
    with pytest.raises(ValueError, match="multiples of 8"):
        module.apply(random_variables(module), jnp.zeros((1, 36, 32, 3)))


def test_train_forward_sharded_on_4_devices_equals_one_device():
    module = unet_discriminator.UNetDiscriminatorSN(**SMALL)
    variables = random_variables(module, seed=1)
    x = jnp.asarray(np.random.default_rng(6).random((8, 32, 32, 3), dtype=np.float32))
    forward = lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"])  # noqa: E731
    out_1, updates_1 = jax.jit(forward)(variables, x)

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = jax.jit(forward, in_shardings=(replicated, batch), out_shardings=(batch, replicated))
    out_4, updates_4 = sharded(jax.device_put(variables, replicated), jax.device_put(x, batch))
    assert len(out_4.sharding.device_set) == 4
    assert np.abs(np.asarray(out_4) - np.asarray(out_1)).max() < 1e-6
    for name, stats in updates_1["batch_stats"].items():
        assert not np.allclose(stats["u"], variables["batch_stats"][name]["u"])  # it did iterate
        for key in ("u", "v"):
            assert np.abs(np.asarray(updates_4["batch_stats"][name][key]) - np.asarray(stats[key])).max() < 1e-6


# ------------------------------------------------------------------------------------------------ registry


def test_registered_and_detect():
    arch = REGISTRY["unet_discriminator_sn"]
    assert arch is unet_discriminator.ARCH and arch.role == "discriminator" and arch.value_range == (0.0, 1.0)
    assert not arch.exact_tiling
    config = dict(num_in_ch=1, num_feat=24, skip_connection=True)
    state = {k: np.zeros(t.shape, np.float32) for k, t in unet_discriminator.targets(**config).items()}
    assert arch.detect(state) == config
    assert arch.detect({"conv01.body.0.weight": np.zeros((64, 3, 3, 3), np.float32)}) is None
    assert arch.detect({**state, "conv1.weight_orig": np.zeros((3, 3), np.float32)}) is None
    variables = arch.to_flax(state, config)
    assert variables["params"]["conv1"]["kernel"].shape == (4, 4, 24, 48)
    assert variables["batch_stats"]["conv4"]["v"].shape == (3 * 3 * 192,)
    with pytest.raises(ValueError, match="conv1.weight_u"):
        arch.to_flax({k: v for k, v in state.items() if k != "conv1.weight_u"}, config)
