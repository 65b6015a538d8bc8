"""Saving and loading model weights with Orbax, in one layout shared by converted and trained models.

A model directory holds ``jsr_model.json`` (the model kind and its constructor arguments) and ``variables/``
(an Orbax checkpoint of ``{"params": ..., "batch_stats": ...}``). Directories are written under a temporary
name and renamed into place, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from jsr.errors import UserError
from jsr.models import MODEL_KINDS

MODEL_FILE = "jsr_model.json"
VARIABLES_DIR = "variables"
TRAIN_CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1


class ModelFileError(UserError):
    """A model directory is missing, incomplete or inconsistent."""


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """The Flax module of ``kind`` with constructor arguments ``config``."""
    if kind not in MODEL_KINDS:
        raise ModelFileError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    try:
        return MODEL_KINDS[kind](**config)
    except TypeError as e:
        raise ModelFileError(f"bad constructor arguments for {kind}: {config} ({e})") from e


def count_params(variables: dict) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(variables.get("params", {}))))


def save_model(
    directory: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    variables: dict,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``variables`` of a ``kind`` model to ``directory`` atomically; returns the directory."""
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise ModelFileError(f"{directory} exists and is not empty; choose another output or allow overwriting")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        variables = jax.tree.map(np.asarray, variables)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / VARIABLES_DIR, variables)
            checkpointer.wait_until_finished()
        write_description(staging, kind, config, {"num_params": count_params(variables), **(metadata or {})})
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def write_description(
    directory: Path, kind: str, config: dict[str, Any], metadata: dict[str, Any] | None = None
) -> None:
    """``jsr_model.json``: what ``load_model`` needs to rebuild the module (written atomically)."""
    description = {**(metadata or {}), "format": FORMAT_VERSION, "kind": kind, "config": config}
    tmp = directory / f".{MODEL_FILE}.partial"
    tmp.write_text(json.dumps(description, indent=2, default=float) + "\n")
    os.replace(tmp, directory / MODEL_FILE)


def read_description(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"model directory {directory} does not exist")
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{directory} is not a jsr model directory (no {MODEL_FILE}); convert PyTorch weights with "
            "`python tools/convert_torch_weights.py` or point at a training workdir"
        )
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path} is not valid JSON: {e}") from e
    for key in ("kind", "config"):
        if key not in description:
            raise ModelFileError(f"{path} has no {key!r} field")
    return description


def load_model(directory: str | os.PathLike, expect: str | None = None) -> tuple[nn.Module, dict]:
    """``(module, variables)`` such that ``module.apply(variables, x_nhwc)`` runs the saved network (eval mode).

    ``directory`` is a model directory (converted weights, a run's ``best/``) or a training workdir, whose latest
    checkpoint's generator is loaded. ``expect`` ('generator', 'discriminator', 'vgg19') refuses any other kind
    before reading the weights.
    """
    directory = Path(directory).absolute()
    description = read_description(directory)
    if expect is not None and description["kind"] != expect:
        raise ModelFileError(f"{directory} holds a {description['kind']}, not a {expect}")
    module = build_model(description["kind"], description["config"])
    variables_path = directory / VARIABLES_DIR
    with ocp.StandardCheckpointer() as checkpointer:
        if variables_path.is_dir():
            variables = restore_on_host(checkpointer, variables_path)
        elif (directory / TRAIN_CHECKPOINTS).is_dir():
            step = TrainCheckpoints(directory / TRAIN_CHECKPOINTS).latest_step()
            if step is None:
                raise ModelFileError(f"training workdir {directory} has no checkpoint yet")
            state = restore_on_host(checkpointer, directory / TRAIN_CHECKPOINTS / str(step) / "state")
            # where the trainer keeps the generator inside its state ("a/b" = state["a"]["b"])
            where = description.get("generator_in_state", {"params": "g_params", "batch_stats": "g_batch_stats"})
            variables = {name: _lookup(state, path) for name, path in where.items()}
        else:
            raise ModelFileError(f"{directory} has neither {VARIABLES_DIR}/ nor {TRAIN_CHECKPOINTS}/")
    return module, jax.tree.map(np.asarray, variables)


def _lookup(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        tree = tree[key]
    return tree


def restore_on_host(checkpointer: ocp.StandardCheckpointer, path: Path) -> Any:
    """Restore a pytree onto this process's first device, whatever devices (or processes) saved it."""
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return checkpointer.restore(path, target)


class TrainCheckpoints:
    """A run's Orbax checkpoints: ``<step>/state`` (the TrainState pytree) and ``<step>/meta`` (JSON: data iterator
    position, plateau, bookkeeping). Orbax finalises a step by renaming a temporary directory, so a crash mid-save
    leaves the previous checkpoints untouched."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> None:
        if self.manager.latest_step() == step:
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=force)

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """(state shaped and sharded like ``template``, meta) of the latest step, or None for a fresh run."""
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return restored.state, restored.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()
