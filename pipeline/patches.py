"""Patch-folder data sets (``data_layout: patches | dsb2018``) staged as the Kaggle layout.

Two layouts of small images rather than slides, each with ``train/`` and ``test/``:

* ``patches``: ``{split}/images/{id}.png`` + ``{split}/masks/{id}.png``, one binary mask per
  image (any channel > 127 is foreground, so AIDPATH's red-on-black masks read as they are);
* ``dsb2018`` (Data Science Bowl 2018): ``{split}/{id}/images/{id}.png`` +
  ``{split}/{id}/masks/*.png``, one mask per object.

Masks of test images are optional: when present they are the test truth (``test_truth.csv``).

Why staging instead of a second reader: every stage after it (tissue, tiles, the first pass,
training, out-of-fold scoring, prediction, RLE) then runs unchanged on small one-page TIFFs,
so a patch set is validated and predicted exactly like a slide. :func:`stage_patches` writes
``staged/{train,test}/{id}.tiff``, ``train.csv`` and ``test_truth.csv`` (Kaggle RLE) and
``sample_submission.csv`` (the order of the test images), and copies
``HuBMAP-20-dataset_information.csv`` when the folder has one (its ``patient_number`` groups
the images into folds, e.g. the tiles of one biopsy; ``image_file`` names the image). It is incremental like make: an
image is converted again only when its source is newer than its TIFF, and a table is
rewritten only when its content changes, so a nightly run with new images reruns only what
they touch. Every file is written atomically.

Training truth keeps touching objects apart: where two per-object masks of a ``dsb2018``
image touch, the pixels of each that have a neighbour in the other become background (a 2 px
gap, as in the U-Net paper's labels), so that the connected components the border-weighted
loss sees are the objects. The test truth is the plain union, which is what is scored.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from pipeline.atomic import atomic_path, write_csv_atomic
from pipeline.dataset import SAMPLE_SUBMISSION_CSV, SLIDE_ID, SLIDE_ID_RULE, SPLITS, TEST_TRUTH_CSV, TRAIN_CSV
from pipeline.errors import ConfigError, DataError
from pipeline.folds import DATASET_INFO_CSV
from pipeline.progress import get_logger
from pipeline.rle import decode, encode

log = get_logger(__name__)

LAYOUTS = ("kaggle", "patches", "dsb2018")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_TILE = 256
MAX_MASK_PNG_PX = 64 * 2**20  # a per-image mask PNG is for patches; a slide's mask stays an RLE


@dataclass(frozen=True)
class Patch:
    """One image of a patch set and its masks (one binary mask, or one per object; none for unlabelled)."""

    id: str
    split: str
    image: Path
    masks: tuple[Path, ...]
    per_object: bool

    @property
    def sources(self) -> tuple[Path, ...]:
        return (self.image, *self.masks)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


Warn = Callable[[str], None]


def _usable_id(path: Path, stem: str, warn: Warn) -> bool:
    if SLIDE_ID.match(stem):
        return True
    warn(f"{path}: not processed: image id {stem!r} cannot be used: {SLIDE_ID_RULE}; rename it")
    return False


def _patches_split(data_dir: Path, split: str, warn: Warn) -> list[Patch]:
    masks = {p.stem: p for p in _images(data_dir / split / "masks")}
    out = []
    for image in _images(data_dir / split / "images"):
        mask = masks.pop(image.stem, None)
        if split == "train" and mask is None:
            warn(f"{image}: not used: training image without a mask (expected {split}/masks/{image.stem}.png)")
        elif _usable_id(image, image.stem, warn):
            out.append(Patch(image.stem, split, image, (mask,) if mask else (), False))
    for orphan in masks.values():
        warn(f"{orphan}: not used: mask without an image (expected {split}/images/{orphan.stem}.png)")
    return out


def _dsb_split(data_dir: Path, split: str, warn: Warn) -> list[Patch]:
    folder = data_dir / split
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = _images(entry / "images")
        masks = tuple(_images(entry / "masks"))
        if len(images) != 1:
            warn(f"{entry / 'images'}: not used: expected exactly one image, found {len(images)}")
        elif split == "train" and not masks:
            warn(f"{entry / 'masks'}: not used: training image without object masks")
        elif _usable_id(entry, entry.name, warn):
            out.append(Patch(entry.name, split, images[0], masks, True))
    return out


def find_patches(data_dir: str | Path, layout: str, warn: Warn | None = None) -> list[Patch]:
    """Every usable image of a ``patches`` or ``dsb2018`` folder, train before test, sorted by id.

    Like slides in the Kaggle layout, a bad image never stops the others: a training image
    without masks, a mask without an image, an id that cannot be a file name are each
    reported to ``warn`` (the module logger by default) with the file, and left out.
    DataError for an id used twice and for a folder with no usable image.
    """
    data_dir = Path(data_dir)
    warn = warn or log.warning
    if layout not in LAYOUTS[1:]:
        raise ConfigError(None, f"data_layout: {layout!r} is not a patch layout (one of {', '.join(LAYOUTS[1:])})")
    if not data_dir.is_dir():
        raise DataError(data_dir, "data directory does not exist")
    read_split = _patches_split if layout == "patches" else _dsb_split
    found: dict[str, Patch] = {}
    for split in SPLITS:
        for patch in read_split(data_dir, split, warn):
            if patch.id in found:
                raise DataError(patch.image, f"image id {patch.id!r} also at {found[patch.id].image}")
            found[patch.id] = patch
    if not found:
        expected = "{split}/images/{id}.png" if layout == "patches" else "{split}/{id}/images/{id}.png"
        raise DataError(data_dir, f"no usable images for data_layout {layout} (expected {expected}, split train or test)")
    return list(found.values())


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB (grey replicated, alpha dropped, 16-bit scaled)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = arr.max() if arr.size and arr.max() > 0 else 1.0
                return np.repeat((arr * (255.0 / top)).round().astype(np.uint8)[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(path, "image not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(path, f"cannot read image: {err}") from err


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as bool (any channel > 127); DataError when its size is not the image's."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as err:
        raise DataError(path, f"cannot read mask: {err}") from err
    mask = (arr > 127).any(axis=2) if arr.ndim == 3 else arr > 127
    if mask.shape != shape:
        raise DataError(path, f"mask is {mask.shape[0]} x {mask.shape[1]} px, its image {shape[0]} x {shape[1]}")
    return mask


def instance_labels(masks: Iterable[Path], shape: tuple[int, int]) -> np.ndarray:
    """int32 label image of per-object masks (1..n; where objects overlap, the later one wins)."""
    labels = np.zeros(shape, np.int32)
    for number, path in enumerate(masks, start=1):
        labels[read_mask(path, shape)] = number
    return labels


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Binary mask of ``labels`` with a background gap wherever two objects touch (8-neighbours).

    A pixel of object a becomes background when one of its 8 neighbours belongs to another
    object b: each side loses one pixel, so touching objects end 2 px apart.
    """
    footprint = np.ones((3, 3), bool)
    highest = ndimage.maximum_filter(labels, footprint=footprint, mode="constant", cval=0)
    big = np.iinfo(np.int32).max
    lowest = -ndimage.maximum_filter(-np.where(labels > 0, labels, big), footprint=footprint, mode="nearest")
    objects = labels > 0
    touching = objects & ((highest != labels) | (lowest != labels))
    return objects & ~touching


def _is_fresh(target: Path, sources: Iterable[Path]) -> bool:
    if not target.exists():
        return False
    made = target.stat().st_mtime_ns
    return all(src.stat().st_mtime_ns <= made for src in sources)


def _write_tiff(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, image, photometric="rgb", tile=(TIFF_TILE, TIFF_TILE), compression="zlib", metadata=None
        )


def _write_if_changed(path: Path, header: list[str], rows: list[list[str]]) -> bool:
    """Write a CSV table only when its text differs (an unchanged table keeps its mtime)."""
    text = ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)
    if path.exists() and path.read_text() == text:
        return False
    write_csv_atomic(path, header, rows)
    return True


def _copy_if_changed(source: Path, target: Path) -> None:
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def _truth_rle(patch: Patch, shape: tuple[int, int], gap: bool) -> str:
    if not patch.per_object:
        return encode(read_mask(patch.masks[0], shape))
    labels = instance_labels(patch.masks, shape)
    return encode(separate_touching(labels) if gap else labels > 0)


def _stage_one(patch: Patch, staged: Path) -> tuple[str | None, bool]:
    """Convert one image (when stale): its truth RLE (cached beside the TIFF) and whether it was redone."""
    tiff = staged / patch.split / f"{patch.id}.tiff"
    rle_file = staged / "truth" / f"{patch.id}.rle"
    if _is_fresh(tiff, patch.sources) and (not patch.masks or _is_fresh(rle_file, patch.sources)):
        return (rle_file.read_text() if patch.masks else None), False
    image = read_image(patch.image)
    shape = image.shape[:2]
    rle = None
    if patch.masks:
        # training truth separates touching objects; test truth is what is scored (the plain union)
        rle = _truth_rle(patch, shape, gap=patch.split == "train")
        with atomic_path(rle_file) as tmp:
            tmp.write_text(rle)
    _write_tiff(image, tiff)
    return rle, True


def _remove_gone(staged: Path, patches: list[Patch]) -> None:
    """Staged files of images no longer in the source folder (or moved to the other split)."""
    keep = {(p.split, p.id) for p in patches}
    ids = {p.id for p in patches}
    for split in SPLITS:
        folder = staged / split
        for path in sorted(folder.glob("*.tiff")) if folder.is_dir() else []:
            if (split, path.stem) not in keep:
                log.info("%s: its image is gone from the data set, removing it", path)
                path.unlink()
                if path.stem not in ids:
                    (staged / "truth" / f"{path.stem}.rle").unlink(missing_ok=True)


def stage_patches(data_dir: str | Path, layout: str, staged: str | Path, warn: Warn | None = None) -> Path:
    """Stage a patch set as the Kaggle layout under ``staged`` and return that folder (see the module doc).

    Images that cannot be used are reported to ``warn`` at every call and left out (their
    staged files removed), so a bad one never stops the others.
    """
    staged = Path(staged)
    warn = warn or log.warning
    found = find_patches(data_dir, layout, warn)
    truth: dict[str, dict[str, str]] = {split: {} for split in SPLITS}
    patches, redone = [], 0
    for patch in found:
        try:
            rle, was_redone = _stage_one(patch, staged)
        except DataError as err:  # an unreadable image or a mask of another size: this image only
            warn(f"{err}: image {patch.id} not used")
            continue
        patches.append(patch)
        redone += was_redone
        if rle is not None:
            truth[patch.split][patch.id] = rle
    _remove_gone(staged, patches)
    tests = [p.id for p in patches if p.split == "test"]
    _write_if_changed(staged / TRAIN_CSV, ["id", "encoding"], [[i, r] for i, r in truth["train"].items()])
    if truth["test"]:
        if len(truth["test"]) < len(tests):
            warn(f"{data_dir}: {len(tests) - len(truth['test'])} of {len(tests)} test images have no mask; "
                 f"{TEST_TRUTH_CSV} scores only those with one")
        _write_if_changed(staged / TEST_TRUTH_CSV, ["id", "encoding"], [[i, r] for i, r in truth["test"].items()])
    elif (staged / TEST_TRUTH_CSV).exists():
        (staged / TEST_TRUTH_CSV).unlink()
    _write_if_changed(staged / SAMPLE_SUBMISSION_CSV, ["id", "predicted"], [[i, ""] for i in tests])
    _copy_if_changed(Path(data_dir) / DATASET_INFO_CSV, staged / DATASET_INFO_CSV)  # donors: folds never split one
    log.info("%s (%s): %d images staged in %s, %d converted now", data_dir, layout, len(patches), staged, redone)
    return staged


def write_mask_png(rle: str, shape: tuple[int, int], path: str | os.PathLike[str]) -> None:
    """One predicted mask as an 8-bit PNG (0 / 255) of the image's size, written atomically."""
    if shape[0] * shape[1] > MAX_MASK_PNG_PX:
        raise DataError(path, f"a {shape[0]} x {shape[1]} px mask is a slide, not a patch: use its RLE")
    mask = decode(rle, shape, source=str(path))
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
