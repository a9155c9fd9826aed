"""Direct access to one TIFF page's tiles or strips (read bytes, decode, place).

The tifffile backend decodes bands with it, bypassing Zarr, and uses it to name the tile
that fails to decode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_JPEG = {6, 7, 33007, 34892}  # compressions whose decode needs JPEGTables


class _Segments:
    """Direct access to one page's tiles or strips: read their bytes, decode, place.

    Uses tifffile's own decode function (the one ``page.asarray`` uses), so JPEG tables,
    YCbCr, predictors and bit order are handled identically.
    """

    def __init__(self, page: Any, fh: Any) -> None:
        kf = page.keyframe
        self.page = page
        self.fh = fh
        self.decode = kf.decode
        self.kwargs: dict[str, Any] = {}
        if kf.compression in _JPEG:
            self.kwargs = {"jpegtables": page.jpegtables, "jpegheader": kf.jpegheader}
        self.tiled = bool(kf.is_tiled)
        self.H, self.W = int(kf.imagelength), int(kf.imagewidth)
        self.seg_h = int(kf.tilelength) if self.tiled else min(int(kf.rowsperstrip), self.H)
        self.seg_w = int(kf.tilewidth) if self.tiled else self.W
        self.seg_h = max(1, self.seg_h)
        self.rows = -(-self.H // self.seg_h)
        self.cols = -(-self.W // self.seg_w)
        spp = int(kf.samplesperpixel)
        self.planes = spp if kf.planarconfig == 2 else 1
        self.contig = 1 if kf.planarconfig == 2 else spp
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts
        self.kind = "tile" if self.tiled else "strip"

    @property
    def channels(self) -> int:
        return self.planes * self.contig

    def indices(self, y0: int, h: int, x0: int, w: int) -> list[int]:
        r0, r1 = y0 // self.seg_h, min(self.rows, -(-(y0 + h) // self.seg_h))
        c0, c1 = x0 // self.seg_w, min(self.cols, -(-(x0 + w) // self.seg_w))
        per_plane = self.rows * self.cols
        return [
            p * per_plane + r * self.cols + c
            for p in range(self.planes)
            for r in range(r0, r1)
            for c in range(c0, c1)
        ]

    def describe(self, index: int) -> str:
        per_plane = self.rows * self.cols
        p, rest = divmod(index, per_plane)
        r, c = divmod(rest, self.cols)
        plane = f", plane {p}" if self.planes > 1 else ""
        return f"{self.kind} {index} (row {r}, col {c}{plane}) of page {self.page.index}"

    def read(self, indices: list[int]) -> list[tuple[bytes | None, int]]:
        return list(
            self.fh.read_segments(
                [self.offsets[i] for i in indices],
                [self.counts[i] for i in indices],
                indices=indices,
                sort=True,
                lock=self.fh.lock,
                flat=True,
            )
        )

    def place(
        self, out: np.ndarray, y0: int, x0: int, chan0: int, data: bytes | None, index: int
    ) -> None:
        """Decode one segment and copy its part inside ``out`` (rows y0.., cols x0..)."""
        seg, (s, _d, ty, tx, _), _shape = self.decode(data, index, **self.kwargs)
        if seg is None:
            return
        h, w = out.shape[:2]
        ya, yb = max(ty, y0), min(ty + seg.shape[1], y0 + h, self.H)
        xa, xb = max(tx, x0), min(tx + seg.shape[2], x0 + w, self.W)
        if ya >= yb or xa >= xb:
            return
        c = chan0 + s
        out[ya - y0 : yb - y0, xa - x0 : xb - x0, c : c + seg.shape[3]] = seg[
            0, ya - ty : yb - ty, xa - tx : xb - tx, :
        ]
