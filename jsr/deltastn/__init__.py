"""Delta-STN (Bae & Grosse, NeurIPS 2020) for any Flax Linen model: hyperparameters tuned inside one training run.

- ``hyper``: ``Hyper`` / ``HyperSpace`` (named hyperparameters, unconstrained storage, per-example perturbations).
- ``response``: the centred structured response of every ``nn.Conv`` / ``nn.Dense``, added by method interception
  with its parameters in a separate pytree.
- ``steps``: ``DeltaSTN`` (configuration and the pure general / response / hyper steps), ``DeltaSTNState``, ``Net``.
- ``schedule``: ``jit_steps`` (jitted, sharded steps) and ``fit`` (warm-up, then K weight steps : 1 hyper step).

See ``steps``' docstring for a worked example.
"""

from jsr.deltastn.hyper import Hyper, HyperSpace, centered_perturbation, entropy, perturb, sigma
from jsr.deltastn.response import apply_with_response, effective_sq_norm, init_response, linearized_apply, responding
from jsr.deltastn.schedule import Steps, fit, jit_steps
from jsr.deltastn.steps import DeltaSTN, DeltaSTNState, Net

__all__ = [
    "DeltaSTN",
    "DeltaSTNState",
    "Hyper",
    "HyperSpace",
    "Net",
    "Steps",
    "apply_with_response",
    "centered_perturbation",
    "effective_sq_norm",
    "entropy",
    "fit",
    "init_response",
    "jit_steps",
    "linearized_apply",
    "perturb",
    "responding",
    "sigma",
]
