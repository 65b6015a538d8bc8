"""jsr.ops.prelu against Flax's nn.PReLU (float32: the same layer) and against exact sums (bfloat16: a float32
slope gradient, where Flax's is a bfloat16 sum)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jsr.models.layers import ChannelPReLU, PReLU
from jsr.models.srresnet import PRELU_INIT, Generator


def _exact_slope_gradient(x, cotangent, per_channel):
    """d/d slope of sum(cotangent * prelu(x)) in float64: the sum of cotangent * x where x < 0."""
    x, g = np.asarray(x, np.float64), np.asarray(cotangent, np.float64)
    terms = np.where(x < 0, g * x, 0.0)
    return terms.reshape(-1, x.shape[-1]).sum(0) if per_channel else terms.sum()


def _slope_gradient(module, params, x, cotangent):
    loss = lambda p: jnp.sum(module.apply(p, x).astype(jnp.float32) * cotangent.astype(jnp.float32))  # noqa: E731
    return np.asarray(jax.jit(jax.grad(loss))(params)["params"]["negative_slope"], np.float64)


def test_prelu_layer_equals_flax_prelu_in_float32():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 5))
    ours, flax_prelu = PReLU(negative_slope_init=PRELU_INIT), nn.PReLU(negative_slope_init=PRELU_INIT)
    params = ours.init(jax.random.PRNGKey(1), x)
    jax.tree.map(np.testing.assert_array_equal, params, flax_prelu.init(jax.random.PRNGKey(1), x))
    params = jax.tree.map(lambda p: p - 0.6, params)
    np.testing.assert_array_equal(ours.apply(params, x), flax_prelu.apply(params, x))
    cotangent = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    np.testing.assert_allclose(
        _slope_gradient(ours, params, x, cotangent), _slope_gradient(flax_prelu, params, x, cotangent), rtol=1e-5
    )


def test_bfloat16_slope_gradient_is_a_float32_sum_of_a_whole_feature_map():
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 48, 48, 16), jnp.bfloat16) + 0.3
    cotangent = (jax.random.normal(jax.random.PRNGKey(4), x.shape) * 1e-3 + 1e-3).astype(jnp.bfloat16)
    exact = _exact_slope_gradient(x, cotangent, per_channel=False)
    module = PReLU(negative_slope_init=PRELU_INIT)
    ours = _slope_gradient(module, module.init(jax.random.PRNGKey(0), x), x, cotangent)
    flax_prelu = nn.PReLU(negative_slope_init=PRELU_INIT)
    flax_s = _slope_gradient(flax_prelu, flax_prelu.init(jax.random.PRNGKey(0), x), x, cotangent)
    assert abs(ours - exact) <= 1e-3 * abs(exact), f"ours {ours}, exact {exact} (Flax's bfloat16 sum: {flax_s})"


def test_channel_prelu_bfloat16_slope_gradients_are_float32_sums():
    x = jax.random.normal(jax.random.PRNGKey(5), (4, 64, 64, 3), jnp.bfloat16) - 0.2
    cotangent = (jax.random.uniform(jax.random.PRNGKey(6), x.shape) * 1e-2).astype(jnp.bfloat16)
    module = ChannelPReLU()
    params = module.init(jax.random.PRNGKey(0), x)
    assert params["params"]["negative_slope"].shape == (3,)
    np.testing.assert_allclose(
        _slope_gradient(module, params, x, cotangent), _exact_slope_gradient(x, cotangent, per_channel=True), rtol=1e-3
    )


def test_srresnet_bfloat16_tail_slope_gradients_match_float32():
    # The symptom: with bfloat16 sums the x2 tail stages' slopes got about half their float32 gradient.
    rng = np.random.default_rng(0)
    lr = jnp.asarray(rng.uniform(-1, 1, (8, 24, 24, 3)), jnp.float32)
    hr = jnp.asarray(rng.uniform(-1, 1, (8, 96, 96, 3)), jnp.float32)

    def slope_gradients(dtype):
        model = Generator(n_feats=16, num_blocks=1, dtype=dtype)
        variables = model.init(jax.random.PRNGKey(0), lr[:1])

        def loss(params):
            out, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, lr, train=True, mutable=["batch_stats"]
            )
            return jnp.mean((out - hr) ** 2)

        grads = jax.jit(jax.grad(loss))(variables["params"])
        return np.array([float(grads[f"tail_{j}_prelu"]["negative_slope"]) for j in range(2)])

    float32, bfloat16 = slope_gradients(jnp.float32), slope_gradients(jnp.bfloat16)
    np.testing.assert_allclose(bfloat16, float32, rtol=0.05)
