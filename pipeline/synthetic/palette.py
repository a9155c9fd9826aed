"""The stain palette: rendered class labels, their colours and the per-slide stain variation."""

from __future__ import annotations

import numpy as np

# Labels of the rendered classes; colours are RGB before the slide's stain variation.
STROMA, WALL, LUMEN, MEMBRANE, NUCLEUS, BOWMAN, CAPSULE, TUFT, TUFT_NUCLEUS, CAPILLARY = range(10)
BASE_PALETTE = np.array(
    [
        (236, 206, 228),  # STROMA: pale eosin interstitium
        (218, 160, 204),  # WALL: tubular epithelium, darker pink
        (246, 236, 245),  # LUMEN: nearly white
        (196, 92, 170),  # MEMBRANE: magenta basement membrane
        (112, 82, 152),  # NUCLEUS: haematoxylin
        (247, 238, 246),  # BOWMAN: pale Bowman's space
        (202, 118, 182),  # CAPSULE: Bowman's capsule wall
        (150, 92, 168),  # TUFT: purple glomerular tuft
        (84, 48, 128),  # TUFT_NUCLEUS: dense dark nuclei
        (226, 196, 228),  # CAPILLARY: pale capillary lumens
    ],
    dtype=np.float32,
)
GLASS = np.array((242.0, 241.0, 244.0), dtype=np.float32)


OD_LEVELS = 64
OD_RANGE = (0.55, 1.45)


def _colour_table(palette: np.ndarray) -> np.ndarray:
    """uint8 (n_labels * OD_LEVELS, 3): the palette at each stain density (Beer-Lambert-ish)."""
    od = np.linspace(*OD_RANGE, OD_LEVELS, dtype=np.float32)
    table = 255.0 - (255.0 - palette[:, None, :]) * od[None, :, None]
    return np.clip(table, 0, 255).round().astype(np.uint8).reshape(-1, 3)


def _slide_palette(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-slide stain variation: optical-density scaling and a small colour cast."""
    density = rng.uniform(0.85, 1.15)
    cast = rng.uniform(-5.0, 5.0, size=3)
    od = -np.log(np.clip(BASE_PALETTE, 1.0, 255.0) / 255.0) * density
    palette = 255.0 * np.exp(-od) + cast
    glass = GLASS + rng.uniform(-2.0, 2.0, size=3)
    return np.clip(palette, 0, 255).astype(np.float32), np.clip(glass, 0, 255).astype(np.float32)
