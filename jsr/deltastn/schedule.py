"""Jitted, sharded Delta-STN steps and the schedule: warm-up weight steps, then K weight steps : 1 hyper step.

Sharding is the normal train step's (jsr/parallel.py): the state is replicated, batches are split on their leading
axis over the mesh's 'data' axis, and every mean over the batch inside a step is a mean over the GLOBAL batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh

from jsr import parallel
from jsr.deltastn.steps import DeltaSTN, DeltaSTNState


class Steps(NamedTuple):
    weight: Callable  # (state, train_batch) -> (state, metrics)
    hyper: Callable  # (state, val_batch) -> (state, metrics)


def jit_steps(stn: DeltaSTN, mesh: Mesh | None = None, donate: bool = False) -> Steps:
    """``jax.jit`` of the weight and hyper steps; with a mesh, state and metrics replicated, batches on 'data'
    (place them with ``parallel.put_replicated`` / ``parallel.put_batch``). ``donate`` reuses the state's buffers."""
    kwargs: dict[str, Any] = {"donate_argnums": (0,)} if donate else {}
    if mesh is not None:
        rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        kwargs.update(in_shardings=(rep, data), out_shardings=(rep, rep))
    return Steps(jax.jit(stn.weight_step, **kwargs), jax.jit(stn.hyper_step, **kwargs))


def fit(
    stn: DeltaSTN,
    state: DeltaSTNState,
    train_batches: Iterator,
    val_batches: Iterator,
    num_steps: int,
    steps: Steps | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> DeltaSTNState:
    """Run weight steps until ``state.step == num_steps`` (resumes from a restored state), with a hyper step after
    every K-th weight step past warm-up. ``callback(step, metrics)`` sees each step's metrics (device arrays)."""
    steps = steps or jit_steps(stn)
    step = int(state.step)
    while step < num_steps:
        state, metrics = steps.weight(state, next(train_batches))
        step += 1
        if stn.hyper_due(step):
            state, hyper_metrics = steps.hyper(state, next(val_batches))
            metrics = {**metrics, **hyper_metrics}
        if callback is not None:
            callback(step, metrics)
    return state
