"""One workflow run at a time per results directory: a lock file held for the whole run.

Snakemake's own lock lives in the working directory (``.snakemake/``): two checkouts
pointed at the same ``results_dir`` run the same jobs into it at once, and a killed
run leaves a lock that stops every later run until ``--unlock``. This lock lives in
``results_dir`` itself and is an ``flock`` on ``results_dir/.pipeline.lock``: the
kernel drops it when its process dies, however it dies, so a killed run's lock is
never mistaken for a live one and is simply taken over (and reported). The file
names its holder (pid, host, start, working directory, command) for the message a
refused run prints. On NFS, ``flock`` works across hosts where the mount supports
locks (NFSv4, or NFSv3 with lockd).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import PipelineError

LOCK_NAME = ".pipeline.lock"


class RunLockError(PipelineError):
    """Another live run holds the results directory."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as written into the lock file."""

    pid: int
    host: str
    started: str
    cwd: str
    command: str

    @classmethod
    def me(cls) -> Holder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            cwd=os.getcwd(),
            command=" ".join(sys.argv),
        )

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started} in {self.cwd} ({self.command})"


def _read_holder(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode() or "null")
        return Holder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class RunLock:
    """``acquire()`` at the start of a run, ``release()`` at its end (also at interpreter exit)."""

    def __init__(self, results_dir: str | os.PathLike[str]) -> None:
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Holder | None:
        """Take the lock; returns the holder of a lock left by a dead run (taken over), else None.

        Raises :class:`RunLockError` naming the results directory and the holder when a
        live run holds it. Calling it again while held does nothing.
        """
        if self._fd is not None:
            return None
        self.results_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the jobs
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise RunLockError(
                        self.results_dir,
                        f"another run is using this results directory: {holder or 'holder unknown'}; "
                        f"this run stops here (lock file {self.path})",
                    ) from None
                raise PipelineError(self.path, f"cannot lock the results directory: {err.strerror}") from None
            # a releasing run unlinks the file: make sure the file we locked is still the lock file
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        previous = _read_holder(fd)
        payload = json.dumps(asdict(Holder.me())).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, payload, 0)
        os.fsync(fd)
        self._fd = fd
        atexit.register(self.release)
        return previous

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
