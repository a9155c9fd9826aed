"""pipeline.slides on real files nobody on this project made (../shared/data/wsi).

CMU-1-Small-Region.svs is a real Aperio SVS (JPEG tiles, plus thumbnail / label / macro
images that must not be taken for the slide); the openslide-python fixtures cover a tiny SVS,
a 4-level Deflate pyramid, an unknown compression and a corrupt JPEG tile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.errors import SlideError
from pipeline.slides import open_slide

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WSI = DATA / "wsi"
CMU = WSI / "CMU-1-Small-Region.svs"
FIXTURES = WSI / "openslide-fixtures"
BACKENDS = ["tifffile", "rasterio"]

pytestmark = pytest.mark.skipif(
    not CMU.is_file() or not FIXTURES.is_dir(),
    reason=f"real slides not found under {WSI} (../shared/data is absent)",
)


@pytest.fixture(scope="module")
def cmu_pixels() -> np.ndarray:
    """tifffile's own decode of the main image (series 0, level 0): the reference."""
    with tifffile.TiffFile(CMU) as tf:
        assert tf.is_svs and [s.name for s in tf.series][:2] == ["Baseline", "Thumbnail"]
        return tf.series[0].levels[0].asarray()


def test_cmu_svs_tifffile_matches_tifffile_decode(cmu_pixels: np.ndarray) -> None:
    with open_slide(CMU) as slide:
        assert slide.shape == (2967, 2220)
        assert slide.level_shapes == ((2967, 2220),)  # thumbnail / label / macro ignored
        assert "SVS" in slide.layout and "jpeg" in slide.layout
        np.testing.assert_array_equal(slide.read(0, 0, 2967, 2220), cmu_pixels)
        np.testing.assert_array_equal(
            slide.read(1000, 700, 555, 333), cmu_pixels[1000:1555, 700:1033]
        )
        edge = slide.read(2900, 2100, 200, 200)
        np.testing.assert_array_equal(edge[:67, :120], cmu_pixels[2900:, 2100:])
        assert (edge[67:] == 255).all() and (edge[:, 120:] == 255).all()
        np.testing.assert_array_equal(slide.to_dask().compute(), cmu_pixels)
        np.testing.assert_array_equal(
            np.concatenate([b for _, b in slide.iter_bands()]), cmu_pixels
        )
        small = slide.read_region_downsampled(16)
        assert small.shape == (186, 139, 3)
        ref = cmu_pixels[:2960, :2208].reshape(185, 16, 138, 16, 3).mean(axis=(1, 3))
        assert np.abs(small[:185, :138].astype(float) - ref).max() <= 1


def test_cmu_svs_rasterio(cmu_pixels: np.ndarray) -> None:
    with open_slide(CMU, "rasterio") as slide:
        assert slide.shape == (2967, 2220)
        # GDAL reports the label and macro images as "overviews"; they are not levels
        assert slide.level_shapes == ((2967, 2220),)
        whole = slide.read(0, 0, 2967, 2220)
        # Both decode these tiles with libjpeg and agree exactly here; compare closely
        # anyway, because GDAL's JPEG path may upsample YCbCr chroma differently from
        # imagecodecs in other builds (see test_slides: YCbCr 2x2 tiles differ at edges).
        diff = np.abs(whole.astype(int) - cmu_pixels.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())
        np.testing.assert_array_equal(slide.read(1000, 700, 555, 333), whole[1000:1555, 700:1033])
        np.testing.assert_array_equal(slide.to_dask().compute(), whole)


@pytest.fixture(scope="module")
def cmu_copies(tmp_path_factory: pytest.TempPathFactory, cmu_pixels: np.ndarray) -> dict[str, Path]:
    """A sub-IFD pyramid copy and a planar (3, H, W) copy of the CMU slide (lossless)."""
    root = tmp_path_factory.mktemp("cmu")
    pyramid = root / "cmu_pyramid.tif"
    with tifffile.TiffWriter(pyramid) as tw:
        tw.write(cmu_pixels, photometric="rgb", subifds=2, tile=(256, 256), compression="zlib")
        for k in (2, 4):
            tw.write(
                cmu_pixels[::k, ::k],
                photometric="rgb",
                subfiletype=1,
                tile=(256, 256),
                compression="zlib",
            )
    planar = root / "cmu_planar.tif"
    tifffile.imwrite(
        planar,
        cmu_pixels.transpose(2, 0, 1).copy(),
        photometric="rgb",
        planarconfig="separate",
        tile=(256, 256),
        compression="zlib",
    )
    return {"pyramid": pyramid, "planar": planar}


@pytest.mark.parametrize("backend", BACKENDS)
def test_cmu_pyramid_copy(
    cmu_copies: dict[str, Path], cmu_pixels: np.ndarray, backend: str
) -> None:
    with open_slide(cmu_copies["pyramid"], backend) as slide:
        assert slide.level_shapes == ((2967, 2220), (1484, 1110), (742, 555))
        for level, k in enumerate((1, 2, 4)):
            expected = cmu_pixels[::k, ::k]
            h, w = expected.shape[:2]
            np.testing.assert_array_equal(slide.read(0, 0, h, w, level=level), expected)
            np.testing.assert_array_equal(
                slide.read(h // 3, w // 4, 300, 200, level=level),
                expected[h // 3 : h // 3 + 300, w // 4 : w // 4 + 200],
            )
        assert slide.best_level(4.5) == 2
        np.testing.assert_array_equal(slide.to_dask(2).compute(), cmu_pixels[::4, ::4])


@pytest.mark.parametrize("backend", BACKENDS)
def test_cmu_planar_copy(cmu_copies: dict[str, Path], cmu_pixels: np.ndarray, backend: str) -> None:
    with open_slide(cmu_copies["planar"], backend) as slide:
        assert slide.shape == (2967, 2220)
        np.testing.assert_array_equal(slide.read(0, 0, 2967, 2220), cmu_pixels)
        np.testing.assert_array_equal(
            np.concatenate([b for _, b in slide.iter_bands()]), cmu_pixels
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_svs(backend: str) -> None:
    path = FIXTURES / "small.svs"
    expected = tifffile.TiffFile(path).series[0].levels[0].asarray()
    with open_slide(path, backend) as slide:
        assert slide.level_shapes == ((16, 16),)
        out = slide.read(0, 0, 16, 16)
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 2
        if backend == "tifffile":
            np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_pyramid_all_levels(backend: str) -> None:
    path = FIXTURES / "boxes.tiff"
    with tifffile.TiffFile(path) as tf:
        expected = [lvl.asarray() for lvl in tf.series[0].levels]
    with open_slide(path, backend) as slide:
        assert slide.level_shapes == ((250, 300), (125, 150), (62, 75), (31, 37))
        for level, ref in enumerate(expected):
            h, w = ref.shape[:2]
            np.testing.assert_array_equal(slide.read(0, 0, h, w, level=level), ref)
            np.testing.assert_array_equal(slide.to_dask(level).compute(), ref)
        assert slide.level_downsample(3) == pytest.approx((250 / 31 + 300 / 37) / 2)
        assert slide.best_level(8) == 2  # level 3 is 8.09x: coarser than asked for
        assert slide.best_level(8.2) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_unopenable_tiff(backend: str) -> None:
    path = FIXTURES / "unopenable.tiff"
    with pytest.raises(SlideError) as info:
        open_slide(path, backend)
    message = str(info.value)
    assert "unopenable.tiff" in message and "52479" in message  # the unknown compression


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_svs_fails_with_slide_error(backend: str) -> None:
    path = FIXTURES / "unreadable.svs"
    # the structure is fine, so the corrupt JPEG tile may only fail when it is decoded
    with pytest.raises(SlideError) as info:
        with open_slide(path, backend) as slide:
            h, w = slide.shape
            for y in range(0, h, 8):
                for x in range(0, w, 8):
                    slide.read(y, x, 8, 8)
    assert "unreadable.svs" in str(info.value) and "decode" in str(info.value)
    with open_slide(path, backend) as slide:
        with pytest.raises(SlideError, match="unreadable.svs"):
            slide.to_dask().compute()
        with pytest.raises(SlideError, match="unreadable.svs"):
            list(slide.iter_bands())
        with pytest.raises(SlideError, match="unreadable.svs"):
            slide.read_region_downsampled(4)
