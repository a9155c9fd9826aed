"""Colour normalisation (Reinhard, Macenko; per slide): statistics, the map, and its use in training and prediction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from pipeline import stain
from pipeline.augment import build_augment, seed_augment
from pipeline.config import AugmentConfig, Config, ModelConfig, PredictConfig, SlidesConfig, TilesConfig, TrainConfig
from pipeline.errors import ConfigError, DataError
from pipeline.models import build_model, read_checkpoint, save_checkpoint
from pipeline.predict import run_predict
from pipeline.tiles import read_colour_stats
from pipeline.tissue import TissueMask, save_tissue
from pipeline.tile_dataset import TileDataset
from pipeline.train import fit, fit_colour
from tests.tile_stores import ENCODER, make_tile_stores

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PINK, GLASS = (225, 150, 190), (245, 244, 246)
CAMERA = (0.62, 0.60, 0.70)  # darker and bluer: another lab's camera


def _tissue_image(rng: np.random.Generator, shape=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Pink textured tissue on the left, glass on the right, plus its mask."""
    image = np.empty((*shape, 3), np.float64)
    image[:] = GLASS
    mask = np.zeros(shape, bool)
    mask[:, : shape[1] // 2] = True
    image[mask] = np.array(PINK) + rng.normal(0, 20, (int(mask.sum()), 3))
    image[:20, :20] = (110, 40, 120)  # a dark glomerulus-like patch
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _tint(image: np.ndarray, gains=CAMERA) -> np.ndarray:
    return np.clip(image * np.asarray(gains) + 0.5, 0, 255).astype(np.uint8)


def test_tissue_stats_ignore_glass_and_fall_back_on_a_blank_slide() -> None:
    image, mask = _tissue_image(np.random.default_rng(0))
    tissue_only = stain.tissue_stats(image[mask][None])
    lab = stain.tissue_stats(image, mask)
    assert (lab.mean, lab.std) == (tissue_only.mean, tissue_only.std)  # glass left out of the LAB statistics
    assert stain.tissue_stats(image).mean != tissue_only.mean  # glass shifts the whole-image statistics
    assert lab.stain.background == (245.0, 244.0, 246.0)  # ... and is where Macenko measures the glass colour
    blank = np.zeros_like(mask)
    assert stain.tissue_stats(image, blank) == stain.tissue_stats(image)
    with pytest.raises(ValueError, match="does not match"):
        stain.tissue_stats(image, mask[:10])


def test_reinhard_undoes_another_cameras_colours() -> None:
    image, mask = _tissue_image(np.random.default_rng(1))
    tinted = _tint(image)
    reference, source = stain.tissue_stats(image, mask), stain.tissue_stats(tinted, mask)
    restored = stain.reinhard(tinted, source, reference)
    before = np.abs(tinted.astype(int) - image)[mask].mean()
    after = np.abs(restored.astype(int) - image)[mask].mean()
    assert before > 40 and after < 0.15 * before, (before, after)
    lab = stain.tissue_stats(restored, mask)
    np.testing.assert_allclose(lab.mean, reference.mean, atol=1.0)
    np.testing.assert_allclose(lab.std, reference.std, rtol=0.1)
    assert restored.dtype == np.uint8 and restored.shape == image.shape


def test_normaliser_round_trips_and_none_is_the_identity() -> None:
    ref = stain.ColourStats((70.0, 20.0, -10.0), (10.0, 5.0, 4.0))
    norm = stain.ColourNormaliser("reinhard", ref)
    assert stain.ColourNormaliser.from_dict(norm.as_dict()) == norm
    assert stain.ColourNormaliser.from_dict(None) == stain.NONE  # checkpoints from before: unnormalised
    image = np.full((4, 4, 3), 123, np.uint8)
    assert stain.NONE.apply(image, None) is image
    with pytest.raises(ValueError, match="slide's colour statistics"):
        norm.apply(image, None)
    with pytest.raises(ConfigError, match="slides.normalise must be one of none, reinhard, macenko"):
        stain.ColourNormaliser("vahadane", ref)
    with pytest.raises(ValueError, match="'macenko' needs a reference with stain statistics"):
        stain.ColourNormaliser("macenko", ref)  # a reference from stores written before Macenko
    assert stain.reference_stats([ref, dataclasses.replace(ref, mean=(50.0, 0.0, 10.0))]).mean == (60.0, 10.0, 0.0)


def test_training_stores_the_reference_and_normalises_each_slide(tmp_path: Path) -> None:
    index, stores = make_tile_stores(tmp_path / "tiles", n_slides=3, gains={2: CAMERA})
    colour = fit_colour("reinhard", stores)
    per_slide = [read_colour_stats(stores[s]) for s in sorted(stores)]
    assert colour.reference == stain.reference_stats(per_slide)
    assert fit_colour("none", stores) == stain.NONE

    raw, normalised = TileDataset(index, stores), TileDataset(index, stores, colour=colour)
    rows = np.flatnonzero((index["slide"] == "slide2").to_numpy() & (index["tissue"] > 0).to_numpy())
    tinted = stain.tissue_stats(np.stack([raw[int(r)][0] for r in rows]))
    fixed = stain.tissue_stats(np.stack([normalised[int(r)][0] for r in rows]))
    ref_l = colour.reference.mean[0]
    assert abs(fixed.mean[0] - ref_l) < 2.0 < abs(tinted.mean[0] - ref_l)

    config = Config(
        slides=SlidesConfig(normalise="reinhard"),
        model=ModelConfig(arch="Unet", encoder=ENCODER, decoder_channels=[16, 8, 8, 8, 8]),
        train=TrainConfig(epochs=1, batch_size=8, num_workers=0),
    )
    fit(index, index.iloc[:0], stores, tmp_path / "model", config)
    meta = read_checkpoint(tmp_path / "model" / "model.pt")
    assert stain.ColourNormaliser.from_dict(meta["colour"]) == colour


def test_tile_stores_without_statistics_name_the_fix(tmp_path: Path) -> None:
    index, stores = make_tile_stores(tmp_path / "tiles", n_slides=2)
    group = zarr.open_group(str(stores["slide1"]), mode="a")
    group.attrs["colour_stats"] = {k: v for k, v in group.attrs["colour_stats"].items() if k != "stain"}
    assert fit_colour("reinhard", stores).reference.stain is None  # Reinhard needs no stain vectors
    with pytest.raises(DataError, match="slide1.zarr.*no stain statistics.*rerun the tiles stage"):
        fit_colour("macenko", stores)
    group = zarr.open_group(str(stores["slide0"]), mode="a")
    del group.attrs["colour_stats"]
    with pytest.raises(DataError, match="slide0.zarr.*no colour statistics.*rerun the tiles stage"):
        fit_colour("reinhard", stores)


def _slide(tmp_path: Path, name: str, image: np.ndarray, mask_lowres: np.ndarray, downsample: int) -> tuple[Path, Path]:
    slide = tmp_path / f"{name}.tiff"
    tifffile.imwrite(slide, image, tile=(128, 128), photometric="rgb")
    thumb = image[::downsample, ::downsample]
    tissue_png = tmp_path / f"{name}.png"
    save_tissue(TissueMask(mask_lowres, float(downsample), thumb), tissue_png, tmp_path / f"{name}.thumb.png")
    return slide, tissue_png


def test_prediction_normalises_with_the_slides_own_statistics(tmp_path: Path) -> None:
    """A slide and the same slide through another camera give (nearly) the same map, only when normalised."""
    rng = np.random.default_rng(5)
    small, mask = _tissue_image(rng, (64, 64))
    image = np.kron(small, np.ones((4, 4, 1), np.uint8))  # 256 x 256, smooth at the thumbnail's scale
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    tinted = _tint(image)
    mcfg = ModelConfig(arch="Unet", encoder="resnet18", decoder_channels=[16, 8, 8, 8, 8])
    config = Config(model=mcfg, tiles=TilesConfig(size=128, stride=128, out_size=64),
                    predict=PredictConfig(window=128, out_size=64, overlap=0.5, batch_size=4, tta=[], threshold=0.5,
                                          device="cpu"))
    torch.manual_seed(0)
    model = build_model(mcfg, load_weights=False)
    reference = stain.tissue_stats(image[::4, ::4], mask)
    maps = {}
    for method in ("none", "reinhard", "macenko"):
        colour = stain.ColourNormaliser(method, reference if method != "none" else None)
        ckpt = tmp_path / f"{method}.pt"
        save_checkpoint(ckpt, model, config, 1, {}, extra={"colour": colour.as_dict()})
        for name, img in (("plain", image), ("camera", tinted)):
            slide, tissue_png = _slide(tmp_path, name, img, mask, 4)
            out = tmp_path / f"{method}-{name}.zarr"
            run_predict(slide, [ckpt], tissue_png, out, config)
            maps[method, name] = zarr.open_array(str(out), mode="r")
    attrs = dict(maps["reinhard", "camera"].attrs)
    assert attrs["colour"]["method"] == "reinhard"
    assert attrs["colour"]["slide"] == stain.tissue_stats(tinted[::4, ::4], mask).as_dict()
    assert "colour" not in dict(maps["none", "camera"].attrs)

    def gap(method: str) -> float:
        return float(np.abs(maps[method, "plain"][:].astype(np.float32) - maps[method, "camera"][:]).mean())

    assert gap("reinhard") < 0.3 * gap("none"), (gap("reinhard"), gap("none"))
    assert gap("macenko") < 0.3 * gap("none"), (gap("macenko"), gap("none"))
    assert dict(maps["macenko", "camera"].attrs)["colour"]["slide"]["stain"]["background"] != \
        dict(maps["macenko", "plain"].attrs)["colour"]["slide"]["stain"]["background"]  # the camera's glass, measured


def test_ensemble_members_must_share_the_normalisation(tmp_path: Path) -> None:
    from pipeline.slide_inputs import ensemble_colour

    ref = stain.ColourStats((70.0, 20.0, -10.0), (10.0, 5.0, 4.0))
    metas = [{"colour": stain.ColourNormaliser("reinhard", ref).as_dict()}, {}]
    with pytest.raises(ConfigError, match="b.pt.*disagree on colour normalisation"):
        ensemble_colour(metas, ["a.pt", "b.pt"])
    assert ensemble_colour([{}, {}], ["a.pt", "b.pt"]) == stain.NONE


def test_scanner_augmentations_change_colour_only_when_asked() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:] = PINK
    image[20:40, 20:40] = (110, 40, 120)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 1
    off = AugmentConfig(flip=0, rot90=0, shift_scale_rotate=0, color=0, noise=0, blur=0)
    assert build_augment(off).transforms == []
    for key in ("stain", "white_balance", "exposure", "jpeg"):
        augment = build_augment(dataclasses.replace(off, **{key: 1.0}))
        assert len(augment.transforms) == 1, key
        changed = 0
        for seed in range(4):
            seed_augment(augment, seed)
            out = augment(image=image, mask=mask)
            assert out["image"].dtype == np.uint8 and out["image"].shape == image.shape
            np.testing.assert_array_equal(out["mask"], mask)  # photometric: the mask never moves
            changed += int(np.abs(out["image"].astype(int) - image).mean() > 1.0)
        assert changed >= 2, key


def test_normalising_needs_the_slides_thumbnail(tmp_path: Path) -> None:
    from pipeline.slide_inputs import slide_normaliser
    from pipeline.tissue import load_tissue

    image, mask = _tissue_image(np.random.default_rng(2))
    save_tissue(TissueMask(mask, 1.0, image), tmp_path / "s.png", tmp_path / "s.thumb.png")
    colour = stain.ColourNormaliser("reinhard", stain.tissue_stats(image, mask))
    normalise, attrs = slide_normaliser(colour, load_tissue(tmp_path / "s.png", mask.shape), "s.tiff")
    assert normalise is not None and attrs["colour"]["slide"] == stain.tissue_stats(image, mask).as_dict()
    assert slide_normaliser(stain.NONE, None) == (None, {})
    (tmp_path / "s.thumb.png").unlink()
    drawn = load_tissue(tmp_path / "s.png", mask.shape)
    assert drawn.thumbnail_from_mask
    with pytest.raises(DataError, match=r"s.tiff.*no thumbnail beside it \(\{id\}.thumb.png"):
        slide_normaliser(colour, drawn, "s.tiff")
    with pytest.raises(DataError, match="no tissue mask was given"):
        slide_normaliser(colour, None, "s.tiff")
