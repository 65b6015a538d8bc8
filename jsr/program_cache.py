"""Compiled programs kept on disk beside JAX's compilation cache, so that a warm start skips tracing and lowering too.

JAX's persistent cache holds compiled programs, yet every run still traces and lowers its functions in Python to
find them (its key is the lowered program). ``jit(fn, key)`` is ``jax.jit(fn)`` whose first call per argument
signature loads the compiled executable itself (``jax.experimental.serialize_executable``) from
``<compilation cache>/programs/`` when one was written for the same ``key`` (the caller's description of everything
``fn`` closes over, e.g. a run's resolved config), the same jsr source files, jax / jaxlib / flax / optax versions,
the same devices, XLA flags and CPU (an executable is machine code for this CPU), and the same argument shapes,
dtypes and shardings; else it traces and compiles ``fn`` afresh (past JAX's cache: ``_compile_fresh`` says why),
writes the executable (atomically) and runs it. ``preload(key)`` starts reading the programs that the last process
with that key used on a background thread, so that they load while the caller imports and prepares.
``remembered(name, key, compute)`` keeps a JSON result of tracing (a module's variable shapes) under the same
fingerprint. Off whenever the compilation cache is off, under ``jax.distributed``, and for functions over
modules defined outside jsr (a user's plug-in: its source is not part of the key). The folder is held within the
compilation cache's size bound: writing a program removes the least recently used files past it (``_bound``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.experimental import serialize_executable

from jsr import atomic

FORMAT = 2  # bump when the file layout changes
LIBRARIES = ("jax", "jaxlib", "flax", "optax")


def jit(fn: Callable, key: str, *, donate_argnums: int | Sequence[int] = (), modules: Sequence[object] = ()):
    """``jax.jit(fn, donate_argnums=...)`` that keeps its compiled programs on disk (see the module docstring).

    ``modules``: the Flax modules ``fn`` closes over; one defined outside the jsr package turns the disk off."""
    jitted = jax.jit(fn, donate_argnums=donate_argnums)
    folder = folder_in_use()
    if folder is None or jax.process_count() > 1 or not all(_in_jsr(m) for m in modules if m is not None):
        return jitted
    return _DiskCompiled(fn, jitted, folder, key)


def remembered(name: str, key: str, compute: Callable[[], Any], *, modules: Sequence[object] = ()) -> Any:
    """``compute()``, a JSON value that tracing derives (e.g. a module's variable shapes), kept beside the compiled
    programs under the same fingerprint (jsr's source, library versions) plus ``key``; computed afresh when the
    cache is off, under ``jax.distributed``, for modules defined outside jsr, or when the file is unusable."""
    folder = folder_in_use()
    if folder is None or jax.process_count() > 1 or not all(_in_jsr(m) for m in modules):
        return compute()
    digest = hashlib.sha256(repr((_code_fingerprint(), name, key)).encode()).hexdigest()
    path = folder / f"{name}-{digest}.json"
    try:
        value = json.loads(path.read_text())
        _used(path)
        return value
    except (OSError, ValueError):  # absent, partial or damaged: compute it again
        pass
    value = compute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(value))
    except OSError:
        pass  # a read-only cache only costs the computation next time
    return value


def preload(key: str) -> None:
    """Start reading, on a background thread, the programs that the last process with this ``key`` used (listed in
    an index beside them), so that they load while this one goes on (reading an executable releases the GIL).
    ``jit(..., key)`` takes them from there; a missing or unusable one is read or compiled as usual."""
    folder = folder_in_use()
    if folder is None or jax.process_count() > 1:
        return
    index = _index(folder, key)
    names = index.names()
    if not names:
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsr-preload")
    for name in names:  # in the order they were first used
        _preloaded[folder / name] = pool.submit(_load, folder / name)
    pool.shutdown(wait=False)  # its thread ends after the last one


def folder_in_use() -> Path | None:
    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return None
    if jax.config.jax_compilation_cache_max_size == 0:  # JAX's way to say "cache nothing"
        return None
    return Path(jax.config.jax_compilation_cache_dir) / "programs"


def module_key(module: object) -> str:
    """A Flax module as a cache key: its class's full name and its repr (every field)."""
    return f"{type(module).__module__}.{type(module).__qualname__} {module!r}"


def _in_jsr(module: object) -> bool:
    return type(module).__module__.split(".")[0] == "jsr"


@functools.cache
def _code_fingerprint() -> str:
    """jsr's own source and the versions of the libraries that shape a compiled program."""
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for library in LIBRARIES:
        digest.update(f"{library} {importlib.metadata.version(library)}\n".encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class _DiskCompiled:
    def __init__(self, fn: Callable, jitted: Callable, folder: Path, key: str):
        self.fn, self.jitted, self.folder, self.key = fn, jitted, folder, key
        self.programs: dict = {}  # argument signature -> compiled executable (None: plain jit)

    def __getattr__(self, name: str):  # .lower, .trace, .eval_shape, ...: those of the plain jit
        return getattr(self.jitted, name)

    def __call__(self, *args):
        leaves, treedef = jax.tree.flatten(args)
        if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):  # Python scalars: plain jit
            return self.jitted(*args)
        # every call: hashable objects, not their text (str of 300 shardings: 2.7 ms a call, vs 0.2 ms)
        signature = (treedef, tuple((x.shape, x.dtype, getattr(x, "weak_type", False), _sharding(x)) for x in leaves))
        if signature not in self.programs:
            program, loaded = self._program(signature)
            self.programs[signature] = program
            if loaded:  # the first call proves a loaded executable takes these arguments
                try:
                    return program(*args)
                except (TypeError, ValueError):
                    self.programs[signature] = None
        program = self.programs[signature]
        return self.jitted(*args) if program is None else program(*args)

    def _program(self, signature) -> tuple[Callable | None, bool]:
        """(the compiled executable, whether it came from disk); (None, False) if it cannot be compiled ahead."""
        treedef, avals = signature
        described = (treedef, tuple((shape, str(dtype), weak, str(sharding)) for shape, dtype, weak, sharding in avals))
        name = hashlib.sha256(repr((_code_fingerprint(), _machine(), self.key, described)).encode()).hexdigest()
        path = self.folder / f"{getattr(self.fn, '__name__', 'fn')}-{name}.jsrexec"
        index = _index(self.folder, self.key)
        preloaded = _preloaded.pop(path, None)
        try:
            compiled = preloaded.result() if preloaded is not None else _load(path)
            index.add(path.name)
            return compiled, True
        except Exception:  # noqa: BLE001 - absent, partial or from another build: compile it again
            pass
        try:
            # compiled for shapes, not arrays: under jax 0.12.1 a concrete array's layout reaches custom-VJP type
            # checks, which then fail
            abstract = [
                jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, weak_type=weak)
                for shape, dtype, weak, sharding in avals
            ]
            compiled, fresh = _compile_fresh(self.jitted, jax.tree.unflatten(treedef, abstract))
        except Exception:  # noqa: BLE001 - not compilable ahead of the call: the plain jit raises it if it is real
            return None, False
        if not fresh:
            return compiled, False
        try:
            # the devices it runs on (an executable for one device must not be loaded onto all of them)
            device_ids = [d.id for d in compiled._executable._unloaded_executable.device_list]
            data = pickle.dumps((device_ids, serialize_executable.serialize(compiled)))
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic.write_file(path, lambda f: f.write(data))
            index.add(path.name)
            _bound(self.folder, jax.config.jax_compilation_cache_max_size, keep=path)
        except Exception:  # noqa: BLE001 - not serialisable (host callbacks; jax internals moved) or a read-only
            # cache: that only costs the compilation next time
            pass
        return compiled, False


_preloaded: dict[Path, concurrent.futures.Future] = {}  # program file -> its executable being read (``preload``)
_indexes: dict[Path, _Index] = {}


class _Index:
    """The program files a key's processes used, in order of first use (what ``preload`` reads)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known = list(json.loads(path.read_text()))
            _used(path)
        except (OSError, ValueError, TypeError):
            self.known = []

    def names(self) -> list[str]:
        return list(self.known)

    def add(self, name: str) -> None:
        if name in self.known:
            return
        self.known.append(name)
        try:
            atomic.write_text(self.path, json.dumps(self.known))
        except OSError:
            pass  # a read-only cache: nothing is preloaded next time


def _index(folder: Path, key: str) -> _Index:
    path = folder / f"index-{hashlib.sha256(repr((_code_fingerprint(), _machine(), key)).encode()).hexdigest()}.json"
    if path not in _indexes:
        _indexes[path] = _Index(path)
    return _indexes[path]


def _load(path: Path):
    """The compiled executable in ``path`` (``_DiskCompiled._program`` wrote it), on the devices it was built for."""
    data = path.read_bytes()
    _used(path)
    device_ids, serialized = pickle.loads(data)
    by_id = {d.id: d for d in jax.devices()}
    return serialize_executable.deserialize_and_load(*serialized, execution_devices=[by_id[i] for i in device_ids])


def _used(path: Path) -> None:
    """Mark ``path`` as used now, for ``_bound``: its access time (the modification time still says when it was
    written; mount options may keep the kernel from updating the access time on a read)."""
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
    except OSError:
        pass  # a read-only cache, or removed meanwhile


def _bound(folder: Path, max_bytes: int, keep: Path) -> None:
    """Remove the least recently used files of ``folder`` (by access time, which ``_used`` sets on every read) until
    it holds at most ``max_bytes`` (-1: no bound); never ``keep`` (just written) nor another writer's staging files."""
    if max_bytes < 0:
        return
    files, total = [], 0
    for entry in os.scandir(folder):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        stat = entry.stat()
        total += stat.st_size
        if entry.path != str(keep):
            files.append((stat.st_atime_ns, stat.st_size, entry.path))
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # another process removed it first
        total -= size


_watch = {"on": False, "compiled": 0, "cache_hits": 0}
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def _count(event: str, *args, **kwargs) -> None:
    if _watch["on"]:
        if event == _BACKEND_COMPILE:
            _watch["compiled"] += 1
        elif event == "/jax/compilation_cache/cache_hits":
            _watch["cache_hits"] += 1


@functools.cache
def _watching() -> None:
    jax.monitoring.register_event_listener(_count)
    jax.monitoring.register_event_duration_secs_listener(_count)


def _compile_fresh(jitted: Callable, args) -> tuple[Any, bool]:
    """(``jitted`` compiled for ``args`` (ShapeDtypeStructs), whether XLA compiled it just now). JAX's persistent
    cache is off meanwhile: an executable that JAX loaded from it serialises without some of its kernels (XLA:CPU,
    jax 0.10 and 0.12: the copy fails when run, "Function wrapped_reverse not found"), so only fresh compilations
    may be written; one jax reused from memory, or any cache hit, is not fresh."""
    from jax.experimental.compilation_cache import compilation_cache

    _watching()
    _watch.update(on=True, compiled=0, cache_hits=0)
    was_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # it decides once per process whether it is used
    try:
        compiled = jitted.lower(*args).compile()
    finally:
        _watch["on"] = False
        jax.config.update("jax_enable_compilation_cache", was_on)
        compilation_cache.reset_cache()
    return compiled, _watch["compiled"] > 0 and _watch["cache_hits"] == 0


def _sharding(x):
    return getattr(x, "sharding", None)  # a NumPy argument has none


@functools.cache
def _machine() -> str:
    """What makes an executable of the same program differ: the devices, the backend's version, XLA's flags, the
    jax settings that change programs and (XLA compiles for the host) the CPU's instruction set."""
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        cpu = f"{platform.machine()} {platform.processor()}"
    devices = jax.devices()
    settings = {
        name: str(getattr(jax.config, name, None))
        for name in ("jax_enable_x64", "jax_default_matmul_precision", "jax_default_prng_impl",
                     "jax_threefry_partitionable")
    }  # fmt: skip
    return repr(
        (
            [(d.platform, d.device_kind, d.id) for d in devices],
            devices[0].client.platform_version,
            os.environ.get("XLA_FLAGS", ""),
            sorted(settings.items()),
            cpu,
        )
    )
