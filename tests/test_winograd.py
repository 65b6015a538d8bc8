"""jsr.ops.winograd: F(4x4, 3x3) convolutions and their gradients against XLA's, the dispatcher's choices, and the
models' switch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jsr.inference import Upscaler
from jsr.models import Generator
from jsr.models.vgg import VGG19Features, with_input_grad_kernels
from jsr.ops import winograd
from jsr.ops.conv import NHWC, conv_function
from jsr.ops.winograd import winograd_conv3x3, winograd_weight_grad3x3
from jsr.parallel import batch_sharding, make_mesh

winograd_conv = conv_function("winograd")  # the 'winograd' conv path: jsr.ops.conv.fast_conv(winograd_3x3=True)


def reference(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def data(n, h, w, cin, cout, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * np.sqrt(2 / (9 * cin)))
    return x, k


def assert_close_to_xla(got, want, rel=3e-5):
    """Winograd's float32 error is ~1e-5 of the output's scale (XLA's own conv: ~1e-6)."""
    scale = float(jnp.max(jnp.abs(want)))
    assert float(jnp.max(jnp.abs(got - want))) <= rel * scale


@pytest.mark.parametrize(
    "n, h, w, cin, cout",
    [
        (1, 16, 16, 4, 4),  # one band, whole tiles
        (2, 37, 50, 5, 7),  # partial last tiles in both directions, two images
        (3, 17, 23, 8, 3),  # few output channels
        (1, 128, 40, 16, 256),  # several bands (band_rows < tile rows), many output channels
        (2, 45, 20, 64, 64),  # 12 tile rows, 5 wide
        (5, 18, 100, 16, 256),  # small images: every band holds rows of all of them
    ],
)
def test_equals_xla_on_awkward_shapes(n, h, w, cin, cout):
    x, k = data(n, h, w, cin, cout)
    rows, bands = winograd.band_plan(n, -(-h // winograd.TILE), -(-w // winograd.TILE), cout)
    assert (n, h) != (1, 128) or bands > 1  # the many-band case really has several bands
    assert n != 5 or (rows, bands) == (2, 3)  # small images: two tile rows of all five per band, the last padded
    got = jax.jit(winograd_conv3x3)(x, k)
    assert got.shape == (n, h, w, cout)
    assert_close_to_xla(got, reference(x, k))


def test_gradients_equal_xla():
    x, k = data(2, 18, 21, 6, 5)
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))  # noqa: E731
    gx, gk = jax.jit(jax.grad(loss(winograd_conv3x3), argnums=(0, 1)))(x, k)
    rx, rk = jax.grad(loss(reference), argnums=(0, 1))(x, k)
    assert_close_to_xla(gx, rx, rel=1e-4)
    assert_close_to_xla(gk, rk, rel=1e-4)


def xla_weight_grad(x, dy):
    _, vjp = jax.vjp(lambda k: reference(x, k), jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype))
    return vjp(dy)[0]


@pytest.mark.parametrize(
    "n, h, w, cin, cout",
    [
        (2, 37, 50, 5, 7),  # partial last tiles in both directions
        (1, 128, 40, 16, 256),  # several bands
        (5, 18, 100, 16, 256),  # small images, the last band padded
        (16, 24, 24, 64, 64),  # SRResNet's body at the training patch
    ],
)
def test_weight_grad_in_the_winograd_domain_equals_xla(n, h, w, cin, cout):
    x, _ = data(n, h, w, cin, cout)
    dy = jnp.asarray(np.random.default_rng(7).standard_normal((n, h, w, cout), np.float32))
    got = jax.jit(winograd_weight_grad3x3)(x, dy)
    assert got.shape == (3, 3, cin, cout)
    assert_close_to_xla(got, xla_weight_grad(x, dy), rel=3e-5)


def test_trainable_winograd_conv_has_winograd_gradients_equal_to_xla():
    """conv='winograd' for training: forward, input gradient and kernel gradient all by Winograd (no direct conv
    left in the differentiated program), each within Winograd's float32 error of XLA's."""
    x, k = data(2, 18, 21, 16, 24)
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))  # noqa: E731
    ours = loss(lambda x, k: winograd_conv(x, k, (1, 1), "SAME", dimension_numbers=NHWC))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.value_and_grad(ours, argnums=(0, 1)))(x, k))
    (v, (gx, gk)), (v_ref, (rx, rk)) = (
        jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, k) for f in (ours, loss(reference))
    )
    np.testing.assert_allclose(v, v_ref, rtol=1e-4)
    assert_close_to_xla(gx, rx, rel=1e-4)
    assert_close_to_xla(gk, rk, rel=1e-4)


def test_generator_trained_with_winograd_equals_xla():
    """One SRResNet training gradient (BatchNorm in train mode) through conv='winograd' vs 'xla'."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32))
    make = lambda conv: Generator(n_feats=16, num_blocks=2, conv=conv)  # noqa: E731
    variables = jax.jit(make("xla").init)(jax.random.PRNGKey(0), x)

    def grad(conv):
        def loss(params):
            out, _ = make(conv).apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(jnp.square(out - 0.3))

        return jax.jit(jax.grad(loss))(variables["params"])

    got, want = grad("winograd"), grad("xla")
    # every kernel's gradient on its own scale (those of convs feeding a BatchNorm are small, not zero); biases
    # feeding a BatchNorm have a zero gradient in exact arithmetic (pure rounding noise in both paths)
    kernels = {
        jax.tree_util.keystr(path): (a, b)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True)
        if a.ndim == 4
    }
    assert len(kernels) == 2 * 2 + 5  # two per block, conv01, conv02, two upsamplers, last_conv
    for name, (a, b) in kernels.items():
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-4, name


def test_the_dispatcher_takes_winograd_only_where_it_applies():
    def uses_winograd(x, k, *args, **kwargs):
        jaxpr = str(jax.make_jaxpr(lambda x, k: winograd_conv(x, k, *args, **kwargs))(x, k))
        return "conv_general_dilated" not in jaxpr

    x, k = data(1, 16, 16, 16, 24)
    assert uses_winograd(x, k, (1, 1), "SAME", dimension_numbers=NHWC)
    assert uses_winograd(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    assert not uses_winograd(x, k, (2, 2), "SAME", dimension_numbers=NHWC)  # strided
    assert not uses_winograd(x, k, (1, 1), "VALID", dimension_numbers=NHWC)  # other padding
    assert not uses_winograd(x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC)
    assert not uses_winograd(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), (1, 1), "SAME", dimension_numbers=NHWC)
    assert not uses_winograd(x[:, :8], k, (1, 1), "SAME", dimension_numbers=NHWC)  # below MIN_SIDE
    k5 = jnp.zeros((5, 5, 16, 24), jnp.float32)
    assert not uses_winograd(x, k5, (1, 1), "SAME", dimension_numbers=NHWC)  # not 3x3
    assert not uses_winograd(x, k[..., :3], (1, 1), "SAME", dimension_numbers=NHWC)  # few output channels
    assert not uses_winograd(x[..., :3], k[:, :, :3], (1, 1), "SAME", dimension_numbers=NHWC)  # few input channels
    for args, kwargs in [(((1, 1), "SAME"), {"dimension_numbers": NHWC}), (((2, 2), "VALID"), {})]:
        xc = x if kwargs else jnp.transpose(x, (0, 3, 1, 2))
        kc = k if kwargs else jnp.transpose(k, (3, 2, 0, 1))  # NCHW / OIHW (lax's default)
        want = lax.conv_general_dilated(xc, kc, *args, **kwargs)
        assert_close_to_xla(winograd_conv(xc, kc, *args, **kwargs), want)
    with pytest.raises(ValueError, match="kernel"):
        winograd_conv3x3(x, jnp.zeros((3, 3, 5, 24)))


def test_flax_conv_keeps_its_parameters():
    x, _ = data(2, 16, 20, 16, 1)
    plain = nn.Conv(24, (3, 3), padding="SAME")
    fast = nn.Conv(24, (3, 3), padding="SAME", conv_general_dilated=winograd_conv)
    variables = plain.init(jax.random.PRNGKey(0), x)
    assert_close_to_xla(fast.apply(variables, x), plain.apply(variables, x))


def test_generator_and_upscaler_with_winograd_equal_xla():
    """The Upscaler's default on a CPU: the released layout's 3x3 convs (body, upsamplers) by Winograd."""
    module = Generator(n_feats=16, num_blocks=2)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    variables = jax.tree.map(lambda v: v * 6.0 if v.ndim == 4 else v, variables)  # outputs far from tanh's zero
    image = np.random.default_rng(2).random((40, 36, 3), np.float32)
    auto = Upscaler(module, variables)
    assert auto.module.conv == "winograd"
    jaxpr = str(jax.make_jaxpr(lambda v, x: auto.module.apply(v, x))(variables, jnp.zeros((1, 64, 64, 3))))
    # conv01 (9x9, RGB in) and last_conv (RGB out) stay XLA's; the seven 3x3 convs with 16+ channels are Winograd's
    assert jaxpr.count("conv_general_dilated") == 2
    got = auto.upscale(image)
    want = Upscaler(module, variables, conv="xla").upscale(image)
    assert float(np.std(want)) > 0.03  # a varied output
    np.testing.assert_allclose(got, want, atol=5e-5)  # 1/80 of a uint8 grey level
    with pytest.raises(ValueError, match="conv="):
        Upscaler(module, variables, conv="fft")
    assert Upscaler(module.clone(dtype=jnp.bfloat16), variables).module.conv == "xla"  # float32 only


def test_frozen_vgg_runs_its_forward_and_input_gradient_by_winograd():
    """conv='fast' with precomputed input-gradient kernels (the perceptual loss): 3x3 convs on maps of 12+ pixels
    with 16+ channels go through Winograd both ways; values and input gradient stay close to XLA's."""
    x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32))
    variables = VGG19Features().init(jax.random.PRNGKey(0), x, taps=("relu3_1",))

    def value_and_input_grad(conv, variables):
        f = lambda x: jnp.sum(VGG19Features(conv=conv).apply(variables, x, taps=("relu3_1",))["relu3_1"] ** 2)  # noqa: E731
        return jax.value_and_grad(f), f

    plain_grad, _ = value_and_input_grad("fast", variables)
    frozen_grad, _ = value_and_input_grad("fast", with_input_grad_kernels(variables))
    # conv1_2, conv2_1, conv2_2 (24 and 12 px) leave XLA's conv (Winograd's bands are a scan); conv1_1 (RGB) and
    # conv3_1 (6 px) stay
    plain_jaxpr, frozen_jaxpr = (str(jax.make_jaxpr(fn)(x)) for fn in (plain_grad, frozen_grad))
    assert frozen_jaxpr.count("conv_general_dilated") < plain_jaxpr.count("conv_general_dilated")
    assert frozen_jaxpr.count("scan[") > plain_jaxpr.count("scan[")
    (v, g), (v_ref, g_ref) = jax.jit(frozen_grad)(x), value_and_input_grad("xla", variables)[0](x)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    assert float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref)) < 1e-4


def test_a_batch_sharded_over_devices_stays_sharded():
    """Every band holds all images, so the batch axis is never sliced: no gathers, no repeated work per device."""
    mesh = make_mesh()  # the 4 simulated CPU devices of the test session
    assert mesh.devices.size > 1
    x, k = data(mesh.devices.size, 24, 20, 16, 16)
    x = jax.device_put(x, batch_sharding(mesh))
    compiled = jax.jit(winograd_conv3x3).lower(x, k).compile()
    assert "all-gather" not in compiled.as_text() and "collective-permute" not in compiled.as_text()
    out = compiled(x, k)
    assert out.sharding.is_equivalent_to(batch_sharding(mesh), out.ndim)
    assert_close_to_xla(out, reference(x, k))


def test_weight_grad_of_a_batch_sharded_over_devices_equals_unsharded():
    mesh = make_mesh()
    x, _ = data(mesh.devices.size, 24, 20, 16, 32)
    dy = jnp.asarray(np.random.default_rng(8).standard_normal((mesh.devices.size, 24, 20, 32), np.float32))
    sharded = jax.jit(winograd_weight_grad3x3)(
        jax.device_put(x, batch_sharding(mesh)), jax.device_put(dy, batch_sharding(mesh))
    )
    assert_close_to_xla(sharded, jax.jit(winograd_weight_grad3x3)(x, dy), rel=1e-5)  # another summation order
    assert_close_to_xla(sharded, xla_weight_grad(x, dy))
