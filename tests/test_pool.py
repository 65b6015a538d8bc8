"""jsr.ops.pool.max_pool_2x2 against Flax's ``nn.max_pool`` (XLA's reduce_window / select_and_scatter)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsr.ops.pool import max_pool_2x2


def flax_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def sum_weighted(pool, weights):
    return lambda x: jnp.sum(pool(x) * weights)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 7, 9, 2), (3, 2, 2, 1)])
def test_values_and_gradient_equal_flax_on_random_input(shape):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    np.testing.assert_array_equal(jax.jit(max_pool_2x2)(x), flax_pool(x))
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(flax_pool(x).shape).astype(np.float32))
    got = jax.jit(jax.grad(sum_weighted(max_pool_2x2, weights)))(x)
    np.testing.assert_array_equal(got, jax.grad(sum_weighted(flax_pool, weights))(x))


def test_ties_route_the_whole_gradient_to_the_first_maximum_as_select_and_scatter_does():
    # small integers: most windows hold ties, in every position pattern (ReLU outputs tie at 0 all the time)
    x = jnp.asarray(np.random.default_rng(2).integers(0, 3, (4, 10, 10, 3)).astype(np.float32))
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((4, 5, 5, 3)).astype(np.float32))
    got = jax.grad(sum_weighted(max_pool_2x2, weights))(x)
    want = jax.grad(sum_weighted(flax_pool, weights))(x)
    np.testing.assert_array_equal(got, want)
    # exactly one element of each window carries the gradient
    nonzero = (np.asarray(got) != 0).reshape(4, 5, 2, 5, 2, 3).sum(axis=(2, 4))
    assert nonzero.max() == 1


def test_forward_mode_equals_flax():
    x = jnp.asarray(np.random.default_rng(4).integers(0, 3, (2, 6, 6, 2)).astype(np.float32))
    t = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape).astype(np.float32))
    y, dy = jax.jvp(max_pool_2x2, (x,), (t,))
    y_ref, dy_ref = jax.jvp(flax_pool, (x,), (t,))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dy, dy_ref)


def test_rejects_non_nhwc_input():
    with pytest.raises(ValueError, match="NHWC"):
        max_pool_2x2(jnp.zeros((4, 4, 3)))


def test_gradient_goes_where_select_and_scatter_sends_it_with_nan_and_inf():
    # every window over {nan, -inf, 0, 1, inf} (5^4 = 625 windows, a 25 x 25 grid of them)
    values = np.array([np.nan, -np.inf, 0.0, 1.0, np.inf], np.float32)
    windows = np.stack(np.meshgrid(*[np.arange(5)] * 4, indexing="ij"), -1).reshape(25, 25, 2, 2)
    x = jnp.asarray(values[windows].transpose(0, 2, 1, 3).reshape(1, 50, 50, 1))
    weights = jnp.asarray(np.random.default_rng(6).uniform(1, 2, (1, 25, 25, 1)).astype(np.float32))
    got = jax.grad(sum_weighted(max_pool_2x2, weights))(x)
    np.testing.assert_array_equal(got, jax.grad(sum_weighted(flax_pool, weights))(x))
