"""JAX's persistent compilation cache, on by default for every jsr command: a second run loads its compiled
programs from disk instead of compiling them again.

Where: ``JAX_COMPILATION_CACHE_DIR`` if the user set it, else ``$XDG_CACHE_HOME/jsr/xla`` (``~/.cache/jsr/xla``).
JAX keys every entry by the program, the jax/jaxlib version, the backend and the compile options, so one folder is
safe across jax versions and machines (an entry of another version is never loaded). Off: ``--no-compile-cache``
or ``JSR_NO_COMPILE_CACHE=1``. A cache folder that cannot be created is a one-line warning, never an error.
Bounded: JAX evicts its least recently used entries past ``JAX_COMPILATION_CACHE_MAX_SIZE`` bytes (default here
``DEFAULT_MAX_BYTES``; -1: unbounded), and ``jsr.program_cache`` keeps its ``programs/`` within the same figure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jsr.runtime import env_flag

DISABLE_ENV = "JSR_NO_COMPILE_CACHE"
MIN_COMPILE_SECONDS = 0.0  # JAX's default 1 s skips the small programs that add up to seconds at every start
DEFAULT_MAX_BYTES = 2 * 2**30  # JAX's default is no bound: the cache grew with every jsr / jax upgrade
MAX_SIZE_ENV = "JAX_COMPILATION_CACHE_MAX_SIZE"  # JAX's own setting, in bytes


def default_dir() -> Path:
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jsr" / "xla"


def disabled_by_env() -> bool:
    return env_flag(DISABLE_ENV)


def enable(use: bool = True) -> Path | None:
    """Turn the cache on (unless ``use`` is False or the environment disables it); returns its folder or None."""
    import jax

    if not use or disabled_by_env():
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as e:
        print(
            f"warning: compilation cache off ({e}); set JAX_COMPILATION_CACHE_DIR to a writable folder", file=sys.stderr
        )
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if MAX_SIZE_ENV not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
    if jax.config.jax_compilation_cache_max_size > 0:
        _stamp_unstamped_entries(folder)
    return folder


def _stamp_unstamped_entries(folder: Path) -> None:
    """Give every entry written while the cache was unbounded the last-use stamp that JAX's eviction reads: jax 0.10
    fails each later write on an entry without one ("Error writing persistent compilation cache entry"), so the
    cache would stop growing but also stop caching. The stamp is the entry's modification time."""
    try:
        names = {entry.name for entry in os.scandir(folder)}
        for name in names:
            entry = name.removesuffix("-cache")
            if entry != name and f"{entry}-atime" not in names:
                stamp = (folder / name).stat().st_mtime_ns.to_bytes(8, "little")  # JAX's format: ns, little-endian
                (folder / f"{entry}-atime").write_bytes(stamp)
    except OSError:
        pass  # another process evicted it meanwhile, or a read-only folder: JAX then copes as it can


def add_flag(parser) -> None:
    """``--no-compile-cache`` on an argparse parser."""
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help=f"do not read or write the persistent compilation cache ({DISABLE_ENV}=1 does the same)",
    )
