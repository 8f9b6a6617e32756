"""Silencing the simulators' C libraries while a command makes or plays an env.

PyBullet prints its build time on stderr when it is imported and its connection arguments
(``argv[0]=--background_color_red=...``) on stdout each time panda-gym starts a client, and
Gymnasium warns: that would bury a command's own lines, make a refusal two lines, or break
``--json``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def c_output_silenced(*fds: int, warnings_too: bool = False) -> Iterator[None]:
    """Send what is written on the file descriptors ``fds`` (1, 2), C code's output included, to
    /dev/null meanwhile; with ``warnings_too``, Python's warnings are dropped as well. Nothing the
    command itself prints meanwhile is seen either."""
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    libc = ctypes.CDLL(None)
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = {fd: os.dup(fd) for fd in fds}
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        with warnings.catch_warnings():
            if warnings_too:
                warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        libc.fflush(None)  # C's buffered output goes to /dev/null, not to the restored stream
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
