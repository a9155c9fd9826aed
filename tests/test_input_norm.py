"""Input intensity normalisation (``model.input_norm``): none | invert_dark | per_image.

Real small data: NumPy images, tile stores, real tiled TIFF slides with tissue masks and
thumbnails, through the project's own training dataset, first pass and predict path with
real (tiny) networks. The slide decisions are taken once per slide from its thumbnail, so
every window of a slide is treated alike, and ``none`` leaves everything as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn

from pipeline import predict as P
from pipeline import slide_inputs as SI
from pipeline.config import Config, ModelConfig, PredictConfig, SlidesConfig, TilesConfig, TrainConfig, load_config
from pipeline.config_checks import check_config
from pipeline.errors import ConfigError, DataError
from pipeline.input_norm import InputNorm, IntensityStats, intensity_stats, invert
from pipeline.models import build_model, read_checkpoint, save_checkpoint
from pipeline.reduced import read_window
from pipeline.slides import open_slide
from pipeline.tensors import to_tensor
from pipeline.tissue import TissueMask, load_tissue, save_tissue
from pipeline.tile_dataset import TileDataset
from pipeline.train import _Runner, fit
from tests.test_reduced import SmallNet
from tests.tile_stores import ENCODER, make_tile_stores

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DOWN = 4  # thumbnail downsample of the test slides


# ---------------------------------------------------------------- images


def blocky(rng: np.random.Generator, shape: tuple[int, int], base, spread: float, block: int = 8) -> np.ndarray:
    """uint8 RGB around ``base``: random colours constant over ``block`` x ``block`` px (exact at any 2^k reduction)."""
    small = np.asarray(base, float) + rng.normal(0, spread, (shape[0] // block, shape[1] // block, 3))
    return np.kron(np.clip(small, 0, 255), np.ones((block, block, 1))).astype(np.uint8)


def dark_field(rng: np.random.Generator, shape=(256, 256)) -> np.ndarray:
    """Fluorescence: a bright tissue piece (top left) on a black background; its windows there are bright."""
    image = blocky(rng, shape, (12, 14, 10), 3)
    h, w = shape[0] * 5 // 64 * 8, shape[1] * 5 // 64 * 8
    image[:h, :w] = blocky(rng, (h, w), (215, 225, 205), 20)
    return image


def bright_field(rng: np.random.Generator, shape=(256, 256)) -> np.ndarray:
    """Bright-field: dense dark stained tissue (top left) on white glass; its windows there are dark."""
    image = blocky(rng, shape, (242, 240, 244), 3)
    h, w = shape[0] * 5 // 64 * 8, shape[1] * 5 // 64 * 8
    image[:h, :w] = blocky(rng, (h, w), (95, 45, 115), 20)
    return image


def thumbnail(image: np.ndarray, down: int = DOWN) -> np.ndarray:
    """Area-reduced thumbnail (what the tissue stage writes, here exact for block-constant images)."""
    h, w = image.shape[0] // down, image.shape[1] // down
    return image[: h * down, : w * down].reshape(h, down, w, down, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def write_slide(root: Path, name: str, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[Path, Path]:
    """A tiled TIFF plus its tissue mask PNG and thumbnail, as the tissue stage leaves them."""
    root.mkdir(parents=True, exist_ok=True)
    slide = root / f"{name}.tiff"
    tifffile.imwrite(slide, image, tile=(64, 64), photometric="rgb")
    thumb = thumbnail(image)
    mask = np.ones(thumb.shape[:2], bool) if mask is None else mask
    save_tissue(TissueMask(mask, float(DOWN), thumb), root / f"{name}.png", root / f"{name}.thumb.png")
    return slide, root / f"{name}.png"


# ---------------------------------------------------------------- the maps themselves


def test_invert_dark_inverts_a_dark_field_image_and_leaves_bright_field_alone() -> None:
    rng = np.random.default_rng(0)
    dark, bright = dark_field(rng), bright_field(rng)
    norm = InputNorm("invert_dark")
    assert norm.invert_threshold == 127.0
    dark_stats, bright_stats = intensity_stats(dark), intensity_stats(bright)
    assert dark_stats.mean_intensity < 127 < bright_stats.mean_intensity
    assert norm.inverts(dark_stats) and not norm.inverts(bright_stats)
    assert norm.pixel_map(bright_stats) is None
    np.testing.assert_array_equal(norm.pixel_map(dark_stats)(dark), 255 - dark.astype(np.int16))
    # the threshold is the one set
    assert InputNorm("invert_dark", 90.0).inverts(dark_stats) == (dark_stats.mean_intensity < 90.0)
    assert not InputNorm("per_image").inverts(dark_stats) and not InputNorm().inverts(dark_stats)

    # patches (no slide): each image on its own, in one batch
    x = norm.model_input(np.stack([dark, bright]), None, MEAN, STD)
    np.testing.assert_array_equal(x[0].numpy(), to_tensor(invert(dark), MEAN, STD)[0].numpy())
    np.testing.assert_array_equal(x[1].numpy(), to_tensor(bright, MEAN, STD)[0].numpy())
    # and predict_batch on patches does the same
    net = SmallNet()
    got = P.predict_batch([net], np.stack([dark, bright]), MEAN, STD, torch.device("cpu"), input_norm=norm)
    want = P.predict_batch([net], np.stack([invert(dark), bright]), MEAN, STD, torch.device("cpu"))
    np.testing.assert_array_equal(got, want)


def test_per_image_standardises_each_patch_per_channel() -> None:
    rng = np.random.default_rng(1)
    images = np.stack([bright_field(rng, (96, 96)), dark_field(rng, (96, 96)),
                       np.clip(rng.normal((60, 200, 120), (5, 30, 12), (96, 96, 3)), 0, 255).astype(np.uint8)])
    norm = InputNorm("per_image")
    x = norm.model_input(images, None, MEAN, STD).double()
    assert x.shape == (3, 3, 96, 96)
    np.testing.assert_allclose(x.mean(dim=(2, 3)).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(dim=(2, 3), unbiased=False).numpy(), 1.0, atol=1e-4)
    # model.mean/std play no part
    np.testing.assert_array_equal(norm.model_input(images, None, (0.1, 0.2, 0.3), (0.9, 0.8, 0.7)).numpy(),
                                  x.float().numpy())
    # a slide's statistics apply to every image alike (here: those of the first image)
    stats = intensity_stats(images[0])
    y = norm.model_input(images, stats, MEAN, STD).double()
    np.testing.assert_allclose(y[0].mean(dim=(1, 2)).numpy(), 0.0, atol=1e-4)
    assert abs(float(y[1].mean())) > 1.0  # the dark image is not re-centred on its own
    # a flat image does not blow up
    flat = norm.model_input(np.full((8, 8, 3), 200, np.uint8), None, MEAN, STD)
    assert torch.isfinite(flat).all() and float(flat.abs().max()) == 0.0


def test_settings_round_trip_and_old_checkpoints_count_as_none() -> None:
    for norm in (InputNorm(), InputNorm("invert_dark", 80.0), InputNorm("per_image")):
        assert InputNorm.from_dict(norm.as_dict()) == norm
    assert InputNorm("per_image", 80.0) == InputNorm("per_image")  # the threshold only counts for invert_dark
    assert InputNorm.from_dict(None) == InputNorm.from_meta({}) == InputNorm()
    assert InputNorm.from_meta({"config": {"model": {"arch": "Unet"}}}) == InputNorm()  # from before the key
    stats = IntensityStats(100.0, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert IntensityStats.from_dict(stats.as_dict()) == stats
    with pytest.raises(ConfigError, match="model.input_norm must be one of none, invert_dark, per_image"):
        InputNorm("clahe")
    with pytest.raises(ConfigError, match="model.invert_threshold must be in 0..255"):
        InputNorm("invert_dark", 300.0)
    with pytest.raises(ConfigError, match="model.input_norm"):
        load_config(None, {"model": {"input_norm": 3}})


def test_colour_and_input_normalisation_are_not_combined(tmp_path: Path) -> None:
    config = load_config(None, {"slides": {"normalise": "reinhard"}, "model": {"input_norm": "per_image"}})
    with pytest.raises(ConfigError, match="slides.normalise: reinhard and model.input_norm: per_image"):
        check_config(config)
    check_config(dataclasses.replace(config, slides=SlidesConfig(normalise="none")))
    index, stores = make_tile_stores(tmp_path / "tiles", n_slides=2)
    with pytest.raises(ConfigError, match="set one of them to none"):
        fit(index, None, stores, tmp_path / "model", config)
    assert not (tmp_path / "model" / "model.pt").exists()


# ---------------------------------------------------------------- training and the first pass


def test_training_tiles_use_the_slides_statistics(tmp_path: Path) -> None:
    index, stores = make_tile_stores(tmp_path / "tiles", n_slides=2)
    plain = TileDataset(index, stores)

    # none: the same uint8 tiles as before, and the same tensor
    same = TileDataset(index, stores, input_norm=InputNorm())
    for row in range(len(index)):
        a, b = plain[row], same[row]
        assert a[0].dtype == np.uint8
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    runner = _Runner(nn.Conv2d(3, 1, 1), Config(), torch.device("cpu"))
    images = torch.from_numpy(np.stack([plain[r][0] for r in range(4)]))
    x, _ = runner.batch(images, torch.zeros(4, 64, 64, dtype=torch.uint8))
    np.testing.assert_array_equal(x.numpy(), to_tensor(images, MEAN, STD).numpy())

    # per_image: every tile of a slide standardised with the slide's statistics (the store's)
    norm = InputNorm("per_image")
    data = TileDataset(index, stores, input_norm=norm)
    for slide in ("slide0", "slide1"):
        stats = IntensityStats.from_dict(dict(zarr.open_group(str(stores[slide]), mode="r").attrs)["input_stats"])
        rows = np.flatnonzero((index["slide"] == slide).to_numpy())
        items = np.stack([data[int(r)][0] for r in rows])
        assert items.dtype == np.float32
        raw = np.stack([plain[int(r)][0] for r in rows]).astype(np.float64)
        np.testing.assert_allclose(items * np.asarray(stats.std) + np.asarray(stats.mean), raw, atol=1e-3)
        tissue = items[(index["tissue"].to_numpy()[rows] > 0)]  # the statistics are those of the tissue
        np.testing.assert_allclose(tissue.reshape(-1, 3).mean(axis=0), 0.0, atol=1e-3)
        np.testing.assert_allclose(tissue.reshape(-1, 3).std(axis=0), 1.0, atol=1e-3)
    # the runner takes them as they are: no model mean/std on top
    batch = torch.from_numpy(np.stack([data[r][0] for r in range(4)]))
    x, _ = runner.batch(batch, torch.zeros(4, 64, 64, dtype=torch.uint8))
    np.testing.assert_array_equal(x.numpy(), batch.permute(0, 3, 1, 2).numpy())

    # stores without the statistics name the fix
    group = zarr.open_group(str(stores["slide1"]), mode="a")
    del group.attrs["input_stats"]
    with pytest.raises(DataError, match="slide1.zarr.*no intensity statistics.*rerun the tiles stage"):
        TileDataset(index, stores, input_norm=norm)
    TileDataset(index, stores)  # not needed with none


class Recorder(nn.Module):
    """A real 1x1 conv net that keeps every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.conv(x)


@pytest.mark.parametrize("norm", [InputNorm("invert_dark", 250.0), InputNorm("per_image")])
def test_the_first_pass_sees_what_training_sees(tmp_path: Path, norm: InputNorm) -> None:
    from pipeline.filtering import score_tiles

    index, stores = make_tile_stores(tmp_path / "tiles", n_slides=2)
    config = Config(model=ModelConfig(input_norm=norm.method, invert_threshold=norm.invert_threshold or 127.0),
                    train=TrainConfig(batch_size=4, num_workers=0))
    model = Recorder()
    score_tiles(model, index, stores, config)
    seen = torch.cat(model.seen).numpy()
    data = TileDataset(index, stores, input_norm=norm)
    runner = _Runner(nn.Conv2d(3, 1, 1), config, torch.device("cpu"))
    want = runner.batch(torch.from_numpy(np.stack([data[r][0] for r in range(len(index))])),
                        torch.zeros(len(index), 64, 64, dtype=torch.uint8))[0].numpy()
    np.testing.assert_array_equal(seen, want)
    if norm.method == "invert_dark":  # every slide of these is darker than 250: every tile inverted
        raw = np.stack([TileDataset(index, stores)[r][0] for r in range(len(index))])
        np.testing.assert_array_equal(seen, to_tensor(invert(raw), MEAN, STD).numpy())


def test_fit_stores_the_setting_in_the_checkpoint(tmp_path: Path) -> None:
    index, stores = make_tile_stores(tmp_path / "tiles", n_slides=2, n_pos=4, n_tissue=2, n_glass=2)
    config = Config(
        model=ModelConfig(arch="Unet", encoder=ENCODER, decoder_channels=[16, 8, 8, 8, 8], input_norm="invert_dark",
                          invert_threshold=100.0),
        train=TrainConfig(epochs=1, batch_size=8, num_workers=0),
    )
    fit(index, None, stores, tmp_path / "model", config)
    meta = read_checkpoint(tmp_path / "model" / "model.pt")
    assert meta["input_norm"] == {"method": "invert_dark", "invert_threshold": 100.0}
    assert InputNorm.from_meta(meta) == InputNorm("invert_dark", 100.0)
    assert SI.ensemble_input_norm([meta], ["model.pt"]) == InputNorm("invert_dark", 100.0)


# ---------------------------------------------------------------- prediction over whole slides




MCFG = ModelConfig(arch="Unet", encoder="resnet18", decoder_channels=[16, 8, 8, 8, 8])


def predict_config(**model) -> Config:
    return Config(model=dataclasses.replace(MCFG, **model), tiles=TilesConfig(size=128, stride=128, out_size=64),
                  predict=PredictConfig(window=128, out_size=64, overlap=0.5, batch_size=4, tta=[], threshold=0.5,
                                        device="cpu", workers=2))


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(MCFG, load_weights=False).eval()


def checkpoint(path: Path, model: nn.Module, norm: InputNorm | None) -> Path:
    """``norm`` None: a checkpoint from before input normalisation (no entry, no config keys)."""
    config = predict_config(**({} if norm is None else {"input_norm": norm.method,
                                                         "invert_threshold": norm.invert_threshold or 127.0}))
    save_checkpoint(path, model, config, 1, {}, extra={} if norm is None else {"input_norm": norm.as_dict()})
    if norm is None:
        payload = torch.load(path, weights_only=True)
        for key in ("input_norm", "invert_threshold"):
            del payload["config"]["model"][key]
        torch.save(payload, path)
    return path


def read_map(path: Path) -> tuple[np.ndarray, dict]:
    store = zarr.open_array(str(path), mode="r")
    return np.asarray(store[:]), {k: v for k, v in store.attrs.items() if k != "timings"}


def test_none_leaves_predictions_bit_identical(tmp_path: Path, unet: nn.Module) -> None:
    rng = np.random.default_rng(2)
    slide, tissue_png = write_slide(tmp_path, "s", bright_field(rng, (256, 320)))
    config = predict_config()
    maps = {}
    for name, norm in (("old", None), ("none", InputNorm())):
        ckpt = checkpoint(tmp_path / f"{name}.pt", unet, norm)
        P.run_predict(slide, [ckpt], tissue_png, tmp_path / f"{name}.zarr", config)
        maps[name] = read_map(tmp_path / f"{name}.zarr")
    # the call run_predict made before input normalisation existed
    with open_slide(slide) as reader:
        tissue = load_tissue(tissue_png, reader.shape)
        P.predict_slide(reader, [unet], tissue, config.predict, tmp_path / "before.zarr", list(MEAN), list(STD),
                        "cpu", slide_id="s", extra_attrs={"tissue_png": str(tissue_png)})
    before = read_map(tmp_path / "before.zarr")
    assert float(before[0].astype(np.float32).std()) > 0.01  # not flat: a difference would show
    for name in ("old", "none"):
        np.testing.assert_array_equal(maps[name][0], before[0])
        assert maps[name][1] == before[1]
        assert "input_norm" not in maps[name][1]


class Windows:
    """Records what ``predict_batch`` is given for each window: the uint8 images and the mean/std."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images: list[np.ndarray] = []
        self.stats: list[tuple[list[float], list[float]]] = []
        real = P.predict_batch

        def record(models, images, mean, std, *args, **kw):
            self.images.append(np.array(images))
            self.stats.append((list(mean), list(std)))
            return real(models, images, mean, std, *args, **kw)

        monkeypatch.setattr(P, "predict_batch", record)

    def all(self) -> np.ndarray:
        return np.concatenate(self.images)


def raw_windows(slide: Path, config: Config) -> np.ndarray:
    """Every window of the prediction grid read from the slide on its own (no normalisation), in grid order."""
    cfg = config.predict
    with open_slide(slide) as reader:
        grid = P.window_grid(reader.shape, cfg.window, cfg.overlap, scale=cfg.window // cfg.out_size)
        return np.stack([read_window(reader, int(y), int(x), cfg.window, cfg.out_size) for y, x in zip(grid.y0, grid.x0)])


def test_invert_dark_decides_once_per_slide(tmp_path: Path, unet: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dark-field slide is inverted in every window (also its bright, tissue-filled ones), a bright-field
    slide in none (also its dark, tissue-filled ones): the decision is the slide's, from its thumbnail."""
    rng = np.random.default_rng(3)
    norm = InputNorm("invert_dark")
    config = predict_config(input_norm="invert_dark")
    ckpt = checkpoint(tmp_path / "invert.pt", unet, norm)
    plain = checkpoint(tmp_path / "none.pt", unet, InputNorm())
    for name, image, inverted in (("dark", dark_field(rng), True), ("bright", bright_field(rng), False)):
        slide, tissue_png = write_slide(tmp_path / name, name, image)
        raw = raw_windows(slide, config)
        means = raw.reshape(len(raw), -1).mean(axis=1)
        # a per-window rule would decide differently for some windows of this slide
        assert (means < 127).any() and (means >= 127).any(), means

        windows = Windows(monkeypatch)
        P.run_predict(slide, [ckpt], tissue_png, tmp_path / name / "map.zarr", config)
        np.testing.assert_array_equal(windows.all(), invert(raw) if inverted else raw)
        assert all(s == (list(MEAN), list(STD)) for s in windows.stats)
        got, attrs = read_map(tmp_path / name / "map.zarr")
        assert attrs["input_norm"]["inverted"] is inverted
        assert attrs["input_norm"]["slide"] == intensity_stats(thumbnail(image)).as_dict()

        # the whole map equals predicting the (inverted or not) slide with an unnormalised model
        same, _ = write_slide(tmp_path / f"{name}-by-hand", name, invert(image) if inverted else image)
        P.run_predict(same, [plain], tissue_png, tmp_path / name / "by-hand.zarr", config)
        np.testing.assert_array_equal(got, read_map(tmp_path / name / "by-hand.zarr")[0])
        monkeypatch.undo()


def test_per_image_uses_the_slides_statistics_for_every_window(tmp_path: Path, unet: nn.Module,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    image = blocky(rng, (256, 256), (200, 120, 160), 15)  # tissue all over: its windows are the slide
    image[:, 128:] = blocky(rng, (256, 128), (150, 90, 200), 15)  # two stains: windows differ from the slide
    slide, tissue_png = write_slide(tmp_path, "s", image)
    config = predict_config(input_norm="per_image")
    windows = Windows(monkeypatch)
    P.run_predict(slide, [checkpoint(tmp_path / "p.pt", unet, InputNorm("per_image"))], tissue_png,
                  tmp_path / "p.zarr", config)
    stats = intensity_stats(thumbnail(image), np.ones((64, 64), bool))
    want = ([v / 255 for v in stats.mean], [v / 255 for v in stats.std])
    assert len(windows.stats) > 1 and all(s == want for s in windows.stats)  # one map for every window
    x = to_tensor(windows.all(), *want).double()  # what the model saw
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=0.05)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, atol=0.05)
    windows_own = [x[i].mean(dim=(1, 2)) for i in range(len(x))]
    assert max(float(w.abs().max()) for w in windows_own) > 0.5  # ... not each window on its own
    _, attrs = read_map(tmp_path / "p.zarr")
    assert attrs["input_norm"]["method"] == "per_image"
    np.testing.assert_allclose(attrs["input_norm"]["mean"], want[0])


def test_tiles_and_prediction_share_the_slides_statistics(tmp_path: Path) -> None:
    """The tiles stage stores the statistics prediction computes; a tile and the window at its place
    then reach the model identically in training and in prediction."""
    from pipeline import annotations
    from pipeline.config import TissueConfig
    from pipeline.tiles import read_input_stats, run_tiles
    from pipeline.tissue import run_tissue
    from shapely.geometry import Point

    rng = np.random.default_rng(5)
    image = dark_field(rng, (384, 384))
    tifffile.imwrite(tmp_path / "s.tiff", image, tile=(64, 64), photometric="rgb")
    annotations.write_geojson([Point(80, 80).buffer(30)], tmp_path / "s.json")
    config = Config(tissue=TissueConfig(downsample=8), tiles=TilesConfig(size=128, stride=128, out_size=64,
                                                                         min_tissue=0.05))
    run_tissue(tmp_path / "s.tiff", tmp_path / "s.png", tmp_path / "s.thumb.png", config)
    store = tmp_path / "tiles" / "s.zarr"
    index = run_tiles(tmp_path / "s.tiff", "s", None, tmp_path / "s.json", tmp_path / "s.png", store,
                      tmp_path / "tiles" / "s.csv", config)
    assert len(index) >= 2
    tissue = load_tissue(tmp_path / "s.png", image.shape[:2])
    assert read_input_stats(store) == intensity_stats(tissue.thumbnail, tissue.mask)
    for norm in (InputNorm("invert_dark"), InputNorm("per_image")):
        pixel_map, mean, std, _ = SI.slide_input_norm(norm, tissue, "s.tiff", MEAN, STD)
        data = TileDataset(index, {"s": store}, input_norm=norm)
        with open_slide(tmp_path / "s.tiff") as reader:
            for row, (y0, x0) in enumerate(zip(index["y0"], index["x0"])):
                window = read_window(reader, int(y0), int(x0), 128, 64)
                if pixel_map is not None:
                    window = pixel_map(window)
                predicted = to_tensor(window, mean, std)
                trained = _Runner(nn.Conv2d(3, 1, 1), predict_config(input_norm=norm.method), torch.device("cpu"))
                x, _ = trained.batch(torch.from_numpy(data[row][0][None]), torch.zeros(1, 64, 64, dtype=torch.uint8))
                np.testing.assert_array_equal(x.numpy(), predicted.numpy())
        assert (pixel_map is not None) == (norm.method == "invert_dark")  # a dark-field slide


def test_ensemble_members_must_agree(tmp_path: Path, unet: nn.Module) -> None:
    rng = np.random.default_rng(6)
    slide, tissue_png = write_slide(tmp_path, "s", bright_field(rng, (128, 128)))
    config = predict_config()
    a = checkpoint(tmp_path / "a.pt", unet, InputNorm("per_image"))
    b = checkpoint(tmp_path / "b_invert.pt", unet, InputNorm("invert_dark"))
    with pytest.raises(ConfigError, match=r"b_invert\.pt.*disagree on input normalisation"):
        P.run_predict(slide, [a, b], tissue_png, tmp_path / "m.zarr", config)
    assert not (tmp_path / "m.zarr").exists()
    c = checkpoint(tmp_path / "c_thr.pt", unet, InputNorm("invert_dark", 90.0))
    with pytest.raises(ConfigError, match=r"c_thr\.pt.*disagree"):
        P.run_predict(slide, [b, c], tissue_png, tmp_path / "m.zarr", config)
    # a checkpoint from before the key and one with none agree
    old, new = checkpoint(tmp_path / "old.pt", unet, None), checkpoint(tmp_path / "new.pt", unet, InputNorm())
    P.run_predict(slide, [old, new], tissue_png, tmp_path / "m.zarr", config)
    # a normalising model needs the slide's thumbnail
    (tmp_path / "s.thumb.png").unlink()
    with pytest.raises(DataError, match=r"s\.tiff.*normalises its input \(per_image\).*no thumbnail"):
        P.run_predict(slide, [a], tissue_png, tmp_path / "m2.zarr", config)
