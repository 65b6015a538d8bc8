"""Delta-STN's three steps as pure functions of a ``DeltaSTNState`` pytree (jit them; they shard like a train step).

The task supplies two callables that see the model through a ``Net`` (the model's ``apply`` without variables):

    train_loss(net, batch, hparams, rng) -> (B,) per-example training loss [, {name: (B,) or scalar metrics}]
    val_loss(net, batch, rng)            -> (B,) per-example validation loss [, metrics]

``hparams`` is {name: (B,)}: one value per example, so data-side hyperparameters (augmentation magnitudes, dropout
rates, input noise) act per example and loss-side ones (weight decay) enter as the per-example term
``hparams["wd"] * net.weight_sq_norm()``, whose batch mean is the weight-decay penalty. The library decides what
``net(...)`` computes in each step:

- general step: the plain model (e = 0), hyperparameters at their current values; updates W0, b0 (the model's
  params) only. Mutable collections a ``net(..., mutable=[...])`` call returns (BatchNorm statistics) are kept.
- response step: hyperparameters perturbed per example (``u~ = u + sigma * eps``) and the LINEARISED response
  ``f(x; w0, 0) + J_e f . e``: one ``jax.jvp`` per ``net`` call at e = 0 in the direction e (forward mode). The loss
  is differentiated through that output w.r.t. R, r_b, V only.
- hyper step: a validation batch, no augmentation; ``e = (u + sigma * eps) - stop_gradient(u)`` carries gradients to
  u and s through the learned response only; objective = mean validation loss - tau * entropy.

Example (any Linen model; here per-example augmentation strength and weight decay)::

    space = HyperSpace([Hyper("noise", 0.0, 0.5, 0.1), Hyper("wd", 0.0, None, 1e-4, "positive")])

    def train_loss(net, batch, hp, rng):
        x = batch["x"] + hp["noise"][:, None] * jax.random.normal(rng, batch["x"].shape)
        per_example = jnp.mean((net(x) - batch["y"]) ** 2, axis=-1)
        return per_example + hp["wd"] * net.weight_sq_norm()

    def val_loss(net, batch, rng):
        return jnp.mean((net(batch["x"]) - batch["y"]) ** 2, axis=-1)

    stn = DeltaSTN(model, space, train_loss, val_loss, warmup_steps=100)
    state = stn.init(jax.random.key(0), model.init(key, x0), x0)
    steps = jit_steps(stn, mesh)           # see schedule.py; or jax.jit(stn.weight_step) / jax.jit(stn.hyper_step)
    state, metrics = steps.weight(state, batch)
    if stn.hyper_due(int(state.step)):
        state, hyper_metrics = steps.hyper(state, val_batch)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jsr import parallel
from jsr.deltastn import hyper as hyper_lib
from jsr.deltastn import response as response_lib
from jsr.deltastn.hyper import HyperSpace

PARAMS = "params"


class Net:
    """The model as a loss function sees it: ``net(*args, **kwargs)`` is ``model.apply(variables, *args, **kwargs)``
    with, depending on the step, no response (e None), the response to ``e`` or its linearisation at e = 0.

    With ``mutable=[...]`` the call returns only the output; the mutated collections are collected in
    ``net.updates`` (the general step keeps them, the other steps drop them).
    """

    def __init__(self, model: nn.Module, params, model_state, response, e=None, linearize: bool = True):
        self.model, self.params, self.model_state = model, params, model_state
        self.response, self.e, self.linearize = response, e, linearize
        self.updates: dict = {}

    def __call__(self, *args, **kwargs):
        variables = {PARAMS: self.params, **self.model_state}
        mutable = kwargs.get("mutable", False) is not False
        if self.e is None:
            out = self.model.apply(variables, *args, **kwargs)
        elif self.linearize:

            def at(e):  # evaluated only at e = 0 (jvp's primal): the cheaper at_zero response path is exact
                result = response_lib.apply_with_response(
                    self.model, variables, self.response, e, *args, at_zero=True, **kwargs
                )
                return result if mutable else (result, {})

            primal, tangent, updates = jax.jvp(at, (jnp.zeros_like(self.e),), (self.e,), has_aux=True)
            out = jax.tree.map(lambda p, t: p + t if response_lib._inexact(p) else p, primal, tangent)
            out = (out, updates) if mutable else out
        else:
            out = response_lib.apply_with_response(self.model, variables, self.response, self.e, *args, **kwargs)
        if mutable:
            out, updates = out
            self.updates.update(flax.core.unfreeze(updates))
        return out

    def weight_sq_norm(self, include_bias: bool = False):
        """Squared L2 norm of every responded (Conv/Dense) layer's effective kernel (and bias): (B,) per example
        in the response and hyper steps, a scalar in the general step. Multiply by a weight-decay hyperparameter."""
        return response_lib.effective_sq_norm(self.params, self.response, self.e, include_bias)


@flax.struct.dataclass
class DeltaSTNState:
    """Everything Delta-STN trains, as one pytree (checkpoint it with Orbax like any other)."""

    step: jnp.ndarray  # weight steps done
    hyper_step: jnp.ndarray  # hyper steps done
    params: Any  # the model's 'params' collection: W0, b0 and every other parameter
    model_state: Any  # the model's other collections (e.g. batch_stats)
    response: Any  # {module path...: {"R", "r_b", "V"}}
    u: jnp.ndarray  # (h,) unconstrained hyperparameters
    s: jnp.ndarray  # (h,) raw perturbation scales, sigma = softplus(s)
    general_opt: Any
    response_opt: Any
    hyper_opt: Any
    scale_opt: Any
    rng: jnp.ndarray  # raw uint32 key (Orbax-friendly)


def _sgd():
    return optax.sgd(1e-2, momentum=0.9)


def _rmsprop():
    return optax.rmsprop(1e-2, decay=0.99)  # PyTorch's RMSprop alpha


def _batch_size(batch) -> int:
    return jax.tree.leaves(batch)[0].shape[0]


def _split_loss(result):
    """A loss callable returns per-example losses, optionally with a dict of metrics."""
    if isinstance(result, tuple):
        loss, metrics = result
    else:
        loss, metrics = result, {}
    return jnp.mean(loss), {name: jnp.mean(v) for name, v in metrics.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class DeltaSTN:
    """Delta-STN for one Flax Linen model and one hyperparameter space (static configuration; the steps are pure
    functions of a ``DeltaSTNState``). Defaults follow the authors (Bae & Grosse 2020): SGD momentum 0.9 for the
    weights, RMSprop lr 1e-2 for u and s, sigma 1.0, tau 1e-3, K = 5 weight steps per hyper step.

    ``linearize_hyper``: the hyper step evaluates the validation loss on the linearised response (as the response
    step trains it); False uses the exact structured response at e instead. ``respond``: regexes over parameter paths
    (``response.init_response``) limiting the response to the layers whose kernels train (empty: every layer).
    """

    model: nn.Module
    space: HyperSpace
    train_loss: Callable
    val_loss: Callable
    general_optimizer: optax.GradientTransformation = dataclasses.field(default_factory=_sgd)
    response_optimizer: optax.GradientTransformation = dataclasses.field(default_factory=_sgd)
    hyper_optimizer: optax.GradientTransformation = dataclasses.field(default_factory=_rmsprop)
    scale_optimizer: optax.GradientTransformation = dataclasses.field(default_factory=_rmsprop)
    tau: float = 1e-3
    init_sigma: float = 1.0
    warmup_steps: int = 0
    weight_steps_per_hyper: int = 5
    linearize_hyper: bool = True
    respond: tuple[str, ...] = ()

    # ----- state -----

    def init(self, key, variables: dict, *example_args, u=None, **example_kwargs) -> DeltaSTNState:
        """State from the model's variables (``model.init(...)`` or a checkpoint); ``example_args/kwargs`` are a
        model call (shapes only are traced) that reaches every layer to respond. ``u`` overrides the initial
        unconstrained hyperparameters (default: each ``Hyper.init``)."""
        variables = flax.core.unfreeze(variables)
        params = variables.pop(PARAMS)
        k_response, k_rng = jax.random.split(key)
        response = response_lib.init_response(
            self.model,
            {PARAMS: params, **variables},
            *example_args,
            num_hypers=self.space.size,
            key=k_response,
            respond=self.respond,
            **example_kwargs,
        )
        u = self.space.init_u() if u is None else jnp.asarray(u, jnp.float32)
        s = self.space.init_scale(self.init_sigma)
        return DeltaSTNState(
            step=jnp.zeros((), jnp.int32),
            hyper_step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=variables,
            response=response,
            u=u,
            s=s,
            general_opt=self.general_optimizer.init(params),
            response_opt=self.response_optimizer.init(response),
            hyper_opt=self.hyper_optimizer.init(u),
            scale_opt=self.scale_optimizer.init(s),
            rng=jax.random.key_data(k_rng) if jnp.issubdtype(k_rng.dtype, jax.dtypes.prng_key) else k_rng,
        )

    def hparams(self, state: DeltaSTNState) -> dict[str, float]:
        """Current hyperparameter values on the host."""
        return self.space.values(parallel.local_copy(state.u))

    def sigmas(self, state: DeltaSTNState) -> dict[str, float]:
        """Current perturbation stds (unconstrained units) on the host."""
        values = hyper_lib.sigma(parallel.local_copy(state.s))
        return {name: float(v) for name, v in zip(self.space.names, values, strict=True)}

    def hyper_due(self, step: int) -> bool:
        """After weight step ``step`` (1-based count): warm-up, then one hyper step every K weight steps."""
        done = step - self.warmup_steps
        return done > 0 and done % self.weight_steps_per_hyper == 0

    # ----- losses -----

    def general_loss(self, params, state: DeltaSTNState, batch, rng):
        """Training loss at e = 0 and the current hyperparameters (one value per example, all equal)."""
        u = jnp.broadcast_to(state.u, (_batch_size(batch), self.space.size))
        net = Net(self.model, params, state.model_state, state.response)
        loss, metrics = _split_loss(self.train_loss(net, batch, self.space.constrain(u), rng))
        return loss, (metrics, net.updates)

    def response_loss(self, response, state: DeltaSTNState, batch, key, rng):
        """Training loss of the linearised response at per-example perturbed hyperparameters."""
        u_tilde, e = hyper_lib.perturb(key, state.u, state.s, _batch_size(batch))
        net = Net(self.model, state.params, state.model_state, response, e, linearize=True)
        return _split_loss(self.train_loss(net, batch, self.space.constrain(u_tilde), rng))

    def hyper_objective(self, u, s, state: DeltaSTNState, batch, eps, rng, tau=None):
        """Mean validation loss at the response to ``e = sigma(s) * eps`` (gradient to u and s) - tau * entropy."""
        e = hyper_lib.centered_perturbation(u, s, eps)
        net = Net(self.model, state.params, state.model_state, state.response, e, linearize=self.linearize_hyper)
        val, metrics = _split_loss(self.val_loss(net, batch, rng))
        entropy = hyper_lib.entropy(s)
        tau = self.tau if tau is None else tau
        return val - tau * entropy, {**metrics, "val_loss": val, "entropy": entropy}

    def hypergradient(self, state: DeltaSTNState, batch, eps=None, rng=None):
        """d (mean validation loss) / d u through the learned response, at ``eps`` (default 0: at e = 0)."""
        eps = jnp.zeros((_batch_size(batch), self.space.size)) if eps is None else eps
        rng = jax.random.PRNGKey(0) if rng is None else rng
        grad_fn = jax.grad(lambda u: self.hyper_objective(u, state.s, state, batch, eps, rng, tau=0.0)[0])
        return grad_fn(state.u)

    # ----- steps -----

    def general_step(self, state: DeltaSTNState, batch, rng):
        """Update the model's params (W0, b0, ...) on the training loss at e = 0."""
        grad_fn = jax.value_and_grad(self.general_loss, has_aux=True)
        (loss, (metrics, updates)), grads = grad_fn(state.params, state, batch, rng)
        deltas, general_opt = self.general_optimizer.update(grads, state.general_opt, state.params)
        params = optax.apply_updates(state.params, deltas)
        model_state = {**state.model_state, **updates}
        state = state.replace(params=params, model_state=model_state, general_opt=general_opt)
        return state, {"general_loss": loss, **metrics}

    def response_step(self, state: DeltaSTNState, batch, rng):
        """Update R, r_b, V on the linearised training loss at per-example perturbed hyperparameters."""
        key_eps, key_data = jax.random.split(rng)
        grad_fn = jax.value_and_grad(self.response_loss, has_aux=True)
        (loss, metrics), grads = grad_fn(state.response, state, batch, key_eps, key_data)
        deltas, response_opt = self.response_optimizer.update(grads, state.response_opt, state.response)
        response = optax.apply_updates(state.response, deltas)
        metrics = {f"response_{name}": v for name, v in metrics.items()}
        return state.replace(response=response, response_opt=response_opt), {"response_loss": loss, **metrics}

    def weight_step(self, state: DeltaSTNState, batch):
        """One weight step on one training batch: general step, then response step; ``step`` += 1."""
        rng, k_general, k_response = jax.random.split(state.rng, 3)
        state, general_metrics = self.general_step(state, batch, k_general)
        state, response_metrics = self.response_step(state, batch, k_response)
        return state.replace(step=state.step + 1, rng=rng), {**general_metrics, **response_metrics}

    def hyper_step(self, state: DeltaSTNState, batch):
        """One hyper step on one validation batch: update u and s; ``hyper_step`` += 1."""
        rng, k_eps, k_data = jax.random.split(state.rng, 3)
        eps = hyper_lib.sample_eps(k_eps, _batch_size(batch), self.space.size)
        grad_fn = jax.value_and_grad(self.hyper_objective, argnums=(0, 1), has_aux=True)
        (objective, metrics), (grad_u, grad_s) = grad_fn(state.u, state.s, state, batch, eps, k_data)
        du, hyper_opt = self.hyper_optimizer.update(grad_u, state.hyper_opt, state.u)
        ds, scale_opt = self.scale_optimizer.update(grad_s, state.scale_opt, state.s)
        state = state.replace(
            u=optax.apply_updates(state.u, du),
            s=optax.apply_updates(state.s, ds),
            hyper_opt=hyper_opt,
            scale_opt=scale_opt,
            hyper_step=state.hyper_step + 1,
            rng=rng,
        )
        return state, {"hyper_objective": objective, **metrics}
