"""Model bundles: everything a trained model needs to serve, in one directory.

A training run ends in ``results/bundle/``: the fold checkpoints, the out-of-fold
threshold choice and a model card (``model.yaml``) saying what the model is
(architecture, encoder, tile geometry, colour normalisation), how well it did (the
threshold, post-processing and out-of-fold Dice they came from), what made it
(training slides, folds, config, package versions, time) and the checksum of every
file. Nightly runs and offline Kaggle notebooks predict with a bundle on machines
that never saw the training data, so prediction takes its geometry from the card (as
nnU-Net takes its patch size from the trained plans) and refuses a config that
contradicts it before any work. :func:`promote` replaces a serving bundle only by a
bundle that is not worse out of fold, and logs every decision in ``registry.csv``.

Light on imports (no torch): the Snakefile reads cards while planning.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import atomic_path, write_text_atomic
from pipeline.errors import ConfigError, DataError
from pipeline.progress import get_logger

log = get_logger(__name__)

FORMAT = "hubmap-glomeruli-bundle"
VERSION = 1
CARD = "model.yaml"
THRESHOLD = "threshold.json"
REGISTRY_COLUMNS = ("time", "bundle", "oof_dice", "serving_oof_dice", "promoted", "reason", "serving")
#: Packages whose versions a card records (what can change a model's numbers).
PACKAGES = ("hubmap-glomeruli-pipeline", "torch", "segmentation-models-pytorch", "timm", "numpy",
            "tifffile", "zarr", "opencv-python-headless", "albumentations")
#: predict keys the out-of-fold Dice of a bundle depends on besides the geometry: serving must match them.
POSTPROCESS_KEYS = ("fill_holes", "min_object_px", "upsample")


#: Top-level keys of a run's config that say where it ran, not what the model is.
SERVING_KEYS = ("results_dir", "model_bundle", "promote_to", "data_layout")


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases: a card is read by people too."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass(frozen=True)
class Bundle:
    """A bundle directory and its card, checked by :func:`read_bundle`."""

    path: Path
    card: dict[str, Any]

    @property
    def checkpoints(self) -> list[Path]:
        return [self.path / name for name in self.card["folds"]]

    @property
    def threshold_json(self) -> Path:
        return self.path / THRESHOLD

    @property
    def geometry(self) -> dict[str, int]:
        return self.card["geometry"]

    @property
    def scale(self) -> Fraction:
        return Fraction(self.geometry["tile_size"], self.geometry["out_size"])

    @property
    def oof_dice(self) -> float | None:
        value = self.card.get("validation", {}).get("oof_dice")
        return None if value is None else float(value)


def write_bundle(
    out_dir: str | os.PathLike[str],
    checkpoints: Sequence[str | os.PathLike[str]],
    threshold_json: str | os.PathLike[str],
    oof_csv: str | os.PathLike[str],
    config: Any,
    fold_of: Mapping[str, int],
) -> Bundle:
    """Copy the fold checkpoints and the threshold choice into ``out_dir`` and write the card.

    ``config`` is the run's whole config (the card's ``config``, the Kaggle command's base);
    the model and tile geometry come from the checkpoints themselves. The directory appears
    whole or not at all (written beside it, then renamed), so a
    killed job never leaves a bundle that a nightly run would serve half of.
    """
    import pandas as pd

    from pipeline.models import read_checkpoint

    out_dir = Path(out_dir)
    choice = json.loads(Path(threshold_json).read_text())
    oof = pd.read_csv(oof_csv, dtype={"slide": str})
    per_slide = {str(r.slide): float(r.dice) for r in oof.itertuples() if str(r.slide) != "mean"}
    first = read_checkpoint(checkpoints[0])
    trained = first.get("config") or config.to_dict()  # the model and tile geometry it was trained with
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = []
        for k, ckpt in enumerate(checkpoints):
            name = f"fold{k}.pt"
            shutil.copy2(ckpt, tmp / name)
            names.append(name)
        shutil.copy2(threshold_json, tmp / THRESHOLD)
        predict = config.predict
        card = {
            "format": FORMAT,
            "version": VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": {k: trained["model"][k] for k in ("arch", "encoder", "encoder_weights", "decoder_channels",
                                                        "mean", "std")},
            "geometry": {"tile_size": int(trained["tiles"]["size"]), "out_size": int(trained["tiles"]["out_size"])},
            "normalisation": first.get("colour") or {"method": "none"},
            "input_norm": first.get("input_norm") or {"method": "none"},  # model.input_norm (pipeline.input_norm)
            "threshold": {"value": float(choice["threshold"]), "chosen": bool(choice.get("chosen", False)),
                          "source": str(choice.get("threshold_source", ""))},
            "postprocessing": {k: getattr(predict, k) for k in POSTPROCESS_KEYS},
            "validation": {"oof_dice": choice.get("oof_dice"), "per_slide": per_slide,
                           "folds": len(names), "slides": int(choice.get("slides", len(per_slide)))},
            "training_slides": sorted(fold_of),
            "fold_of_slide": {k: int(v) for k, v in sorted(fold_of.items())},
            "folds": names,
            "config": {k: v for k, v in config.to_dict().items() if k not in SERVING_KEYS},
            "versions": _versions(),
            "sha256": {name: _sha256(tmp / name) for name in [*names, THRESHOLD]},
        }
        (tmp / CARD).write_text(yaml.dump(card, Dumper=_PlainDumper, sort_keys=False))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle of %d fold(s), out-of-fold Dice %s -> %s", len(names), card["validation"]["oof_dice"], out_dir)
    return Bundle(out_dir, card)


def read_bundle(path: str | os.PathLike[str], verify: bool = False) -> Bundle:
    """The bundle at ``path``, its card checked (and its files' checksums with ``verify``); DataError naming it."""
    path = Path(path).expanduser()
    card_path = path / CARD
    if not path.is_dir():
        raise DataError(path, "model bundle not found (a directory written by a training run: results/.../bundle)")
    try:
        card = yaml.safe_load(card_path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(card_path, f"cannot read the model card: {err}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise DataError(card_path, f"not a model card (format {FORMAT!r} expected)")
    if int(card.get("version", 0)) > VERSION:
        raise DataError(card_path, f"bundle version {card.get('version')} is newer than this pipeline reads "
                                   f"({VERSION}): update the pipeline")
    missing = [k for k in ("folds", "geometry", "threshold", "postprocessing", "sha256") if k not in card]
    if missing:
        raise DataError(card_path, f"model card lacks {', '.join(missing)}")
    for name in [*card["folds"], THRESHOLD]:
        file = path / name
        if not file.is_file():
            raise DataError(file, "missing from the bundle (copy the whole bundle directory)")
        if verify and _sha256(file) != card["sha256"].get(name):
            raise DataError(file, "checksum differs from the model card's: the bundle was altered or copied partly")
    return Bundle(path, card)


def contradictions(config: Any, bundle: Bundle) -> list[str]:
    """Each predict setting of ``config`` that contradicts ``bundle``: key, config value, bundle value."""
    predict = config.predict
    problems = []
    if predict.window <= 0 or predict.out_size <= 0 or Fraction(predict.window, predict.out_size) != bundle.scale:
        g = bundle.geometry
        problems.append(
            f"predict.window/predict.out_size is {predict.window}/{predict.out_size} but the bundle's model was "
            f"trained on tiles of {g['tile_size']}/{g['out_size']} (set predict.window: {g['tile_size']}, "
            f"predict.out_size: {g['out_size']})"
        )
    for key in POSTPROCESS_KEYS:
        want = bundle.card["postprocessing"].get(key)
        have = getattr(predict, key)
        if want is not None and have != want:
            problems.append(f"predict.{key} is {have!r} but the bundle was validated with {want!r}")
    return problems


def check_against(config: Any, bundle: Bundle) -> None:
    """ConfigError listing every contradiction between ``config`` and ``bundle`` (none: returns)."""
    problems = contradictions(config, bundle)
    if problems:
        raise ConfigError(None, f"model bundle {bundle.path}: " + "; ".join(problems))


def _registry_append(registry: Path, row: Mapping[str, Any]) -> None:
    """One row appended to ``registry.csv`` (header when new); rewritten atomically so it is never torn."""
    rows = []
    if registry.exists():
        with open(registry, newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows.append({k: row.get(k, "") for k in REGISTRY_COLUMNS})
    with atomic_path(registry) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=REGISTRY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def promote(bundle_dir: str | os.PathLike[str], serving_dir: str | os.PathLike[str],
            out_json: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Replace the serving bundle by ``bundle_dir`` unless its out-of-fold Dice is lower.

    Every decision is a row of ``registry.csv`` beside ``serving_dir``; the bundle's
    files are checked against its card first. A bundle without an out-of-fold Dice
    (one fold) never replaces a validated one. Returns (and writes to ``out_json``)
    the decision.
    """
    new = read_bundle(bundle_dir, verify=True)
    serving_dir = Path(serving_dir).expanduser()
    current = read_bundle(serving_dir) if serving_dir.exists() else None
    new_dice, old_dice = new.oof_dice, current.oof_dice if current else None
    if current is None:
        promoted, reason = True, "no serving bundle yet"
    elif new_dice is None:
        promoted, reason = old_dice is None, "new bundle has no out-of-fold Dice"
    elif old_dice is None or new_dice >= old_dice:
        promoted, reason = True, "out-of-fold Dice not lower"
    else:
        promoted, reason = False, f"out-of-fold Dice {new_dice:.4f} < serving {old_dice:.4f}"
    if promoted:
        serving_dir.parent.mkdir(parents=True, exist_ok=True)
        staged = serving_dir.with_name(f".{serving_dir.name}.new-{os.getpid()}")
        retired = serving_dir.with_name(f".{serving_dir.name}.old-{os.getpid()}")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(new.path, staged)
        if serving_dir.exists():
            os.replace(serving_dir, retired)
        os.replace(staged, serving_dir)  # the window without a serving bundle is one rename
        shutil.rmtree(retired, ignore_errors=True)
    decision = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "bundle": str(new.path.resolve()),
                "oof_dice": new_dice, "serving_oof_dice": old_dice, "promoted": promoted, "reason": reason,
                "serving": str(serving_dir)}
    _registry_append(serving_dir.parent / "registry.csv", decision)
    log.info("%s: %s (%s)", serving_dir, "promoted" if promoted else "kept", reason)
    if out_json is not None:
        write_text_atomic(out_json, json.dumps(decision, indent=2) + "\n")
    return decision


__all__ = ["Bundle", "check_against", "contradictions", "promote", "read_bundle", "write_bundle"]
