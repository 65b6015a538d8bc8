"""jsr.ops.sums against what it replaces: numpy's sums, and Flax's own nn.Conv (parameters, outputs and gradients) in
SRResNet's conv layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsr.models.layers import Conv
from jsr.models.srresnet import CONV_INIT
from jsr.ops.conv import conv_function
from jsr.ops.sums import channel_sum


@pytest.mark.parametrize("shape", [(1, 5), (16, 3), (17, 4), (2, 7, 11, 64), (4, 96, 96, 3), (0, 3)])
def test_channel_sum_equals_numpy_for_any_row_count(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = np.asarray(jax.jit(channel_sum)(jnp.asarray(x)))
    assert got.dtype == np.float32 and got.shape == (shape[-1],)
    np.testing.assert_allclose(got, x.reshape(-1, shape[-1]).astype(np.float64).sum(0), rtol=1e-5, atol=1e-4)


def test_channel_sum_of_bfloat16_accumulates_in_float32():
    x = jnp.full((4096, 2), 1.0, jnp.bfloat16)  # bfloat16 itself stops counting at 256
    np.testing.assert_array_equal(np.asarray(channel_sum(x)), [4096.0, 4096.0])


def _conv(cls, features, kernel, dtype, conv="xla", stride=1):
    pad = kernel // 2
    return cls(
        features,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        kernel_init=CONV_INIT,
        dtype=dtype,
        conv_general_dilated=conv_function(conv),
    )


@pytest.mark.parametrize("conv", ["xla", "fast", "winograd"])
@pytest.mark.parametrize("kernel, stride", [(3, 1), (9, 1), (3, 2)])
def test_conv_layer_equals_flax_conv_in_parameters_output_and_gradients(conv, kernel, stride):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 13, 12, 16))
    ours = _conv(Conv, 24, kernel, jnp.float32, conv, stride)
    flax_conv = _conv(nn.Conv, 24, kernel, jnp.float32, stride=stride)
    params = ours.init(jax.random.PRNGKey(2), x)
    reference_params = flax_conv.init(jax.random.PRNGKey(2), x)
    jax.tree.map(np.testing.assert_array_equal, params, reference_params)  # same names, shapes, initial values
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    cotangent = jax.random.normal(jax.random.PRNGKey(3), flax_conv.apply(params, x).shape)

    def loss(module):
        return lambda p, x: jnp.sum(module.apply(p, x) * cotangent)

    (dp, dx), (rp, rx) = jax.grad(loss(ours), (0, 1))(params, x), jax.grad(loss(flax_conv), (0, 1))(params, x)
    np.testing.assert_allclose(ours.apply(params, x), flax_conv.apply(params, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, rx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dp["params"]["bias"], rp["params"]["bias"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dp["params"]["kernel"], rp["params"]["kernel"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("conv", ["xla", "fast"])  # XLA's own gradient of the float32 add; jsr's custom one
def test_bfloat16_conv_bias_gradient_is_float32_and_at_least_as_exact_as_flax(conv):
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 24, 24, 16))
    cotangent = jax.random.normal(jax.random.PRNGKey(3), (8, 24, 24, 32))
    ours, flax_conv = _conv(Conv, 32, 3, jnp.bfloat16, conv), _conv(nn.Conv, 32, 3, jnp.bfloat16)
    params = ours.init(jax.random.PRNGKey(2), x)

    def bias_grad(module):
        return jax.grad(lambda p: jnp.sum(module.apply(p, x).astype(jnp.float32) * cotangent))(params)["params"]["bias"]

    exact = np.asarray(cotangent.astype(jnp.bfloat16), np.float64).reshape(-1, 32).sum(0)
    ours_grad, flax_grad = bias_grad(ours), bias_grad(flax_conv)
    assert ours_grad.dtype == jnp.float32
    np.testing.assert_allclose(ours_grad, exact, rtol=1e-5, atol=1e-3)
    assert np.abs(ours_grad - exact).max() <= np.abs(np.asarray(flax_grad, np.float64) - exact).max()


@pytest.mark.parametrize(
    "field", [{"input_dilation": 2}, {"kernel_dilation": (2, 2)}, {"feature_group_count": 2}, {"padding": "SAME"}]
)
def test_conv_layer_refuses_the_nn_conv_fields_it_does_not_implement(field):
    layer = Conv(4, (3, 3), **{"padding": ((1, 1), (1, 1)), **field})
    with pytest.raises(ValueError, match=next(iter(field))):
        layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))


def test_conv_layer_on_xla_is_differentiable_in_forward_mode():
    # Delta-STN differentiates the model with jax.jvp; only the 'xla' path promises that.
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4))
    layer = _conv(Conv, 6, 3, jnp.bfloat16)
    params = layer.init(jax.random.PRNGKey(2), x)
    tangent = jax.tree.map(jnp.ones_like, params)
    _, ours = jax.jvp(lambda p: layer.apply(p, x), (params,), (tangent,))
    _, reference = jax.jvp(lambda p: _conv(nn.Conv, 6, 3, jnp.float32).apply(p, x), (params,), (tangent,))
    np.testing.assert_allclose(np.asarray(ours, np.float32), reference, rtol=2e-2, atol=5e-2)
