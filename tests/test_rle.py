"""The Kaggle RLE codec: exactness against the classic formula, streaming sources, strict parsing."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import zarr

from pipeline import rle
from pipeline.errors import PipelineError, RLEError

SOURCE = "train.csv row 3 (id 2f6ecfcdf)"


def classic(img: np.ndarray) -> str:
    """The classic Kaggle formula (correct for every 0/1 mask, but 8 bytes per pixel)."""
    pixels = np.concatenate([[0], (np.asarray(img) != 0).T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def less_memory(img: np.ndarray) -> str:
    """The widely copied variant that zeroes the first and last pixel."""
    pixels = img.T.flatten()
    pixels[0] = 0
    pixels[-1] = 0
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 2
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def discs(
    shape: tuple[int, int], n: int, seed: int, labels: bool = False
) -> np.ndarray:
    """Sparse blob mask (what glomerulus masks look like); labels 1..4 if asked."""
    rng = np.random.default_rng(seed)
    h, w = shape
    mask = np.zeros(shape, dtype=np.int32)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(n):
        cy, cx, r = (
            rng.integers(0, h),
            rng.integers(0, w),
            rng.integers(1, max(2, min(h, w) // 4)),
        )
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (
            rng.integers(1, 5) if labels else 1
        )
    return mask


def random_masks():
    rng = np.random.default_rng(0)
    cases = {
        "1x1 on": np.ones((1, 1), np.uint8),
        "1x1 off": np.zeros((1, 1), np.uint8),
        "1xN": (rng.random((1, 57)) < 0.5).astype(np.uint8),
        "Nx1": (rng.random((61, 1)) < 0.5).astype(np.uint8),
        "37x53": (rng.random((37, 53)) < 0.3).astype(np.uint8),
        "zeros": np.zeros((37, 53), np.uint8),
        "ones": np.ones((37, 53), np.uint8),
        "checkerboard": (np.indices((37, 53)).sum(0) % 2).astype(np.uint8),
        "checkerboard even": (np.indices((36, 52)).sum(0) % 2).astype(np.uint8),
        "discs": discs((203, 157), 8, 1).astype(np.uint8),
    }
    return cases


# --------------------------------------------------------------------------- encode


@pytest.mark.parametrize("name", list(random_masks()))
def test_round_trip_and_classic(name):
    mask = random_masks()[name]
    text = rle.encode(mask)
    assert text == classic(mask)
    back = rle.decode(text, mask.shape)
    assert back.dtype == np.uint8 and back.shape == mask.shape
    np.testing.assert_array_equal(back, mask)
    assert rle.area(text) == int(mask.sum())


def test_known_strings_and_border_pixels():
    m = np.zeros((3, 4), np.uint8)
    assert rle.encode(m) == ""
    m[0, 0] = 1  # first pixel
    assert rle.encode(m) == "1 1"
    m[2, 3] = 1  # last pixel
    assert rle.encode(m) == "1 1 12 1"
    assert less_memory(m) == ""  # what the copied formula silently returns
    m[:] = 0
    m[2, 0] = m[0, 1] = m[1, 1] = (
        1  # bottom of column 0 continues at the top of column 1
    )
    assert rle.encode(m) == "3 3"
    assert rle.encode(m, strip_width=1) == "3 3"  # ... also across a strip boundary
    assert rle.encode(np.ones((3, 4), bool), strip_width=3) == "1 12"


@pytest.mark.parametrize("seed", range(6))
def test_matches_classic_on_blobs_any_dtype_and_layout(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 260, 2))
    labels = discs((h, w), int(rng.integers(0, 7)), seed, labels=True)
    labels[0, 0] = rng.integers(0, 2)
    labels[-1, -1] = rng.integers(0, 2)
    expected = classic(labels)
    variants = [
        labels,  # 1 -> 2 inside an object is no transition
        labels.astype(np.uint8),
        labels.astype(np.uint16) * 300,
        labels.astype(np.float32),
        labels.astype(np.float64) * -1.5,
        labels.astype(bool),
        labels.astype(np.int64),
        np.asfortranarray(labels.astype(np.uint8)),
        labels.astype(np.uint8)[::-1][::-1],
    ]
    for mask in variants:
        for width in (None, 1, 7, int(rng.integers(1, w + 2))):
            assert rle.encode(mask, strip_width=width) == expected, (mask.dtype, width)


def test_strided_views_and_unaligned_widths():
    big = discs((301, 413), 12, 3).astype(np.uint8)
    for view in (
        big[:, 3:150],
        big[1:, ::2],
        big.T,
        big[::-1],
        big[:, ::-1],
        big[5:-3, 7:-5],
    ):
        assert rle.encode(view) == classic(view)
        assert rle.encode(view, strip_width=13) == classic(view)


def test_dense_random_masks_match_classic():
    rng = np.random.default_rng(7)
    for p in (0.01, 0.5, 0.99):
        mask = (rng.random((129, 211)) < p).astype(np.uint8)
        assert rle.encode(mask, strip_width=64) == classic(mask)


def test_rle_encoder_strips_and_row_blocks():
    mask = discs((97, 131), 10, 4).astype(np.uint8)
    mask[0, 0] = mask[-1, -1] = 1
    expected = classic(mask)
    for width in (1, 7, 64, 131):
        encoder = rle.RLEEncoder(*mask.shape)
        for x in range(0, mask.shape[1], width):
            encoder.add_columns(mask[:, x : x + width])
        assert encoder.finish() == expected
    rng = np.random.default_rng(0)
    encoder = rle.RLEEncoder(*mask.shape)
    for x in range(0, 131, 20):
        cuts = sorted(set(rng.integers(1, 97, 4).tolist()))
        edges = [0, *cuts, 97]
        encoder.add_row_blocks(
            mask[a:b, x : x + 20] for a, b in zip(edges[:-1], edges[1:])
        )
    assert encoder.finish() == expected


def test_rle_encoder_rejects_misuse():
    encoder = rle.RLEEncoder(4, 5)
    encoder.add_columns(np.zeros((4, 3), np.uint8))
    with pytest.raises(RLEError, match="3 of 5 columns"):
        encoder.finish()
    with pytest.raises(RLEError, match="height 4"):
        encoder.add_columns(np.zeros((5, 1), np.uint8))
    with pytest.raises(RLEError, match="6 columns added to a mask 5 columns wide"):
        encoder.add_columns(np.zeros((4, 3), np.uint8))
    with pytest.raises(RLEError, match="mask height 4"):
        encoder.add_row_blocks([np.zeros((3, 1), np.uint8)])
    encoder.add_columns(np.ones((4, 2), np.uint8))
    assert encoder.finish() == "13 8"
    with pytest.raises(RLEError, match="after finish"):
        encoder.add_columns(np.zeros((4, 1), np.uint8))
    with pytest.raises(RLEError, match="2-D"):
        rle.encode(np.zeros((2, 3, 3), np.uint8))
    assert isinstance(RLEError(None, "x"), PipelineError)


def test_numpy_zarr_dask_give_identical_strings(tmp_path, monkeypatch):
    mask = discs((300, 350), 10, 5).astype(np.uint8)
    mask[0, 0] = mask[-1, -1] = 1
    expected = rle.encode(mask)
    assert expected == classic(mask)
    plain = zarr.create_array(
        store=str(tmp_path / "a.zarr"),
        shape=mask.shape,
        chunks=(128, 96),
        dtype="uint8",
    )
    plain[:] = mask
    sharded = zarr.create_array(
        store=str(tmp_path / "b.zarr"),
        shape=mask.shape,
        chunks=(32, 50),
        shards=(128, 100),
        dtype="uint8",
    )
    sharded[:] = mask
    reopened = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    sources = [
        plain,
        sharded,
        reopened,
        da.from_array(mask, chunks=(100, 77)),
        da.from_array(mask.astype(bool), chunks=((120, 180), (13, 250, 87))),
    ]
    monkeypatch.setattr(rle, "BLOCK_BYTES", 40_000)  # several row blocks per strip
    for source in sources:
        for width in (None, 9, 101):
            assert rle.encode(source, strip_width=width) == expected, (
                type(source),
                width,
            )


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize("seed", range(4))
def test_decode_window_equals_decode_slice(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 90)), int(rng.integers(1, 110)))
    mask = discs(shape, 6, seed).astype(np.uint8)
    mask[0, 0] = 1
    if seed % 2:
        mask[:, shape[1] // 2 :] = 1  # long runs spanning many columns
    text = rle.encode(mask)
    runs = rle.parse(text, shape)
    full = rle.decode(text, shape)
    np.testing.assert_array_equal(full, mask)
    padded = np.zeros((shape[0] + 80, shape[1] + 80), np.uint8)
    padded[40:-40, 40:-40] = full
    for _ in range(60):
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        y0, x0 = int(rng.integers(-40, shape[0] + 40 - h + 1)), int(
            rng.integers(-40, shape[1] + 40 - w + 1)
        )
        expected = padded[y0 + 40 : y0 + 40 + h, x0 + 40 : x0 + 40 + w]
        for source in (text, runs):
            got = rle.decode_window(source, shape, y0, x0, h, w)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(
                got, expected, err_msg=f"window {(y0, x0, h, w)}"
            )
    outside = rle.decode_window(runs, shape, -100, -100, 10, 10)
    assert outside.shape == (10, 10) and not outside.any()


def test_fill_ranges_in_pieces_equals_one_go():
    """Long windows set their ranges a bounded number of indices at a time: same result."""
    rng = np.random.default_rng(5)
    length = rng.integers(1, 40, 50)
    first = np.cumsum(length + rng.integers(0, 10, 50)) - length
    one = np.zeros(int(first[-1] + length[-1]), np.uint8)
    rle._fill_ranges(one, first, length)
    pieces = np.zeros_like(one)
    rle._fill_ranges(pieces, first, length, chunk=7)  # fewer indices than most single ranges
    np.testing.assert_array_equal(one, pieces)
    assert one.sum() == length.sum()


def test_decode_window_on_slide_sized_runs_is_fast():
    shape = (
        30000,
        37000,
    )  # the full mask would be 1.1 GB; the window needs only its columns
    runs = np.array(
        [[c * 30000 + 1000, 500] for c in range(0, 37000, 3)], dtype=np.int64
    )
    t0 = time.perf_counter()
    win = rle.decode_window(runs, shape, 900, 3000, 700, 10)
    assert time.perf_counter() - t0 < 1.0
    expected = np.zeros((700, 10), np.uint8)
    expected[100:600, [0, 3, 6, 9]] = 1
    np.testing.assert_array_equal(win, expected)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("1 2 3", "odd number of values (3)"),
        ("1 2 x 4", "token 2 ('x') is not an integer"),
        ("1 2 3.5 4", "token 2 ('3.5') is not an integer"),
        ("1,2", "token 0 ('1,2') is not an integer"),
        ("0 5", "run 0 (token 0): start 0 < 1"),
        ("-4 5", "start -4 < 1"),
        ("3 1 5 0", "run 1 (token 3): length 0 is not positive"),
        ("5 -2", "length -2 is not positive"),
        (
            "10 5 12 3",
            "run 1 (token 2) starts at 12, before run 0 (start 10, length 5) ends: runs overlap",
        ),
        ("10 5 3 2", "runs are not sorted"),
        (
            "95 10",
            "run 0 (start 95, length 10) ends at pixel 104, past the last pixel (100) of a 10 x 10 image",
        ),
        (
            "1 2 99999999999999999999999 3",
            "token 2 ('99999999999999999999999') is too large",
        ),
    ],
)
def test_malformed_strings_raise_with_source(text, problem):
    with pytest.raises(RLEError) as info:
        rle.parse(text, (10, 10), source=SOURCE)
    assert str(info.value) == f"{SOURCE}: {problem}" or (
        str(info.value).startswith(f"{SOURCE}: ") and problem in str(info.value)
    )
    with pytest.raises(RLEError, match="2f6ecfcdf"):
        rle.decode(text, (10, 10), source=SOURCE)


def test_parse_empty_and_whitespace():
    for empty in ("", "   ", None, float("nan"), np.nan):
        runs = rle.parse(empty, (5, 5))
        assert runs.shape == (0, 2) and runs.dtype == np.int64
        assert not rle.decode(empty, (5, 5)).any()
    np.testing.assert_array_equal(rle.parse(" 3 2\t7  1\n", (5, 5)), [[2, 2], [6, 1]])
    np.testing.assert_array_equal(
        rle.parse("3 2 5 1"), [[2, 2], [4, 1]]
    )  # touching runs are fine
    with pytest.raises(RLEError, match="expected an RLE string"):
        rle.parse(12, (5, 5), source=SOURCE)


def test_parse_long_string_fast_and_exact():
    rng = np.random.default_rng(0)
    starts = np.sort(rng.choice(10**8, 150_000, replace=False)) * 10
    runs = np.stack([starts, rng.integers(1, 10, starts.size)], axis=1)
    text = rle.format_runs(runs)
    t0 = time.perf_counter()
    parsed = rle.parse(text, (30000, 37000))
    assert time.perf_counter() - t0 < 2.0
    np.testing.assert_array_equal(parsed, runs)
    bad = text + " 7x 3"
    with pytest.raises(RLEError, match=r"token 300000 \('7x'\)"):
        rle.parse(bad, source=SOURCE)


def test_format_runs_large_numbers():
    runs = np.array([[0, 1], [2**33, 5], [2**40, 123456789]], dtype=np.int64)
    assert rle.format_runs(runs) == f"1 1 {2**33 + 1} 5 {2**40 + 1} 123456789"
    many = np.stack([np.arange(0, 10**6, 10) * 4099, np.full(10**5, 7)], axis=1)
    text = rle.format_runs(many)
    assert text == " ".join(map(str, (many + [1, 0]).ravel().tolist()))
    assert rle.format_runs(np.empty((0, 2), np.int64)) == ""


# --------------------------------------------------------------------------- run arithmetic


def brute_intersection(a: np.ndarray, b: np.ndarray, n: int) -> int:
    fa, fb = np.zeros(n, bool), np.zeros(n, bool)
    for s, length in a:
        fa[s : s + length] = True
    for s, length in b:
        fb[s : s + length] = True
    return int(np.count_nonzero(fa & fb))


@pytest.mark.parametrize("seed", range(5))
def test_area_and_intersection_match_masks(seed):
    shape = (41, 29)
    ma = discs(shape, 5, seed).astype(np.uint8)
    mb = discs(shape, 5, seed + 100).astype(np.uint8)
    ra, rb = rle.parse(rle.encode(ma)), rle.parse(rle.encode(mb))
    assert rle.area(ra) == int(ma.sum())
    assert rle.intersection_area(ra, rb) == int((ma & mb).sum())
    assert rle.intersection_area(rle.encode(ma), rle.encode(mb)) == int((ma & mb).sum())
    assert rle.intersection_area(ra, ra) == rle.area(ra)
    assert rle.intersection_area(ra, np.empty((0, 2), np.int64)) == 0


def test_intersection_many_runs():
    rng = np.random.default_rng(1)
    n = 2_000_000

    def runs(k):
        starts = np.sort(rng.choice(n // 10, k, replace=False)) * 10
        return np.stack(
            [starts, rng.integers(1, 15, k)], axis=1
        )  # lengths up to 14: touching/overlapping

    a, b = runs(150_000), runs(150_000)
    a = a[
        np.concatenate([[True], a[1:, 0] >= a[:-1, 0] + a[:-1, 1]])
    ]  # keep them disjoint
    b = b[np.concatenate([[True], b[1:, 0] >= b[:-1, 0] + b[:-1, 1]])]
    t0 = time.perf_counter()
    got = rle.intersection_area(a, b)
    assert time.perf_counter() - t0 < 2.0
    assert got == brute_intersection(a, b, n + 20)
