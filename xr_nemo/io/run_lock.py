"""One writer per run directory: an exclusive lock that the launch writing it holds for its whole life.

The lock is a POSIX record lock (`fcntl.lockf`) on `<run>/run.lock`:
- the kernel drops it when the holding process ends, however it ends, so a crash or `kill -9` leaves
  no lock behind; processes forked from the holder (data loader workers, checkpoint writers) do not
  inherit it, so none of them keeps it alive after the holder is gone;
- Linux NFS clients hand such locks to the server (NFSv4, or NFSv3 with lockd), so a holder on another
  node is seen too; the lock of a node that died lapses when the server's lease for it expires.
The file also records who holds it (host, pid, start time) for the message a second launch gets, and is
emptied when the holder releases it, so a record found on taking the lock was left by a process that
ended without releasing it (a crash), and is reported as taken over.

Where the file system refuses locks (ENOLCK: NFSv3 without lockd), the record is all there is: a holder
on this host that no longer runs is taken over; one on another host cannot be checked, so the launch is
refused with the record and the way to clear it.

A POSIX lock is dropped when its process closes any descriptor of the file: this module is the only
code that opens it, once per process and run directory, and reads the record through that descriptor.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from xr_nemo.errors import XrNemoError

LOCK_FILE = "run.lock"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}
_held: dict[Path, tuple[int, int]] = {}  # lock file → (descriptor, pid of the process that took it)


class RunDirBusy(XrNemoError):
    """Another process is writing the run directory."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str  # ISO 8601, local time with offset

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.since})"

    @staticmethod
    def this_process() -> Holder:
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        return Holder(socket.gethostname(), os.getpid(), since)


def lock_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_FILE


def lock_run_dir(run_dir: str | Path, say: Callable[[str], None]) -> Path:
    """Take the run directory's lock for this process, for as long as it runs (or until
    `release_run_dir`); taking it again in the same process does nothing. A lock another live process
    holds is a `RunDirBusy` naming it; one its holder left by crashing is taken over, with a message."""
    path = lock_file(run_dir).resolve()
    if path in _held and _held[path][1] == os.getpid():
        return path
    _held.pop(path, None)  # inherited by a fork: the parent's lock, not this process's
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise XrNemoError(
            f"cannot create the run directory's lock file {path}: {exc.strerror}",
            where="run.dir",
            fix="choose a run.dir on a writable file system",
        ) from exc
    try:
        previous = _take(descriptor, path)
        _write_record(descriptor, Holder.this_process())
    except BaseException:
        os.close(descriptor)
        raise
    _held[path] = (descriptor, os.getpid())
    if previous is not None and (previous.host, previous.pid) != (socket.gethostname(), os.getpid()):
        say(
            f"taking over the lock of {path.parent}: its last holder ({previous.describe()}) ended "
            "without releasing it"
        )
    return path


def _take(descriptor: int, path: Path) -> Holder | None:
    """Lock `descriptor` or raise `RunDirBusy`; the record found in the file (a crashed holder's)."""
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            _refuse(path, _read_record(descriptor))
        if exc.errno not in _NO_LOCKS:
            raise XrNemoError(
                f"cannot lock {path}: {exc.strerror}", where="run.dir", fix="choose a run.dir on a local disk"
            ) from exc
        return _take_without_locks(descriptor, path)
    return _read_record(descriptor)


def _take_without_locks(descriptor: int, path: Path) -> Holder | None:
    """The file system has no locks: judge by the record alone."""
    holder = _read_record(descriptor)
    if holder is None or (holder.pid, holder.host) == (os.getpid(), socket.gethostname()):
        return holder
    if holder.host != socket.gethostname():
        _refuse(path, holder, checked=False)
    if _alive(holder.pid):
        _refuse(path, holder)
    return holder


def _refuse(path: Path, holder: Holder | None, checked: bool = True) -> None:
    who = holder.describe() if holder else "another process (it has not written its name yet)"
    stop = f"stop it (`kill {holder.pid}` on {holder.host})" if holder else "stop it"
    fix = f"wait for that run to end, or {stop}, or choose another run.dir"
    if not checked:
        fix += f"; if that process is gone, delete {path}"
    raise RunDirBusy(
        f"{path.parent} is being written by another launch: {who} holds its lock"
        + ("" if checked else " (this file system has no locks, so whether it still runs cannot be checked)"),
        where=f"run.dir ({path})",
        fix=fix,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_record(descriptor: int) -> Holder | None:
    text = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        fields = json.loads(text)
        return Holder(str(fields["host"]), int(fields["pid"]), str(fields["since"]))
    except (ValueError, KeyError, TypeError):
        return Holder("unknown", -1, "unknown")


def _write_record(descriptor: int, holder: Holder) -> None:
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(asdict(holder)) + "\n").encode(), 0)
    os.fsync(descriptor)


def release_run_dir(run_dir: str | Path) -> None:
    """Empty the record and drop the lock (done for every held lock when the process exits)."""
    descriptor, pid = _held.pop(lock_file(run_dir).resolve(), (None, None))
    if descriptor is None or pid != os.getpid():  # a forked child: the lock is its parent's
        return
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
    os.close(descriptor)


@atexit.register
def _release_all() -> None:
    for path in list(_held):
        release_run_dir(path.parent)
