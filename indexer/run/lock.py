"""One writer per output folder: a lock file holding the owner's pid.

``.neuroscope.lock`` in the output folder is locked with ``flock`` for as long as a run or a
merge writes there, and holds the owner's pid and host for the message a second run gets.
The kernel drops the lock when its process dies however it dies, so a lock file left by a
killed run is stale and simply taken over (its pid is said in no message). File systems
without ``flock`` (some network mounts) fall back to the pid: a lock whose pid is no longer
alive on this host is stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import IndexDirError

LOCK = ".neuroscope.lock"


@contextlib.contextmanager
def out_dir_lock(folder: Path) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) for the ``with`` block; IndexDirError
    naming the owner if another live process holds it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise IndexDirError(f"cannot create {folder / LOCK}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                _check_pid(fd, folder)  # no flock here: trust the pid
            else:
                raise IndexDirError(f"{folder} is being written by another neuroscope run ({_owner(fd)}); "
                                    "wait for it to end or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield folder / LOCK
    finally:
        with contextlib.suppress(OSError):
            if _read(fd).split()[:1] == [str(os.getpid())]:
                os.unlink(folder / LOCK)
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 256, 0).decode(errors="replace")


def _owner(fd: int) -> str:
    parts = _read(fd).split()
    return f"pid {parts[0]} on {parts[1]}" if len(parts) >= 2 else "pid unknown"


def _check_pid(fd: int, folder: Path) -> None:
    parts = _read(fd).split()
    if len(parts) < 2 or parts[1] != socket.gethostname() or not parts[0].isdigit():
        return
    pid = int(parts[0])
    if pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # stale
    except PermissionError:
        pass
    raise IndexDirError(f"{folder} is being written by another neuroscope run ({_owner(fd)}); "
                        "wait for it to end or use another --out")
