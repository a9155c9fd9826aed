"""Offline Kaggle inference: a model bundle over a Kaggle-layout folder, without Snakemake.

A Kaggle notebook has no internet, no Snakemake and a time limit, and the model was
trained elsewhere. :func:`predict_folder` runs, for every test slide in
``sample_submission.csv`` order, the workflow's own stages one after the other (tissue
detection, sliding-window consensus, encoding) with the bundle's models, geometry,
normalisation and threshold, and writes ``submission.csv``. Each slide's probability
store is removed once its RLE is written, so disk and memory stay those of one
workflow job; the submission is identical to the workflow's with the same bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.bundle import CARD, Bundle, check_against, read_bundle
from pipeline.config import Config, merge_dicts, config_from_dict
from pipeline.errors import DataError
from pipeline.progress import get_logger

log = get_logger(__name__)


def bundle_config(bundle: Bundle, *overrides: dict[str, Any]) -> Config:
    """The bundle's training config with its serving geometry and post-processing, then ``overrides``.

    What the bundle fixes (geometry, post-processing) may not be overridden to other values:
    ConfigError naming the key and both values.
    """
    data = dict(bundle.card.get("config") or {})
    geometry = bundle.geometry
    data = merge_dicts(data, {"predict": {"window": geometry["tile_size"], "out_size": geometry["out_size"],
                                     **bundle.card["postprocessing"]}})
    for extra in overrides:
        data = merge_dicts(data, extra or {})
    config = config_from_dict(data)
    check_against(config, bundle)
    return config


def _forget_other_runs(work: Path, bundle: Bundle, config: Config) -> None:
    """RLEs in ``work`` are reused after a crash only if the same bundle and config made them."""
    import hashlib
    import json

    from pipeline.atomic import write_text_atomic

    stamp = work / "run.json"
    digest = hashlib.sha256((bundle.path / CARD).read_bytes()).hexdigest()
    current = json.dumps({"card_sha256": digest, "config": config.to_dict()}, sort_keys=True)
    if stamp.exists() and stamp.read_text() != current:
        stale = list(work.glob("*.rle"))
        for path in stale:
            path.unlink()
        log.info("%s: %d RLE(s) of another bundle or config removed", work, len(stale))
    write_text_atomic(stamp, current)


def predict_folder(
    bundle_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    config: Config | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Predict every ``data_dir/test/*.tiff`` with the bundle and write ``out_csv`` (Kaggle's submission).

    ``config`` defaults to :func:`bundle_config` of the bundle; ``work_dir`` (default: a
    temporary folder, removed at the end) keeps the tissue masks and RLEs, so a rerun with
    the same bundle and config resumes at the first slide without an RLE.
    """
    from pipeline.atomic import write_text_atomic
    from pipeline.dataset import discover_slides
    from pipeline.encode import encode_prediction
    from pipeline.predict import run_predict
    from pipeline.progress import progress
    from pipeline.slides import open_slide
    from pipeline.submission import write_submission
    from pipeline.tissue import run_tissue

    bundle = read_bundle(bundle_dir, verify=True)
    config = config or bundle_config(bundle)
    check_against(config, bundle)
    slides = [s for s in discover_slides(data_dir) if s.split == "test"]
    if not slides:
        raise DataError(Path(data_dir) / "test", "no test slides ({id}.tiff) to predict")
    threshold_json = bundle.threshold_json if config.predict.threshold == "auto" else None
    own_work = work_dir is None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="kaggle-"))
    work.mkdir(parents=True, exist_ok=True)
    _forget_other_runs(work, bundle, config)
    try:
        for slide in progress(slides, desc="kaggle: test slides", logger=log):
            rle_path = work / f"{slide.id}.rle"
            if rle_path.exists():  # a rerun after a crash resumes where it stopped
                log.info("%s: already predicted (%s)", slide.id, rle_path)
                continue
            mask_png, thumb_png = work / f"{slide.id}.png", work / f"{slide.id}.thumb.png"
            store = work / f"{slide.id}.zarr"
            run_tissue(slide.path, mask_png, thumb_png, config)
            run_predict(slide.path, bundle.checkpoints, mask_png, store, config, threshold_json)
            with open_slide(slide.path, backend=config.slides.backend) as reader:
                shape = tuple(int(n) for n in reader.shape)
            write_text_atomic(rle_path, encode_prediction(store, shape, config.predict) + "\n")
            shutil.rmtree(store, ignore_errors=True)
        write_submission(data_dir, work, out_csv, config.submit)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    log.info("%d slide(s) with bundle %s -> %s", len(slides), bundle.path, out_csv)
    return Path(out_csv)


__all__ = ["bundle_config", "predict_folder"]
