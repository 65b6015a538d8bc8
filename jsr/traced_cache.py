"""Traced programs kept on disk beside the compilation cache, so that a warm start skips Python tracing too.

JAX's persistent cache holds compiled programs, yet every run still traces and lowers its functions in Python before
it can look them up. ``jit(fn, key)`` is ``jax.jit(fn)`` whose first call per argument signature loads the traced
program (``jax.export``, StableHLO) from ``<compilation cache>/traced/`` instead, when one was written for the same
``key`` (the caller's description of everything ``fn`` closes over, e.g. a run's resolved config), the same jsr source
files, jax / jaxlib / flax / optax versions and argument shapes, dtypes and shardings; else it traces ``fn``, writes
the program (atomically) and runs it. ``remembered(name, key, compute)`` keeps a JSON result of tracing (a module's
variable shapes) under the same fingerprint. Off whenever the compilation cache is off, under ``jax.distributed``,
and for functions over modules defined outside jsr (a user's plug-in: its source is not part of the key).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from jax import export

from jsr import atomic

FORMAT = 1  # bump when the file layout changes
LIBRARIES = ("jax", "jaxlib", "flax", "optax")


def jit(fn: Callable, key: str, *, donate_argnums: int | Sequence[int] = (), modules: Sequence[object] = ()):
    """``jax.jit(fn, donate_argnums=...)`` that keeps its traced programs on disk (see the module docstring).

    ``modules``: the Flax modules ``fn`` closes over; one defined outside the jsr package turns the disk off."""
    jitted = jax.jit(fn, donate_argnums=donate_argnums)
    folder = folder_in_use()
    if folder is None or jax.process_count() > 1 or not all(_in_jsr(m) for m in modules if m is not None):
        return jitted
    donate = (donate_argnums,) if isinstance(donate_argnums, int) else tuple(donate_argnums)
    return _DiskTraced(fn, jitted, folder, key, donate)


def remembered(name: str, key: str, compute: Callable[[], Any], *, modules: Sequence[object] = ()) -> Any:
    """``compute()``, a JSON value that tracing derives (e.g. a module's variable shapes), kept beside the traced
    programs under the same fingerprint (jsr's source, library versions) plus ``key``; computed afresh when the
    cache is off, under ``jax.distributed``, for modules defined outside jsr, or when the file is unusable."""
    folder = folder_in_use()
    if folder is None or jax.process_count() > 1 or not all(_in_jsr(m) for m in modules):
        return compute()
    digest = hashlib.sha256(repr((_code_fingerprint(), name, key)).encode()).hexdigest()
    path = folder / f"{name}-{digest}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, partial or damaged: compute it again
        pass
    value = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(value))
    except OSError:
        pass  # a read-only cache only costs the computation next time
    return value


def folder_in_use() -> Path | None:
    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return None
    return Path(jax.config.jax_compilation_cache_dir) / "traced"


def _in_jsr(module: object) -> bool:
    return type(module).__module__.split(".")[0] == "jsr"


@functools.cache
def _code_fingerprint() -> str:
    """jsr's own source and the versions of the libraries that shape a traced program."""
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for library in LIBRARIES:
        digest.update(f"{library} {importlib.metadata.version(library)}\n".encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _DiskTraced:
    def __init__(self, fn: Callable, jitted: Callable, folder: Path, key: str, donate: tuple[int, ...]):
        self.fn, self.jitted, self.folder, self.key, self.donate = fn, jitted, folder, key, donate
        self.programs: dict = {}  # argument signature -> (flat jitted program, output treedef)

    def __getattr__(self, name: str):  # .lower, .trace, .eval_shape, ...: those of the plain jit
        return getattr(self.jitted, name)

    def __call__(self, *args):
        leaves, in_tree = jax.tree.flatten(args)
        if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):  # Python scalars: plain jit
            return self.jitted(*args)
        signature = (in_tree, tuple((x.shape, str(x.dtype), str(getattr(x, "sharding", None))) for x in leaves))
        if signature not in self.programs:
            self.programs[signature] = self._program(args, leaves, in_tree, signature)
        program = self.programs[signature]
        if program is None:  # could not be exported: plain jit
            return self.jitted(*args)
        call, out_tree = program
        return jax.tree.unflatten(out_tree, call(*leaves))

    def _program(self, args, leaves, in_tree, signature):
        name = hashlib.sha256(repr((_code_fingerprint(), self.key, signature)).encode()).hexdigest()
        path = self.folder / f"{getattr(self.fn, '__name__', 'fn')}-{name}.jsrtrace"
        counts = [len(jax.tree.leaves(a)) for a in args]
        starts = [sum(counts[:i]) for i in range(len(counts))]
        donate = tuple(j for i in self.donate for j in range(starts[i], starts[i] + counts[i]))
        try:
            out_tree, serialized = pickle.loads(path.read_bytes())
            exported = export.deserialize(serialized)
        except Exception:  # noqa: BLE001 - absent, partial or from another build: trace it again
            exported, out_tree = self._export(leaves, in_tree)
            if exported is None:
                return None
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                data = pickle.dumps((out_tree, exported.serialize()))
                atomic.write_file(path, lambda f: f.write(data))
            except OSError:
                pass  # a read-only cache only costs the tracing next time
        return jax.jit(exported.call, donate_argnums=donate), out_tree

    def _export(self, leaves, in_tree):
        out_trees = []

        def flat(*xs):
            out = self.fn(*jax.tree.unflatten(in_tree, xs))
            out_leaves, out_tree = jax.tree.flatten(out)
            out_trees.append(out_tree)
            return out_leaves

        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)) for x in leaves]
        try:
            exported = export.export(jax.jit(flat))(*shapes)
        except Exception:  # noqa: BLE001 - a program export cannot take (e.g. a non-portable custom call)
            return None, None
        return exported, out_trees[-1]
