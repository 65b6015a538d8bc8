"""Read a pytree of arrays that Orbax's ``StandardCheckpointer`` saved, straight through tensorstore.

Orbax itself reads its arrays with tensorstore (OCDBT key-value store, zarr arrays named by the tree path joined
with dots). Importing Orbax and running its restore machinery costs ~0.55 s of a 2-core CPU, more than a small
model's weights take to read, so ``load_model`` tries this reader first. It accepts only the layout it knows (an
OCDBT checkpoint of plain nested dicts of arrays) and answers ``None`` for anything else or for any failure; the
caller then restores with Orbax, which gives the verdict (and the error message) on damaged files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

METADATA_FILE = "_METADATA"
DICT_KEY = 2  # Orbax's key_type for a dict key (others: sequence indices, dataclass fields, ...)
ARRAY_TYPES = ("np.ndarray", "jax.Array")


def read_tree(directory: Path) -> dict[str, Any] | None:
    """The nested dict of numpy arrays saved in ``directory`` as Orbax restores them onto a device, or None (unknown
    layout or unreadable)."""
    try:
        layout = _layout(directory)
        if layout is None:
            return None
        driver, paths = layout
        import tensorstore as ts

        context = ts.Context()  # one OCDBT manifest cache for every array
        base = {"driver": "ocdbt", "base": Path(directory).absolute().as_uri() + "/"}
        opened = [
            ts.open({"driver": driver, "kvstore": {**base, "path": ".".join(path)}}, read=True, context=context)
            for path in paths
        ]
        reads = [future.result().read() for future in opened]
        tree: dict[str, Any] = {}
        for path, read in zip(paths, reads, strict=True):
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            array = read.result()  # in the dtype a restore onto a jax device gives (float64 -> float32 unless x64)
            node[path[-1]] = np.asarray(array, dtype=jax.dtypes.canonicalize_dtype(array.dtype))
        return tree
    except Exception:  # noqa: BLE001 - any surprise: Orbax reads it (or explains why it cannot)
        return None


def _layout(directory: Path) -> tuple[str, list[tuple[str, ...]]] | None:
    """(tensorstore driver, the arrays' key paths) of a checkpoint this reader knows, else None."""
    metadata = json.loads((Path(directory) / METADATA_FILE).read_text())
    if not metadata.get("use_ocdbt") or not isinstance(metadata.get("tree_metadata"), dict):
        return None
    paths = []
    for entry in metadata["tree_metadata"].values():
        keys, value = entry["key_metadata"], entry["value_metadata"]
        if value.get("value_type") not in ARRAY_TYPES or value.get("skip_deserialize"):
            return None
        if not keys or any(k.get("key_type") != DICT_KEY or not isinstance(k.get("key"), str) for k in keys):
            return None
        paths.append(tuple(k["key"] for k in keys))
    if not paths or len({".".join(p) for p in paths}) != len(paths):
        return None  # empty, or two paths that name the same stored array
    return ("zarr3" if metadata.get("use_zarr3") else "zarr"), paths
