"""Device mesh, shardings and multi-host start-up: data parallel over every device (batch axis 'data').

Parameters are replicated; batches are split on their leading axis. Under ``jax.jit`` a reduction over the
batch (a loss mean, BatchNorm's statistics) is a reduction over the GLOBAL batch, whatever the device count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """The per-process batch; the global batch must split evenly over devices."""
    devices = mesh.devices.size
    if global_batch % devices:
        raise ValueError(
            f"batch_size {global_batch} does not split over {devices} devices; use a multiple of {devices}"
        )
    return global_batch // jax.process_count()


def put_batch(batch: Any, mesh: Mesh) -> Any:
    """Host arrays of THIS process's part of the global batch -> global arrays sharded on 'data'."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def local_copy(tree: Any) -> Any:
    """Host numpy copies of REPLICATED (possibly multi-process) arrays, read from this process's own device."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str | None = "gloo",
) -> None:
    """``jax.distributed.initialize``; arguments left None are auto-detected (SLURM, TPU pods, ...).

    On CPU, cross-process collectives need an implementation chosen before the backend starts (gloo).
    """
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
