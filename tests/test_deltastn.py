"""Delta-STN library: hyperparameter spaces, the structured response, the linearised step, the schedule.

References are independent: the plain model, hand-written convolutions / matrix products, finite differences and
closed forms; never the code under test.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jsr import parallel
from jsr.deltastn import (
    DeltaSTN,
    Hyper,
    HyperSpace,
    Net,
    apply_with_response,
    centered_perturbation,
    effective_sq_norm,
    entropy,
    fit,
    jit_steps,
    linearized_apply,
    perturb,
    sigma,
)
from jsr.deltastn.response import init_response
from jsr.models import Generator

H = 3  # hyperparameters in the response tests


class ConvNet(nn.Module):
    """Strided and grouped convs, a bias-free conv, Dense layers and nonlinearities: most layer options at once."""

    @nn.compact
    def __call__(self, x, dropout=None, deterministic=True):
        x = nn.Conv(6, (3, 3), strides=2, name="c1")(x)
        x = nn.tanh(x)
        x = nn.Conv(6, (3, 3), feature_group_count=2, padding="VALID", use_bias=False, name="c2")(x)
        x = nn.gelu(x).reshape(x.shape[0], -1)
        x = nn.Dense(5, name="d1")(x)
        if dropout is not None and not deterministic:  # per-example rates, hard Bernoulli masks
            keep = jax.random.uniform(self.make_rng("dropout"), x.shape) >= dropout[:, None]
            x = jnp.where(keep, x / (1 - dropout[:, None]), 0.0)
        return nn.Dense(2, name="d2")(jnp.sin(x))


def numpy_variables(model: nn.Module, *args, seed: int = 0) -> dict:
    """Model variables of the right shapes drawn with numpy: no XLA compilation of initialisers (seconds on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "kernel":
            return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "negative_slope":
            return jnp.full(leaf.shape, 0.25, leaf.dtype)
        return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_response(response: dict, seed: int, scale: float = 0.3) -> dict:
    """Non-zero V (and random R, r_b): a response that really changes the output when e != 0."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype), response)


@pytest.fixture(scope="module")
def convnet():
    model = ConvNet()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 9, 4))
    variables = numpy_variables(model, x)
    response = init_response(model, variables, x, num_hypers=H, key=jax.random.PRNGKey(2))
    return model, variables, random_response(response, 3), x


# ----- hyperparameter spaces -----


def test_hyper_transforms_round_trip_and_ranges():
    space = HyperSpace(
        [
            Hyper("p", 0.1, 0.9, 0.3),
            Hyper("wd", 1e-5, None, 3e-3, "positive"),
            Hyper("lam", init=-2.0, kind="unbounded"),
        ]
    )
    assert space.values(space.init_u()) == pytest.approx({"p": 0.3, "wd": 3e-3, "lam": -2.0}, rel=1e-5)
    u = jnp.asarray([[-40.0, -40.0, -40.0], [40.0, 40.0, 40.0]])
    v = space.constrain(u)
    assert v["p"].shape == (2,)
    np.testing.assert_allclose(v["p"], [0.1, 0.9], atol=1e-6)
    np.testing.assert_allclose(v["wd"], [1e-5, 1e-5 + 40.0], rtol=1e-6)
    np.testing.assert_allclose(v["lam"], [-40.0, 40.0])
    with pytest.raises(ValueError, match="outside"):
        Hyper("bad", 0.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="uniquely"):
        HyperSpace([Hyper("a"), Hyper("a")])


def test_scales_entropy_and_per_example_perturbations():
    space = HyperSpace([Hyper("a"), Hyper("b", 0.0, None, 2.0, "positive")])
    s = space.init_scale(0.7)
    np.testing.assert_allclose(sigma(s), [0.7, 0.7], rtol=1e-6)
    gaussian_entropy = 2 * 0.5 * math.log(2 * math.pi * math.e * 0.7**2)  # 1/2 log(2 pi e sigma^2) per dimension
    assert float(entropy(s)) == pytest.approx(gaussian_entropy, rel=1e-6)
    u = space.init_u()
    u_tilde, e = perturb(jax.random.PRNGKey(0), u, s, 20000)
    assert u_tilde.shape == e.shape == (20000, 2)
    np.testing.assert_allclose(u_tilde - u, e, atol=1e-6)
    np.testing.assert_allclose(np.std(np.asarray(e), axis=0), [0.7, 0.7], rtol=0.03)
    assert abs(np.corrcoef(np.asarray(e[:-1, 0]), np.asarray(e[1:, 0]))[0, 1]) < 0.03  # examples independent


def test_centered_perturbation_value_and_gradients():
    u, s, eps = jnp.asarray([0.5, -1.0]), jnp.asarray([0.2, 1.5]), jnp.asarray([[0.3, -2.0], [1.0, 0.5]])
    np.testing.assert_allclose(centered_perturbation(u, s, eps), jax.nn.softplus(s) * eps, rtol=1e-6)
    grad_u = jax.grad(lambda u: jnp.sum(centered_perturbation(u, s, eps)))(u)
    grad_s = jax.grad(lambda s: jnp.sum(centered_perturbation(u, s, eps)))(s)
    np.testing.assert_allclose(grad_u, [2.0, 2.0])  # d e / d u = 1 for each of the 2 examples
    np.testing.assert_allclose(grad_s, jax.nn.sigmoid(s) * eps.sum(0), rtol=1e-6)


# ----- the structured response -----


def test_zero_perturbation_equals_plain_model_exactly(convnet):
    model, variables, response, x = convnet
    zero = jnp.zeros((x.shape[0], H))
    plain = model.apply(variables, x)
    np.testing.assert_array_equal(apply_with_response(model, variables, response, zero, x), plain)
    net = Net(model, variables["params"], {}, response, zero, linearize=True)
    np.testing.assert_array_equal(net(x), plain)


def test_zero_perturbation_equals_plain_generator_exactly():
    """SRResNet (masked convs, BatchNorm, PReLU, pixel shuffle) through the same wrapper, in both BN modes."""
    model = Generator(n_feats=8, num_blocks=2, scale=2)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 6, 3), minval=-1, maxval=1)
    variables = numpy_variables(model, x)
    response = init_response(model, variables, x, num_hypers=2, key=jax.random.PRNGKey(2))
    response = random_response(response, 3)
    zero = jnp.zeros((2, 2))
    for train in (False, True):  # BatchNorm on running statistics, then on batch statistics with updates
        kwargs = {"train": train, "mutable": ["batch_stats"] if train else False}
        wrapped = jax.jit(lambda v, r, x, kw=kwargs: apply_with_response(model, v, r, zero, x, **kw))
        plain = jax.jit(lambda v, x, kw=kwargs: model.apply(v, x, **kw))
        jax.tree.map(np.testing.assert_array_equal, wrapped(variables, response, x), plain(variables, x))
    # every conv got a response, keyed by its module path; the model's own variables are untouched
    assert "conv" in response["body_1"]["conv2"] and response["last_conv"]["conv"]["R"].shape == (3, 3, 8, 3)


def test_respond_limits_the_response_to_the_matching_layers_and_the_rest_stay_plain():
    """A generator fine-tuned with a frozen body: only its tail responds; a response on the tail alone moves the
    output through the tail only, and a pattern matching nothing is refused with the layer names."""
    model = Generator(n_feats=8, num_blocks=2, scale=2)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 6, 3), minval=-1, maxval=1)
    variables = numpy_variables(model, x)
    response = init_response(model, variables, x, num_hypers=2, key=jax.random.PRNGKey(2), respond=("^tail", "last"))
    assert sorted(response) == ["last_conv", "tail_0"]
    e = jnp.asarray([[0.3, -0.2], [0.0, 0.0]])
    moved = apply_with_response(model, variables, random_response(response, 3), e, x)
    plain = model.apply(variables, x)
    assert float(jnp.max(jnp.abs(moved[0] - plain[0]))) > 1e-3  # example 0 perturbed through the tail
    np.testing.assert_array_equal(moved[1], plain[1])  # example 1 at e = 0: exactly the plain model
    # the patterns are config.optim.trainable's, over parameter paths: a kernel's full path selects its layer
    by_kernel = init_response(model, variables, x, num_hypers=2, key=jax.random.PRNGKey(2), respond=("t_conv/conv/k",))
    assert sorted(by_kernel) == ["last_conv"]
    with pytest.raises(ValueError, match="match no Conv/Dense kernel.*body_0/conv1/conv/kernel"):
        init_response(model, variables, x, num_hypers=2, key=jax.random.PRNGKey(2), respond=("^nothing",))


def test_response_matches_the_formula_for_conv_and_dense():
    """y = W0 x + b0 + (eV)[:D] * (R x) + (eV)[D:] * r_b, written out with lax.conv and matmul."""
    conv = nn.Conv(5, (3, 3), strides=2, padding="SAME")
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 7, 4))
    variables = numpy_variables(conv, x)
    response = init_response(conv, variables, x, num_hypers=2, key=jax.random.PRNGKey(2))
    response = random_response(response, 9)
    e = jax.random.normal(jax.random.PRNGKey(3), (3, 2))
    leaf, p = response, variables["params"]
    dims = ("NHWC", "HWIO", "NHWC")
    conv_with = lambda k: jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=dims)  # noqa: E731
    ve = e @ leaf["V"]
    expected = conv_with(p["kernel"]) + p["bias"] + ve[:, None, None, :5] * conv_with(leaf["R"])
    expected = expected + ve[:, None, None, 5:] * leaf["r_b"]
    np.testing.assert_allclose(apply_with_response(conv, variables, response, e, x), expected, rtol=1e-5, atol=1e-5)

    dense = nn.Dense(4)
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 6))
    variables = numpy_variables(dense, x)
    response = init_response(dense, variables, x, num_hypers=2, key=jax.random.PRNGKey(6))
    response = random_response(response, 10)
    p, ve = variables["params"], e @ response["V"]
    expected = x @ p["kernel"] + p["bias"] + ve[:, :4] * (x @ response["R"]) + ve[:, 4:] * response["r_b"]
    np.testing.assert_allclose(apply_with_response(dense, variables, response, e, x), expected, rtol=1e-5, atol=1e-6)


def test_jvp_equals_finite_differences(convnet):
    model, variables, response, x = convnet
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        v64, r64, x64 = to64(variables), to64(response), to64(x)
        e = jax.random.normal(jax.random.PRNGKey(7), (x.shape[0], H), jnp.float64)
        f = lambda eps: apply_with_response(model, v64, r64, eps, x64)  # noqa: E731
        linear = linearized_apply(f, e) - f(jnp.zeros_like(e))
        h = 1e-5
        central = (f(h * e) - f(-h * e)) / (2 * h)
        np.testing.assert_allclose(linear, central, rtol=1e-6, atol=1e-8)
        # what the response step uses: the jvp through the cheaper zero-point response path
        net = Net(model, v64["params"], {}, r64, e, linearize=True)
        np.testing.assert_allclose(net(x64) - f(jnp.zeros_like(e)), central, rtol=1e-6, atol=1e-8)
        assert np.abs(np.asarray(linear)).max() > 1e-2  # the response is really there
        # the nonlinear network is not linear in e: the linearisation differs from the response at finite e
        assert np.abs(np.asarray(f(e) - f(jnp.zeros_like(e)) - linear)).max() > 1e-4


def test_zero_point_linearisation_has_the_plain_jvps_gradients(convnet):
    """The response and hyper steps differentiate the linearised output w.r.t. the response and e: the cheaper
    zero-point path must give exactly what differentiating a plain jax.jvp of the response gives."""
    model, variables, response, x = convnet
    e = jax.random.normal(jax.random.PRNGKey(11), (x.shape[0], H))
    weights = jax.random.normal(jax.random.PRNGKey(12), (x.shape[0], 2))

    def plain(response, e):
        f = lambda eps: apply_with_response(model, variables, response, eps, x)  # noqa: E731
        return jnp.sum(weights * jnp.tanh(linearized_apply(f, e)))

    def fast(response, e):
        return jnp.sum(weights * jnp.tanh(Net(model, variables["params"], {}, response, e)(x)))

    expected = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(response, e)
    got = jax.jit(jax.value_and_grad(fast, argnums=(0, 1)))(response, e)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, expected)
    assert np.abs(np.asarray(got[1][0]["c1"]["R"])).max() > 1e-4  # the gradient reaches the first layer's R


def test_per_example_perturbation_changes_only_its_own_example(convnet):
    model, variables, response, x = convnet
    e = jax.random.normal(jax.random.PRNGKey(8), (x.shape[0], H))
    moved = e.at[2].add(jnp.asarray([0.5, -1.0, 0.7]))
    for linearize in (False, True):
        before = Net(model, variables["params"], {}, response, e, linearize)(x)
        after = Net(model, variables["params"], {}, response, moved, linearize)(x)
        changed = np.abs(np.asarray(after - before)).max(axis=1)
        assert changed[2] > 1e-3
        np.testing.assert_array_equal(np.delete(np.asarray(after), 2, 0), np.delete(np.asarray(before), 2, 0))


def test_effective_sq_norm_equals_explicit_per_example_weights(convnet):
    model, variables, response, x = convnet
    e = jax.random.normal(jax.random.PRNGKey(9), (x.shape[0], H))
    params = variables["params"]
    expected_kernels, expected_all = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    for name in ("c1", "c2", "d1", "d2"):
        leaf = {k: np.asarray(v, np.float64) for k, v in response[name].items()}
        ve = np.asarray(e, np.float64) @ leaf["V"]
        d = leaf["r_b"].shape[0]
        for i in range(x.shape[0]):
            kernel = np.asarray(params[name]["kernel"], np.float64) + leaf["R"] * ve[i, :d]
            bias = np.asarray(params[name].get("bias", np.zeros(d)), np.float64) + leaf["r_b"] * ve[i, d:]
            expected_kernels[i] += np.sum(kernel**2)
            expected_all[i] += np.sum(kernel**2) + np.sum(bias**2)
    np.testing.assert_allclose(effective_sq_norm(params, response, e), expected_kernels, rtol=1e-5)
    np.testing.assert_allclose(effective_sq_norm(params, response, e, include_bias=True), expected_all, rtol=1e-5)
    plain = sum(float(np.sum(np.square(params[n]["kernel"]))) for n in ("c1", "c2", "d1", "d2"))
    assert float(effective_sq_norm(params, response)) == pytest.approx(plain, rel=1e-6)


# ----- the steps -----


class SmallNet(nn.Module):
    """Two dense layers with per-example dropout between them: enough for the steps (the conv response is checked
    above), and quick to compile on a busy CPU."""

    @nn.compact
    def __call__(self, x, dropout=None, deterministic=True):
        x = nn.relu(nn.Dense(8, name="c1")(x))
        if dropout is not None and not deterministic:  # per-example rates, hard Bernoulli masks
            keep = jax.random.uniform(self.make_rng("dropout"), x.shape) >= dropout[:, None]
            x = jnp.where(keep, x / (1 - dropout[:, None]), 0.0)
        return nn.Dense(2, name="d1")(x)


LAYERS = ("c1", "d1")
SPACE = HyperSpace(
    [Hyper("dropout", 0.0, 0.8, 0.2), Hyper("noise", 0.0, 1.0, 0.1), Hyper("wd", 0.0, None, 1e-3, "positive")]
)


def _train_loss(net, batch, hp, rng):
    k_noise, k_drop = jax.random.split(rng)
    x = batch["x"] + hp["noise"][:, None] * jax.random.normal(k_noise, batch["x"].shape)
    out = net(x, hp["dropout"], deterministic=False, rngs={"dropout": k_drop})
    return jnp.sum(jnp.square(out - batch["y"]), -1) + hp["wd"] * net.weight_sq_norm()


def _val_loss(net, batch, rng):
    return jnp.sum(jnp.square(net(batch["x"]) - batch["y"]), -1)


# The steps do not depend on warm-up and K (the host schedule does): one DeltaSTN, compiled once for these tests.
STN = DeltaSTN(SmallNet(), SPACE, _train_loss, _val_loss, warmup_steps=2, weight_steps_per_hyper=2)


@pytest.fixture(scope="module")
def steps():
    return jit_steps(STN)


def _batch(seed: int, n: int = 8) -> dict:
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return {"x": jax.random.normal(kx, (n, 6)), "y": jax.random.normal(ky, (n, 2))}


def _state(stn: DeltaSTN = STN):
    x = _batch(0)["x"]
    return stn.init(jax.random.PRNGKey(0), numpy_variables(stn.model, x), x)


def test_state_holds_the_plain_models_params_and_steps_touch_only_their_own_part(steps):
    model_vars = numpy_variables(SmallNet(), _batch(0)["x"])
    state = _state()
    jax.tree.map(np.testing.assert_array_equal, state.params, model_vars["params"])
    after_weight, _ = steps.weight(state, _batch(1))
    assert int(after_weight.step) == 1
    assert not np.allclose(after_weight.params["d1"]["kernel"], state.params["d1"]["kernel"])
    assert not np.allclose(after_weight.response["d1"]["V"], 0.0)
    jax.tree.map(np.testing.assert_array_equal, (after_weight.u, after_weight.s), (state.u, state.s))
    after_hyper, _ = steps.hyper(after_weight, _batch(2))
    assert int(after_hyper.hyper_step) == 1
    assert not np.allclose(after_hyper.u, state.u) and not np.allclose(after_hyper.s, state.s)
    jax.tree.map(
        np.testing.assert_array_equal,
        (after_hyper.params, after_hyper.response),
        (after_weight.params, after_weight.response),
    )


def test_general_step_is_a_plain_sgd_step_and_the_response_step_moves_only_the_response():
    stn = DeltaSTN(SmallNet(), SPACE, _train_loss, _val_loss, general_optimizer=optax.sgd(0.1))
    state = _state(stn)
    batch, key = _batch(1), jax.random.PRNGKey(5)
    model, hp = SmallNet(), SPACE.values(state.u)

    def plain_loss(params):  # the same loss written against the plain model, scalar hyperparameters
        k_noise, k_drop = jax.random.split(key)
        x = batch["x"] + hp["noise"] * jax.random.normal(k_noise, batch["x"].shape)
        rate = jnp.full((8,), hp["dropout"])
        out = model.apply({"params": params}, x, rate, deterministic=False, rngs={"dropout": k_drop})
        sq = sum(jnp.sum(jnp.square(params[n]["kernel"])) for n in LAYERS)
        return jnp.mean(jnp.sum(jnp.square(out - batch["y"]), -1)) + hp["wd"] * sq

    grads = jax.jit(jax.grad(plain_loss))(state.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    after, _ = jax.jit(stn.general_step)(state, batch, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), after.params, expected)
    jax.tree.map(np.testing.assert_array_equal, (after.response, after.u), (state.response, state.u))
    after, _ = jax.jit(stn.response_step)(state, batch, key)
    assert not np.allclose(after.response["c1"]["V"], 0.0)
    jax.tree.map(np.testing.assert_array_equal, (after.params, after.u), (state.params, state.u))


def test_schedule_warmup_then_k_weight_steps_per_hyper_step():
    stn = DeltaSTN(SmallNet(), SPACE, _train_loss, _val_loss, warmup_steps=3, weight_steps_per_hyper=5)
    assert [s for s in range(1, 20) if stn.hyper_due(s)] == [8, 13, 18]


def test_sharded_steps_equal_unsharded(steps):
    mesh = parallel.make_mesh(jax.devices()[:4])
    sharded = jit_steps(STN, mesh)
    results = []
    for run, put_state, put in (
        (sharded, lambda t: parallel.put_replicated(t, mesh), lambda b: parallel.put_batch(b, mesh)),
        (steps, lambda t: t, lambda b: b),
    ):
        state, _ = run.weight(put_state(_state()), put(_batch(1)))
        state, _ = run.weight(state, put(_batch(2)))
        state, metrics = run.hyper(state, put(_batch(3)))
        results.append((state, metrics))
    assert len(results[0][0].u.sharding.device_set) == 4 and results[0][0].u.sharding.is_fully_replicated
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, results[0], results[1])


def _run(state, until, steps, first=100):
    batches = (_batch(i) for i in range(first + int(state.step), 200))
    vals = (_batch(i) for i in range(200 + int(state.hyper_step), 300))
    return fit(STN, state, batches, vals, until, steps)


def test_checkpoint_and_resume_equal_an_uninterrupted_run(tmp_path, steps):
    straight = _run(_state(), 6, steps)
    assert int(straight.hyper_step) == 2  # after weight steps 4 and 6
    half = _run(_state(), 3, steps)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", half)
        checkpointer.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state())
        restored = checkpointer.restore(tmp_path / "ckpt", abstract)
    assert int(restored.step) == 3
    resumed = _run(restored, 6, steps)  # continues with the data it has not seen yet
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)
