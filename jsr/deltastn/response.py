"""The centred structured response of Delta-STN for every ``nn.Conv`` and ``nn.Dense`` of ANY Flax Linen model.

Per layer with output width D (Bae & Grosse 2020): general weights W0, b0 (the layer's own parameters) and
response parameters R (shape of W0), r_b (D,) and V (h, 2D, zero init):

    y = W0 x + b0 + (e V)[:D] * (R x) + (e V)[D:] * r_b        e: (B, h), the per-example perturbation

The scales multiply output channels and broadcast over every axis between batch and channels (H, W of a conv).

How it is added without rewriting the model: ``flax.linen.intercept_methods``. While ``apply_with_response`` runs
``model.apply``, every ``__call__`` of an ``nn.Conv`` / ``nn.Dense`` first runs as written (y0 = W0 x + b0 with the
module's own parameters), then the interceptor adds the response path. ``R x`` is the SAME module (a clone with
``use_bias=False``: same padding, strides, dilation, groups, dtype, precision) applied with kernel R. The response
parameters live in a SEPARATE pytree that mirrors the module paths, e.g. ``{"body_0": {"conv1": {"conv": {"R": ..,
"r_b": .., "V": ..}}}}``, so the model's own variables are exactly the plain model's variables (the same
checkpoints, converters and optimizers apply) and any Linen model works unchanged. A layer not called during
``init_response``'s trace gets no response and is left as it is.

Limitations: the batch must be the leading axis of every responded layer's output; layers inside lifted transforms
that add axes to parameters (``nn.scan``, ``nn.vmap`` over parameters) are not supported; ``nn.ConvTranspose``,
``nn.ConvLocal`` and ``nn.DenseGeneral`` get no response.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYERS = (nn.Dense, nn.Conv)


def _is_layer(context) -> bool:
    return isinstance(context.module, LAYERS) and context.method_name == "__call__"


def get_path(tree: dict, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> dict:
    """``tree`` with ``value`` at ``path``; the empty path (the model IS one layer) makes ``value`` the tree."""
    if not path:
        return value
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value
    return tree


def layer_paths(response: dict) -> list[tuple[str, ...]]:
    """Module paths of the responded layers (the dicts holding 'R', 'r_b', 'V')."""
    found = []

    def walk(tree, prefix):
        if "V" in tree and "R" in tree:
            found.append(prefix)
            return
        for name, sub in tree.items():
            walk(sub, (*prefix, name))

    walk(response, ())
    return found


def init_response(
    model: nn.Module, variables: dict, *args, num_hypers: int, key, respond: Sequence[str] = (), **kwargs
) -> dict:
    """Response parameters for every Conv/Dense layer that ``model.apply(variables, *args, **kwargs)`` calls, or,
    with ``respond``, for the layers whose kernel's parameter path (``tail_0/conv/kernel``) one of these regexes
    searches: ``config.optim.trainable``'s patterns, so that a model fine-tuned with a frozen body responds exactly
    where its weights can move.

    R starts normal with LeCun variance 1 / fan_in (whatever the layer's own init: a zero-initialised layer must
    not give a zero R) and r_b at ones: V is zero, so the response starts at exactly the general network, and V's
    gradient is proportional to R x and r_b while R's and r_b's are proportional to V; R, r_b and V all zero would be
    a saddle that never moves. Only shapes are traced (``jax.eval_shape``).
    """
    layers: dict[tuple[str, ...], tuple] = {}

    def record(next_fun, call_args, call_kwargs, context):
        if _is_layer(context):
            module = context.module
            kernel = module.variables["params"]["kernel"]
            layers[tuple(module.path)] = (kernel.shape, module.param_dtype)
        return next_fun(*call_args, **call_kwargs)

    def trace():
        with nn.intercept_methods(record):
            return model.apply(variables, *args, **kwargs)

    jax.eval_shape(trace)
    if not layers:
        raise ValueError(f"{type(model).__name__} calls no nn.Dense or nn.Conv: nothing to respond")
    if respond:
        patterns = [re.compile(p) for p in respond]
        kernel_path = lambda path: "/".join((*path, "kernel"))  # noqa: E731  (as optim.trainable_labels names it)
        chosen = {path: v for path, v in layers.items() if any(p.search(kernel_path(path)) for p in patterns)}
        if not chosen:
            names = sorted(kernel_path(path) for path in layers)
            raise ValueError(
                f"the trained layers {list(respond)} (config.optim.trainable) match no Conv/Dense kernel; kernels: "
                f"{names}"
            )
        layers = chosen
    # Host numpy draws: the same values everywhere, and no XLA compilation of random kernels (seconds on a CPU).
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if _is_typed_key(key) else key, np.uint32))
    response: dict = {}
    for path, (shape, dtype) in sorted(layers.items()):
        features = shape[-1]
        fan_in = int(np.prod(shape[:-1]))
        leaf = {
            "R": jnp.asarray(rng.standard_normal(shape) / np.sqrt(fan_in), dtype),  # LeCun-normal variance
            "r_b": jnp.ones((features,), dtype),
            "V": jnp.zeros((num_hypers, 2 * features), dtype),
        }
        response = _set_path(response, path, leaf)
    return response


def _is_typed_key(key) -> bool:
    return jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)


def _channel_scale(scale, y):
    """(B, D) per-example, per-channel factors broadcast to y's shape (B, ..., D)."""
    if y.shape[0] != scale.shape[0]:
        raise ValueError(
            f"a responded layer's output has leading axis {y.shape[0]}, the perturbation has {scale.shape[0]} "
            "examples: the batch must be the leading axis of every Conv/Dense output"
        )
    return scale.reshape(scale.shape[0], *([1] * (y.ndim - 2)), scale.shape[-1])


def _delta(ve, rx, r_b):
    """The response path (e V)[:D] * (R x) + (e V)[D:] * r_b for ve = e V (B, 2D)."""
    features = r_b.shape[0]
    return _channel_scale(ve[:, :features], rx) * rx + _channel_scale(ve[:, features:], rx) * r_b


@jax.custom_jvp
def _delta_at_zero(e, v, rx, r_b):
    """The response path where ``e`` is known to be exactly 0 (the linearisation point): its value, 0.

    Writing the value as a constant, not as ``(0 V) * (R x)``, keeps the response parameters out of the primal
    network's graph, so that differentiating the linearised output w.r.t. them does not run a backward pass through
    the primal network (whose cotangent would only ever be multiplied by 0).
    """
    del e, v, r_b
    return jnp.zeros_like(rx)


@_delta_at_zero.defjvp
def _delta_at_zero_jvp(primals, tangents):
    # d[(e V) * (R x)] = (de V) * (R x) + (e V) * d(R x): the second term vanishes at e = 0, so the tangent of R x
    # (a convolution of the incoming tangent with R) is never needed; XLA drops it as dead code.
    e, v, rx, r_b = primals
    de = tangents[0]
    return jnp.zeros_like(rx), _delta(de.astype(v.dtype) @ v, rx, r_b).astype(rx.dtype)


@contextlib.contextmanager
def responding(response: dict, e, at_zero: bool = False):
    """Context in which every Conv/Dense call of a Linen ``apply`` adds its structured response for ``e`` (B, h).

    ``at_zero``: the caller promises that ``e``'s value is exactly 0 and only its derivatives matter, as in
    ``jax.jvp(f, (zeros,), (e,))``; the response path then has value 0 and derivative (de V) * (R x) + ... exactly,
    computed more cheaply (``_delta_at_zero``). Never use it with a non-zero ``e``.
    """
    busy = [False]  # R x runs a clone of the layer; the clone's own call must not be intercepted again

    def add_response(next_fun, call_args, call_kwargs, context):
        if busy[0] or not _is_layer(context):
            return next_fun(*call_args, **call_kwargs)
        module = context.module
        y0 = next_fun(*call_args, **call_kwargs)
        try:
            leaf = get_path(response, tuple(module.path))
        except KeyError:
            return y0  # a layer init_response never saw: left as it is
        busy[0] = True
        try:
            rx = module.clone(parent=None, use_bias=False).apply({"params": {"kernel": leaf["R"]}}, *call_args)
        finally:
            busy[0] = False
        if at_zero:
            delta = _delta_at_zero(e, leaf["V"], rx, leaf["r_b"])
        else:
            delta = _delta(e.astype(leaf["V"].dtype) @ leaf["V"], rx, leaf["r_b"])
        return y0 + delta.astype(y0.dtype)

    with nn.intercept_methods(add_response):
        yield


def apply_with_response(model: nn.Module, variables: dict, response: dict, e, *args, at_zero: bool = False, **kwargs):
    """``model.apply(variables, *args, **kwargs)`` with every Conv/Dense responding to ``e`` (B, h) (``at_zero``: see
    ``responding``)."""
    with responding(response, e, at_zero):
        return model.apply(variables, *args, **kwargs)


def _inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def linearized_apply(apply_at: Callable[[Any], Any], e):
    """``f(0) + J_e f(0) . e`` for ``f = apply_at`` (a function of the perturbation), with ONE forward-mode
    ``jax.jvp`` at e = 0 in the direction ``e``. Non-float leaves of the output are returned as computed at 0."""
    primal, tangent = jax.jvp(apply_at, (jnp.zeros_like(e),), (e,))
    return jax.tree.map(lambda p, t: p + t if _inexact(p) else p, primal, tangent)


def _channel_sums(kernel, response_kernel):
    """Per output channel: sum W0^2, sum W0 * R, sum R^2 (over every axis but the last)."""
    axes = tuple(range(kernel.ndim - 1))
    return (
        jnp.sum(jnp.square(kernel), axes),
        jnp.sum(kernel * response_kernel, axes),
        jnp.sum(jnp.square(response_kernel), axes),
    )


def _sq_norm(w0, r, scale):
    """||w0 + scale * r||^2 over all entries, per example; ``scale`` (B, D) scales output channels (last axis)."""
    a, b, c = _channel_sums(w0, r)
    return jnp.sum(a) + 2 * scale @ b + jnp.square(scale) @ c


def effective_sq_norm(params: dict, response: dict, e=None, include_bias: bool = False):
    """Squared L2 norm of the responded layers' effective weights, per example: (B,) for ``e`` (B, h); a scalar
    (the general weights' norm) for ``e`` None.

    The effective kernel of example i is W0 + R * (e_i V)[:D] (channel-wise), its bias b0 + r_b * (e_i V)[D:];
    the norm is exact (quadratic in e), computed from per-channel sums without materialising per-example weights.
    Weight decay must act on these effective weights in the response step: with ridge regression this is what makes
    the response objective's minimiser exactly dw*/dlambda (Bae & Grosse 2020).
    """
    total = 0.0
    for path in layer_paths(response):
        leaf = get_path(response, path)
        own = get_path(params, path)
        features = leaf["r_b"].shape[0]
        if e is None:
            total = total + jnp.sum(jnp.square(own["kernel"]))
            if include_bias and "bias" in own:
                total = total + jnp.sum(jnp.square(own["bias"]))
            continue
        ve = e @ leaf["V"]
        total = total + _sq_norm(own["kernel"], leaf["R"], ve[:, :features])
        if include_bias:
            bias = own.get("bias", jnp.zeros_like(leaf["r_b"]))
            total = total + _sq_norm(bias, leaf["r_b"], ve[:, features:])
    return total
