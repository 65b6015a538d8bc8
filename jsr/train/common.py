"""What every training method shares: the generator's initial variables, and the protocol the loop drives."""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jsr import checkpoints, program_cache
from jsr.spec import RunSpec, TrainingError, as_spec


class Method(Protocol):
    """A training method as the loop sees it: its state, one step, and what validation / checkpoints need."""

    state: Any
    iterators: dict[str, Any]  # data iterators whose positions are checkpointed
    loss_metric: str  # the metric the progress line shows

    def advance(self, state, step: int) -> tuple[Any, dict]: ...  # (state, steps done) -> (state, device metrics)

    def generator_variables(self, state) -> dict: ...  # {"params", "batch_stats"} of the generator

    def trained_params(self, state) -> Any: ...  # checked for finiteness before every save

    def host_scalars(self, state) -> dict: ...  # extra scalars at log points

    def after_validation(self, state, scores: dict) -> Any: ...

    def host_state(self) -> dict | None: ...  # host-side state saved with each checkpoint (the plateau)

    def restore_host_state(self, saved: dict | None) -> None: ...


def build_generator(run):
    """The generator module of ``run`` (a RunSpec, or a config resolved here) with its dtype and conv path."""
    return as_spec(run).model.build()


def init_generator_variables(run: RunSpec, generator, rng) -> dict:
    p = run.data.patch_size or 16
    example = jnp.zeros((1, p, p, 3))
    if not run.init_from:
        # One jitted program (cached on disk) rather than hundreds of eagerly compiled ops: seconds at every start.
        return program_cache.jit(generator.init, run.program_key, modules=(generator,))(rng, example)
    variables = jax.eval_shape(generator.init, rng, example)
    try:
        source, loaded = checkpoints.load_model(run.init_from, expect="generator")
    except checkpoints.ModelFileError as e:
        raise TrainingError(
            f"config.init_from: {e}. Convert released weights with tools/convert_torch_weights.py, or point at a "
            "training workdir"
        ) from e
    want = run.model.config
    got = {k: getattr(source, k, None) for k in want}
    if not isinstance(source, type(generator)):
        got = {"architecture": type(source).__name__}
    if got != want:
        raise TrainingError(
            f"config.init_from={run.init_from} is a generator with {got}, but the "
            f"config asks for {want}: set config.model.* to match"
        )
    loaded = {name: tree for name, tree in loaded.items() if tree}  # a network without BatchNorm: no batch_stats
    expected = jax.tree.map(np.shape, {name: tree for name, tree in variables.items() if tree})
    if jax.tree.map(np.shape, loaded) != expected:
        raise TrainingError(f"config.init_from={run.init_from}: variables do not match the generator's shapes")
    return loaded
