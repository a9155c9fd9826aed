"""predict.batch_size: numbers as given, "auto" the largest batch the device holds (8 on a CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from pipeline import batch_size as B
from pipeline import predict as P
from pipeline.config import load_config
from pipeline.config_checks import check_config
from pipeline.errors import ConfigError
from tests.test_predict import MEAN, STD, ArrayReader, ConstantModel, cfg


@pytest.mark.parametrize("value", [1, 8, 64, "auto"])
def test_good_settings_pass(value):
    B.check_setting(value)


@pytest.mark.parametrize("value, message", [(0, "positive integer"), (-3, "positive integer"), (True, "positive integer"),
                                            (2.5, "positive integer"), ("big", "'auto', got 'big'")])
def test_bad_settings_are_config_errors_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=f"predict.batch_size.*{message}"):
        B.check_setting(value)


def test_config_files_take_auto_and_the_checks_refuse_nonsense(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("predict:\n  batch_size: auto\n")
    assert load_config(path).predict.batch_size == "auto"
    check_config(load_config(path))
    path.write_text("predict:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match="predict.batch_size"):
        check_config(load_config(path))


@pytest.mark.parametrize("limit, want", [(100, 64), (8, 8), (5, 4), (1, 1), (0, 1), (10_000, B.CAP)])
def test_the_search_finds_the_largest_size_that_fits(limit, want):
    tried: list[int] = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= limit

    assert B.largest_fitting(fits) == want
    assert len(tried) == len(set(tried)) and len(tried) <= 7  # each size probed once, a handful in all


def test_auto_on_a_cpu_is_the_cpu_batch_and_numbers_pass_through():
    cpu = torch.device("cpu")
    assert B.resolve_batch_size("auto", [], 512, cpu) == B.CPU_BATCH
    assert B.resolve_batch_size(5, [], 512, cpu) == 5


def test_prediction_records_the_batch_size_it_used(tmp_path):
    reader = ArrayReader(np.full((600, 750, 3), 255, np.uint8))
    P.predict_slide(reader, [ConstantModel(0.3)], None, cfg(batch_size="auto"), tmp_path / "a.zarr", MEAN, STD)
    P.predict_slide(reader, [ConstantModel(0.3)], None, cfg(batch_size=2), tmp_path / "b.zarr", MEAN, STD)
    a, b = zarr.open_array(str(tmp_path / "a.zarr"), mode="r"), zarr.open_array(str(tmp_path / "b.zarr"), mode="r")
    assert a.attrs["batch_size"] == B.CPU_BATCH and b.attrs["batch_size"] == 2
    np.testing.assert_array_equal(a[:], b[:])  # the batch size never changes the map


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_probe_grows_with_a_smaller_model():  # pragma: no cover - runs only where a GPU is
    device = torch.device("cuda")
    small = torch.nn.Conv2d(3, 1, 3, padding=1).to(device).eval()
    size = B.resolve_batch_size("auto", [small], 256, device)
    assert B.FIRST <= size <= B.CAP
