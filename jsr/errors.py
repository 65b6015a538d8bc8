"""The one exit-code rule of every jsr command: 2 = usage or bad input, 1 = the run itself failed, 0 = done.

Library code raises ``UserError`` subclasses (bad input: the message names the file, key or field and says what
to do) or ``RunFailure`` subclasses (the input was fine, the run could not finish). ``run_cli`` turns them, and
operating-system errors such as a read-only or full output, into one line on stderr and the exit code; only a bug
prints a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

USAGE = 2
FAILURE = 1


class UserError(Exception):
    """Bad input or usage (exit code 2); the message is the whole story, shown without a traceback."""


class RunFailure(Exception):
    """The run could not finish although its input was valid (exit code 1)."""


_OS_ADVICE = {
    errno.EACCES: "choose a writable location or fix its permissions",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free some space and run again",
    errno.EDQUOT: "the disk quota is exceeded; free some space and run again",
    errno.EEXIST: "something is in the way; move it or choose another location",
    errno.ENOTDIR: "a file is in the way where a folder is needed; move it or choose another location",
    errno.EISDIR: "a folder is in the way where a file is needed; move it or choose another location",
}


def describe_os_error(e: OSError) -> str:
    """One line: which path, what the system said, what to do."""
    if e.strerror is None and e.filename is None:  # raised with a message only
        return " ".join(str(e).split()) or type(e).__name__
    where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None) or "(unnamed path)"
    reason = e.strerror or os.strerror(e.errno or 0) or type(e).__name__
    advice = _OS_ADVICE.get(e.errno or 0)
    return f"{where}: {reason}" + (f"; {advice}" if advice else "")


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a command's body; returns its exit code, printing one ``error: ...`` line for expected failures."""
    try:
        return int(main() or 0)
    except RunFailure as e:  # first: a failure kind may refine a user-error kind
        print(f"error: {e}", file=sys.stderr)
        return FAILURE
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
