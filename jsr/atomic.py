"""Files and directories that appear whole or not at all, with the permissions the user's umask asks for.

Everything is first written under a hidden staging name in the target's own folder (same file system, so the final
rename is atomic), named ``.NAME.partial-PID-XXXX``: a later run can tell a crashed writer's leftovers (PID gone)
from a live writer's and remove only those. A directory replaces another by one atomic exchange where the kernel
offers it (Linux renameat2), else by renaming the old one aside first; a crash in between is healed on the next
write or read (``heal``), never by deleting the old version before the new one is in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

PARTIAL = "partial"
PREVIOUS = "old"


def fault_point(where: str) -> None:
    """Called between the steps of a directory swap; tests replace it to simulate a kill at each step."""


def current_umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the only portable read is a write (not thread-safe; a fallback only)
    os.umask(mask)
    return mask


def _staging_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def write_file(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a staging file, which is renamed over ``path`` when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _leftovers(path, PARTIAL):  # killed writers' copies of this very file
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(path, PARTIAL), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_file(path, lambda f: f.write(text.encode("utf-8")))


def staging_dir(target: str | os.PathLike) -> Path:
    """A new empty directory beside ``target`` to build its next version in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target, PARTIAL), dir=target.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700 whatever the umask
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Put the complete directory ``staging`` at ``target``; the old ``target`` (if any) goes only once it has."""
    if target.exists() and _exchange(staging, target):
        fault_point("exchanged")
        shutil.rmtree(staging)  # now the old version
        return
    if target.exists() and any(target.iterdir()):
        aside = Path(tempfile.mkdtemp(prefix=_staging_prefix(target, PREVIOUS), dir=target.parent))
        os.replace(target, aside)  # over the empty placeholder
        fault_point("aside")
        os.replace(staging, target)
        fault_point("replaced")
        shutil.rmtree(aside)
        return
    os.replace(staging, target)  # absent or empty: a plain rename


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[Path]:
    """Staging paths of ``kind`` for ``target`` whose writing process is gone."""
    found = []
    for path in target.parent.glob(f".{target.name}.{kind}-*"):
        pid = path.name[len(f".{target.name}.{kind}-") :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            found.append(path)
    return found


def heal(target: str | os.PathLike) -> list[str]:
    """Finish what a killed writer of ``target`` left: put a set-aside old version back if ``target`` is gone, and
    remove dead writers' staging copies. Returns what was done, one sentence each."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    done = []
    previous = sorted(_leftovers(target, PREVIOUS), key=lambda p: p.stat().st_mtime)
    if previous and not target.exists():
        os.replace(previous.pop(), target)
        done.append(f"restored {target} from the copy an interrupted replacement had set aside")
    for path in previous + _leftovers(target, PARTIAL):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(f"removed {path.name}, left by an interrupted write")
    return done
