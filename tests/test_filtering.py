"""The first pass: tile scores, the trivial rule, stage-1 training or a supplied checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline.config import Config, FilterConfig, load_config
from pipeline.errors import ConfigError
from pipeline.filtering import SCORE_COLUMNS, run_filter, score_tiles, select_kept, trivial_mask
from tests.tile_stores import ENCODER, make_tile_stores

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_config(**filter_cfg) -> Config:
    return load_config(
        overrides={
            "model": {"arch": "Unet", "encoder": ENCODER},
            "train": {"epochs": 50, "batch_size": 4, "lr": 3e-3, "device": "cpu", "seed": 3},
            "filter": {"epochs": 4, **filter_cfg},
        }
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[pd.DataFrame, dict[str, Path]]:
    return make_tile_stores(
        tmp_path_factory.mktemp("stores"), n_slides=2, n_pos=6, n_tissue=3, n_glass=3, seed=1, max_discs=1
    )


class AllNegative(nn.Module):
    """Predicts background everywhere (a model that only learnt the glass)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(-5.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], 1, *x.shape[2:])


def test_score_tiles_and_trivial_rule(data) -> None:
    index, stores = data
    scores = score_tiles(AllNegative(), index, stores, small_config())
    assert scores[["slide", "tile", "y0", "x0"]].equals(index[["slide", "tile", "y0", "x0"]])
    assert np.allclose(scores["true_pos"], index["positive"])
    assert np.allclose(scores["accuracy"], 1.0 - index["positive"]) and (scores["pred_pos"] == 0).all()
    positive = index["positive"].to_numpy() > 0
    assert (scores["dice"][positive] == 0).all() and (scores["dice"][~positive] == 1).all()

    trivial = trivial_mask(scores, FilterConfig())
    assert (trivial == ~positive).all()  # empty tiles the model gets 100 % right
    assert len(select_kept(scores, FilterConfig())) == positive.sum()
    assert len(select_kept(scores, FilterConfig(enabled=False))) == len(index)
    # a looser rule: tiles with <= 10 % positives that are >= 90 % right are trivial too
    loose = trivial_mask(scores, FilterConfig(max_true_positive=0.1, min_accuracy=0.9))
    assert (loose == (scores["true_pos"] <= 0.1)).all()


def test_run_filter_trains_stage1_drops_background_keeps_positives(data, tmp_path) -> None:
    index, stores = data
    config = small_config()
    kept = run_filter(index, stores, tmp_path / "scores.csv", tmp_path / "kept.csv", tmp_path / "stage1", config)

    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS and len(scores) == len(index)
    kept_csv = pd.read_csv(tmp_path / "kept.csv")
    assert list(kept_csv.columns) == list(index.columns) and len(kept_csv) == len(kept)
    positive = index["positive"] > 0
    kept_keys = set(zip(kept_csv["slide"], kept_csv["tile"], strict=True))
    assert set(zip(index["slide"][positive], index["tile"][positive], strict=True)) <= kept_keys
    glass = index["tissue"] == 0
    dropped = ~index.set_index(["slide", "tile"]).index.isin(list(kept_keys))
    assert dropped[glass.to_numpy()].all(), scores[glass]  # white glass is trivially right
    assert scores.loc[positive, "dice"].mean() > 0.5  # the quick model did learn
    stage1 = pd.read_csv(tmp_path / "stage1" / "metrics.csv")
    assert stage1["epoch"].tolist() == [1, 2, 3, 4]  # filter.epochs, not train.epochs

    # a supplied checkpoint is used as is (no training): same scores
    reuse = small_config(checkpoint=str(tmp_path / "stage1" / "model.pt"))
    run_filter(index, stores, tmp_path / "s2.csv", tmp_path / "k2.csv", tmp_path / "unused", reuse)
    assert not (tmp_path / "unused").exists()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s2.csv"), scores)


def test_filter_disabled_keeps_everything(data, tmp_path) -> None:
    index, stores = data
    config = small_config(enabled=False)
    kept = run_filter(index, stores, tmp_path / "scores.csv", tmp_path / "kept.csv", tmp_path / "w", config)
    assert len(kept) == len(index) and not (tmp_path / "w").exists()
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns) == SCORE_COLUMNS and not scores["trivial"].any()
    assert len(pd.read_csv(tmp_path / "kept.csv")) == len(index)


def test_missing_checkpoint_is_a_config_error(data, tmp_path) -> None:
    index, stores = data
    config = dataclasses.replace(small_config(), filter=FilterConfig(checkpoint=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match="nope.pt: filter.checkpoint: file not found"):
        run_filter(index, stores, tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "w", config)
    assert not (tmp_path / "a.csv").exists()
