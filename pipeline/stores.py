"""How the pipeline's Zarr stores lie on disk.

Chunk keys are flat, one file per chunk in the array's folder (``images/c.17.0.0.0``), not
one folder per index (``images/c/17/0/0/0``, Zarr's default): the local store creates the
parent folders of every chunk it writes, which cost tile extraction about a third of its
store-writing CPU on a local disk, and costs more on a cluster's network file system. Both
are the Zarr v3 ``default`` chunk-key encoding; any Zarr v3 reader opens either.
"""

from __future__ import annotations

from typing import Any

#: ``chunk_key_encoding`` of every array the pipeline writes.
CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}

__all__ = ["CHUNK_KEYS"]
