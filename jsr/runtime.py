"""What every jsr command does first, and the two facts about the process that its parts ask: whether an
on/off environment variable is on, and whether JAX has started its backends (some settings only take before)."""

from __future__ import annotations

import os
import sys

OFF_WORDS = ("", "0", "false", "no")


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to anything but empty, 0, false or no."""
    return os.environ.get(name, "").strip().lower() not in OFF_WORDS


def backend_started() -> bool:
    """Whether JAX has started its backends (they read XLA_FLAGS once, and their threads keep malloc's arenas)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def start_command(use_compile_cache: bool = True) -> None:
    """A command's first step, before JAX starts: malloc's reuse settings, then the persistent compilation cache."""
    from jsr import compile_cache, host_memory

    host_memory.configure()
    compile_cache.enable(use_compile_cache)
