"""How the pipeline's Zarr stores lie on disk.

Chunk keys are flat, one file per chunk in the array's folder (``images/c.17.0.0.0``), not
one folder per index (``images/c/17/0/0/0``, Zarr's default): the local store creates the
parent folders of every chunk it writes, which cost tile extraction about a third of its
store-writing CPU on a local disk, and costs more on a cluster's network file system. Both
are the Zarr v3 ``default`` chunk-key encoding; any Zarr v3 reader opens either.

Probability maps are compressed with zstd at level 1, not Zarr's default level 3: on a map of
a 30000 x 37000 slide that takes the store writes from 2.3 to 1.55 CPU-s (the writes were the
largest cost of prediction's data path left) for 7 % more disk.
"""

from __future__ import annotations

from typing import Any

from zarr.codecs import ZstdCodec

#: ``chunk_key_encoding`` of every array the pipeline writes.
CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}

#: ``compressors`` of the float16 probability maps (prediction and out-of-fold stores).
MAP_COMPRESSORS = (ZstdCodec(level=1),)

__all__ = ["CHUNK_KEYS", "MAP_COMPRESSORS"]
