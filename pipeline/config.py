"""Typed view of the validated configuration.

The dataclass defaults here are the package's defaults; ``workflow/schemas/
config.schema.yaml`` repeats them for Snakemake's validation and a test checks
that both agree. Stages receive a ``Config`` built by :func:`load_config` from a
YAML file and/or a JSON dict of overrides (what the Snakemake rules pass).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class SlidesConfig:
    """How slides are opened."""

    backend: str = "tifffile"  # "tifffile" (tifffile -> Zarr -> Dask) or "rasterio"
    normalise: str = "none"  # colour normalisation: "none", "reinhard" or "macenko" (per slide, reference stored with the model)


@dataclass(frozen=True)
class TissueConfig:
    """Low-resolution tissue detection (HSV saturation + Otsu)."""

    downsample: int = 32  # target downsample of the tissue mask relative to level 0
    saturation_threshold: float | None = None  # 0..1; None = Otsu on the saturation channel
    min_saturation: float = 0.04  # Otsu result is never taken below this (blank glass)
    max_value: float = 0.98  # pixels brighter than this (V channel) are never tissue
    close_px: int = 2  # morphological closing radius at mask resolution


@dataclass(frozen=True)
class TilesConfig:
    """Training tiles: windows of ``size`` px over tissue, resized to ``out_size``."""

    size: int = 1536  # window side at full resolution, px
    stride: int = 1536  # grid step, px (< size for overlapping tiles)
    out_size: int = 512  # tile side after area resizing, px (the model's input)
    min_tissue: float = 0.05  # minimum tissue fraction of a grid window
    centre_on_glomeruli: bool = True  # extra windows centred on each annotated glomerulus
    mask_threshold: float = 0.5  # area-averaged mask >= this -> 1
    max_tiles_per_slide: int | None = None  # cap per slide, kept in order: centred windows (glomeruli) first, then the grid windows with the most tissue; null = no cap
    scheduler: str = "threads"  # "threads", "synchronous" or a dask.distributed address
    workers: int = 2  # threads decoding and reducing slide blocks (each decoded once) and drawing masks


@dataclass(frozen=True)
class ModelConfig:
    """segmentation-models-pytorch architecture and timm/smp encoder."""

    arch: str = "Unet"  # Unet | FPN | UnetPlusPlus
    encoder: str = "efficientnet-b0"  # timm/smp encoder name: efficientnet-b0..b7, resnet34, tu-...
    encoder_weights: str | None = None  # None, a local weights file (any encoder), or imagenet: ImageNet weights from pip packages, offline, for tu-efficientnet_lite0/1/2 and tu-tf_efficientnet_lite0/1/2 (they expect mean = std = 0.5)
    decoder_channels: tuple[int, ...] | None = None  # Unet/UnetPlusPlus decoder widths, 5 (deep to shallow); None = smp's 256,128,64,32,16; narrower trains 2-3x faster on CPU
    deep_supervision: bool = False  # UnetPlusPlus only: training averages the loss over the nested decoder outputs (one extra 1x1 head each); validation and prediction use the final output only
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel, 0..1 scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # per-channel standard deviation, 0..1 scale
    input_norm: str = "none"  # per-image intensity normalisation of the model's input: "none", "invert_dark" (dark-background images inverted, 255 - x, to look bright-field) or "per_image" (each channel to zero mean, unit std; replaces mean/std); decided once per slide from its tissue thumbnail, per image for patches; stored with the model
    invert_threshold: float = 127.0  # invert_dark: an image (a slide's thumbnail) whose mean intensity over all pixels and channels, 0..255, is below this has a dark background and is inverted


@dataclass(frozen=True)
class AugmentConfig:
    """albumentations pipeline; probabilities per transform family."""

    flip: float = 0.5  # horizontal and vertical flips
    rot90: float = 0.5  # random multiples of 90 degrees
    shift_scale_rotate: float = 0.3  # small affine shifts, scaling and rotations
    color: float = 0.3  # HSV / brightness / contrast / gamma
    noise: float = 0.1  # Gaussian noise
    blur: float = 0.1  # Gaussian or motion blur
    clahe: float = 0.0  # contrast-limited adaptive histogram equalisation
    stain: float = 0.0  # HED stain jitter (albumentations HEStain): another lab's stain
    white_balance: float = 0.0  # per-channel gains 0.8-1.2: another camera's white balance
    exposure: float = 0.0  # gamma 0.6-1.6 and brightness -40..+10 %: under/over-exposure
    jpeg: float = 0.0  # JPEG re-compression at quality 50-95: another scanner's codec


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (per fold)."""

    folds: int = 2  # folds grouped by donor (patient_number of HuBMAP-20-dataset_information.csv), else by slide
    epochs: int = 20  # maximum epochs (early stopping may end sooner)
    batch_size: int = 8  # tiles per optimiser step
    lr: float = 3e-4  # AdamW learning rate (cosine decay over the epochs)
    weight_decay: float = 1e-4  # AdamW weight decay
    loss: dict[str, float] = field(default_factory=lambda: {"bce": 1.0, "dice": 1.0})  # name -> weight: bce, weighted_bce, dice, focal, lovasz, border_bce
    loss_finetune: dict[str, float] | None = None  # loss terms replacing `loss` from finetune_from_epoch on
    finetune_from_epoch: int | None = None  # 1-based epoch from which loss_finetune applies (BCE first, then Dice)
    pos_weight: float = 1.0  # positive-class weight for "weighted_bce"
    focal_gamma: float = 2.0  # focusing parameter of the focal loss
    border_w0: float = 10.0  # "border_bce" (U-Net's weighted BCE): extra weight w0 of background pixels between objects, w0 * exp(-(d1 + d2)^2 / (2 border_sigma^2)) with d1, d2 the distances to the nearest two objects; 0 = class balancing only
    border_sigma: float = 5.0  # "border_bce": width sigma of that border term, px at the model's input (tiles.out_size)
    patience: int = 5  # epochs without a better validation Dice before training stops early; 0 disables early stopping
    seed: int = 42  # fixes folds, sampling, augmentation and initialisation
    num_workers: int = 0  # data-loader workers; 0 on small CPUs, more on GPU nodes
    amp: bool = True  # mixed precision on CUDA (bf16 when supported, else fp16)
    channels_last: bool = True  # channels-last memory on every device (faster on CUDA and, for EfficientNet-style encoders, on the CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_tiles_per_epoch: int | None = None  # random subset of the training tiles per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class FilterConfig:
    """The first ("pretrained") pass that drops trivial tiles before real training."""

    enabled: bool = True  # false: train on every tile
    checkpoint: str | None = None  # reuse a model (e.g. last night's) instead of training one
    epochs: int = 3  # of the quick stage-1 model
    max_true_positive: float = 0.0  # a tile is trivial if its true positive fraction <= this
    min_accuracy: float = 1.0  # ... and the stage-1 pixel accuracy >= this
    threshold: float = 0.5  # probability threshold of the stage-1 predictions


@dataclass(frozen=True)
class PredictConfig:
    """Sliding-window consensus over a whole slide."""

    window: int = 1536  # window side at full resolution, px (tiles.size of the model)
    overlap: float = 0.5  # fraction of a window shared with its neighbour
    out_size: int = 512  # window side at the model's input, px (tiles.out_size)
    blend: str = "gaussian"  # gaussian | constant
    sigma: float = 0.125  # Gaussian sigma as a fraction of the window
    batch_size: int | str = 8  # windows per forward pass, or "auto": the largest the GPU holds (8 on a CPU)
    tta: tuple[str, ...] = ()  # any of "hflip", "vflip", "rot90"
    threshold: float | str = 0.5  # probability at or above which a pixel is glomerulus, or "auto": the best mean Dice on the out-of-fold whole slides
    min_object_px: int = 0  # full-resolution objects smaller than this are removed
    fill_holes: bool = False  # fill holes inside predicted objects
    tissue_only: bool = True  # skip windows without tissue (they predict background)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    prefetch: int = 2  # windows batches read ahead of the model
    workers: int = 2  # threads decoding and reducing slide blocks (each decoded once) ahead of the model; ~1 per core
    amp: bool = True  # mixed precision on CUDA (bf16 when supported, else fp16)
    channels_last: bool = True  # channels-last memory on every device (faster on CUDA and, for EfficientNet-style encoders, on the CPU)
    upsample: str = "bilinear"  # low-res map -> full-res mask when encoding: bilinear | nearest


@dataclass(frozen=True)
class SubmitConfig:
    """How the submission treats slides without a prediction."""

    on_missing: str = "warn"  # warn | fail


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    data_dir: str = "data/demo"  # input folder in the Kaggle layout (train/, test/, train.csv, ...)
    data_layout: str = "kaggle"  # kaggle (slides) | patches ({split}/images/{id}.png + {split}/masks/{id}.png) | dsb2018 ({split}/{id}/images/{id}.png + {split}/{id}/masks/*.png, one mask per object); patch sets are staged as small slides under results_dir/staged
    results_dir: str = "results/demo"  # every output goes under this folder
    model_bundle: str | None = None  # a trained model bundle directory: predict-only run (no training; geometry, normalisation and auto threshold from the bundle)
    promote_to: str | None = None  # training runs: copy the new bundle here if its out-of-fold Dice is not lower than the one there (registry.csv beside it)
    slides: SlidesConfig = field(default_factory=SlidesConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    tiles: TilesConfig = field(default_factory=TilesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), e.g. to store in a checkpoint."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Build ``tp`` from a plain YAML/JSON value, checking types on the way."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(None, f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as err:
                errors.append(err.problem)
        raise ConfigError(None, errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(None, f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(None, f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(None, f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(None, f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(None, f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(None, f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(None, f"{where}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(None, f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    """Typed, checked ``Config`` from a (possibly partial) plain dict."""
    return _build(Config, data, "")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file at ``path`` <- ``overrides`` (nested dicts merge)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(path, f"cannot read config: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(path, "config must be a mapping")
        data = loaded
    if overrides:
        data = merge_dicts(data, overrides)
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(path, err.problem) from None
