"""Model factory, checkpoints and device selection.

Models come from segmentation-models-pytorch (any smp or ``tu-`` timm encoder)
with one output channel of logits. Encoder weights never come from a model hub:
a local file for any encoder, or ``imagenet`` for the encoders whose weights ship
in a pip package (``pipeline.pretrained``). Checkpoints hold only plain types and
tensors so they load with ``torch.load(weights_only=True)`` (no pickled code), and
they carry the config they were trained with, so ``load_model`` can rebuild the
network without being told the architecture.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.config import Config, ModelConfig, config_from_dict
from pipeline.config_checks import check_deep_supervision
from pipeline.deep_supervision import DeepSupervisedUnetPlusPlus
from pipeline.errors import ConfigError, PipelineError
from pipeline.pretrained import MEAN, OFFLINE_ENCODERS, STD, has_offline_weights, load_imagenet_encoder
from pipeline.progress import get_logger

log = get_logger(__name__)

ARCHS = ("Unet", "FPN", "UnetPlusPlus")
CHECKPOINT_FORMAT = "pipeline-checkpoint"
CHECKPOINT_VERSION = 1
# classifier heads that a backbone's ImageNet checkpoint has and an smp encoder drops
_HEAD_PREFIXES = ("fc.", "_fc.", "classifier.", "head.", "last_linear.")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA device if there is one, else CPU; else ``name`` checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(None, f"device: invalid device {name!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, f"device: {name!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(None, f"device: {name!r} but only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _arch_name(arch: str) -> str:
    for known in ARCHS:
        if arch.lower() == known.lower():
            return known
    raise ConfigError(None, f"model.arch: unknown architecture {arch!r} (known: {', '.join(ARCHS)})")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (torch pickle loaded weights_only, or safetensors)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader error becomes one clear message
        raise ConfigError(path, f"cannot read encoder weights: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(path, "encoder weights file does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_head(key: str) -> bool:
    return any(key.startswith(p) or key.startswith(f"model.{p}") for p in _HEAD_PREFIXES)


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local weights file into ``encoder`` with a strict key check.

    Tolerated differences: a ``module.`` prefix (DataParallel), a ``model.`` prefix
    missing for timm-universal (``tu-``) encoders, and ImageNet classifier-head keys
    (``fc.``, ``classifier.``...) that smp encoders do not have. Anything else that
    does not match raises a ConfigError naming the file and the keys.
    """
    path = Path(path)
    state = _read_state_dict(path)
    expected = set(encoder.state_dict())
    if not set(state) & expected and all(k.startswith("model.") for k in expected):
        state = {f"model.{k}": v for k, v in state.items()}  # plain timm backbone weights
    state = {k: v for k, v in state.items() if k in expected or not _is_head(k)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(
            path,
            f"encoder weights do not match the encoder: {len(missing)} missing key(s) "
            f"{missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}",
        )
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ConfigError(path, f"encoder weights do not match the encoder: {err}") from None
    log.info("loaded encoder weights from %s", path)


def _weights_source(cfg: ModelConfig) -> Path | str | None:
    """``cfg.encoder_weights`` checked: None, a local file, or ``"imagenet"`` (offline encoders)."""
    weights = cfg.encoder_weights
    if not weights:
        return None
    candidate = Path(weights).expanduser()
    if candidate.is_file():
        return candidate
    if os.sep in weights or "/" in weights or weights.endswith(_WEIGHT_SUFFIXES):
        raise ConfigError(candidate, "model.encoder_weights: file not found")
    if weights == "imagenet" and has_offline_weights(cfg.encoder):
        return weights
    raise ConfigError(
        None,
        f"model.encoder_weights: {weights!r} for encoder {cfg.encoder!r} would need a download; "
        f"offline ImageNet weights exist for {', '.join(OFFLINE_ENCODERS)}; "
        "a local weights file works for any encoder",
    )


def build_model(cfg: ModelConfig, load_weights: bool = True) -> nn.Module:
    """An smp model, 1 output channel (logits); encoder weights: None, a local file or offline ImageNet.

    ``cfg.deep_supervision`` (UnetPlusPlus only) builds
    :class:`pipeline.deep_supervision.DeepSupervisedUnetPlusPlus`: smp's U-Net++ plus
    heads on the nested decoder outputs, a list of logits in train mode and smp's one
    logits tensor in eval mode, so everything that predicts treats it as any model.

    ``load_weights=False`` skips ``cfg.encoder_weights`` (used when a checkpoint's
    state dict is about to overwrite every weight anyway), so rebuilding a checkpoint
    never needs the weight packages.
    """
    arch = _arch_name(cfg.arch)
    source = _weights_source(cfg) if load_weights else None
    extra: dict[str, object] = {}
    if cfg.decoder_channels is not None:
        if arch not in ("Unet", "UnetPlusPlus") or len(cfg.decoder_channels) != 5:
            raise ConfigError(
                None,
                f"model.decoder_channels: 5 widths for Unet or UnetPlusPlus, got "
                f"{list(cfg.decoder_channels)} for {arch}",
            )
        extra["decoder_channels"] = tuple(cfg.decoder_channels)
    check_deep_supervision(cfg)
    kwargs = dict(encoder_name=cfg.encoder, encoder_weights=None, in_channels=3, classes=1, **extra)
    try:
        if cfg.deep_supervision:
            model = DeepSupervisedUnetPlusPlus(**kwargs)
        else:
            model = smp.create_model(arch, **kwargs)
    except (KeyError, ValueError, RuntimeError) as err:
        msg = err.args[0] if err.args else err
        raise ConfigError(None, f"model: cannot build {arch} with encoder {cfg.encoder!r}: {msg}") from None
    if isinstance(source, Path):
        load_encoder_weights(model.encoder, source)
    elif source == "imagenet":
        load_imagenet_encoder(model.encoder, cfg.encoder)
        if not torch.allclose(torch.tensor([*cfg.mean, *cfg.std]), torch.tensor([*MEAN, *STD]), atol=0.01):
            log.warning(
                "model.encoder_weights: imagenet for %s expects model.mean/std %s/%s, config has %s/%s",
                cfg.encoder, list(MEAN), list(STD), list(cfg.mean), list(cfg.std),
            )
    return model


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: Config,
    epoch: int,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``path`` atomically: state dict + config dict + epoch + metrics (+ ``extra``).

    Only tensors and plain Python types go in, so ``torch.load(weights_only=True)``
    reads it back. ``extra`` carries resume state (optimizer, scheduler, RNG...).
    """
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "state_dict": state,
        "config": config.to_dict(),
        "epoch": int(epoch),
        "metrics": {str(k): float(v) for k, v in metrics.items()},
    }
    if extra:
        payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _one_line(err: BaseException, limit: int = 300) -> str:
    """A library's message as one short line (errors print as one line on the CLI)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``path`` (weights_only); PipelineError if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # torch explains over several lines: keep the cause, in one
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x", "unsupported GLOBAL x"
        if found:
            raise PipelineError(
                path, f"refused: the file holds pickled Python objects ({found.group(1)}), not only tensors; "
                "checkpoints load with weights_only=True so that a file never runs code"
            ) from None
        cause = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        raise PipelineError(
            path, f"not a readable checkpoint: {_one_line(cause.group(1) if cause else err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - pickle/zip errors vary; name the file
        raise PipelineError(path, f"not a readable checkpoint: {_one_line(err)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "state_dict" not in ckpt:
        raise PipelineError(path, "not a pipeline checkpoint (no format/state_dict/config)")
    return ckpt


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from the config stored in the checkpoint; eval mode on ``device``.

    Returns ``(model, meta)``; ``meta`` is the checkpoint without the state dict
    (``config``, ``epoch``, ``metrics``...).
    """
    path = Path(path)
    ckpt = read_checkpoint(path, "cpu")
    try:
        config = config_from_dict(ckpt["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise PipelineError(path, f"checkpoint holds an invalid config: {err}") from None
    model = build_model(config.model, load_weights=False)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise PipelineError(
            path, f"state dict does not match {config.model.arch}/{config.model.encoder}: {_one_line(err)}"
        ) from None
    model.to(device).eval()
    resume_only = ("state_dict", "optimizer", "scheduler", "scaler", "rng")
    meta = {k: v for k, v in ckpt.items() if k not in resume_only}
    return model, meta
