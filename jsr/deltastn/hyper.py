"""Hyperparameter spaces for Delta-STN: named hyperparameters stored unconstrained, perturbed per example.

Every hyperparameter lives as one unconstrained real ``u_j``; its value is ``low + (high - low) * sigmoid(u)``
("bounded"), ``low + softplus(u)`` ("positive") or ``u`` itself ("unbounded"). Delta-STN perturbs the unconstrained
values per example, ``u~ = u + softplus(s) * eps`` with ``eps ~ N(0, I)``, and learns the scales ``s`` too; the
network's response sees ``e = u~ - u`` (Bae & Grosse 2020).

    space = HyperSpace([Hyper("dropout", 0.0, 0.9, 0.1), Hyper("weight_decay", 0.0, None, 1e-4, "positive")])
    u, s = space.init_u(), space.init_scale()        # (h,), (h,)
    u_tilde, e = space.perturb(key, u, s, batch=32)   # (32, h) each
    hp = space.constrain(u_tilde)                     # {"dropout": (32,), "weight_decay": (32,)}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("bounded", "positive", "unbounded")
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def softplus_inverse(y: float) -> float:
    """x with softplus(x) = y > 0 (float64 on the host; expm1 keeps small y accurate)."""
    if y <= 0:
        raise ValueError(f"softplus takes only positive values, got {y}")
    return float(y + np.log(-np.expm1(-y)))  # log(exp(y) - 1) without overflow for large y


@dataclasses.dataclass(frozen=True)
class Hyper:
    """One named hyperparameter: its range, initial value and transform.

    kind: "bounded" (``low < value < high``, sigmoid), "positive" (``value > low``, softplus; ``high`` unused) or
    "unbounded" (``value = u``; ``low`` and ``high`` unused).
    """

    name: str
    low: float | None = 0.0
    high: float | None = 1.0
    init: float = 0.5
    kind: str = "bounded"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"hyperparameter {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "bounded" and not (self.low is not None and self.high is not None and self.low < self.high):
            raise ValueError(f"hyperparameter {self.name!r}: bounded needs low < high, got {self.low}, {self.high}")
        if self.kind == "bounded" and not self.low < self.init < self.high:
            raise ValueError(f"hyperparameter {self.name!r}: init {self.init} outside ({self.low}, {self.high})")
        if self.kind == "positive" and not self.init > (self.low or 0.0):
            raise ValueError(f"hyperparameter {self.name!r}: init {self.init} must exceed low {self.low or 0.0}")

    def unconstrain(self, value: float) -> float:
        """The u whose constrained value is ``value`` (host, float64)."""
        if self.kind == "bounded":
            p = (value - self.low) / (self.high - self.low)
            return float(np.log(p) - np.log1p(-p))
        if self.kind == "positive":
            return softplus_inverse(value - (self.low or 0.0))
        return float(value)

    def constrain(self, u):
        """Value(s) of this hyperparameter for unconstrained ``u`` (any shape, jittable)."""
        if self.kind == "bounded":
            return self.low + (self.high - self.low) * jax.nn.sigmoid(u)
        if self.kind == "positive":
            return (self.low or 0.0) + jax.nn.softplus(u)
        return u


@dataclasses.dataclass(frozen=True)
class HyperSpace:
    """An ordered set of hyperparameters; column j of ``u`` (..., h) is ``hypers[j]``."""

    hypers: tuple[Hyper, ...]

    def __init__(self, hypers: Sequence[Hyper]):
        hypers = tuple(hypers)
        names = [h.name for h in hypers]
        if not hypers or len(set(names)) != len(names):
            raise ValueError(f"a HyperSpace needs one or more uniquely named hyperparameters, got {names}")
        object.__setattr__(self, "hypers", hypers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hypers)

    @property
    def size(self) -> int:
        return len(self.hypers)

    def init_u(self) -> jnp.ndarray:
        """(h,) unconstrained initial values."""
        return jnp.asarray([h.unconstrain(h.init) for h in self.hypers], jnp.float32)

    def init_scale(self, sigma: float = 1.0) -> jnp.ndarray:
        """(h,) raw scales s with softplus(s) = ``sigma`` (perturbation std in unconstrained units)."""
        return jnp.full((self.size,), softplus_inverse(sigma), jnp.float32)

    def constrain(self, u) -> dict:
        """{name: value} for ``u`` of shape (..., h); each value has shape (...) (per example for (B, h))."""
        u = jnp.asarray(u)
        if u.shape[-1] != self.size:
            raise ValueError(f"u has {u.shape[-1]} columns, the space has {self.size} hyperparameters")
        return {h.name: h.constrain(u[..., j]) for j, h in enumerate(self.hypers)}

    def values(self, u) -> dict[str, float]:
        """{name: float} on the host, for logging."""
        return {name: float(v) for name, v in self.constrain(np.asarray(u, np.float32)).items()}

    def unconstrain(self, values: dict) -> jnp.ndarray:
        """(h,) u for {name: value} (host); e.g. to set hyperparameters of a fixed-setting baseline."""
        return jnp.asarray([h.unconstrain(values[h.name]) for h in self.hypers], jnp.float32)


def sigma(s):
    """Perturbation std (unconstrained units) for raw scales ``s``."""
    return jax.nn.softplus(s)


def sample_eps(key, batch: int, size: int):
    """(batch, size) standard normal draws, one row per example."""
    return jax.random.normal(key, (batch, size), jnp.float32)


def perturb(key, u, s, batch: int):
    """Per-example perturbed hyperparameters: returns ``u~`` (B, h) and ``e = u~ - u`` (B, h).

    Gradients reach ``s`` through ``e``; for the hyper step, which also needs them to reach ``u`` through ``e``, use
    ``centered_perturbation``.
    """
    e = sigma(s) * sample_eps(key, batch, u.shape[-1])
    return u + e, e


def centered_perturbation(u, s, eps):
    """``e = (u + sigma(s) * eps) - stop_gradient(u)``: the value of ``sigma * eps``, but d e / d u = 1.

    The response is centred at the current u (where the general weights were trained), so the hyper step's
    gradient w.r.t. u is the gradient w.r.t. the response input: the hypergradient flows through the response.
    """
    return (u + sigma(s) * eps) - jax.lax.stop_gradient(u)


def entropy(s):
    """Entropy of the Gaussian perturbation (per example): sum_j log(sigma_j * sqrt(2 pi e))."""
    return jnp.sum(jnp.log(sigma(s)) + HALF_LOG_2PI_E)
