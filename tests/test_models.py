"""Model factory, encoder weights from a local file, checkpoints, device selection."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import Config, ModelConfig, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.models import build_model, load_model, read_checkpoint, save_checkpoint, select_device

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [
        ("Unet", "efficientnet-b0"),
        ("FPN", "resnet18"),
        ("UnetPlusPlus", "resnet18"),
        ("unet", "tu-mobilenetv3_small_050"),
    ],
)
def test_archs_build_and_forward(arch: str, encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, encoder=encoder)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)  # one class of logits, full resolution
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (ModelConfig(arch="SegNet"), "unknown architecture"),
        (ModelConfig(encoder="resnet-nonexistent"), "resnet-nonexistent"),
        (ModelConfig(encoder_weights="/nonexistent/weights.pth"), "file not found"),
        (ModelConfig(arch="FPN", encoder="resnet18", decoder_channels=(64, 32, 16, 16, 8)), "decoder_channels"),
        (ModelConfig(encoder="resnet18", decoder_channels=(64, 32, 16)), "5 widths"),
    ],
)
def test_bad_model_config_is_a_config_error(cfg: ModelConfig, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        build_model(cfg)


def test_narrow_decoder_has_fewer_parameters_and_survives_a_checkpoint(tmp_path) -> None:
    narrow_cfg = ModelConfig(encoder="resnet18", decoder_channels=(64, 32, 16, 16, 8))
    narrow = build_model(narrow_cfg)
    wide = build_model(ModelConfig(encoder="resnet18"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(wide) - 1_000_000
    config = load_config(overrides={"model": {"encoder": "resnet18", "decoder_channels": [64, 32, 16, 16, 8]}})
    save_checkpoint(tmp_path / "m.pt", narrow, config, epoch=1, metrics={})
    reloaded, _ = load_model(tmp_path / "m.pt")
    for a, b in zip(narrow.state_dict().values(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_encoder_weights_from_local_file(tmp_path) -> None:
    cfg = ModelConfig(arch="Unet", encoder="resnet18")
    torch.manual_seed(1)
    donor = build_model(cfg)
    weights = tmp_path / "resnet18-encoder.pth"
    state = donor.encoder.state_dict()
    # an ImageNet checkpoint still has its classifier head: tolerated
    torch.save({**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, weights)
    torch.manual_seed(2)
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=str(weights)))
    for key, value in state.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    # decoder is not touched by encoder weights: differs from the donor (other seed)
    assert not torch.equal(model.segmentation_head[0].weight, donor.segmentation_head[0].weight)

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="wrong.pth.*missing key"):
        build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=str(wrong)))


def test_checkpoint_roundtrip_weights_only(tmp_path) -> None:
    config = load_config(overrides={"model": {"arch": "FPN", "encoder": "resnet18"}})
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    path = tmp_path / "fold0" / "model.pt"
    save_checkpoint(path, model, config, epoch=7, metrics={"val_dice": 0.75})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary left behind

    raw = torch.load(path, weights_only=True)  # plain types + tensors only
    assert raw["epoch"] == 7 and raw["metrics"] == {"val_dice": 0.75}
    assert raw["config"] == config.to_dict()

    loaded, meta = load_model(path, "cpu")
    assert type(loaded) is type(model) and not loaded.training
    assert meta["config"]["model"]["arch"] == "FPN" and "state_dict" not in meta
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_not_a_checkpoint_names_the_file(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="junk.pt"):
        load_model(junk, "cpu")
    other = tmp_path / "plain_state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(PipelineError, match="plain_state_dict.pt: not a pipeline checkpoint"):
        read_checkpoint(other)
    with pytest.raises(PipelineError, match="missing.pt: checkpoint not found"):
        load_model(tmp_path / "missing.pt", "cpu")


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ConfigError, match="invalid device"):
        select_device("tpu-ish")
    assert isinstance(Config().train.device, str)
