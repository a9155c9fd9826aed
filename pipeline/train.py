"""The training loop: folds grouped by donor or slide, best-Dice checkpoint, resume, early stopping.

One loop (:func:`fit`) serves the real per-fold training and the quick stage-1
model of the filter pass. Everything random is derived from ``train.seed``: the
model initialisation, the tile order of each epoch and one augmentation seed per
(epoch, tile), so a run is reproducible on CPU whatever the number of data-loader
workers, and a resumed run continues exactly where it stopped.

Outputs in ``out_dir``: ``model.pt`` (best validation Dice), ``last.pt`` (resume
state, every epoch), ``metrics.csv`` and ``curves.png`` (every epoch), all atomic.
``last.pt`` also carries the best epoch's weights, so a run resumed after a kill
(or rerun by Snakemake after a change of a resumable setting, which deletes
``model.pt`` but not ``last.pt``) always ends with a ``model.pt``, even when no
epoch is left to train or none of the remaining epochs improves on the best.

The per-epoch validation Dice here is a pooled pixel Dice over the validation
slides' tiles: it picks the best epoch and stops early. The number a user should
trust is the whole-slide out-of-fold Dice of :mod:`pipeline.oof`, which runs the
real predictor over each validation slide once training has ended.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline import stain
from pipeline.atomic import atomic_path
from pipeline.augment import build_augment
from pipeline.config import Config
from pipeline.deep_supervision import supervised_loss
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.losses import BorderWeights, build_loss, check_loss_schedule, needs_border_weights, uses_finetune
from pipeline.metrics import dice_from_counts
from pipeline.folds import assign_folds, validation_slides
from pipeline.input_norm import InputNorm, check_combination
from pipeline.models import build_model, read_checkpoint, save_checkpoint, select_device
from pipeline.progress import get_logger, progress
from pipeline.report import plot_curves
from pipeline.stain import ColourNormaliser
from pipeline.tensors import to_tensor
from pipeline.tile_dataset import EpochSampler, TileDataset, make_loader
from pipeline.tiles import read_colour_stats

log = get_logger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "tiles_per_s"]
# keys that may change between a run and its resumption without invalidating last.pt
RESUMABLE_TRAIN_KEYS = ("epochs", "patience", "num_workers", "device")


# --------------------------------------------------------------------------- loop helpers


def _lr_factor(epoch_index: int, epochs: int) -> float:
    """Cosine decay from 1 to 0.05 over ``epochs`` (``epoch_index`` 0-based)."""
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(epoch_index, epochs) / max(1, epochs)))


@contextmanager
def _determinism(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU; cuDNN autotuning on CUDA. Restores global flags."""
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        else:  # several CUDA kernels smp uses (upsampling backward) have no deterministic variant
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.cudnn.benchmark = prev[2]


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    if device.type != "cuda" or not enabled:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _rng_state() -> dict[str, Any]:
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _data_key(index: pd.DataFrame) -> str:
    """Fingerprint of the training tiles (resume only continues on the same data)."""
    pairs = sorted(zip(index["slide"].astype(str), index["tile"].astype(int), strict=True))
    return hashlib.sha1(repr(pairs).encode()).hexdigest()


def _resume_key(config: Config) -> dict[str, Any]:
    """The part of the config a resumed run must share with the run that wrote last.pt."""
    d = config.to_dict()
    train = {k: v for k, v in d["train"].items() if k not in RESUMABLE_TRAIN_KEYS}
    return {"model": d["model"], "train": train, "normalise": d["slides"]["normalise"]}


def fit_colour(method: str, stores: dict[str, Path]) -> ColourNormaliser:
    """The colour normalisation to train with: ``method`` and a reference from every slide in ``stores``.

    Every slide of the training set counts (validation slides too: their colours, never
    their labels), so every fold and the first pass share one reference, and an ensemble of
    the folds normalises a new slide once.
    """
    stain.check_method(method)
    if method == "none":
        return stain.NONE
    per_slide = [read_colour_stats(stores[s]) for s in sorted(stores)]
    if method == "macenko":
        for slide, stats in zip(sorted(stores), per_slide, strict=True):
            if stats.stain is None:
                raise DataError(stores[slide], "tile store has no stain statistics for slides.normalise: macenko "
                                               "(written before they existed): delete it and rerun the tiles stage")
    reference = stain.reference_stats(per_slide)
    log.info("colour normalisation %s: reference LAB mean %s std %s from %d slide(s)", method,
             [round(v, 1) for v in reference.mean], [round(v, 1) for v in reference.std], len(per_slide))
    return ColourNormaliser(method, reference)


def fit_input_norm(config: Config) -> InputNorm:
    """The input normalisation to train with (``model.input_norm``), refused beside colour normalisation."""
    input_norm = InputNorm.from_config(config.model)
    check_combination(config.slides.normalise, input_norm.method)
    if input_norm.active:
        log.info("input normalisation %s (per slide, from each tile store's input_stats)", input_norm.as_dict())
    return input_norm


def write_metrics(history: list[dict[str, float]], out_dir: Path) -> None:
    """metrics.csv and curves.png, both atomic."""
    frame = pd.DataFrame(history, columns=METRIC_COLUMNS)
    with atomic_path(out_dir / "metrics.csv") as tmp:
        frame.to_csv(tmp, index=False)
    plot_curves(out_dir / "metrics.csv", out_dir / "curves.png")


# --------------------------------------------------------------------------- train / evaluate


class _Runner:
    """Device placement, AMP and the normalisation shared by the train and eval steps."""

    def __init__(self, model: nn.Module, config: Config, device: torch.device) -> None:
        self.device = device
        self.mean, self.std = config.model.mean, config.model.std
        self.amp_dtype = _amp_dtype(device, config.train.amp)
        self.channels_last = config.train.channels_last  # CUDA and CPU alike (README: speed per device)
        self.model = model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def batch(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype == torch.uint8:
            x = to_tensor(images, self.mean, self.std, device=self.device, channels_last=self.channels_last)
        else:  # float: standardised by the dataset (model.input_norm: per_image), NHWC -> NCHW only
            memory = torch.channels_last if self.channels_last else torch.contiguous_format
            x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous(memory_format=memory)
        y = masks.to(self.device, non_blocking=True).unsqueeze(1)
        return x, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            return self.model(x)


def train_one_epoch(runner: _Runner, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, desc: str) -> tuple[float, int]:
    """Mean training loss (over batches with a finite loss) and the number of tiles seen.

    Non-finite batch losses (fp16 overflow: GradScaler skips those steps) are left
    out of the mean; if every batch is non-finite the mean is NaN.
    """
    runner.model.train()
    total = torch.zeros((), dtype=torch.float64, device=runner.device)
    finite = torch.zeros((), dtype=torch.int64, device=runner.device)
    seen = 0
    for images, masks, *weight in progress(loader, total=len(loader), desc=desc, logger=log):
        loss = train_step(runner, images, masks, loss_fn, optimizer, scaler, weight[0] if weight else None)
        ok = torch.isfinite(loss)
        total += torch.where(ok, loss.double(), 0.0) * len(images)
        finite += ok.long() * len(images)
        seen += len(images)
    n_finite = int(finite.item())
    if n_finite < seen:
        log.warning("%s: %d of %d tiles gave a non-finite loss", desc, seen - n_finite, seen)
    return (total.item() / n_finite if n_finite else math.nan), seen


def train_step(runner: _Runner, images: torch.Tensor, masks: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """One optimiser step on a uint8 batch; returns the detached loss (no device sync).

    ``weight``: the batch's per-pixel weight maps (N, H, W) for a loss that takes them
    (``border_bce``); ignored by one that does not (e.g. a fine-tune loss without it).
    """
    x, y = runner.batch(images, masks)
    fn = loss_fn
    if weight is not None and getattr(loss_fn, "takes_weight", False):
        fn = functools.partial(loss_fn, weight=weight.to(runner.device, non_blocking=True).unsqueeze(1))
    loss = supervised_loss(fn, runner.forward(x), y)  # deep supervision: mean over the model's outputs
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


@torch.inference_mode()
def evaluate(runner: _Runner, loader: DataLoader, loss_fn: nn.Module) -> tuple[float, float]:
    """Mean loss and global Dice (all validation pixels pooled, threshold 0.5)."""
    runner.model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=runner.device)
    counts = torch.zeros(3, dtype=torch.int64, device=runner.device)  # intersection, pred, truth
    n = 0
    for images, masks in loader:
        x, y = runner.batch(images, masks)
        logits = runner.forward(x)
        loss_sum += loss_fn(logits, y).double() * len(x)
        pred, truth = logits > 0, y > 0  # sigmoid(z) > 0.5  <=>  z > 0
        counts += torch.stack([(pred & truth).sum(), pred.sum(), truth.sum()])
        n += len(x)
    return (loss_sum.item() / n if n else math.nan), dice_from_counts(*counts.tolist())


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _best_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights in a resume state: stored apart, or the last weights if it is the last epoch."""
    if ckpt.get("best_state_dict") is not None:
        return ckpt["best_state_dict"]
    if ckpt.get("best", {}).get("epoch") == ckpt.get("epoch"):
        return ckpt["state_dict"]
    return None


def _load_resume(last: Path, config: Config, data_key: str) -> dict[str, Any] | None:
    """The resume state in ``last`` if this run may continue it, else None (start afresh, with a warning)."""
    if not last.is_file():
        return None
    try:
        ckpt = read_checkpoint(last, "cpu")
    except PipelineError as err:
        log.warning("ignoring unreadable resume state: %s", err)
        return None
    from pipeline.config import config_from_dict

    try:
        same = _resume_key(config_from_dict(ckpt["config"])) == _resume_key(config)
    except (ConfigError, KeyError, TypeError):
        same = False
    if not same or ckpt.get("data_key") != data_key or "optimizer" not in ckpt:
        log.warning("%s was written with another config or other tiles: starting afresh", last)
        return None
    if ckpt["epoch"] > config.train.epochs:  # the shorter run asked for cannot be cut out of a longer one
        log.warning("%s is at epoch %d, beyond train.epochs=%d: starting afresh", last, ckpt["epoch"],
                    config.train.epochs)
        return None
    if _best_state(ckpt) is None:  # written before last.pt kept the best weights
        log.warning("%s lacks the best epoch's weights (older format): starting afresh", last)
        return None
    return ckpt


def fit(
    train_index: pd.DataFrame,
    val_index: pd.DataFrame | None,
    stores: dict[str, Path],
    out_dir: str | Path,
    config: Config,
    extra_meta: dict[str, Any] | None = None,
    desc: str = "train",
) -> pd.DataFrame:
    """Train on ``train_index``, validate on ``val_index`` (may be empty); returns metrics.

    Resumes from ``out_dir/last.pt`` when it was written with the same model/train
    config (``epochs``, ``patience``, ``num_workers``, ``device`` may differ; not an
    ``epochs`` below the epoch reached) and the same training tiles. A resumed run
    with no epoch left (or none improving) still writes ``model.pt`` from the best
    weights kept in ``last.pt``. Without validation tiles, ``model.pt`` is the last
    epoch and there is no early stopping. ``patience`` 0 disables early stopping.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg = config.train
    check_loss_schedule(tcfg)
    if tcfg.epochs < 1 or tcfg.batch_size < 1:
        raise ConfigError(
            None, f"train.epochs and train.batch_size must be >= 1 (got {tcfg.epochs}, {tcfg.batch_size})"
        )
    if len(train_index) == 0:
        raise DataError(None, "no training tiles")
    val_index = val_index if val_index is not None else train_index.iloc[:0]
    device = select_device(tcfg.device)
    data_key = _data_key(train_index)
    colour = fit_colour(config.slides.normalise, stores)
    input_norm = fit_input_norm(config)
    meta = {"data_key": data_key, "colour": colour.as_dict(), "input_norm": input_norm.as_dict(), **(extra_meta or {})}

    border = BorderWeights.from_config(tcfg) if needs_border_weights(tcfg) else None  # border_bce only
    if border is not None:
        log.info("border_bce: U-Net weight maps per training tile (w0 %g, sigma %g px)", border.w0, border.sigma)
    train_ds = TileDataset(train_index, stores, build_augment(tcfg.augment), colour, input_norm, border)
    val_ds = TileDataset(val_index, stores, colour=colour, input_norm=input_norm) if len(val_index) else None
    sampler = EpochSampler(len(train_ds), tcfg.seed, tcfg.max_tiles_per_epoch)
    train_loader = make_loader(train_ds, tcfg.batch_size, tcfg.num_workers, device, sampler, tcfg.seed,
                               drop_last=len(sampler) > tcfg.batch_size)
    val_loader = make_loader(val_ds, tcfg.batch_size, tcfg.num_workers, device) if val_ds else None

    with _determinism(device):
        _seed_everything(tcfg.seed)
        runner = _Runner(build_model(config.model), config, device)
        model = runner.model
        optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: _lr_factor(e, tcfg.epochs))
        scaler = torch.amp.GradScaler("cuda", enabled=runner.amp_dtype == torch.float16)
        losses = {False: build_loss(tcfg).to(device)}
        if tcfg.loss_finetune is not None:
            losses[True] = build_loss(tcfg, finetune=True).to(device)

        start, history = 0, []
        best = {"dice": -math.inf, "epoch": 0, "bad_epochs": 0}
        best_state: dict[str, torch.Tensor] | None = None
        wrote_model = False
        ckpt = _load_resume(out_dir / "last.pt", config, data_key)
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if "scaler" in ckpt and scaler.is_enabled():
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            start, history, best = ckpt["epoch"], list(ckpt["history"]), dict(ckpt["best"])
            best_state = _best_state(ckpt)
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base_lr * _lr_factor(start, tcfg.epochs)  # train.epochs may have changed
            log.info("resuming %s from %s at epoch %d", desc, out_dir / "last.pt", start)
        log.info("%s: %d training tiles, %d validation tiles, %s %s on %s%s", desc, len(train_ds),
                 len(val_index), config.model.arch, config.model.encoder, device,
                 f" ({runner.amp_dtype})" if runner.amp_dtype else "")

        has_val = val_loader is not None
        for epoch in range(start + 1, tcfg.epochs + 1):
            if has_val and tcfg.patience > 0 and best["bad_epochs"] >= tcfg.patience:
                break
            t0 = time.perf_counter()
            sampler.set_epoch(epoch)
            loss_fn = losses[uses_finetune(tcfg, epoch)]
            lr = optimizer.param_groups[0]["lr"]
            train_loss, seen = train_one_epoch(runner, train_loader, loss_fn, optimizer, scaler,
                                               f"{desc} epoch {epoch}/{tcfg.epochs}")
            train_seconds = time.perf_counter() - t0
            if not math.isfinite(train_loss):
                raise PipelineError(out_dir, f"training diverged at epoch {epoch} (loss {train_loss}): "
                                             "lower train.lr or check the tiles")
            val_loss, val_dice = evaluate(runner, val_loader, loss_fn) if has_val else (math.nan, math.nan)
            scheduler.step()
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice,
                   "lr": lr, "seconds": time.perf_counter() - t0,
                   "tiles_per_s": seen / train_seconds if train_seconds > 0 else math.nan}
            history.append(row)
            if not has_val or val_dice > best["dice"]:
                best = {"dice": val_dice if has_val else math.nan, "epoch": epoch, "bad_epochs": 0}
                best_state = _cpu_state(model)
                save_checkpoint(out_dir / "model.pt", model, config, epoch, row, extra=meta)
                wrote_model = True
            else:
                best["bad_epochs"] += 1
            write_metrics(history, out_dir)
            save_checkpoint(out_dir / "last.pt", model, config, epoch, row, extra={
                **meta, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(), "history": history, "best": best,
                # the best weights too (unless they are these), so a resumed run can always write model.pt
                **({} if best["epoch"] == epoch else {"best_state_dict": best_state})})
            log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f val_dice %.4f lr %.2e %.1fs %.1f tiles/s",
                     desc, epoch, tcfg.epochs, train_loss, val_loss, val_dice, lr, row["seconds"],
                     row["tiles_per_s"])
            if has_val and tcfg.patience > 0 and best["bad_epochs"] >= tcfg.patience:
                log.info("%s: early stop after epoch %d (best Dice %.4f at epoch %d)", desc, epoch,
                         best["dice"], best["epoch"])
                break
        if not wrote_model:
            _write_best_model(model, best_state, best, history, out_dir, config, meta, desc)
    if history:
        write_metrics(history, out_dir)
    return pd.DataFrame(history, columns=METRIC_COLUMNS)


def _write_best_model(model: nn.Module, best_state: dict[str, torch.Tensor] | None, best: dict[str, Any],
                      history: list[dict[str, float]], out_dir: Path, config: Config, meta: dict[str, Any],
                      desc: str) -> None:
    """model.pt from the best weights of a resumed run that trained no better epoch (or none at all).

    Snakemake deletes model.pt before rerunning a killed job or one whose settings
    changed, but keeps last.pt: without this the job would exit 0 without its output.
    """
    if best_state is None:
        raise PipelineError(out_dir, f"{desc}: no epoch produced a model (no best weights to write model.pt)")
    row = next((r for r in history if r["epoch"] == best["epoch"]), {})
    model.load_state_dict(best_state)
    save_checkpoint(out_dir / "model.pt", model, config, best["epoch"], row, extra=meta)
    log.info("%s: no better epoch left to train: model.pt written from the best epoch %d of %s", desc,
             best["epoch"], out_dir / "last.pt")


def train_fold(
    tile_index: pd.DataFrame,
    stores: dict[str, Path],
    fold: int,
    out_dir: str | Path,
    config: Config,
    assignment: dict[str, int] | None = None,
    val_index: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Train fold ``fold``: its slides validate, the other slides train (``python -m pipeline train``).

    ``tile_index`` holds the training tiles (the first pass's kept tiles);
    ``assignment`` maps every slide to its fold (:func:`pipeline.folds.fold_assignment`;
    default: each slide of the index its own group). Validation uses *every* tile of
    the validation slides in ``val_index`` (the unfiltered ``tiles/index.csv``; default
    ``tile_index``), so the first pass, which saw all slides, never decides what a fold
    validates on. Writes ``out_dir/model.pt`` (best validation Dice), ``last.pt``,
    ``metrics.csv``, ``curves.png``. With ``train.folds == 1`` every slide trains and none
    validates.
    """
    for name, frame in (("tile index", tile_index), ("validation tile index", val_index)):
        if frame is not None and "slide" not in frame.columns:
            raise DataError(None, f"{name} lacks column 'slide'")
    folds = config.train.folds
    if not 0 <= fold < folds:
        raise ConfigError(None, f"fold {fold} out of range for train.folds={folds}")
    slides = tile_index["slide"].astype(str)
    if assignment is None:
        assignment = assign_folds(slides.tolist(), folds, config.train.seed)
    unassigned = sorted(set(slides) - set(assignment))
    if unassigned:
        raise DataError(None, f"tile index names slide(s) {', '.join(unassigned)} that the fold assignment lacks")
    if folds == 1:
        log.warning("train.folds=1: training on every slide without validation")
    val_slides = validation_slides(assignment, fold, folds)
    val_source = tile_index if val_index is None else val_index
    val_rows = val_source[val_source["slide"].astype(str).isin(val_slides)]
    log.info("fold %d/%d: validation slides %s (%d tiles, unfiltered)", fold, folds,
             ", ".join(val_slides) or "none", len(val_rows))
    meta = {"fold": int(fold), "val_slides": val_slides,
            "train_slides": sorted(s for s in assignment if s not in val_slides)}
    return fit(tile_index[~slides.isin(val_slides)], val_rows, stores, out_dir, config, extra_meta=meta,
               desc=f"fold {fold}")


def with_epochs(config: Config, epochs: int) -> Config:
    """``config`` with ``train.epochs`` replaced (the filter's quick model)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
