"""The one exception family the CLI turns into a clean one-line message.

Every error raised on bad input names the file and the problem, e.g.
``SlideError: data/test/x.tiff: truncated tile 812``.
"""

from __future__ import annotations

from os import PathLike


class PipelineError(Exception):
    """Base class: an error a user can act on, shown without a traceback."""

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class SlideError(PipelineError):
    """A slide cannot be opened or read (not a TIFF, truncated, unsupported layout...)."""


class RLEError(PipelineError):
    """A run-length string is malformed (odd count, unsorted runs, out of bounds...)."""


class AnnotationError(PipelineError):
    """A polygon file cannot be parsed."""


class ConfigError(PipelineError):
    """The configuration is invalid."""


class DataError(PipelineError):
    """A data directory, table or store is missing something or inconsistent."""
