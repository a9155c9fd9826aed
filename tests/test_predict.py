"""Sliding-window consensus: weights, grid, band accumulation, TTA/ensembles, round trips.

Small slides (a few hundred to ~2000 px) with windows of 300 px -> 100 px model
input (scale 3, as 1536 -> 512) keep every test fast; the "models" are tiny
deterministic modules defined here (constants, a per-pixel darkness oracle, a
blurred-darkness net) so the expected consensus can be computed by hand.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
import torch.nn.functional as F
from torch import nn

from pipeline import consensus
from pipeline import predict as P
from pipeline.config import Config, PredictConfig
from pipeline.encode import encode_prediction, run_encode
from pipeline.errors import ConfigError
from pipeline.rle import decode

WINDOW, OUT = 300, 100
SCALE = WINDOW // OUT
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
GLASS = (240, 240, 238)
STAIN = (200, 130, 180)


def cfg(**kw) -> PredictConfig:
    base = dict(window=WINDOW, out_size=OUT, overlap=0.5, batch_size=3, prefetch=2, workers=2, tissue_only=False)
    base.update(kw)
    return PredictConfig(**base)


class ArrayReader:
    """A SlideReader stand-in over an in-memory RGB array (predict only needs shape + read).

    Like ``SlideReader.read``, parts of a window outside the image come back as ``fill``.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.shape = image.shape[:2]
        self.path = Path("memory.tiff")
        self.reads: list[tuple[int, int, int, int]] = []

    def read(self, y0, x0, height, width, level=0, fill=255):
        self.reads.append((y0, x0, height, width))
        out = np.full((height, width, 3), fill, np.uint8)
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + height, self.shape[0]), min(x0 + width, self.shape[1])
        if ya < yb and xa < xb:
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = self.image[ya:yb, xa:xb]
        return out


def _logit(p):
    p = torch.clamp(p, 1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p))


class SequenceModel(nn.Module):
    """Outputs a constant per window, taken in call order from ``values`` (probabilities)."""

    def __init__(self, values) -> None:
        super().__init__()
        self.values = torch.as_tensor(values, dtype=torch.float32)
        self.calls = 0

    def forward(self, x):
        n = x.shape[0]
        v = self.values[self.calls : self.calls + n]
        self.calls += n
        return _logit(v)[:, None, None, None].expand(n, 1, *x.shape[-2:]).clone()


class ConstantModel(nn.Module):
    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.logit)


def darkness(x: torch.Tensor) -> torch.Tensor:
    """Back from the normalised input to 1 - grey level (0 white, 1 black), (N, 1, h, w)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return 1.0 - (x * std + mean).mean(dim=1, keepdim=True)


class OracleModel(nn.Module):
    """Per-pixel oracle for slides where the truth is drawn black on white.

    After the area resize, each model pixel's darkness *is* the fraction of truth
    in its 3 x 3 block, so it returns the truth at model resolution for every window.
    """

    def forward(self, x):
        return _logit(darkness(x))


class BlurModel(nn.Module):
    """Deterministic smooth model: blurred darkness, zero-padded (so window borders bias it).

    Near a window border the 15 x 15 mean mixes in padding, so the same pixel gets a
    different value from each window: exactly what blending must hide.
    """

    def forward(self, x):
        return 12.0 * F.avg_pool2d(darkness(x) - 0.5, 15, stride=1, padding=7, count_include_pad=True)


def disks_image(height, width, disks, background=(255, 255, 255), colour=(0, 0, 0)):
    """RGB image and truth mask with filled disks (cy, cx, r)."""
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), bool)
    for cy, cx, r in disks:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img = np.empty((height, width, 3), np.uint8)
    img[:] = background
    img[mask] = colour
    return img, mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def read_map(path) -> np.ndarray:
    return np.asarray(zarr.open_array(store=str(path), mode="r")[:], np.float32)


# ---------------------------------------------------------------- weights and grid


def test_gaussian_weight_is_cached_symmetric_and_floored():
    w = P.gaussian_weight(OUT, 0.125)
    assert w is P.gaussian_weight(OUT, 0.125)  # computed once per window size
    assert not w.flags.writeable
    assert w.shape == (OUT, OUT) and w.dtype == np.float32
    np.testing.assert_allclose(w, w[::-1], rtol=0, atol=0)
    np.testing.assert_allclose(w, w.T, rtol=0, atol=0)
    assert w.max() == pytest.approx(1.0, abs=1e-3) and w.min() == pytest.approx(consensus.MIN_WEIGHT)
    # nnU-Net / MONAI shape: a separable Gaussian of sigma = 0.125 * size, max 1
    g = np.exp(-0.5 * ((np.arange(OUT) - (OUT - 1) / 2) / (0.125 * OUT)) ** 2)
    np.testing.assert_allclose(w, np.maximum(np.outer(g, g) / g.max() ** 2, consensus.MIN_WEIGHT), rtol=1e-5)
    assert (P.weight_map(OUT, "constant") == 1).all()
    with pytest.raises(ConfigError):
        P.weight_map(OUT, "cosine")


@pytest.mark.parametrize("shape", [(1000, 1300), (300, 300), (250, 1000), (1001, 1003)])
@pytest.mark.parametrize("origin", [(0, 0), (75, 75)])
def test_window_grid_covers_every_pixel_on_model_pixels(shape, origin):
    grid = P.window_grid(shape, WINDOW, 0.5, scale=SCALE, origin=origin)
    h, w = shape
    lh, lw = math.ceil(h / SCALE), math.ceil(w / SCALE)
    cover = np.zeros((lh, lw), int)
    for y0, x0 in grid[["y0", "x0"]].to_numpy():
        assert y0 % SCALE == 0 and x0 % SCALE == 0
        cover[max(y0 // SCALE, 0) : y0 // SCALE + OUT, max(x0 // SCALE, 0) : x0 // SCALE + OUT] += 1
        assert y0 // SCALE + OUT <= max(lh, OUT) and x0 // SCALE + OUT <= max(lw, OUT)  # last window on the border
    assert (cover >= 1).all()
    ys = sorted(set(grid["y0"]))
    assert list(grid["y0"]) == sorted(grid["y0"])  # row-major: the band accumulator relies on it
    if h > WINDOW:
        assert ys[0] == -origin[0] and ys[1] - ys[0] == WINDOW // 2  # stride = window * (1 - overlap)


def test_window_grid_keeps_only_windows_with_tissue():
    from pipeline.tissue import TissueMask

    mask = np.zeros((30, 40), bool)
    mask[2:6, 2:6] = True  # tissue in the top-left 200 x 200 px (downsample 50)
    tissue = TissueMask(mask=mask, downsample=50.0, thumbnail=np.zeros((30, 40, 3), np.uint8))
    grid = P.window_grid((1500, 2000), WINDOW, 0.5, tissue, scale=SCALE)
    assert len(grid) > 0 and (grid["tissue"] > 0).all()
    assert grid["y0"].max() < 300 and grid["x0"].max() < 300
    none = TissueMask(mask=np.zeros((30, 40), bool), downsample=50.0, thumbnail=np.zeros((30, 40, 3), np.uint8))
    assert len(P.window_grid((1500, 2000), WINDOW, 0.5, none, scale=SCALE)) == 0


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError):
        P.window_grid((1000, 1000), WINDOW, 1.0, scale=SCALE)
    reader = ArrayReader(np.full((400, 400, 3), 255, np.uint8))
    with pytest.raises(ConfigError, match="multiple"):
        P.predict_slide(reader, [ConstantModel(0.0)], None, cfg(window=310), tmp_path / "a.zarr", MEAN, STD)
    with pytest.raises(ConfigError, match="tta"):
        P.predict_slide(reader, [ConstantModel(0.0)], None, cfg(tta=("transpose",)), tmp_path / "a.zarr", MEAN, STD)


# ---------------------------------------------------------------- accumulation


def test_touched_spans_merge_runs_of_touched_chunks():
    cols = np.zeros(230, bool)
    cols[[3, 60, 99, 100, 225]] = True  # chunks 0, 1, 1, 2, 4 of 50 columns (the last one 30 wide)
    assert consensus.touched_spans(cols, 50) == [(0, 150), (200, 230)]
    assert consensus.touched_spans(np.zeros(230, bool), 50) == []
    assert consensus.touched_spans(np.ones(7, bool), 50) == [(0, 7)]


def test_band_accumulator_writes_only_the_chunks_windows_touched():
    """Columns no window reached are never written: the store keeps no chunk there (it reads as 0)."""
    store = zarr.create_array(store={}, shape=(40, 230), chunks=(10, 50), dtype="float16", fill_value=0.0,
                              config={"write_empty_chunks": True})
    acc = P.BandAccumulator(store, 20)
    weight = P.gaussian_weight(20, 0.125)
    acc.add(0, 60, np.full((20, 20), 0.5, np.float32), weight)  # column chunk 1
    acc.add(0, 205, np.full((20, 20), 0.25, np.float32), weight)  # column chunk 4 (partial)
    acc.finish()
    assert store.nchunks_initialized == 4  # 2 row chunks x 2 column chunks, of 4 x 5
    got = store[:]
    assert (got[:20, 60:80] == 0.5).all() and (got[:20, 205:225] == 0.25).all()
    assert np.count_nonzero(got) == 2 * 20 * 20


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_band_accumulator_equals_full_accumulation(dtype):
    """Random windows in row-major order (some hanging off the map, rows no window touches) vs a full-size sum."""
    rng = np.random.default_rng(0)
    H, W, S = 97, 130, 20
    store = zarr.create_array(store={}, shape=(H, W), chunks=(10, 50), dtype=dtype, fill_value=0.0)
    acc = P.BandAccumulator(store, S)
    assert acc.shape == (S, W)
    num, den = np.zeros((H + 2 * S, W + 2 * S)), np.zeros((H + 2 * S, W + 2 * S))
    rows = sorted(set(int(v) for v in rng.integers(-5, H - 5, 12)) | {-7, 20, 60, H - S})
    rows = [r for r in rows if not 20 < r < 60]  # rows 40-59 see no window
    weight = P.gaussian_weight(S, 0.125)
    for r in rows:
        for c in rng.integers(-8, W - 5, 4):
            p = rng.random((S, S)).astype(np.float32)
            acc.add(int(r), int(c), p, weight)
            num[r + S : r + 2 * S, c + S : c + 2 * S] += p * weight
            den[r + S : r + 2 * S, c + S : c + 2 * S] += weight
    acc.finish()
    num, den = num[S : S + H, S : S + W], den[S : S + H, S : S + W]
    want = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    assert (den == 0).all(axis=1).any()  # some rows have no window: left at the fill value
    np.testing.assert_allclose(store[:], want, atol=1e-5 if dtype == "float32" else 5e-4)


def test_float16_conversion_rounds_as_numpy_does():
    values = np.random.default_rng(1).random((64, 300)).astype(np.float32)
    values[0, :4] = (0.0, 1.0, 6.1e-5, 0.99951172)  # zero, one, a subnormal, a tie
    got = consensus._to_dtype(values, np.dtype("float16"))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, values.astype(np.float16))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_consensus_equals_hand_computed_weighted_average(tmp_path, blend):
    H, W = 600, 750
    reader = ArrayReader(np.full((H, W, 3), 255, np.uint8))
    c = cfg(blend=blend)
    grid = P.window_grid((H, W), WINDOW, 0.5, scale=SCALE)
    values = np.linspace(0.05, 0.95, len(grid)).astype(np.float32)
    np.random.default_rng(1).shuffle(values)
    stats = P.predict_slide(reader, [SequenceModel(values)], None, c, tmp_path / "p.zarr", MEAN, STD)
    assert stats.windows == len(grid)
    got = read_map(tmp_path / "p.zarr")
    w = P.weight_map(OUT, blend, c.sigma).astype(np.float64)
    starts = grid[["y0", "x0"]].to_numpy() // SCALE

    def expected(r, col):
        num = den = 0.0
        for (y, x), v in zip(starts, values):
            if y <= r < y + OUT and x <= col < x + OUT:
                num += w[r - y, col - x] * v
                den += w[r - y, col - x]
        return num / den

    # a corner seen by one window, edges seen by two, interior points seen by four
    for r, col in [(0, 0), (10, 120), (120, 10), (75, 75), (120, 180), (199, 249), (133, 61)]:
        assert got[r, col] == pytest.approx(expected(r, col), abs=1e-3), (r, col)
    if blend == "constant":
        # interior point of 4 windows: their plain mean
        inside = [v for (y, x), v in zip(starts, values) if y <= 75 < y + OUT and x <= 75 < x + OUT]
        assert len(inside) == 4 and got[75, 75] == pytest.approx(np.mean(inside), abs=1e-3)


def test_ensemble_averages_probabilities(tmp_path):
    reader = ArrayReader(np.full((450, 500, 3), 255, np.uint8))
    P.predict_slide(reader, [ConstantModel(2.0), ConstantModel(-1.0)], None, cfg(), tmp_path / "e.zarr", MEAN, STD)
    want = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))).item() / 2
    np.testing.assert_allclose(read_map(tmp_path / "e.zarr"), want, atol=1e-3)  # not sigmoid(mean logit) = 0.62


def test_tta_maps_predictions_back(tmp_path):
    """A per-pixel model is flip/rotation equivariant: TTA must give the same map iff inverted right."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (420, 510, 3), dtype=np.uint8)
    reader = ArrayReader(img)
    P.predict_slide(reader, [OracleModel()], None, cfg(), tmp_path / "a.zarr", MEAN, STD)
    P.predict_slide(reader, [OracleModel()], None, cfg(tta=("hflip", "vflip", "rot90")), tmp_path / "b.zarr", MEAN, STD)
    a, b = read_map(tmp_path / "a.zarr"), read_map(tmp_path / "b.zarr")
    assert a.std() > 0.05  # not trivially constant
    np.testing.assert_allclose(a, b, atol=2e-3)


class LayoutRecordingNet(nn.Module):
    """A small conv net that records whether each input arrived in channels-last memory."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.layouts: list[bool] = []

    def forward(self, x):
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return self.conv(x)


@pytest.mark.parametrize("tta", [(), ("hflip", "rot90")])
def test_channels_last_on_the_cpu_gives_the_same_map(tmp_path, tta):
    """``predict.channels_last`` applies on the CPU too: the model sees channels-last
    windows, and the map equals the contiguous layout's up to float rounding."""
    rng = np.random.default_rng(5)
    reader = ArrayReader(rng.integers(0, 256, (420, 510, 3), dtype=np.uint8))
    maps = {}
    for last in (False, True):
        model = LayoutRecordingNet()
        P.predict_slide(reader, [model], None, cfg(channels_last=last, tta=tta), tmp_path / f"{last}.zarr", MEAN, STD)
        assert model.layouts and set(model.layouts[:: 1 + len(tta)]) == {last}  # the untransformed pass
        maps[last] = read_map(tmp_path / f"{last}.zarr")
    assert maps[False].std() > 0.01
    np.testing.assert_allclose(maps[True], maps[False], atol=1e-3)  # float16 store: 1e-3 is its resolution


def test_staging_alternates_two_buffers_and_holds_the_stacked_windows():
    """The CUDA staging path (two host buffers taking turns), run with unpinned CPU buffers."""
    from pipeline.inference import Staging

    rng = np.random.default_rng(2)
    staging = Staging(4, 8, torch.device("cpu"), buffered=True)
    batches = [[rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(n)] for n in (4, 2, 3)]
    staged = [staging.stack(b) for b in batches]
    for got, windows in zip(staged[1:], batches[1:], strict=True):  # the first buffer is reused by the third batch
        np.testing.assert_array_equal(got.numpy(), np.stack(windows))
    assert [tuple(t.shape) for t in staged] == [(4, 8, 8, 3), (2, 8, 8, 3), (3, 8, 8, 3)]
    ptrs = [t.data_ptr() for t in staged]
    assert ptrs[0] != ptrs[1] and ptrs[2] == ptrs[0]
    assert isinstance(Staging(4, 8, torch.device("cpu")).stack(batches[0]), np.ndarray)  # CPU default: no buffers


def test_staged_buffers_give_the_same_map(tmp_path, monkeypatch):
    """Windows stacked into the (CUDA) staging buffers predict the map of plain NumPy batches."""
    from pipeline import inference

    rng = np.random.default_rng(6)
    reader = ArrayReader(rng.integers(0, 256, (420, 510, 3), dtype=np.uint8))
    torch.manual_seed(0)
    model = LayoutRecordingNet()
    P.predict_slide(reader, [model], None, cfg(), tmp_path / "plain.zarr", MEAN, STD)
    made: list[inference.Staging] = []

    def buffered(*args, **kwargs) -> inference.Staging:
        made.append(inference.Staging(*args, **kwargs, buffered=True))
        return made[-1]

    monkeypatch.setattr(P, "Staging", buffered)
    P.predict_slide(reader, [model], None, cfg(), tmp_path / "staged.zarr", MEAN, STD)
    assert made and made[0].buffers, "prediction did not stage into the buffers"
    plain, staged = read_map(tmp_path / "plain.zarr"), read_map(tmp_path / "staged.zarr")
    assert plain.std() > 0.01
    np.testing.assert_array_equal(staged, plain)


# ---------------------------------------------------------------- streaming and atomicity


class RecordingArray:
    """Wraps the zarr array the accumulator writes to, recording each row range."""

    def __init__(self, arr) -> None:
        self.arr, self.writes = arr, []
        self.shape, self.dtype = arr.shape, arr.dtype

    def __setitem__(self, key, value):
        self.writes.append((key[0].start, key[0].stop))
        self.arr[key] = value


def test_accumulators_are_band_sized_and_rows_stream_out(tmp_path, monkeypatch):
    H, W = 1500, 1200
    reader = ArrayReader(np.full((H, W, 3), 255, np.uint8))
    made = []
    real = P.BandAccumulator.__init__

    def spy(self, out, band_height):
        rec = RecordingArray(out)
        made.append(rec)
        real(self, rec, band_height)

    monkeypatch.setattr(P.BandAccumulator, "__init__", spy)
    stats = P.predict_slide(reader, [ConstantModel(0.0)], None, cfg(), tmp_path / "s.zarr", MEAN, STD)
    lh, lw = H // SCALE, W // SCALE
    assert stats.accumulator_shape == (OUT, lw)  # one window high at model resolution, never the slide
    assert stats.store_shape == (lh, lw) and stats.store_chunks == (OUT // 2, min(P.CHUNK_COLS, lw))
    arr = zarr.open_array(store=str(tmp_path / "s.zarr"), mode="r")
    assert arr.chunks == (OUT // 2, min(P.CHUNK_COLS, lw)) and arr.dtype == np.float16
    writes = made[0].writes
    assert len(writes) >= lh // (OUT // 2) - 1  # written band by band as the grid advanced
    assert all(b - a <= OUT for a, b in writes)
    assert [a for a, _ in writes] == sorted(a for a, _ in writes) and writes[-1][1] == lh
    assert writes[0][1] < lh // 2  # the top was flushed long before the end


def test_store_is_written_atomically(tmp_path):
    reader = ArrayReader(np.full((900, 900, 3), 255, np.uint8))
    out = tmp_path / "x.zarr"

    class Boom(nn.Module):
        calls = 0

        def forward(self, x):
            Boom.calls += 1
            if Boom.calls == 3:
                raise RuntimeError("model crashed")
            return torch.zeros((x.shape[0], 1, *x.shape[-2:]))

    with pytest.raises(RuntimeError, match="crashed"):
        P.predict_slide(reader, [Boom()], None, cfg(), out, MEAN, STD)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a partial store is left
    P.predict_slide(reader, [ConstantModel(1.0)], None, cfg(), out, MEAN, STD)
    arr = zarr.open_array(store=str(out), mode="r")
    assert arr.attrs["slide_shape"] == [900, 900] and arr.attrs["scale"] == SCALE
    chunk_files = [p for p in out.iterdir() if p.name.startswith("c")]
    assert chunk_files and all(p.is_file() and p.name.startswith("c.") for p in chunk_files)  # flat chunk keys
    Boom.calls = 0
    with pytest.raises(RuntimeError):
        P.predict_slide(reader, [Boom()], None, cfg(), out, MEAN, STD)
    assert float(zarr.open_array(store=str(out), mode="r")[0, 0]) == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]  # the old result survives a failed rerun


# ---------------------------------------------------------------- seams and round trips


def blob_slide(height=1500, width=1800, seed=0):
    """Pink tissue on glass with dark purple glomeruli-like disks (random radii 40-90 px)."""
    rng = np.random.default_rng(seed)
    disks = [(int(rng.integers(100, height - 100)), int(rng.integers(100, width - 100)), int(rng.integers(40, 90))) for _ in range(14)]
    img, mask = disks_image(height, width, disks, background=STAIN, colour=(70, 20, 90))
    img[:, : width // 8] = GLASS
    mask[:, : width // 8] = False
    return img, mask


def _shifted_pair_dice(tmp_path, img, c) -> tuple[float, int]:
    reader = ArrayReader(img)
    half = int(round(WINDOW * (1 - c.overlap))) // 2
    P.predict_slide(reader, [BlurModel()], None, c, tmp_path / "a.zarr", MEAN, STD)
    P.predict_slide(reader, [BlurModel()], None, c, tmp_path / "b.zarr", MEAN, STD, origin=(half, half))
    a = decode(encode_prediction(tmp_path / "a.zarr", img.shape[:2], c), img.shape[:2]).astype(bool)
    b = decode(encode_prediction(tmp_path / "b.zarr", img.shape[:2], c), img.shape[:2]).astype(bool)
    return dice(a, b), int(a.sum())


def test_shifted_grid_gives_the_same_mask(tmp_path):
    """No seams: shifting the grid by half a stride changes (almost) nothing.

    The model is biased near window borders; Gaussian blending over 50 % overlap
    hides that (Dice ~0.9999 here). The same check fails for plain tiling (no
    overlap, constant weights, Dice ~0.98): the test can tell seams apart.
    """
    img, _ = blob_slide(1200, 1500)
    score, area = _shifted_pair_dice(tmp_path / "g", img, cfg(batch_size=8))
    assert area > 50_000
    assert score >= 0.99
    tiled, _ = _shifted_pair_dice(tmp_path / "t", img, cfg(batch_size=8, blend="constant", overlap=0.0))
    assert tiled < 0.99


def test_oracle_round_trip_at_full_resolution(tmp_path):
    """Perfect model -> consensus -> upsampled mask vs the truth.

    The oracle returns the truth's area fraction per 3 x 3 block; blending identical
    values gives them back. Bilinear upsampling of those fractions puts the 0.5
    crossing within about a pixel of the true edge (nearest: within 1.5 px), so for
    disks of radius >= 40 px only a thin rim can differ: Dice >= 0.99 (not 1.0,
    since 1/3-resolution cannot carry sub-block detail).
    """
    disks = [(200, 260, 60), (520, 700, 90), (760, 300, 45), (330, 1000, 70), (801, 1012, 41)]
    img, truth = disks_image(1000, 1201, disks)
    reader = ArrayReader(img)
    c = cfg()
    P.predict_slide(reader, [OracleModel()], None, c, tmp_path / "o.zarr", MEAN, STD)
    low = read_map(tmp_path / "o.zarr")
    want = truth.astype(np.float32)
    want = np.pad(want, ((0, 2), (0, 0)))  # 1000 -> 1002 rows, 1201 -> 1203 columns, padding is glass
    want = np.pad(want, ((0, 0), (0, 2))).reshape(334, 3, 401, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(low, want, atol=4e-3)  # the map is the truth at model resolution
    for mode, floor in (("bilinear", 0.99), ("nearest", 0.985)):
        rle = encode_prediction(tmp_path / "o.zarr", truth.shape, dataclasses.replace(c, upsample=mode))
        assert dice(decode(rle, truth.shape).astype(bool), truth) >= floor, mode


def test_empty_slides_encode_to_empty_string(tmp_path):
    from pipeline.tissue import TissueMask

    img, _ = blob_slide(900, 900)
    reader = ArrayReader(img)
    no_tissue = TissueMask(mask=np.zeros((9, 9), bool), downsample=100.0, thumbnail=np.zeros((9, 9, 3), np.uint8))
    stats = P.predict_slide(reader, [BlurModel()], no_tissue, cfg(tissue_only=True), tmp_path / "t.zarr", MEAN, STD)
    assert stats.windows == 0 and reader.reads == []
    assert (read_map(tmp_path / "t.zarr") == 0).all()
    assert encode_prediction(tmp_path / "t.zarr", (900, 900), cfg()) == ""
    blank = ArrayReader(np.full((900, 900, 3), 255, np.uint8))  # glomeruli-free
    P.predict_slide(blank, [OracleModel()], None, cfg(), tmp_path / "g.zarr", MEAN, STD)
    assert encode_prediction(tmp_path / "g.zarr", (900, 900), cfg()) == ""


# ---------------------------------------------------------------- stage entry points (real files)


def test_run_predict_loads_an_ensemble_of_checkpoints(tmp_path):
    pytest.importorskip("pipeline.slides")
    from pipeline.config import ModelConfig, TilesConfig
    from pipeline.models import load_model, save_checkpoint, build_model
    from pipeline.slides import open_slide
    from pipeline.tissue import TissueMask, save_tissue

    img, _ = blob_slide(400, 520)
    slide = tmp_path / "s.tiff"
    tifffile.imwrite(slide, img, tile=(256, 256), photometric="rgb", compression="zlib")
    mcfg = ModelConfig(arch="Unet", encoder="resnet18", mean=MEAN, std=STD)
    trained = Config(model=mcfg, tiles=TilesConfig(size=384, out_size=128))
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(tmp_path / f"fold{seed}.pt")
        save_checkpoint(ckpts[-1], build_model(mcfg), trained, epoch=1, metrics={})
    mask = np.zeros((13, 17), bool)
    mask[:, 13:] = True  # glass over the left 416 px: the first column of windows is skipped
    tissue_png = tmp_path / "tissue.png"
    save_tissue(TissueMask(mask=mask, downsample=32.0, thumbnail=np.zeros((13, 17, 3), np.uint8)), tissue_png, tmp_path / "t.thumb.png")
    config = Config(predict=PredictConfig(window=384, out_size=128, batch_size=4, tissue_only=True, device="cpu"))
    P.run_predict(slide, ckpts, tissue_png, tmp_path / "p.zarr", config)
    arr = zarr.open_array(store=str(tmp_path / "p.zarr"), mode="r")
    assert arr.shape == (134, 174) and arr.attrs["models"] == 2 and arr.attrs["slide_shape"] == [400, 520]
    assert arr.attrs["windows"] == 2  # of 4: the two over glass only are skipped
    got = np.asarray(arr[:], np.float32)
    assert (got[:, 46:] > 0).all() and (got[:, :46] == 0).all()
    models = [load_model(c, "cpu")[0] for c in ckpts]
    from pipeline.tissue import load_tissue

    with open_slide(slide) as reader:
        P.predict_slide(reader, models, load_tissue(tissue_png, (400, 520)), config.predict, tmp_path / "q.zarr", MEAN, STD)
    np.testing.assert_allclose(got, read_map(tmp_path / "q.zarr"), atol=1e-3)
    # encode finds the tissue stage's thumbnail through the store's attrs (no pass over the slide)
    rle = run_encode(tmp_path / "p.zarr", slide, tmp_path / "p.rle", tmp_path / "p.geojson", tmp_path / "p.png", None, config)
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size == (17, 13 + 16)
    assert (tmp_path / "p.rle").read_text() == rle + "\n"
    wrong = Config(predict=PredictConfig(window=512, out_size=128, device="cpu"))
    with pytest.raises(ConfigError, match="fold0.pt"):
        P.run_predict(slide, ckpts, tissue_png, tmp_path / "r.zarr", wrong)
    assert not (tmp_path / "r.zarr").exists()
