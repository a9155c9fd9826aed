"""pipeline.slides on small TIFFs written here in every layout scanners / HuBMAP produce.

Images are 700 x 900 with 256 px tiles, so windows cross tiles and the last tile row and
column are partial. Each layout is read with both backends and compared with the array that
was written (exactly for lossless codecs, closely for JPEG).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile

from pipeline.errors import ConfigError, SlideError
from pipeline.slides import open_slide

H, W, T = 700, 900, 256
BACKENDS = ["tifffile", "rasterio"]


def make_rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a checker pattern and mild noise: compressible but not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy * 230 // h, xx * 230 // w, ((yy // 37 + xx // 53) % 2) * 120 + 60], axis=-1)
    img = img + rng.integers(0, 24, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


IMG = make_rgb()
GREY = IMG[..., 1].copy()


def rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


# --- writers: each writes one layout and returns the expected uint8 RGB image ------------
def w_tiled_deflate(p: Path) -> np.ndarray:
    tifffile.imwrite(p, IMG, photometric="rgb", tile=(T, T), compression="zlib")
    return IMG


def w_tiled_none(p: Path) -> np.ndarray:
    tifffile.imwrite(p, IMG, photometric="rgb", tile=(T, T))
    return IMG


def w_strips_lzw(p: Path) -> np.ndarray:
    tifffile.imwrite(p, IMG, photometric="rgb", rowsperstrip=64, compression="lzw")
    return IMG


def w_strips_none(p: Path) -> np.ndarray:
    tifffile.imwrite(p, IMG, photometric="rgb", rowsperstrip=7)
    return IMG


def w_planar(p: Path) -> np.ndarray:
    tifffile.imwrite(
        p,
        IMG.transpose(2, 0, 1).copy(),
        photometric="rgb",
        planarconfig="separate",
        tile=(T, T),
        compression="zlib",
    )
    return IMG


def w_hubmap_11chw(p: Path) -> np.ndarray:  # (1, 1, 3, H, W) as some HuBMAP tiffs
    tifffile.imwrite(
        p,
        IMG.transpose(2, 0, 1)[None, None].copy(),
        photometric="rgb",
        tile=(T, T),
        compression="zlib",
    )
    return IMG


def w_11hwc(p: Path) -> np.ndarray:
    tifffile.imwrite(p, IMG[None, None], photometric="rgb", tile=(T, T), compression="zlib")
    return IMG


def w_channel_pages(p: Path) -> np.ndarray:  # one grey page per channel, one series
    with tifffile.TiffWriter(p) as tw:
        for c in range(3):
            tw.write(IMG[..., c], tile=(T, T), compression="zlib", metadata=None)
    return IMG


def w_channel_series(p: Path) -> np.ndarray:  # one grey page per channel, three series
    with tifffile.TiffWriter(p) as tw:
        for c in range(3):
            tw.write(IMG[..., c], tile=(T, T), compression="zlib")
    return IMG


def w_grey(p: Path) -> np.ndarray:
    tifffile.imwrite(p, GREY, tile=(T, T), compression="lzw")
    return rgb(GREY)


def w_miniswhite(p: Path) -> np.ndarray:
    tifffile.imwrite(p, GREY, photometric="miniswhite", tile=(T, T))
    return rgb(255 - GREY)


def w_bilevel(p: Path) -> np.ndarray:
    bits = GREY > 128
    tifffile.imwrite(p, bits)  # 1-bit, written as MINISWHITE: a set bit is black
    assert tifffile.TiffFile(p).pages[0].photometric == 0
    return rgb(np.where(bits, 0, 255).astype(np.uint8))


def w_rgba(p: Path) -> np.ndarray:
    alpha = np.full((H, W, 1), 200, np.uint8)
    tifffile.imwrite(
        p,
        np.concatenate([IMG, alpha], axis=2),
        photometric="rgb",
        extrasamples=["unassalpha"],
        tile=(T, T),
        compression="zlib",
    )
    return IMG


def w_uint16_full(p: Path) -> np.ndarray:  # full 16-bit range: 65535 -> 255
    tifffile.imwrite(p, IMG.astype(np.uint16) * 257, photometric="rgb", tile=(T, T))
    return IMG


def w_float01(p: Path) -> np.ndarray:
    tifffile.imwrite(p, IMG.astype(np.float32) / 255, photometric="rgb", tile=(T, T))
    return IMG


LOSSLESS: dict[str, Callable[[Path], np.ndarray]] = {
    f.__name__[2:]: f
    for f in (
        w_tiled_deflate,
        w_tiled_none,
        w_strips_lzw,
        w_strips_none,
        w_planar,
        w_hubmap_11chw,
        w_11hwc,
        w_channel_pages,
        w_channel_series,
        w_grey,
        w_miniswhite,
        w_bilevel,
        w_rgba,
        w_uint16_full,
        w_float01,
    )
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, writer in LOSSLESS.items():
        path = root / f"{name}.tif"
        out[name] = (path, writer(path))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(LOSSLESS))
def test_layout_reads_exactly(written, layout: str, backend: str) -> None:
    path, expected = written[layout]
    with open_slide(path, backend) as slide:
        assert slide.shape == (H, W)
        whole = slide.read(0, 0, H, W)
        assert whole.dtype == np.uint8 and whole.shape == (H, W, 3)
        np.testing.assert_array_equal(whole, expected)
        # a window crossing tile boundaries inside the slide
        np.testing.assert_array_equal(slide.read(200, 250, 300, 317), expected[200:500, 250:567])
        with dask.config.set(scheduler="threads", num_workers=2):
            lazy = slide.to_dask()
            assert lazy.shape == (H, W, 3) and lazy.dtype == np.uint8
            np.testing.assert_array_equal(lazy.compute(), expected)
        bands = list(slide.iter_bands())
        assert [y for y, _ in bands] == sorted(y for y, _ in bands) and bands[0][0] == 0
        np.testing.assert_array_equal(np.concatenate([b for _, b in bands]), expected)


def test_layout_descriptions(written) -> None:
    """The layout string tells how the file is stored (shown in the slide sheet)."""
    expect = {
        "tiled_deflate": "chunky 3-channel uint8, tiled 256x256",
        "strips_lzw": "strips of 64 rows, lzw",
        "planar": "planar 3-channel",
        "hubmap_11chw": "planar 3-channel",
        "channel_pages": "channel pages 3-channel",
        "channel_series": "channel pages 3-channel",
        "rgba": "4-channel",
        "uint16_full": "uint16",
    }
    for name, text in expect.items():
        with open_slide(written[name][0]) as slide:
            assert text in slide.layout, (name, slide.layout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_border_windows_are_padded_with_fill(written, backend: str) -> None:
    path, img = written["tiled_deflate"]
    with open_slide(path, backend) as slide:
        out = slide.read(-100, -60, 300, 400)
        assert out.shape == (300, 400, 3)
        assert (out[:100] == 255).all() and (out[:, :60] == 255).all()
        np.testing.assert_array_equal(out[100:, 60:], img[:200, :340])
        corner = slide.read(H - 30, W - 20, 100, 90, fill=7)
        np.testing.assert_array_equal(corner[:30, :20], img[H - 30 :, W - 20 :])
        assert (corner[30:] == 7).all() and (corner[:, 20:] == 7).all()
        assert (slide.read(H + 5, 0, 10, 10, fill=0) == 0).all()
        assert (slide.read(-50, -50, 20, 20) == 255).all()
        assert slide.read(10, 10, 0, 5).shape == (0, 5, 3)
        with pytest.raises(ValueError):
            slide.read(0, 0, -1, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jpeg_tiles_close_to_source_and_to_tifffile(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "jpeg.tif"
    # tifffile stores RGB + JPEG as YCbCr with 2x2 chroma subsampling, as scanners do
    tifffile.imwrite(path, IMG, photometric="rgb", tile=(T, T), compression="jpeg")
    assert tifffile.TiffFile(path).pages[0].photometric == 6
    decoded = tifffile.imread(path)
    with open_slide(path, backend) as slide:
        whole = slide.read(0, 0, H, W)
        assert np.abs(whole.astype(int) - IMG.astype(int)).mean() < 10  # lossy on pixel noise
        diff = np.abs(whole.astype(int) - decoded.astype(int))
        if backend == "tifffile":  # the same decoder: identical pixels
            assert diff.max() == 0
        else:
            # GDAL (libtiff JPEG codec, RGB colour mode) upsamples the subsampled chroma
            # differently from imagecodecs' libjpeg-turbo: small on average, large only at
            # sharp colour edges (this image has per-pixel colour noise)
            assert diff.mean() < 3
        np.testing.assert_array_equal(slide.to_dask().compute(), whole)
        np.testing.assert_array_equal(slide.read(300, 500, 256, 400), whole[300:556, 500:900])
        np.testing.assert_array_equal(np.concatenate([b for _, b in slide.iter_bands()]), whole)


@pytest.mark.parametrize("backend", BACKENDS)
def test_12bit_in_uint16_scales_by_bit_depth(tmp_path: Path, backend: str) -> None:
    raw = (IMG.astype(np.uint16) * 16 + 7).astype(np.uint16)  # max 4087: 12-bit data
    path = tmp_path / "u12.tif"
    tifffile.imwrite(path, raw, photometric="rgb", tile=(T, T), compression="zlib")
    expected = np.floor(raw.astype(np.float64) * 255 / 4095 + 0.5)
    with open_slide(path, backend) as slide:
        out = slide.read(0, 0, H, W)
    assert np.abs(out.astype(float) - expected).max() <= 1
    assert out.max() >= 250  # scaled by 4095, not by 65535 (which would give <= 63)


LEVELS = [IMG, IMG[::2, ::2].copy(), IMG[::4, ::4].copy()]


def write_subifd_pyramid(p: Path) -> None:
    with tifffile.TiffWriter(p) as tw:
        tw.write(LEVELS[0], photometric="rgb", subifds=2, tile=(T, T), compression="zlib")
        for lvl in LEVELS[1:]:
            tw.write(lvl, photometric="rgb", subfiletype=1, tile=(128, 128), compression="zlib")


def write_series_levels(p: Path) -> None:
    with tifffile.TiffWriter(p) as tw:
        tw.write(LEVELS[0], photometric="rgb", tile=(T, T), compression="zlib")
        for lvl in LEVELS[1:]:
            tw.write(lvl, photometric="rgb", subfiletype=1, tile=(128, 128), compression="zlib")


def write_plain_pages(p: Path) -> None:  # smaller pages without the reduced-resolution flag
    with tifffile.TiffWriter(p) as tw:
        for lvl in LEVELS:
            tw.write(lvl, photometric="rgb", tile=(128, 128), compression="zlib")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("writer", [write_subifd_pyramid, write_series_levels, write_plain_pages])
def test_pyramid_levels(tmp_path: Path, writer, backend: str) -> None:
    path = tmp_path / "pyr.tif"
    writer(path)
    with open_slide(path, backend) as slide:
        assert slide.level_shapes == ((700, 900), (350, 450), (175, 225))
        assert slide.level_downsample(1) == pytest.approx(2.0)
        assert slide.level_downsample(2) == pytest.approx(4.0)
        assert [slide.best_level(d) for d in (1, 1.9, 2, 3.9, 4, 100)] == [0, 0, 1, 1, 2, 2]
        assert slide.best_level(3.99) == 2  # 1 % tolerance (real levels are 4.0007 etc.)
        for level, expected in enumerate(LEVELS):
            h, w = expected.shape[:2]
            np.testing.assert_array_equal(slide.read(0, 0, h, w, level=level), expected)
            np.testing.assert_array_equal(slide.to_dask(level).compute(), expected)
            out = slide.read(h - 50, w - 40, 100, 100, level=level)
            np.testing.assert_array_equal(out[:50, :40], expected[h - 50 :, w - 40 :])
            assert (out[50:] == 255).all()
        # downsample 4 reads level 2 directly: exactly its pixels
        np.testing.assert_array_equal(slide.read_region_downsampled(4), LEVELS[2])
        with pytest.raises(ValueError):
            slide.read(0, 0, 5, 5, level=3)


def area_mean(img: np.ndarray, d: int) -> np.ndarray:
    """Reference: mean of each d x d footprint (partial at the borders), rounded half up."""
    h, w = img.shape[:2]
    oh, ow = -(-h // d), -(-w // d)
    pad = np.full((oh * d, ow * d, 3), np.nan)
    pad[:h, :w] = img
    mean = np.nanmean(pad.reshape(oh, d, ow, d, 3), axis=(1, 3))
    return np.floor(mean + 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_downsampled_is_area_mean(written, backend: str) -> None:
    path, img = written["tiled_deflate"]
    with open_slide(path, backend) as slide:
        for d in (1, 3, 8, 32):
            small = slide.read_region_downsampled(d)
            assert small.shape == (-(-H // d), -(-W // d), 3)
            assert np.abs(small.astype(float) - area_mean(img, d)).max() <= 1, d


def test_iter_bands_heights_and_rounding(written) -> None:
    path, img = written["strips_none"]  # 7-row strips are grouped into >= 256-row bands
    with open_slide(path) as slide:
        bands = list(slide.iter_bands())
        assert [y for y, _ in bands] == [0, 259, 518]
        assert sum(b.shape[0] for _, b in bands) == H
        bands = list(slide.iter_bands(band_height=100, workers=1, prefetch=0))
        assert [y for y, _ in bands][:2] == [0, 105]  # rounded up to whole strips
        np.testing.assert_array_equal(np.concatenate([b for _, b in bands]), img)


def test_backends_agree_on_random_windows(written) -> None:
    rng = np.random.default_rng(1)
    for name in ("tiled_deflate", "planar", "channel_pages", "uint16_full", "grey"):
        path, _ = written[name]
        with open_slide(path, "tifffile") as a, open_slide(path, "rasterio") as b:
            assert a.level_shapes == b.level_shapes
            for _ in range(5):
                y0, x0 = rng.integers(-300, 800), rng.integers(-300, 1000)
                h, w = rng.integers(1, 600, size=2)
                np.testing.assert_array_equal(a.read(y0, x0, h, w), b.read(y0, x0, h, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_reads_and_pickling(written, backend: str) -> None:
    path, img = written["tiled_deflate"]
    windows = [(y, x) for y in range(0, 600, 150) for x in range(0, 800, 200)]
    with open_slide(path, backend) as slide:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda yx: slide.read(yx[0], yx[1], 200, 230), windows))
        for (y, x), out in zip(windows, outs):
            np.testing.assert_array_equal(out, img[y : y + 200, x : x + 230][:200, :230])
        clone = pickle.loads(pickle.dumps(slide))
        with clone:
            assert clone.backend == backend
            np.testing.assert_array_equal(clone.read(10, 20, 30, 40), img[10:40, 20:60])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ome_with_two_series_uses_the_largest(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(IMG[:300, :200], photometric="rgb", tile=(T, T))
        tw.write(IMG, photometric="rgb", tile=(T, T))
    with open_slide(path, backend) as slide:
        assert slide.shape == (H, W)
        np.testing.assert_array_equal(slide.read(0, 0, H, W), IMG)


def test_closed_slide_refuses_reads(written) -> None:
    slide = open_slide(written["tiled_deflate"][0])
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        slide.read(0, 0, 1, 1)


def test_unknown_backend() -> None:
    with pytest.raises(ConfigError, match="openslide"):
        open_slide("x.tif", backend="openslide")


# --- bad input -------------------------------------------------------------------------
def bad_missing(p: Path) -> None:
    pass


def bad_empty(p: Path) -> None:
    p.write_bytes(b"")


def bad_not_tiff(p: Path) -> None:
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))


def bad_truncated(p: Path) -> None:
    tifffile.imwrite(p, IMG, photometric="rgb", tile=(T, T), compression="zlib")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 5000])


def bad_unrelated_pages(p: Path) -> None:
    with tifffile.TiffWriter(p) as tw:
        tw.write(IMG, photometric="rgb", tile=(T, T))
        tw.write(IMG[:500, :300], photometric="rgb", tile=(T, T))


def bad_two_same_size(p: Path) -> None:
    with tifffile.TiffWriter(p) as tw:
        tw.write(IMG, photometric="rgb", tile=(T, T))
        tw.write(IMG[::-1], photometric="rgb", tile=(T, T))


def bad_rgb_stack(p: Path) -> None:  # three RGB pages of the same size (a z-stack)
    with tifffile.TiffWriter(p) as tw:
        for _ in range(3):
            tw.write(IMG, photometric="rgb", tile=(T, T), metadata=None)


def bad_complex(p: Path) -> None:
    tifffile.imwrite(p, GREY.astype(np.complex64))


def bad_float_range(p: Path) -> None:
    tifffile.imwrite(p, IMG.astype(np.float32) * 3 - 100, photometric="rgb")


def bad_signed(p: Path) -> None:
    tifffile.imwrite(p, GREY.astype(np.int16) - 100)


def bad_five_channels(p: Path) -> None:
    tifffile.imwrite(
        p, np.zeros((5, 64, 64), np.uint8), photometric="minisblack", planarconfig="separate"
    )


BAD = {
    "missing": (bad_missing, "not found"),
    "empty": (bad_empty, "empty file"),
    "not_tiff": (bad_not_tiff, "not a TIFF"),
    "truncated": (bad_truncated, "truncated"),
    "unrelated_pages": (bad_unrelated_pages, "cannot tell which is the slide"),
    "two_same_size": (bad_two_same_size, "cannot tell which is the slide"),
    "rgb_stack": (bad_rgb_stack, None),
    "complex": (bad_complex, "unsupported sample format"),
    "float_range": (bad_float_range, "[0, 1]"),
    "signed": (bad_signed, "signed"),
    "five_channels": (bad_five_channels, "channels"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_slide_error_naming_the_file(
    tmp_path: Path, case: str, backend: str
) -> None:
    writer, text = BAD[case]
    path = tmp_path / f"bad_{case}.tif"
    writer(path)
    with pytest.raises(SlideError) as info:
        open_slide(path, backend).read(0, 0, 10, 10)
    message = str(info.value)
    assert path.name in message and info.value.path == str(path)
    if text is not None:
        assert text in message, message


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_tile_fails_on_read_naming_file_and_tile(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, IMG, photometric="rgb", tile=(T, T), compression="zlib")
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        off, cnt = page.dataoffsets[5], page.databytecounts[5]  # 4 tiles a row: row 1, col 1
    data = bytearray(path.read_bytes())
    data[off : off + cnt] = bytes([0xA5]) * cnt
    path.write_bytes(bytes(data))
    with open_slide(path, backend) as slide:  # structure is fine: opens
        np.testing.assert_array_equal(slide.read(0, 0, 200, 200), IMG[:200, :200])
        with pytest.raises(SlideError, match="corrupt.tif") as info:
            slide.read(T + 10, T + 10, 50, 50)
        if backend == "tifffile":
            assert "tile 5 (row 1, col 1)" in str(info.value)
        with pytest.raises(SlideError, match="corrupt.tif"):
            slide.to_dask().compute()
        with pytest.raises(SlideError, match="corrupt.tif"):
            for _ in slide.iter_bands():
                pass


def test_missing_tile_reads_as_zero_in_windows_bands_and_dask(tmp_path: Path) -> None:
    """A tile with no bytes (sparse TIFF) reads as 0 by every path: the direct tile
    decoder that windows and bands use agrees with the Zarr store behind ``to_dask``."""
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, IMG, photometric="rgb", tile=(T, T), compression="zlib")
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tf:
        for name in ("TileOffsets", "TileByteCounts"):  # tile 5 (row 1, col 1): offset and size 0
            tag = tf.pages[0].tags[name]
            assert len(tag.value) == 12  # 3 x 4 tiles of 256 px
            itemsize = {3: 2, 4: 4, 16: 8}[int(tag.dtype)]  # SHORT, LONG, LONG8
            data[tag.valueoffset + 5 * itemsize : tag.valueoffset + 6 * itemsize] = bytes(itemsize)
    path.write_bytes(bytes(data))
    expected = IMG.copy()
    expected[T : 2 * T, T : 2 * T] = 0
    with open_slide(path, "tifffile") as slide:
        np.testing.assert_array_equal(slide.read(0, 0, H, W), expected)
        np.testing.assert_array_equal(slide.read(T - 7, T + 3, 300, 100), expected[T - 7 : T + 293, T + 3 : T + 103])
        np.testing.assert_array_equal(np.concatenate([b for _, b in slide.iter_bands()]), expected)
        with dask.config.set(scheduler="threads", num_workers=2):
            np.testing.assert_array_equal(slide.to_dask().compute(), expected)
