"""bench/shift.py's shifts on a real AIDPATH tile: each does what its name says (the benchmark is run by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import load_bench_script


@pytest.fixture(scope="module")
def shift():
    return load_bench_script("shift")


@pytest.fixture(scope="module")
def tile(shared_data: Path) -> np.ndarray:
    images = sorted((shared_data / "aidpath-glomeruli" / "images").glob("*.png"))
    if not images:
        pytest.skip("AIDPATH tiles not found")
    with Image.open(images[0]) as im:
        return np.asarray(im.convert("RGB"))[:512, :512]


def test_every_shift_keeps_the_image_and_moves_it(shift, tile) -> None:
    assert shift.SHIFTS["none"](tile) is tile
    for name, fn in shift.SHIFTS.items():
        out = fn(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8, name
        if name != "none":
            assert np.abs(out.astype(int) - tile).mean() > 0.5, name


def test_colour_shifts_go_the_named_way(shift, tile) -> None:
    mean = tile.reshape(-1, 3).mean(0)
    np.testing.assert_array_equal(shift._hed(tile, 1.0, 1.0), tile)  # HED round trip is exact
    camera = shift.SHIFTS["other_camera"](tile).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(camera / mean, np.array([121, 114, 145]) / np.array([217, 199, 219]), rtol=0.02)
    assert shift.SHIFTS["underexposed"](tile).mean() < 0.85 * tile.mean()
    assert shift.SHIFTS["pas_darker"](tile).mean() < tile.mean()
    bluer = shift.SHIFTS["pas_bluer"](tile).reshape(-1, 3).mean(0)
    assert bluer[2] - bluer[0] > mean[2] - mean[0]  # more blue relative to red
    blurred = shift.SHIFTS["blur"](tile)
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < np.abs(np.diff(tile.astype(int), axis=1)).mean()
