"""Atomic outputs: write under a temporary name, rename when complete.

A killed job then leaves no half-written file that Snakemake or a user would take
for a result. Works for plain files and for directories (Zarr stores). The temporary
is named ``.{name}.{pid}@{host}.partial`` so that a later run can tell a killed
job's leftovers from a live job's work (:func:`remove_stale_partials`).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# .{name}.{pid}@{host}.partial (and .{name}.{pid}.partial, written before the host was added)
PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[^/]+))?\.partial$")
# a temporary from another host cannot be checked for a live writer: stale once untouched this long
REMOTE_STALE_HOURS = 48.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def partial_name(name: str) -> str:
    """The temporary name of ``name`` for this process: ``.{name}.{pid}@{host}.partial``."""
    return f".{name}.{os.getpid()}@{socket.gethostname()}.partial"


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path of ``target``; rename it onto ``target`` on success.

    The temporary name starts with a dot and ends in ``.partial`` so it is never
    mistaken for a result. On any exception the temporary is removed and the
    exception propagates; an existing ``target`` is replaced only on success.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(partial_name(target.name))
    _remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: nothing was written for {target}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_csv_atomic(
    target: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Write a CSV table (header + rows, "\\n" line ends) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has ended: it writes nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return not _ended_unreaped(pid)


def _ended_unreaped(pid: int) -> bool:
    """Whether ``pid`` is a zombie: ended, its exit status not yet collected.

    A killed job whose parent died too is collected by PID 1; in a container whose PID 1
    does not collect them (a plain process, not an init), it stays a zombie and its
    temporaries would never count as stale. Linux only (``/proc``); elsewhere False.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat[stat.rfind(")") + 1 :].split()[:1]  # the command name, in (), may hold spaces
    return state in (["Z"], ["X"])


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, _, files in os.walk(path):
            for name in files:
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except FileNotFoundError:
                    pass
    return newest


def is_stale_partial(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is an atomic write's temporary whose writer is gone.

    Written on this host: its process no longer exists (a reused pid keeps it, the safe
    side). Written elsewhere (or by an older version that did not record the host): the
    writer cannot be asked, so untouched for :data:`REMOTE_STALE_HOURS`.
    """
    match = PARTIAL.match(path.name)
    if match is None:
        return False
    if match["host"] == socket.gethostname():
        return not _pid_alive(int(match["pid"]))
    age_hours = ((time.time() if now is None else now) - _newest_mtime(path)) / 3600.0
    return age_hours >= REMOTE_STALE_HOURS


def remove_stale_partials(root: str | os.PathLike[str]) -> list[Path]:
    """Remove the stale temporaries (:func:`is_stale_partial`) under ``root``; returns them.

    Run it only while no other run writes into ``root`` (under the run lock): a live
    job's temporary is kept anyway. Does not descend into Zarr stores or temporaries.
    """
    removed: list[Path] = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in [*dirs, *files]:
            path = here / name
            if PARTIAL.match(name) and is_stale_partial(path):
                _remove(path)
                removed.append(path)
        dirs[:] = [d for d in dirs if not d.endswith((".zarr", ".partial")) and (here / d).exists()]
    return sorted(removed)
