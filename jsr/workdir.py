"""A training workdir's exclusive lock and the cleanup of what killed runs left in it."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import IO

from jsr import atomic
from jsr.errors import UserError

LOCK_FILE = ".lock"


class WorkdirBusy(UserError):
    """Another process is training in this workdir."""


def lock(workdir: Path) -> IO[str]:
    """Hold ``workdir`` for this process until the returned file is closed (the OS releases it on any exit, kill -9
    included, so a stale lock cannot exist)."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / LOCK_FILE, "a+")  # held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise WorkdirBusy(
            f"{workdir} is in use by another training run (PID {holder}); wait for it to finish or stop it, "
            "or choose another --workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def clean_leftovers(workdir: Path, checkpoint_dir: Path, model_dirs: list[Path]) -> list[str]:
    """Remove killed runs' unfinished checkpoint and model copies. Only call while holding the lock: then nobody else
    can be writing them."""
    done = []
    for tmp in sorted(checkpoint_dir.glob("*.orbax-checkpoint-tmp*")) if checkpoint_dir.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        done.append(f"removed {tmp.name}, an unfinished checkpoint of an interrupted run")
    for model_dir in model_dirs:
        done += atomic.heal(model_dir)
    return done
