"""jsr.ops.conv: every weight-gradient formulation, and the models' conv='fast' switch, against plain lax / XLA."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jsr.models import Discriminator, Generator
from jsr.models.vgg import INPUT_GRAD_KERNELS, VGG19Features, with_input_grad_kernels
from jsr.ops.conv import (
    NHWC,
    WEIGHT_GRADS,
    conv_function,
    fast_conv,
    input_grad_kernel,
    input_grad_phases,
    weight_grad_chunks,
    weight_grad_tiles,
)

# (kernel, stride, padding) as the models use them: 3x3 same, 9x9 same (conv01), 3x3 stride 2 pad (1, 1) (D).
CASES = [(3, 1, ((1, 1), (1, 1))), (9, 1, ((4, 4), (4, 4))), (3, 2, ((1, 1), (1, 1)))]
TOL = dict(rtol=1e-4, atol=1e-5)


def data(k, cin=5, cout=7, n=2, side=11, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, side, side, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) / k)
    return x, w


def plain(x, w, stride, pad):
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=NHWC)


@pytest.mark.parametrize("formulation", sorted(WEIGHT_GRADS))
@pytest.mark.parametrize("k,stride,pad", CASES)
def test_fast_conv_equals_lax_forward_and_gradients(formulation, k, stride, pad):
    x, w = data(k)

    def loss(conv, x, w):
        y = conv(x, w)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

    fast = lambda x, w: fast_conv(x, w, (stride, stride), pad, dimension_numbers=NHWC, weight_grad=formulation)  # noqa: E731
    ref = lambda x, w: plain(x, w, stride, pad)  # noqa: E731
    np.testing.assert_allclose(jax.jit(fast)(x, w), ref(x, w), **TOL)
    got = jax.jit(jax.grad(lambda x, w: loss(fast, x, w), argnums=(0, 1)))(x, w)
    want = jax.grad(lambda x, w: loss(ref, x, w), argnums=(0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, **TOL)


@pytest.mark.parametrize("k,stride,pad", [*CASES, ((2, 3), 1, ((0, 2), (1, 0))), ((3, 2), 2, ((1, 0), (0, 1)))])
def test_onednn_path_equals_lax_and_convolves_with_the_flipped_kernel(k, stride, pad):
    """conv='onednn': XLA's weight gradient and, for stride 1, the input gradient as a plain convolution with
    input_grad_kernel(w) (the form oneDNN runs fastest); values and gradients equal lax's, uneven padding and
    non-square kernels included."""
    x, _ = data(3)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = jnp.asarray(np.random.default_rng(1).standard_normal((kh, kw, 5, 7), np.float32) / kh)
    onednn = lambda x, w: conv_function("onednn")(x, w, (stride, stride), pad, dimension_numbers=NHWC)  # noqa: E731
    ref = lambda x, w: plain(x, w, stride, pad)  # noqa: E731
    loss = lambda conv, x, w: jnp.sum(jnp.sin(conv(x, w)))  # noqa: E731
    np.testing.assert_allclose(jax.jit(onednn)(x, w), ref(x, w), **TOL)
    got = jax.jit(jax.grad(lambda x, w: loss(onednn, x, w), argnums=(0, 1)))(x, w)
    want = jax.grad(lambda x, w: loss(ref, x, w), argnums=(0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, **TOL)
    backward = str(jax.make_jaxpr(jax.grad(lambda x: loss(onednn, x, w)))(x))
    # stride 1: input_grad_kernel's in/out swap is in the backward pass (XLA's own transpose rule has none)
    assert ("permutation=(0, 1, 3, 2)" in backward) == (stride == 1)


@pytest.mark.parametrize(
    "side,k,stride,pad",
    [
        (2, 3, 1, ((1, 1), (1, 1))),  # VGG's 2x2 maps at a 32x32 input
        (1, 3, 1, ((1, 1), (1, 1))),
        (4, 3, 2, ((1, 1), (1, 1))),  # the discriminator's last stride-2 conv at tiny sizes
        (3, 9, 1, ((4, 4), (4, 4))),
        (4, 3, 1, "SAME"),
        (5, 3, 2, "VALID"),
    ],
)
def test_tiny_outputs_take_im2col_and_equal_lax(side, k, stride, pad):
    """<= SMALL_CONV_PIXELS output pixels: im2col + one matmul (XLA's CPU conv is a naive loop there)."""
    x, w = data(k, cin=6, cout=5, n=3, side=side, seed=side)

    def fast(x, w):
        return fast_conv(x, w, (stride, stride), pad, dimension_numbers=NHWC)

    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(fast(x, w) ** 2), argnums=(0, 1)))(x, w))
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr
    bigger, _ = data(k, cin=6, cout=5, n=1, side=side + 6)  # > SMALL_CONV_PIXELS outputs: the custom_vjp path
    assert "conv_general_dilated" in str(jax.make_jaxpr(fast)(bigger, w))
    np.testing.assert_allclose(jax.jit(fast)(x, w), plain(x, w, stride, pad), **TOL)
    got = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(fast(x, w))), argnums=(0, 1)))(x, w)
    want = jax.grad(lambda x, w: jnp.sum(jnp.sin(plain(x, w, stride, pad))), argnums=(0, 1))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, **TOL)


SMALL_PIECES = {  # chunking and tiling exercised at test sizes
    "chunks_small": functools.partial(weight_grad_chunks, pixels=30, tile=4),
    "tiles_small": functools.partial(weight_grad_tiles, tile=4),
}


@pytest.mark.parametrize("formulation", sorted(set(WEIGHT_GRADS) - {"xla"}) + sorted(SMALL_PIECES))
def test_weight_grad_formulations_equal_xla_on_odd_sizes(formulation):
    """Even input sides with stride 2, 1-pixel output, and an asymmetric padding."""
    wgrad = (WEIGHT_GRADS | SMALL_PIECES)[formulation]
    for side, k, stride, pad in [
        (12, 3, 2, ((1, 1), (1, 1))),
        (3, 3, 1, ((0, 0), (0, 0))),
        (10, 3, 2, ((0, 1), (0, 1))),
        (7, 3, 1, ((3, 0), (2, 3))),  # padding beyond kernel - 1, stride 1
    ]:
        x, w = data(k, side=side)
        dy = jnp.asarray(np.random.default_rng(1).standard_normal(plain(x, w, stride, pad).shape, np.float32))
        _, vjp = jax.vjp(lambda w_, x=x, s=stride, p=pad: plain(x, w_, s, p), w)
        got = wgrad(x, dy, w.shape, (stride, stride), pad)
        np.testing.assert_allclose(got, vjp(dy)[0], **TOL)


def test_out_patches_is_what_auto_takes_for_few_output_channels():
    """The last conv's shape class (16 in, 3 out, stride 1): 'auto' and 'out_patches' equal XLA's gradient."""
    x, w = data(3, cin=16, cout=3, side=13)
    pad = ((1, 1), (1, 1))
    dy = jnp.asarray(np.random.default_rng(2).standard_normal(plain(x, w, 1, pad).shape, np.float32))
    want = jax.vjp(lambda w_: plain(x, w_, 1, pad), w)[1](dy)[0]
    for name in ("auto", "out_patches"):
        np.testing.assert_allclose(
            jax.jit(WEIGHT_GRADS[name], static_argnums=(2, 3, 4))(x, dy, w.shape, (1, 1), pad), want, **TOL
        )


def test_auto_takes_the_chunked_path_above_its_threshold_and_stays_exact():
    """2 x 72 x 72 output pixels > 9216 with 16 channels: 'auto' sums per-image chunks; equal to XLA's gradient."""
    x, w = data(3, cin=16, cout=16, side=72)
    pad = ((1, 1), (1, 1))
    f = lambda conv: jax.grad(lambda w_: jnp.sum(jnp.tanh(conv(x, w_))))  # noqa: E731
    fast = lambda x, w: fast_conv(x, w, (1, 1), pad, dimension_numbers=NHWC, weight_grad="auto")  # noqa: E731
    got, want = jax.jit(f(fast))(w), jax.jit(f(lambda x, w: plain(x, w, 1, pad)))(w)
    # sums of ~10k float32 products in another order: absolute tolerance on the gradient's scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_auto_takes_kernel_rows_for_rgb_inputs_above_the_threshold_and_stays_exact():
    """3 input channels over 2 x 72 x 72 output pixels (the discriminator's first conv): 'auto' builds per-row
    patches (a concatenate in the graph, XLA's own has none); equal to XLA's gradient."""
    x, w = data(3, cin=3, cout=8, side=72)
    pad = ((1, 1), (1, 1))
    dy = jnp.asarray(np.random.default_rng(3).standard_normal(plain(x, w, 1, pad).shape, np.float32))
    auto = functools.partial(WEIGHT_GRADS["auto"], kernel_shape=w.shape, strides=(1, 1), padding=pad)
    assert "concatenate" in str(jax.make_jaxpr(auto)(x, dy))
    want = jax.vjp(lambda w_: plain(x, w_, 1, pad), w)[1](dy)[0]
    np.testing.assert_allclose(jax.jit(auto)(x, dy), want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("pad", [((-1, -1), (0, 0)), ((-1, 2), (3, -2))])
def test_rgb_rows_path_takes_negative_padding(pad):
    """Negative padding (a crop) on the RGB weight-gradient path: gradients equal XLA's."""
    x, w = data(3, cin=3, cout=4, side=100, n=1)
    f = lambda conv: jax.grad(lambda x_, w_: jnp.sum(jnp.sin(conv(x_, w_))), argnums=(0, 1))  # noqa: E731
    fast = lambda x_, w_: fast_conv(x_, w_, (1, 1), pad, dimension_numbers=NHWC)  # noqa: E731
    got, want = jax.jit(f(fast))(x, w), f(lambda x_, w_: plain(x_, w_, 1, pad))(x, w)
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_fast_conv_passes_other_convolutions_through():
    """String padding takes the custom path; NCHW layout and dilation go to lax unchanged."""
    x, w = data(3)
    np.testing.assert_allclose(
        fast_conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC), plain(x, w, 1, ((1, 1), (1, 1))), **TOL
    )
    xc, wc = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
    np.testing.assert_allclose(
        fast_conv(xc, wc, (1, 1), "SAME", rhs_dilation=(2, 2)),
        lax.conv_general_dilated(xc, wc, (1, 1), "SAME", rhs_dilation=(2, 2)),
        **TOL,
    )
    with pytest.raises(ValueError, match="conv="):
        conv_function("cudnn")


def test_flax_conv_with_fast_conv_keeps_parameters_and_values():
    x, _ = data(3, side=9)
    plain_conv = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)))
    fast = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=fast_conv)
    variables = plain_conv.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, fast.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, variables)
    assert "custom_vjp" in str(jax.make_jaxpr(fast.apply)(variables, x))  # the custom path is taken
    assert "custom_vjp" not in str(jax.make_jaxpr(plain_conv.apply)(variables, x))
    with pytest.raises(TypeError, match="custom_vjp"):  # documented: reverse mode only
        jax.jvp(lambda v: fast.apply(v, x), (variables,), (variables,))
    grad = lambda m: jax.grad(lambda v: jnp.sum(jnp.tanh(m.apply(v, x))))(variables)  # noqa: E731
    np.testing.assert_allclose(fast.apply(variables, x), plain_conv.apply(variables, x), **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), grad(fast), grad(plain_conv))


def _compare_models(make, x, train_kwargs, path="fast"):
    ref_model, fast_model = make("xla"), make(path)
    variables = jax.jit(ref_model.init)(jax.random.PRNGKey(0), x)  # jitted: eager init compiles op by op
    jaxpr = str(jax.make_jaxpr(lambda v: fast_model.apply(v, x, mutable=["batch_stats"], **train_kwargs))(variables))
    assert "custom_vjp" in jaxpr
    assert jax.tree.map(jnp.shape, jax.eval_shape(fast_model.init, jax.random.PRNGKey(0), x)) == jax.tree.map(
        jnp.shape, variables
    )

    def loss(model, params):
        out, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"], **train_kwargs
        )
        return jnp.mean(jnp.square(out - 0.3)), (out, updates)

    (l_ref, (o_ref, u_ref)), g_ref = jax.jit(jax.value_and_grad(lambda p: loss(ref_model, p), has_aux=True))(
        variables["params"]
    )
    (l_fast, (o_fast, u_fast)), g_fast = jax.jit(jax.value_and_grad(lambda p: loss(fast_model, p), has_aux=True))(
        variables["params"]
    )
    np.testing.assert_allclose(o_fast, o_ref, **TOL)
    np.testing.assert_allclose(l_fast, l_ref, **TOL)
    # Absolute tolerance on the gradients' own scale: the biases of convs feeding a BatchNorm have a zero gradient
    # in exact arithmetic, i.e. pure rounding noise in both paths.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale), g_fast, g_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), u_fast, u_ref)


@pytest.mark.parametrize("path", ["fast", "onednn"])
def test_generator_fast_equals_xla(path):
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 10, 10, 3)).astype(np.float32))
    _compare_models(lambda conv: Generator(n_feats=8, num_blocks=2, conv=conv), x, {"train": True}, path)


@pytest.mark.parametrize("path", ["fast", "onednn", "winograd"])
def test_discriminator_fast_equals_xla(path):
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32))
    n_feats = 16 if path == "winograd" else 8  # 16 -> 32 channels at 16 px: Winograd's smallest conv (MIN_CHANNELS)
    make = lambda conv: Discriminator(patch_size=32, n_feats=n_feats, conv=conv)  # noqa: E731
    if path == "winograd":  # the CPU float32 default for the SRGAN discriminator's trained convs
        assert "winograd" in str(jax.make_jaxpr(lambda: make(path).init(jax.random.PRNGKey(0), x))())
    _compare_models(make, x, {"train": True}, path)


def test_vgg_fast_equals_xla_down_to_2x2_maps_values_and_input_gradient():
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32))
    variables = VGG19Features().init(jax.random.PRNGKey(0), x, taps=("relu5_4",))

    def features(conv):
        return jax.jit(lambda v: VGG19Features(conv=conv).apply(v, x, taps=("relu2_2", "relu5_4")))(variables)

    got, want = features("fast"), features("xla")
    for tap in want:
        scale = float(jnp.max(jnp.abs(want[tap])))
        np.testing.assert_allclose(got[tap], want[tap], rtol=1e-4, atol=1e-5 * scale)

    def input_grad(conv):  # what the perceptual loss differentiates
        f = lambda x: jnp.sum(jnp.sin(VGG19Features(conv=conv).apply(variables, x, taps=("relu5_4",))["relu5_4"]))  # noqa: E731
        return jax.jit(jax.grad(f))(x)

    g_fast, g_xla = input_grad("fast"), input_grad("xla")
    np.testing.assert_allclose(g_fast, g_xla, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(g_xla))))


def test_generator_fast_inference_with_mask_equals_xla():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32))
    mask = jnp.zeros((1, 12, 12, 1)).at[:, :9, :7].set(1.0)
    ref = Generator(n_feats=8, num_blocks=2)
    variables = jax.jit(ref.init)(jax.random.PRNGKey(0), x)
    fast = Generator(n_feats=8, num_blocks=2, conv="fast")
    got = jax.jit(lambda v: fast.apply(v, x, valid_mask=mask))(variables)
    np.testing.assert_allclose(got, jax.jit(lambda v: ref.apply(v, x, valid_mask=mask))(variables), **TOL)


@pytest.mark.parametrize(
    "hw, kernel, stride, pad",
    [
        ((12, 12), 3, 2, ((1, 1), (1, 1))),  # the discriminator's stride-2 convs
        ((9, 7), 3, 2, ((1, 1), (1, 1))),  # odd sizes: phases of different lengths
        ((8, 8), 4, 2, ((1, 2), (1, 2))),  # even kernel, asymmetric padding
        ((10, 11), 3, 3, ((1, 1), (0, 0))),
        ((8, 9), 1, 2, ((0, 0), (0, 0))),  # kernel smaller than the stride: some phases get no tap (zero)
        ((8, 8), 3, 2, ((0, 0), (0, 0))),  # VALID: trailing input rows feed no output
        ((7, 7), 5, 2, ((2, 2), (2, 2))),
    ],
)
def test_strided_input_gradient_by_phases_equals_xla(hw, kernel, stride, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, *hw, 3), np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 5), np.float32))
    y, vjp = jax.vjp(lambda x_: plain(x_, w, stride, pad), x)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    got = input_grad_phases(dy, w, x.shape, (stride, stride), pad)
    np.testing.assert_allclose(got, vjp(dy)[0], rtol=1e-5, atol=1e-5)
    # and fast_conv's backward uses it
    _, fast_vjp = jax.vjp(lambda x_: fast_conv(x_, w, (stride, stride), pad, dimension_numbers=NHWC), x)
    np.testing.assert_allclose(fast_vjp(dy)[0], vjp(dy)[0], rtol=1e-5, atol=1e-5)


def test_vgg_with_input_grad_kernels_equals_plain_and_reads_them():
    """The frozen-VGG backward from precomputed input-gradient kernels: equal values and input gradient (and kernel
    gradient, for whoever trains it), and the precomputed kernels are what the backward reads."""
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32))
    variables = VGG19Features().init(jax.random.PRNGKey(0), x, taps=("relu3_1",))
    prepared = with_input_grad_kernels(variables)
    assert set(prepared[INPUT_GRAD_KERNELS]) == set(variables["params"])

    def loss(conv, variables, x):
        out = VGG19Features(conv=conv).apply(variables, x, taps=("relu3_1",))["relu3_1"]
        return jnp.sum(jnp.sin(out))

    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)
    (v_ref, (gp_ref, gx_ref)) = value_and_grads("xla", variables, x)
    (v, (gp, gx)) = value_and_grads("fast", prepared, x)
    np.testing.assert_allclose(v, v_ref, **TOL)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(gx_ref))))
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(gp_ref["params"]))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale), gp["params"], gp_ref["params"]
    )
    # the precomputed kernels pass no gradient of their own, and they are what the input gradient uses
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(gp[INPUT_GRAD_KERNELS]))
    corrupted = {**prepared, INPUT_GRAD_KERNELS: jax.tree.map(lambda k: 2.0 * k, prepared[INPUT_GRAD_KERNELS])}
    _, (_, gx_corrupted) = value_and_grads("fast", corrupted, x)
    assert float(jnp.max(jnp.abs(gx_corrupted - gx))) > 1e-3 * float(jnp.max(jnp.abs(gx)))


def test_input_grad_kernel_of_the_wrong_shape_is_a_clear_error():
    x, w = data(3, cin=5, cout=7, side=12)
    with pytest.raises(ValueError, match="input_grad_kernel has shape"):
        fast_conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, input_grad_kernel=w)  # not flipped


def test_input_grad_kernel_is_ignored_by_strided_and_tiny_convs():
    x, w = data(3, side=12)
    pad = ((1, 1), (1, 1))
    wrong = jnp.zeros_like(input_grad_kernel(w))  # would zero the input gradient if it were read
    for stride, xin in ((2, x), (1, x[:, :4, :4])):  # stride 2; 4x4 = 16 output pixels (the im2col path)
        f = lambda x_, s=stride: jnp.sum(  # noqa: E731
            jnp.sin(fast_conv(x_, w, (s, s), pad, dimension_numbers=NHWC, input_grad_kernel=wrong))
        )
        want = jax.grad(lambda x_, s=stride: jnp.sum(jnp.sin(plain(x_, w, s, pad))))(xin)
        np.testing.assert_allclose(jax.grad(f)(xin), want, **TOL)
