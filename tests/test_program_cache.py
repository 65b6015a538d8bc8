"""jsr.program_cache on its own, in fresh processes (the cache is process-wide JAX configuration): a compiled program
is written once and read back (same results, file untouched), any pytree round-trips, and what it must not serve
(a module defined outside jsr, Python scalars, the compilation cache off) falls back to a plain jit."""

import json
import os
import subprocess
import sys

import flax.linen as nn

SCRIPT = r"""
import collections, json, sys
import jax, jax.numpy as jnp
import flax.linen as nn
from jsr import compile_cache, program_cache

compile_cache.enable(sys.argv[1] == "on")
Pair = collections.namedtuple("Pair", "a b")

def step(state, x, scale):
    return Pair(a=state.a * scale + x.sum(), b={"n": state.b["n"] + 1}), {"mean": x.mean()}

class Outside(nn.Module):  # a plug-in's module: defined outside the jsr package
    pass
Outside.__module__ = "my_plugin"

state = Pair(a=jnp.arange(3.0), b={"n": jnp.int32(0)})
x = jnp.linspace(0, 1, 6).reshape(2, 3)
fast = program_cache.jit(step, "key-1", donate_argnums=0)
out, metrics = fast(state, x, jnp.float32(2.0))
out, metrics = fast(out, x, jnp.float32(2.0))
scalar = program_cache.jit(step, "key-1")(Pair(a=jnp.arange(3.0), b={"n": 0}), x, 2.0)  # Python scalars in the tree
plugin = program_cache.jit(step, "key-1", modules=(Outside(),))
print(json.dumps({
    "a": out.a.tolist(), "n": int(out.b["n"]), "mean": float(metrics["mean"]), "type": type(out).__name__,
    "scalar_n": int(scalar[0].b["n"]), "plugin_is_plain_jit": not isinstance(plugin, program_cache._DiskCompiled),
    "disk": program_cache.folder_in_use() is not None,
}))
"""


def cache_env(cache_home):
    """This process's environment with jsr's default cache under ``cache_home``: none of the suite's or the user's
    cache settings (folder, off switch, size bound) carried into the subprocess."""
    drop = ("JSR_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"XDG_CACHE_HOME": str(cache_home)}


def run(cache_home, mode="on"):
    env = cache_env(cache_home)
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_written_once_read_back_and_fallbacks(tmp_path):
    programs_dir = tmp_path / "jsr" / "xla" / "programs"
    first = run(tmp_path)
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in programs_dir.iterdir()}
    programs = [name for name in files if name.endswith(".jsrexec")]
    assert len(programs) == 1 and programs[0].startswith("step-")  # the scalar and plug-in calls wrote nothing
    expected = {"a": [9.0, 13.0, 17.0], "n": 2, "mean": 0.5, "type": "Pair"}  # a = [0, 1, 2], twice a * 2 + sum(x) = 3
    assert {k: first[k] for k in expected} == expected
    assert first["scalar_n"] == 1 and first["plugin_is_plain_jit"] and first["disk"]

    assert run(tmp_path) == first
    # read, not rewritten
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in programs_dir.iterdir()} == files

    off = run(tmp_path / "off", "off")
    assert not off["disk"] and {k: off[k] for k in expected} == expected
    assert not (tmp_path / "off" / "jsr").exists()


def test_module_outside_jsr_is_recognised():
    class Local(nn.Module):
        pass

    from jsr import program_cache
    from jsr.models.srresnet import Generator

    assert program_cache._in_jsr(Generator()) and not program_cache._in_jsr(Local())


KERNELS = r"""
import json, sys
import jax, jax.numpy as jnp
from jsr import compile_cache, program_cache

compile_cache.enable(True)

def kernels(x):  # reverse and reduce-window: kernels that a copy of a cache-loaded executable lost
    return jnp.flip(jnp.sin(x), axis=1).sum(0) + jnp.cumsum(x, 0)[::-1].sum(0)

x = jnp.arange(12.0).reshape(3, 4)
fn = jax.jit(kernels) if sys.argv[1] == "plain" else program_cache.jit(kernels, "key-1")
print(json.dumps(fn(x).tolist()))
"""


def test_program_in_jax_cache_is_written_from_a_fresh_compilation(tmp_path):
    """JAX's cache already holds the program (an older jsr wrote it) when jsr's file is first written: the file must
    come from a compilation of its own, else the executable read back fails when run."""
    env = cache_env(tmp_path)

    def run_kernels(mode):
        cmd = [sys.executable, "-c", KERNELS, mode]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    import numpy as np

    x = np.arange(12.0).reshape(3, 4)
    expected = (np.flip(np.sin(x), axis=1).sum(0) + np.cumsum(x, 0)[::-1].sum(0)).tolist()
    assert np.allclose(run_kernels("plain"), expected, rtol=1e-6)
    programs_dir = tmp_path / "jsr" / "xla" / "programs"
    assert not programs_dir.exists()
    assert np.allclose(run_kernels("disk"), expected, rtol=1e-6)  # compiled, written
    (written,) = programs_dir.glob("*.jsrexec")
    stamp = (written.stat().st_ino, written.stat().st_mtime_ns)
    assert np.allclose(run_kernels("disk"), expected, rtol=1e-6)  # read back and run
    assert (written.stat().st_ino, written.stat().st_mtime_ns) == stamp


PRELOAD = r"""
import json, sys, threading
import jax, jax.numpy as jnp
from jsr import compile_cache, program_cache

compile_cache.enable(True)
readers = []
load = program_cache._load
program_cache._load = lambda path: readers.append(threading.current_thread().name) or load(path)

def double(x):
    return x * 2

program_cache.preload("key-1")
out = program_cache.jit(double, "key-1")(jnp.arange(3.0))
print(json.dumps({"out": out.tolist(), "readers": readers}))
"""


def test_preload_reads_the_last_run_s_programs_in_the_background(tmp_path):
    env = cache_env(tmp_path)

    def run_preload():
        done = subprocess.run([sys.executable, "-c", PRELOAD], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    # nothing listed yet: looked for on the main thread, compiled, written
    assert run_preload()["out"] == [0.0, 2.0, 4.0]
    (index,) = (tmp_path / "jsr" / "xla" / "programs").glob("index-*.json")
    assert [name.split("-")[0] for name in json.loads(index.read_text())] == ["double"]
    second = run_preload()
    assert second["out"] == [0.0, 2.0, 4.0] and [r.split("_")[0] for r in second["readers"]] == ["jsr-preload"]
    index.write_text("{damaged")  # an unreadable index preloads nothing, and is written again
    assert run_preload() == {"out": [0.0, 2.0, 4.0], "readers": ["MainThread"]}
    assert len(json.loads(index.read_text())) == 1


BOUNDED = r"""
import json, sys
import jax, jax.numpy as jnp
from jsr import compile_cache, program_cache

compile_cache.enable(True)
for power in map(int, sys.argv[1:]):
    def affine(x):  # a plain jit: JAX's own cache entry
        return x * power + 1

    def raise_to(x):  # jsr's program file, one per key
        return x**power

    jax.jit(affine)(jnp.arange(3.0))
    program_cache.jit(raise_to, f"power-{power}")(jnp.arange(3.0))
print(json.dumps({"max_size": jax.config.jax_compilation_cache_max_size}))
"""


def test_cache_is_bounded_least_recently_used_first(tmp_path):
    """JAX's entries and jsr's programs/ stay within JAX_COMPILATION_CACHE_MAX_SIZE (default 2 GiB), the least
    recently used program going first; a cache filled while unbounded is bounded without breaking JAX's writes
    (jax 0.10 failed every write on an entry that lacks its last-use stamp)."""
    xla_dir = tmp_path / "jsr" / "xla"
    programs_dir = xla_dir / "programs"

    def run_bounded(powers, max_size=None):
        env = cache_env(tmp_path)
        if max_size is not None:
            env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(max_size)
        cmd = [sys.executable, "-W", "always", "-c", BOUNDED, *map(str, powers)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Error writing persistent compilation cache entry" not in done.stderr, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def folder_bytes(folder, pattern):
        return sum(p.stat().st_size for p in folder.glob(pattern))

    assert run_bounded([2, 3, 4], max_size=-1) == {"max_size": -1}
    assert not list(xla_dir.glob("*-atime"))  # unbounded: JAX keeps no last-use stamps
    # each key's index lists its one program; the indexes were written in the order 2, 3, 4
    indexes = sorted(programs_dir.glob("index-*.json"), key=lambda p: p.stat().st_mtime_ns)
    program_of = {power: json.loads(index.read_text())[0] for power, index in zip((2, 3, 4), indexes, strict=True)}
    smallest = min((programs_dir / name).stat().st_size for name in program_of.values())
    assert run_bounded([2]) == {"max_size": 2 * 2**30}  # the default bound; power 2's program is used again
    # room for what is there now and half a program: the next program pushes out one, the least recently used (3)
    bound = folder_bytes(programs_dir, "*") + smallest // 2
    before = {p.name for p in programs_dir.glob("*.jsrexec")}
    assert run_bounded([5], max_size=bound) == {"max_size": bound}
    after = {p.name for p in programs_dir.glob("*.jsrexec")}
    assert before - after == {program_of[3]} and len(after - before) == 1
    assert folder_bytes(programs_dir, "*") <= bound
    # JAX's part: every entry stamped (those of the unbounded run too) and within the bound
    entries = {p.name.removesuffix("-cache") for p in xla_dir.glob("*-cache")}
    assert entries and entries == {p.name.removesuffix("-atime") for p in xla_dir.glob("*-atime")}
    assert folder_bytes(xla_dir, "*-cache") <= bound
