"""Macenko stain normalisation: the stain vectors it finds, the glass it measures, the map it makes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import macenko, stain

# Ruifrok & Johnston's haematoxylin and eosin OD vectors (unit rows): the stains we render with.
H = np.array([0.650, 0.704, 0.286])
E = np.array([0.072, 0.990, 0.105])
STAINS = np.stack([H / np.linalg.norm(H), E / np.linalg.norm(E)])


def _render(conc: np.ndarray, stains: np.ndarray, glass=(245.0, 245.0, 245.0)) -> np.ndarray:
    """uint8 RGB of stain concentrations (..., 2) by Beer-Lambert on ``glass``."""
    od = conc @ stains
    return np.clip((np.asarray(glass) + 1.0) * np.exp(-od) - 1.0 + 0.5, 0, 255).astype(np.uint8)


def _slide(rng: np.random.Generator, stains=STAINS, glass=(245.0, 245.0, 245.0), density=1.0):
    """A 96 x 128 'slide': tissue (a mix of two stains) on the left, glass on the right, and its mask."""
    conc = np.zeros((96, 128, 2))
    mask = np.zeros((96, 128), bool)
    mask[:, :64] = True
    conc[mask] = rng.gamma(2.0, 0.3, (int(mask.sum()), 2)) * density
    conc[mask] *= rng.random((int(mask.sum()), 1)) < 0.95  # some holes in the tissue
    conc[:20, :20, 0] += 1.0  # a dense nucleus-rich patch
    return _render(conc, stains, glass), mask


def _render_like(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The same kind of tissue with a bluer haematoxylin, a denser stain and a grey-blue camera glass."""
    bluer_h = np.array([0.75, 0.60, 0.28])
    stains = np.stack([bluer_h / np.linalg.norm(bluer_h), STAINS[1]])
    image, _ = _slide(rng, stains=stains, glass=(170.0, 180.0, 215.0), density=1.4)
    return image


def test_stain_vectors_and_glass_are_recovered() -> None:
    image, mask = _slide(np.random.default_rng(0))
    stats = macenko.stain_stats(image, mask)
    cosines = np.sum(np.asarray(stats.stains) * STAINS, axis=1)
    assert np.all(cosines > 0.99), cosines  # haematoxylin first, eosin second
    np.testing.assert_allclose(stats.background, 245.0, atol=1.0)
    assert macenko.StainStats.from_dict(stats.as_dict()) == stats


def test_another_labs_glass_and_stain_map_back() -> None:
    """A bluer stain on a tinted camera's glass, mapped onto the first slide's stats, looks like it."""
    rng = np.random.default_rng(1)
    image, mask = _slide(rng)
    bluer = _render_like(rng, mask)
    reference = macenko.stain_stats(image, mask)
    source = macenko.stain_stats(bluer, mask)
    assert source.background[0] < 200 < reference.background[0]  # the tinted glass is measured, not assumed white
    restored = macenko.macenko(bluer, source, reference)
    assert restored.dtype == np.uint8 and restored.shape == image.shape
    tissue_mean = restored[mask].mean(axis=0)
    before = np.abs(bluer[mask].mean(axis=0) - image[mask].mean(axis=0)).max()
    after = np.abs(tissue_mean - image[mask].mean(axis=0)).max()
    assert before > 40 and after < 0.2 * before, (before, after)
    np.testing.assert_allclose(restored[~mask].mean(axis=0), reference.background, atol=2.0)  # glass back to glass


def test_the_map_is_the_identity_onto_the_slides_own_stats() -> None:
    image, mask = _slide(np.random.default_rng(2))
    stats = macenko.stain_stats(image, mask)
    np.testing.assert_allclose(macenko.od_map(stats, stats), np.asarray(stats.stains).T @ np.linalg.pinv(
        np.asarray(stats.stains).T), atol=1e-9)  # projection onto the stain plane, nothing more
    restored = macenko.macenko(image, stats, stats)
    assert np.abs(restored.astype(int) - image).mean() < 2.0


def test_a_blank_or_all_tissue_image_stays_defined() -> None:
    glass = np.full((32, 32, 3), 240, np.uint8)
    stats = macenko.stain_stats(glass, np.zeros((32, 32), bool))
    assert stats.stains == macenko.DEFAULT_STAINS and np.all(np.isfinite(stats.max_conc))
    assert np.abs(macenko.macenko(glass, stats, stats).astype(int) - 240).max() <= 1
    image, _ = _slide(np.random.default_rng(3))
    tissue_only = np.ascontiguousarray(image[:, :64])
    stats = macenko.stain_stats(tissue_only, np.ones(tissue_only.shape[:2], bool))  # a patch with no glass
    assert np.all(np.asarray(stats.background) <= 255) and np.all(np.asarray(stats.max_conc) > 0)
    with pytest.raises(ValueError, match="no slide statistics"):
        macenko.reference_stains([])


def test_reference_and_checkpoint_entry_carry_the_stains() -> None:
    image, mask = _slide(np.random.default_rng(4))
    per_slide = [stain.tissue_stats(image, mask), stain.tissue_stats(_render_like(np.random.default_rng(5), mask), mask)]
    reference = stain.reference_stats(per_slide)
    assert reference.stain is not None
    np.testing.assert_allclose(np.linalg.norm(reference.stain.stains, axis=1), 1.0)
    np.testing.assert_allclose(reference.stain.background, np.mean([s.stain.background for s in per_slide], axis=0))
    norm = stain.ColourNormaliser("macenko", reference)
    assert stain.ColourNormaliser.from_dict(norm.as_dict()) == norm
    old = stain.ColourStats(per_slide[0].mean, per_slide[0].std)  # statistics recorded before Macenko
    assert stain.ColourStats.from_dict(old.as_dict()) == old and old.stain is None
    assert stain.reference_stats([old, per_slide[1]]).stain is None
    with pytest.raises(ValueError, match="stain statistics"):
        norm.apply(image, old)
