"""glibc's malloc keeps freed memory for reuse in every jsr command (Linux): one arena, no mmap, no trimming.

XLA:CPU allocates an execution's buffers afresh each time. Under glibc's defaults the large ones are mmap'd and
unmapped again (or trimmed off a thread's arena), so every train step or upscale faults its buffers in as fresh
zeroed pages: SRResNet's CPU train step touched ~530 MB of new pages per step, a 128 px upscale ~250 MB, at ~2.6 us
a page on a VM. With freed memory kept, the next execution reuses the same pages (figures: README, Performance).
The price: the process keeps its peak host memory until it exits (train_mse: peak RSS 1.2 -> 1.7 GB).

``mallopt`` must run before JAX starts its threads (a thread keeps the arena it was given), so the commands call
``configure`` first thing; later it changes nothing. Off: ``JSR_SYSTEM_MALLOC=1``. Malloc settings the user made
stand: ``GLIBC_TUNABLES``'s malloc tunables, ``MALLOC_*_`` variables, anything in ``LD_PRELOAD`` (it may be an
allocator).
"""

from __future__ import annotations

import ctypes
import os

from jsr.runtime import backend_started, env_flag

DISABLE_ENV = "JSR_SYSTEM_MALLOC"
# (glibc tunable, mallopt parameter from malloc.h, value)
SETTINGS = (("arena_max", -8, 1), ("mmap_max", -4, 0), ("trim_threshold", -1, 2**31 - 1))
# the same settings for a process started from outside (e.g. the PyTorch side of benchmarks/run.py)
TUNABLES = ":".join(f"glibc.malloc.{name}={value}" for name, _, value in SETTINGS)
USER_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def user_chose() -> bool:
    """Whether the environment already decides malloc's behaviour (or asks for glibc's defaults)."""
    env = os.environ
    return (
        env_flag(DISABLE_ENV)
        or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
        or any(name in env for name in USER_ENV)
        or bool(env.get("LD_PRELOAD", "").strip())
    )


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a glibc system
        return False


def configure() -> bool:
    """Keep freed memory for reuse, if this is glibc, the user decided nothing and JAX has not started; returns
    whether the settings were made."""
    if not _glibc() or user_chose() or backend_started():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for _, param, value in SETTINGS)
