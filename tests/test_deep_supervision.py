"""U-Net++ deep supervision (model.deep_supervision): nested outputs in training, one output everywhere else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from pipeline.config import ModelConfig, TrainConfig, load_config
from pipeline.config_checks import check_config
from pipeline.deep_supervision import DeepSupervisedUnetPlusPlus, supervised_loss
from pipeline.errors import ConfigError
from pipeline.losses import build_loss
from pipeline.models import build_model, load_model
from pipeline.predict import load_models, predict_batch
from pipeline.train import _seed_everything, train_fold
from tests.tile_stores import ENCODER, make_tile_stores

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CHANNELS = (32, 16, 16, 8, 8)
PLAIN = ModelConfig(arch="UnetPlusPlus", encoder="resnet18", decoder_channels=CHANNELS)
DEEP = dataclasses.replace(PLAIN, deep_supervision=True)
NESTED = 3  # X^{0,1}, X^{0,2}, X^{0,3}; the final output X^{0,4} is smp's own head


def _seeded(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg)


def _input(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_off_by_default_builds_smps_model_unchanged() -> None:
    assert ModelConfig().deep_supervision is False
    model = _seeded(PLAIN)
    torch.manual_seed(0)
    today = smp.create_model("UnetPlusPlus", encoder_name="resnet18", encoder_weights=None, in_channels=3,
                             classes=1, decoder_channels=CHANNELS)
    assert type(model) is type(today) is smp.UnetPlusPlus
    assert list(model.state_dict()) == list(today.state_dict())
    assert not hasattr(model, "aux_heads")
    x = _input()
    for mode in (True, False):
        model.train(mode), today.train(mode)
        with torch.no_grad():
            assert torch.equal(model(x), today(x))


def test_train_mode_gives_every_nested_output_eval_mode_the_final_one() -> None:
    model, plain = _seeded(DEEP), _seeded(PLAIN)
    assert isinstance(model, DeepSupervisedUnetPlusPlus)
    # smp's keys unchanged plus the extra heads, built after smp's part: same seed, same smp weights
    keys = list(model.state_dict())
    assert [k for k in keys if not k.startswith("aux_heads.")] == list(plain.state_dict())
    assert len({k.split(".")[1] for k in keys if k.startswith("aux_heads.")}) == NESTED
    x = _input()
    model.eval(), plain.eval()
    with torch.no_grad():
        final = model(x)
        assert torch.is_tensor(final) and final.shape == (2, 1, 64, 64)
        assert torch.equal(final, plain(x))  # predicts like a normal model
        outputs = model.outputs(x)
    assert len(outputs) == NESTED + 1 and torch.equal(outputs[-1], final)
    assert not any(b._forward_hooks for b in model.decoder.blocks.values())  # hooks removed after each pass

    model.train()
    outputs = model(x)
    assert isinstance(outputs, list) and len(outputs) == NESTED + 1
    assert all(o.shape == (2, 1, 64, 64) for o in outputs)
    assert all(not torch.equal(outputs[0], o) for o in outputs[1:])  # distinct heads


def test_training_loss_counts_every_output() -> None:
    loss_fn = build_loss(TrainConfig())
    y = (torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)) > 0.7).float()
    model = _seeded(DEEP).train()
    outputs = model(_input())
    loss = supervised_loss(loss_fn, outputs, y)
    each = [loss_fn(o, y).item() for o in outputs]
    assert loss.item() == pytest.approx(sum(each) / len(each), rel=1e-6)
    loss.backward()
    heads = {name: head.weight.grad for name, head in model.aux_heads.items()}
    heads["final"] = model.segmentation_head[0].weight.grad
    assert len(heads) == NESTED + 1
    assert all(g is not None and g.abs().sum() > 0 for g in heads.values()), heads.keys()

    plain = _seeded(PLAIN).train()
    out = plain(_input())
    assert torch.is_tensor(out) and torch.equal(supervised_loss(loss_fn, out, y), loss_fn(out, y))


def test_other_archs_are_a_config_error() -> None:
    for arch in ("Unet", "FPN"):
        config = load_config(None, {"model": {"arch": arch, "deep_supervision": True}})
        with pytest.raises(ConfigError, match=f"model.deep_supervision: .*UnetPlusPlus.*model.arch {arch}"):
            check_config(config)
        with pytest.raises(ConfigError, match="model.deep_supervision"):
            build_model(config.model, load_weights=False)
        check_config(config, serving=True)  # a predict-only run trains nothing
    check_config(load_config(None, {"model": {"arch": "UnetPlusPlus", "deep_supervision": True}}))


def test_training_run_writes_a_checkpoint_that_loads_and_predicts(tmp_path) -> None:
    index, stores = make_tile_stores(tmp_path / "stores", n_pos=4, n_tissue=2, n_glass=2)
    config = load_config(overrides={
        "model": {"arch": "UnetPlusPlus", "encoder": ENCODER, "decoder_channels": list(CHANNELS),
                  "deep_supervision": True},
        "train": {"epochs": 1, "batch_size": 4, "folds": 3, "patience": 0, "device": "cpu", "seed": 7},
    })
    metrics = train_fold(index, stores, 0, tmp_path / "fold0", config)
    assert np.isfinite(metrics["train_loss"]).all() and np.isfinite(metrics["val_dice"]).all()

    ckpt = torch.load(tmp_path / "fold0" / "model.pt", weights_only=True)
    _seed_everything(config.train.seed)  # as training does before building the model
    initial = build_model(config.model).state_dict()
    heads = [k for k in ckpt["state_dict"] if k.startswith("aux_heads.") and k.endswith(".weight")]
    assert len(heads) == NESTED
    assert all(not torch.equal(ckpt["state_dict"][k], initial[k]) for k in heads)  # the loss reached them

    model, meta = load_model(tmp_path / "fold0" / "model.pt", "cpu")  # strict load
    assert isinstance(model, DeepSupervisedUnetPlusPlus) and not model.training
    models, mean, std, _ = load_models([tmp_path / "fold0" / "model.pt"], torch.device("cpu"), config)
    images = np.stack([np.asarray(torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8)) for _ in range(2)])
    probs = predict_batch(models, images, mean, std, torch.device("cpu"), tta=("hflip",), amp=False)
    assert probs.shape == (2, 64, 64) and np.isfinite(probs).all()

    # without its extra heads the checkpoint is an ordinary U-Net++ predicting the same
    plain = build_model(dataclasses.replace(config.model, deep_supervision=False), load_weights=False)
    plain.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if not k.startswith("aux_heads.")})
    plain.eval()
    same = predict_batch([plain], images, mean, std, torch.device("cpu"), tta=("hflip",), amp=False)
    assert np.array_equal(probs, same)
