"""Open whole-slide TIFFs lazily and read any window as uint8 RGB.

Two backends share one interface (:class:`SlideReader`):

* ``"tifffile"`` (:class:`TiffSlide`): tifffile parses the TIFF structure; windows are read
  through tifffile's Zarr store (``series.aszarr`` + ``zarr.open_array``), so a read decodes
  only the tiles it touches; :meth:`SlideReader.to_dask` wraps the same store in Dask.
  :meth:`SlideReader.iter_bands` streams a whole level band by band, decoding tiles with
  tifffile's own segment decoder in a thread pool (imagecodecs releases the GIL) -- the fast
  path for full passes (tissue thumbnails, full-slide scans).
* ``"rasterio"`` (:class:`RasterioSlide`): GDAL decodes; windows are
  ``rasterio.windows.Window`` reads, one dataset handle per thread; GDAL overviews are levels.

Decisions (documented here because every stage depends on them):

* **Coordinates** are ``(y, x)`` in the pixels of the requested level, ``level=0`` = full
  resolution. **Borders**: any window may cross or lie outside the slide; the part outside is
  filled with ``fill`` (default 255 = white glass) in the *output* (uint8 RGB) space. Both
  backends pad in :meth:`SlideReader.read` the same way (GDAL's boundless VRT path is not
  used: it is slower and its fill would apply to raw, unscaled samples).
* **Layouts**: chunky RGB (tiled or stripped), planar ``(3, H, W)``, leading singleton
  dimensions such as HuBMAP's ``(1, 1, 3, H, W)`` (indexed away), one page per channel (three
  same-size grey pages = R, G, B), pyramids as sub-IFDs or as series levels. Grey and
  grey+alpha are replicated to RGB, RGBA drops alpha, MINISWHITE grey is inverted.
* **Which image is the slide**: SVS -> series 0 (thumbnail / label / macro are ignored, also
  when GDAL reports them as "overviews": a level must be a consistent downsample of level 0
  in both axes). OME -> the largest series. Any other TIFF must be unambiguous: one largest
  image (or three single-channel pages of that size), and every smaller image a consistent
  downsample of it (a pyramid level); otherwise :class:`SlideError` ("cannot tell which is
  the slide"). Series named thumbnail / label / macro / overview are ignored.
* **Sample formats -> uint8**: uint8 as is; 1-bit as 0/255; other unsigned integers are
  scaled by ``255 / (2**bits - 1)``, where ``bits`` is BitsPerSample when it is below the
  container size (12-bit packed), else the bit depth that holds the largest sample of a cheap
  probe of the smallest level (the whole level if <= 2048x2048 px, else 25 windows of 256 px),
  at least 8: 12-bit data in uint16 maps 4095 -> 255, full-range 16-bit maps 65535 -> 255. The
  scale is fixed per slide at open so every window and level agrees. Float samples must lie
  in [0, 1] (probe) and are scaled by 255 (NaN -> 0); signed integers, complex, palette and
  CMYK images are rejected with :class:`SlideError`.
* **Errors** name the file and the problem: missing / empty / not a TIFF, unparsable
  structure, unsupported encoding (e.g. an unknown compression), a tile whose bytes run past
  the end of the file (checked at open from the tile offsets and byte counts), a tile that
  fails to decode (on read: the message names the tile, or the window and its tile range),
  ambiguous images, unsupported sample formats.
* Absent (sparse) tiles read as 0, as GDAL does.

Modules, one job each (the public names are re-exported here):

* :mod:`pipeline.slides.base` -- :class:`SlideReader`, the backend-independent part
  (padding, conversion, band streaming, overviews, error wrapping) and small shared helpers.
* :mod:`pipeline.slides.layout` -- which images of a file form the slide and its pyramid.
* :mod:`pipeline.slides.pixels` -- sample formats -> uint8 RGB (the per-slide scale).
* :mod:`pipeline.slides.segments` -- direct access to one TIFF page's tiles or strips.
* :mod:`pipeline.slides.tiff` -- the tifffile -> Zarr -> Dask backend (:class:`TiffSlide`).
* :mod:`pipeline.slides.gdal` -- the rasterio / GDAL backend (:class:`RasterioSlide`).
* :mod:`pipeline.slides.resolution` -- the physical pixel size from the TIFF resolution tags
  (:func:`pixel_size_um`, None when the file does not say).
* this module -- :func:`open_slide`, which picks the backend.
"""

from __future__ import annotations

import os

from pipeline.errors import ConfigError
from pipeline.slides.base import SlideReader
from pipeline.slides.gdal import RasterioSlide
from pipeline.slides.resolution import PixelSize, pixel_size_um
from pipeline.slides.tiff import TiffSlide

__all__ = ["BACKENDS", "PixelSize", "RasterioSlide", "SlideReader", "TiffSlide", "open_slide", "pixel_size_um"]

BACKENDS = ("tifffile", "rasterio")


def open_slide(path: str | os.PathLike[str], backend: str = "tifffile") -> SlideReader:
    """Open a slide lazily with ``backend`` ("tifffile" or "rasterio"); SlideError if unusable."""
    if backend == "tifffile":
        return TiffSlide(path)
    if backend == "rasterio":
        return RasterioSlide(path)
    raise ConfigError(None, f"unknown slide backend {backend!r} (use one of {', '.join(BACKENDS)})")
