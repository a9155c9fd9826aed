"""The first ("pretrained") pass: score every training tile, drop the trivial ones.

Stage 1 trains a quick model on all tiles with the training loop of
:mod:`pipeline.train` (``filter.epochs`` epochs, the same model config), or takes
a user-supplied checkpoint (``filter.checkpoint``). Each tile then gets a pixel
accuracy, a Dice, and predicted / true positive fractions. A tile is *trivial*
when it has no true positives (``true_pos <= filter.max_true_positive``) and the
quick model already gets it right (``accuracy >= filter.min_accuracy``): such
tiles teach the real model nothing and only cost time. With the default rule every
tile with positives is kept.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.config import Config, FilterConfig, config_from_dict
from pipeline.errors import ConfigError, DataError
from pipeline.input_norm import InputNorm
from pipeline.models import load_model, select_device
from pipeline.progress import get_logger, progress
from pipeline.stain import NONE, ColourNormaliser
from pipeline.tile_dataset import TileDataset, make_loader
from pipeline.train import _Runner, fit, with_epochs

log = get_logger(__name__)

SCORE_COLUMNS = ["slide", "tile", "y0", "x0", "accuracy", "dice", "pred_pos", "true_pos", "trivial"]


@torch.inference_mode()
def score_tiles(
    model: nn.Module,
    tile_index: pd.DataFrame,
    stores: dict[str, Path],
    cfg: Config,
    device: torch.device | None = None,
    colour: ColourNormaliser = NONE,
    input_norm: InputNorm | None = None,
) -> pd.DataFrame:
    """Per-tile accuracy, Dice, pred_pos, true_pos of ``model`` (one row per index row, same order).

    ``cfg`` supplies the normalisation (``model.mean/std``, those the model was
    trained with), the threshold (``filter.threshold``) and the batch size; ``colour``
    the colour normalisation it was trained with; ``input_norm`` its input normalisation
    (default: ``cfg.model``'s). Dice is 1.0 when both prediction and
    truth are empty.
    """
    threshold = cfg.filter.threshold
    if not 0.0 < threshold < 1.0:
        raise ConfigError(None, f"filter.threshold: must be in (0, 1), got {threshold}")
    logit_threshold = math.log(threshold / (1.0 - threshold))
    device = device or next(model.parameters()).device
    runner = _Runner(model, cfg, device)
    runner.model.eval()
    input_norm = InputNorm.from_config(cfg.model) if input_norm is None else input_norm
    dataset = TileDataset(tile_index, stores, colour=colour, input_norm=input_norm)
    loader = make_loader(dataset, max(1, cfg.train.batch_size * 2), cfg.train.num_workers, device)
    stats = []
    for images, masks in progress(loader, total=len(loader), desc="scoring tiles", logger=log):
        x, y = runner.batch(images, masks)
        logits = runner.forward(x).float()
        pred, truth = logits > logit_threshold, y > 0
        dims = (1, 2, 3)
        stats.append(torch.stack([
            (pred & truth).sum(dims), pred.sum(dims), truth.sum(dims), (pred == truth).sum(dims)
        ], dim=1).cpu())
    counts = torch.cat(stats).numpy().astype(np.float64) if stats else np.zeros((0, 4))
    npix = float(np.prod(dataset.tile_shape)) if dataset.tile_shape else 1.0
    inter, psum, tsum, correct = counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(psum + tsum > 0, 2.0 * inter / (psum + tsum), 1.0)
    out = pd.DataFrame({
        "slide": tile_index["slide"].astype(str).to_numpy(),
        "tile": tile_index["tile"].to_numpy(dtype=np.int64),
        "y0": tile_index["y0"].to_numpy() if "y0" in tile_index else -1,
        "x0": tile_index["x0"].to_numpy() if "x0" in tile_index else -1,
        "accuracy": correct / npix,
        "dice": dice,
        "pred_pos": psum / npix,
        "true_pos": tsum / npix,
    })
    return out


def trivial_mask(scores: pd.DataFrame, cfg: FilterConfig) -> pd.Series:
    """True for tiles without (enough) true positives that the quick model already gets right."""
    return (scores["true_pos"] <= cfg.max_true_positive) & (scores["accuracy"] >= cfg.min_accuracy)


def select_kept(scores: pd.DataFrame, cfg: FilterConfig) -> pd.DataFrame:
    """The score rows the real training keeps (all of them when the filter is disabled)."""
    if not cfg.enabled:
        return scores
    return scores[~trivial_mask(scores, cfg).to_numpy()]


def _log_dropped(tile_index: pd.DataFrame, trivial: np.ndarray) -> None:
    per_slide = pd.DataFrame({"slide": tile_index["slide"].astype(str).to_numpy(), "dropped": trivial})
    summary = per_slide.groupby("slide")["dropped"].agg(["sum", "count"])
    for slide, row in summary.iterrows():
        log.info("filter: slide %s: dropped %d of %d tiles, kept %d", slide, row["sum"], row["count"],
                 row["count"] - row["sum"])
    log.info("filter: dropped %d of %d tiles in total", int(trivial.sum()), len(trivial))


def _stage1_model(tile_index: pd.DataFrame, stores: dict[str, Path], work_dir: Path,
                  config: Config) -> tuple[nn.Module, Config, ColourNormaliser, InputNorm]:
    """The quick model (user checkpoint, or trained in ``work_dir``), its config, colour and input normalisation."""
    device = select_device(config.train.device)
    if config.filter.checkpoint:
        path = Path(config.filter.checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(path, "filter.checkpoint: file not found")
        log.info("filter: scoring with the supplied checkpoint %s", path)
        model, meta = load_model(path, device)
    else:
        fit(tile_index, None, stores, work_dir, with_epochs(config, config.filter.epochs),
            desc="filter stage 1")
        model, meta = load_model(work_dir / "model.pt", device)
    trained_with = config_from_dict(meta["config"])
    return (model, dataclasses.replace(config, model=trained_with.model), ColourNormaliser.from_dict(meta.get("colour")),
            InputNorm.from_meta(meta))


def run_filter(
    tile_index: pd.DataFrame,
    stores: dict[str, Path],
    out_scores_csv: str | Path,
    out_kept_csv: str | Path,
    work_dir: str | Path,
    config: Config,
) -> pd.DataFrame:
    """Stage entry point (``python -m pipeline filter``): scores.csv + kept.csv; returns the kept rows.

    kept.csv holds the tile index rows (all columns) the real training uses.
    """
    for col in ("slide", "tile"):
        if col not in tile_index.columns:
            raise DataError(None, f"tile index lacks column {col!r}")
    tile_index = tile_index.reset_index(drop=True)
    fcfg = config.filter
    if not fcfg.enabled or len(tile_index) == 0:
        log.info("filter disabled: keeping all %d tiles", len(tile_index))
        scores = pd.DataFrame({
            "slide": tile_index["slide"].astype(str), "tile": tile_index["tile"],
            "y0": tile_index.get("y0", -1), "x0": tile_index.get("x0", -1),
            "accuracy": np.nan, "dice": np.nan, "pred_pos": np.nan,
            "true_pos": tile_index["positive"] if "positive" in tile_index else np.nan,
        })
        trivial = np.zeros(len(tile_index), dtype=bool)
    else:
        model, scoring_config, colour, input_norm = _stage1_model(tile_index, stores, Path(work_dir), config)
        scores = score_tiles(model, tile_index, stores, scoring_config, colour=colour, input_norm=input_norm)
        trivial = trivial_mask(scores, fcfg).to_numpy()
        dropped_pos = int((trivial & (scores["true_pos"].to_numpy() > 0)).sum())
        if dropped_pos:
            log.warning("filter: filter.max_true_positive=%g drops %d tile(s) with some positive pixels",
                        fcfg.max_true_positive, dropped_pos)
    scores["trivial"] = trivial
    _log_dropped(tile_index, trivial)
    kept = tile_index[~trivial]
    with atomic_path(out_scores_csv) as tmp:
        scores[SCORE_COLUMNS].to_csv(tmp, index=False)
    with atomic_path(out_kept_csv) as tmp:
        kept.to_csv(tmp, index=False)
    return kept
