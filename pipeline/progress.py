"""Logging and progress bars that suit both a terminal and a cluster log file.

On a terminal long loops show a tqdm bar; otherwise (Snakemake log files, SLURM)
they log a plain line every ~10 % so logs stay readable.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """A module logger; the CLI configures the root handler once."""
    return logging.getLogger(name)


def configure_logging(level: int = logging.INFO) -> None:
    """Log plain lines to stderr (which Snakemake redirects into the rule's log)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    logger: logging.Logger | None = None,
) -> Iterator[T]:
    """Iterate with a tqdm bar on a terminal, or log plain progress lines otherwise."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
        return
    log = logger or logging.getLogger("pipeline.progress")
    step = max(1, (total or 0) // 10)
    done = 0
    for item in iterable:
        yield item
        done += 1
        if total and (done % step == 0 or done == total):
            log.info("%s: %d/%d (%.0f%%)", desc, done, total, 100.0 * done / total)
    if not total:
        log.info("%s: %d done", desc, done)
