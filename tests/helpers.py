"""Shared test helpers: generators with non-trivial random weights, saved as real model directories."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jsr.checkpoints import save_model
from jsr.models import Generator


def random_generator_variables(module: Generator, seed: int = 0) -> dict:
    """He-normal kernels, random BN statistics, small residual-branch gains: outputs that vary across the image
    (std ~0.2) without saturating the tanh, so a wrong pixel anywhere shows up in a comparison."""
    variables = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, module.channels))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = [getattr(p, "key", str(p)) for p in path]
        name = names[-1]
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            gain = 0.5 if names[-3] == "last_conv" else 1.0
            return (rng.standard_normal(leaf.shape) * gain * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if name == "bias":
            return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)
        if name == "scale":  # BN gains keep the 16 residual additions from blowing up
            return rng.uniform(0.1, 0.3, leaf.shape).astype(np.float32)
        if name == "mean":
            return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == "negative_slope":
            return np.float32(rng.uniform(0.05, 0.4))
        return leaf

    return jax.tree_util.tree_map_with_path(fill, variables)


def make_generator_dir(directory: Path, seed: int = 0, **config) -> tuple[Generator, dict]:
    """A random generator saved as a model directory (as the converter or trainer would write it)."""
    module = Generator(**config)
    variables = random_generator_variables(module, seed)
    names = ("n_feats", "num_blocks", "scale", "channels", "bicubic_skip")
    save_model(directory, "generator", {name: getattr(module, name) for name in names}, variables)
    return module, variables
