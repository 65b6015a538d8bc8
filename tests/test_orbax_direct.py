"""jsr.orbax_direct reads what Orbax restores (Orbax is the reference), declines what it does not know, and
``load_model`` goes through it: a model directory loads without importing Orbax, and its variable shapes are
remembered beside the compiled programs without ever masking a model file that does not fit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import make_generator_dir

from jsr import checkpoints, orbax_direct

TREE = {
    "params": {
        "conv": {
            "kernel": np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4) / 7,
            "bias": np.ones(4),
        },  # float64: restored as float32,
        "prelu": {"alpha": np.float32(0.25) * np.ones((), np.float32)},
        "half": np.linspace(-2, 2, 5).astype(ml_dtypes.bfloat16),
    },
    "batch_stats": {"count": np.arange(6, dtype=np.int32).reshape(2, 3)},
}


def orbax_restore(path: Path) -> dict:
    with ocp.StandardCheckpointer() as checkpointer:
        return jax.tree.map(np.asarray, checkpoints.restore_on_host(checkpointer, path))


def assert_same_tree(got, expected):
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def save(path: Path, tree) -> Path:
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()
    return path


def test_reads_what_orbax_restores(tmp_path):
    path = save(tmp_path / "ckpt", TREE)
    got = orbax_direct.read_tree(path)
    assert got is not None
    assert_same_tree(got, orbax_restore(path))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(TREE), strict=True):  # the values saved
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
    assert got["params"]["half"].dtype == ml_dtypes.bfloat16 and got["params"]["conv"]["bias"].dtype == np.float32


SHARDED = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6), NamedSharding(mesh, P("data")))
tree = {"params": {"w": x, "b": jax.device_put(jnp.ones(3), NamedSharding(mesh, P()))}}
with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(sys.argv[1], tree)
    checkpointer.wait_until_finished()
"""


def test_reads_arrays_sharded_over_devices_as_orbax_does(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    path = tmp_path / "sharded"
    done = subprocess.run([sys.executable, "-c", SHARDED, str(path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    got = orbax_direct.read_tree(path)
    assert got is not None
    assert_same_tree(got, orbax_restore(path))
    np.testing.assert_array_equal(got["params"]["w"], np.arange(48, dtype=np.float32).reshape(8, 6))


def test_declines_layouts_it_does_not_know(tmp_path):
    listed = save(tmp_path / "list", {"params": [np.ones(2, np.float32), np.zeros(3, np.float32)]})
    assert orbax_direct.read_tree(listed) is None  # sequence keys: Orbax's business
    assert orbax_direct.read_tree(tmp_path / "nothing-here") is None
    damaged = save(tmp_path / "damaged", TREE)
    (damaged / "_METADATA").write_text("{not json")
    assert orbax_direct.read_tree(damaged) is None


def test_a_model_directory_loads_without_orbax(tmp_path):
    make_generator_dir(tmp_path / "model", seed=3, n_feats=8, num_blocks=1, scale=2)
    script = (
        "import sys, json, numpy as np; from jsr.checkpoints import load_model; "
        f"m, v = load_model({str(tmp_path / 'model')!r}, expect='generator'); "
        "print(json.dumps({'orbax': 'orbax.checkpoint' in sys.modules, 'sum': float(sum(np.sum(np.asarray(x, "
        "np.float64)) for x in __import__('jax').tree.leaves(v)))}))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    expected = orbax_restore(tmp_path / "model" / "variables")
    assert not report["orbax"]
    assert report["sum"] == pytest.approx(
        sum(float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(expected))
    )


REMEMBERED = r"""
import json, sys
from jsr import checkpoints, compile_cache
compile_cache.enable(True)
if sys.argv[2] == "refuse-to-trace":
    def traced(module):
        raise AssertionError("abstract_variables called although the shapes were remembered")
    checkpoints.abstract_variables = traced
try:
    checkpoints.load_model(sys.argv[1], expect="generator")
    print(json.dumps({"ok": True}))
except checkpoints.ModelFileError as e:
    print(json.dumps({"ok": False, "error": str(e)}))
"""


def test_variable_shapes_remembered_never_mask_a_mismatch(tmp_path):
    model = tmp_path / "model"
    make_generator_dir(model, seed=0, n_feats=8, num_blocks=2, scale=2)
    env = {k: v for k, v in os.environ.items() if k not in ("JSR_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def load(mode):
        cmd = [sys.executable, "-c", REMEMBERED, str(model), mode]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert load("trace") == {"ok": True}
    assert len(list((tmp_path / "cache").rglob("variable-shapes-*.json"))) == 1
    assert load("refuse-to-trace") == {"ok": True}  # the second start reads the shapes instead of tracing
    description = json.loads((model / checkpoints.MODEL_FILE).read_text())
    description["config"]["num_blocks"] = 3
    (model / checkpoints.MODEL_FILE).write_text(json.dumps(description))
    refused = load("trace")
    assert not refused["ok"] and "body_2" in refused["error"] and "no params/" in refused["error"]
