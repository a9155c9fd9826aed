"""Command line: one subcommand per stage, the same by hand, in a rule or on a node.

Every stage takes ``--config FILE`` (a YAML config, e.g. config/config.yaml) and
``--settings JSON`` (overrides; what the Snakemake rules pass, so a rule reruns
only when the settings it uses change). Heavy imports happen inside each command
so ``--help`` stays instant. Errors a user can act on (``PipelineError``) print
one line naming the file and the problem and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.progress import configure_logging

log = logging.getLogger("pipeline")


def _config(args: argparse.Namespace) -> Config:
    overrides = None
    if args.settings:
        try:
            overrides = json.loads(args.settings)
        except json.JSONDecodeError as err:
            raise ConfigError(None, f"--settings is not valid JSON: {err}") from err
    return load_config(args.config, overrides)


def _json_object(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(None, f"{option} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ConfigError(None, f"{option} must be a JSON object, got {text[:80]!r}")
    return value


def _stores(tiles_dir: Path, slide_ids: Sequence[str]) -> dict[str, Path]:
    return {slide_id: tiles_dir / f"{slide_id}.zarr" for slide_id in slide_ids}


def _read_index(paths: Sequence[Path]):
    import pandas as pd

    frames = [pd.read_csv(p, dtype={"slide": str}) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- stages -----------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace, config: Config) -> None:
    from pipeline.synthetic import make_dataset, make_nuclei_dataset

    if args.layout == "dsb2018":
        make_nuclei_dataset(args.out, n_train=args.n_train, n_test=args.n_test, size=args.width, seed=args.seed)
        return
    make_dataset(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        height=args.height,
        width=args.width,
        seed=args.seed,
        compression=args.compression,
    )


def cmd_sheet(args: argparse.Namespace, config: Config) -> None:
    from pipeline.sheet import write_slide_sheet

    write_slide_sheet(args.data_dir, args.out, backend=config.slides.backend)


def cmd_truth_check(args: argparse.Namespace, config: Config) -> None:
    from pipeline.sheet import check_truth

    check_truth(args.data_dir, args.out, backend=config.slides.backend)


def cmd_tissue(args: argparse.Namespace, config: Config) -> None:
    from pipeline.tissue import run_tissue

    run_tissue(args.slide, args.mask_png, args.thumbnail_png, config, whole_image=args.whole_image)


def cmd_tiles(args: argparse.Namespace, config: Config) -> None:
    from pipeline.dataset import polygons_path, read_encodings
    from pipeline.tiles import run_tiles

    rle = read_encodings(Path(args.data_dir) / "train.csv").get(args.id)
    polygons = polygons_path(args.data_dir, args.id)
    run_tiles(args.slide, args.id, rle, polygons, args.tissue, args.out_zarr, args.out_csv, config)


def cmd_tile_index(args: argparse.Namespace, config: Config) -> None:
    from pipeline.atomic import atomic_path

    index = _read_index(args.csvs)
    with atomic_path(args.out) as tmp:
        index.to_csv(tmp, index=False)
    log.info("%d tiles from %d slides -> %s", len(index), len(args.csvs), args.out)


def cmd_filter(args: argparse.Namespace, config: Config) -> None:
    from pipeline.filtering import run_filter

    index = _read_index([args.index])
    stores = _stores(args.tiles_dir, sorted(index["slide"].unique()))
    run_filter(index, stores, args.scores, args.kept, args.work_dir, config)


def cmd_train(args: argparse.Namespace, config: Config) -> None:
    from pipeline.folds import fold_assignment
    from pipeline.train import train_fold

    index = _read_index([args.index])
    val_index = _read_index([args.val_index]) if args.val_index else None
    slides = set(index["slide"]) | (set(val_index["slide"]) if val_index is not None else set())
    stores = _stores(args.tiles_dir, sorted(slides))
    if args.folds:
        raw = _json_object(args.folds, "--folds")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            raise ConfigError(None, f"--folds must map slide ids to fold numbers, got {args.folds[:80]!r}")
        assignment = {str(k): int(v) for k, v in raw.items()}
    elif args.data_dir:
        assignment = fold_assignment(args.data_dir, slides, config.train.folds, config.train.seed)
    else:
        assignment = None
    train_fold(index, stores, args.fold, args.out_dir, config, assignment, val_index)


def cmd_predict(args: argparse.Namespace, config: Config) -> None:
    from pipeline.predict import run_predict

    run_predict(args.slide, args.checkpoints, args.tissue, args.out_zarr, config, args.threshold_json)


def cmd_oof(args: argparse.Namespace, config: Config) -> None:
    from pipeline.oof import run_oof_slide

    run_oof_slide(args.slide, args.id, args.checkpoint, args.tissue, args.data_dir, args.out_zarr, args.out_csv,
                  config)


def cmd_oof_summary(args: argparse.Namespace, config: Config) -> None:
    from pipeline.oof import summarise

    summarise(args.counts, args.oof_dir, args.data_dir, args.out, args.curve, args.threshold_json, config)


def cmd_encode(args: argparse.Namespace, config: Config) -> None:
    from pipeline.dataset import truth_rle
    from pipeline.encode import run_encode

    truth = truth_rle(args.data_dir, args.id) if args.data_dir else None
    run_encode(
        args.prob_zarr, args.slide, args.out_rle, args.out_geojson, args.out_png, truth, config,
        out_objects=args.out_objects, out_summary=args.out_summary, out_sizes_png=args.out_sizes,
        tissue_png=args.tissue, slide_id=args.id,
    )  # fmt: skip


def cmd_mask_png(args: argparse.Namespace, config: Config) -> None:
    from pipeline.patches import write_mask_png
    from pipeline.slides import open_slide
    from pipeline.submission import read_rle_file

    with open_slide(args.slide, backend=config.slides.backend) as reader:
        shape = tuple(reader.shape)[:2]
    write_mask_png(read_rle_file(args.rle), shape, args.out)


def cmd_bundle(args: argparse.Namespace, config: Config) -> None:
    from pipeline.bundle import write_bundle

    folds = {str(k): int(v) for k, v in _json_object(args.folds, "--folds").items()}
    write_bundle(args.out, args.checkpoints, args.threshold_json, args.oof_csv, config, folds)


def cmd_promote(args: argparse.Namespace, config: Config) -> None:
    from pipeline.bundle import promote

    if not str(args.serving):
        raise ConfigError(None, "promote: --serving is empty (set promote_to in the config)")
    promote(args.bundle, args.serving, args.out)


def cmd_kaggle(args: argparse.Namespace, config: Config) -> None:
    """Everything but --bundle/--data/--out is an override of the bundle's own config."""
    import yaml

    from pipeline.bundle import read_bundle
    from pipeline.kaggle import bundle_config, predict_folder

    bundle = read_bundle(args.bundle)
    overrides = []
    if args.config:
        overrides.append(yaml.safe_load(Path(args.config).read_text()) or {})
    if args.settings:
        overrides.append(_json_object(args.settings, "--settings"))
    predict_folder(bundle.path, args.data, args.out, bundle_config(bundle, *overrides), args.work_dir)


def cmd_submit(args: argparse.Namespace, config: Config) -> None:
    from pipeline.submission import write_submission

    write_submission(args.data_dir, args.predictions_dir, args.out, config.submit)


def cmd_evaluate(args: argparse.Namespace, config: Config) -> None:
    from pipeline.submission import evaluate_submission

    evaluate_submission(args.data_dir, args.submission, args.out, backend=config.slides.backend)


# --- argument parsing ---------------------------------------------------------------------


def _stage(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace, Config], None],
    help_text: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--config", type=Path, help="YAML config file (defaults apply for missing keys)")
    parser.add_argument("--settings", help="JSON object of config overrides, e.g. '{\"train\": {\"epochs\": 5}}'")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m pipeline`` parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = _stage(sub, "synth", cmd_synth, "write a synthetic data set: kidney slides (Kaggle layout) or nuclei (dsb2018)")
    p.add_argument("--out", type=Path, required=True, help="data directory to create")
    p.add_argument("--layout", choices=["kaggle", "dsb2018"], default="kaggle",
                   help="kaggle: kidney slides with glomeruli; dsb2018: touching nuclei, a third dark-field")
    p.add_argument("--n-train", type=int, default=4)
    p.add_argument("--n-test", type=int, default=2)
    p.add_argument("--height", type=int, default=6144)
    p.add_argument("--width", type=int, default=6144, help="(dsb2018: the side of the square images)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compression", default="jpeg", help="TIFF codec: jpeg, zlib, lzw or none")

    p = _stage(sub, "sheet", cmd_sheet, "list the slides of a data directory with their sizes and layouts")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="slides.csv")

    p = _stage(sub, "truth-check", cmd_truth_check, "check train.csv masks against the polygons")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="CSV report")

    p = _stage(sub, "tissue", cmd_tissue, "detect tissue at low resolution")
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--mask-png", type=Path, required=True)
    p.add_argument("--thumbnail-png", type=Path, required=True)
    p.add_argument("--whole-image", action="store_true", help="every pixel is tissue (patch data sets)")

    p = _stage(sub, "mask-png", cmd_mask_png, "one predicted mask as a binary PNG of its image (patch data sets)")
    p.add_argument("--rle", type=Path, required=True, help="the image's {id}.rle from the encode stage")
    p.add_argument("--slide", type=Path, required=True, help="the (staged) image, for its size")
    p.add_argument("--out", type=Path, required=True)

    p = _stage(sub, "tiles", cmd_tiles, "extract training tiles of one slide into a Zarr store")
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--id", required=True, help="slide id")
    p.add_argument("--data-dir", type=Path, required=True, help="for train.csv and the polygons")
    p.add_argument("--tissue", type=Path, required=True, help="tissue mask PNG")
    p.add_argument("--out-zarr", type=Path, required=True)
    p.add_argument("--out-csv", type=Path, required=True)

    p = _stage(sub, "tile-index", cmd_tile_index, "concatenate per-slide tile indexes")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("csvs", type=Path, nargs="*")

    p = _stage(sub, "filter", cmd_filter, "first pass: score every tile, drop the trivial ones")
    p.add_argument("--index", type=Path, required=True, help="tiles/index.csv")
    p.add_argument("--tiles-dir", type=Path, required=True, help="folder of {id}.zarr tile stores")
    p.add_argument("--scores", type=Path, required=True)
    p.add_argument("--kept", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True, help="where the stage-1 model goes")

    p = _stage(sub, "train", cmd_train, "train one fold on the kept tiles")
    p.add_argument("--index", type=Path, required=True, help="filter/kept.csv (training tiles)")
    p.add_argument("--val-index", type=Path, help="tiles/index.csv: every tile of the validation slides validates")
    p.add_argument("--tiles-dir", type=Path, required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--folds", help='JSON {slide: fold} (what the workflow passes); else grouped from --data-dir')
    p.add_argument("--data-dir", type=Path, help="for the donors of HuBMAP-20-dataset_information.csv")

    p = _stage(sub, "predict", cmd_predict, "sliding-window consensus over one slide")
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--tissue", type=Path, required=True)
    p.add_argument("--out-zarr", type=Path, required=True)
    p.add_argument("checkpoints", type=Path, nargs="+", help="model.pt files (an ensemble)")
    p.add_argument("--threshold-json", type=Path, help="evaluation/threshold.json (predict.threshold: auto)")

    p = _stage(sub, "oof", cmd_oof, "out-of-fold: predict one validation slide with its fold's model, count")
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--id", required=True, help="slide id")
    p.add_argument("--checkpoint", type=Path, required=True, help="the model.pt of the fold that validated on it")
    p.add_argument("--tissue", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True, help="for train.csv and the polygons (the truth)")
    p.add_argument("--out-zarr", type=Path, required=True, help="oof/{id}.zarr")
    p.add_argument("--out-csv", type=Path, required=True, help="oof/{id}.csv: counts per threshold")

    p = _stage(sub, "oof-summary", cmd_oof_summary, "out-of-fold Dice per slide and the threshold for 'auto'")
    p.add_argument("--oof-dir", type=Path, required=True, help="folder of oof/{id}.zarr")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="evaluation/oof.csv")
    p.add_argument("--curve", type=Path, required=True, help="evaluation/oof_thresholds.csv")
    p.add_argument("--threshold-json", type=Path, required=True, help="evaluation/threshold.json")
    p.add_argument("counts", type=Path, nargs="*", help="oof/{id}.csv files")

    p = _stage(sub, "encode", cmd_encode, "threshold, RLE-encode, outline and measure one prediction")
    p.add_argument("--prob-zarr", type=Path, required=True)
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--data-dir", type=Path, help="to draw the truth when it is known")
    p.add_argument("--out-rle", type=Path, required=True)
    p.add_argument("--out-geojson", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.add_argument("--tissue", type=Path, help="tissue mask PNG, for glomeruli per tissue area (default: the "
                   "one recorded in the prediction store, if any)")
    p.add_argument("--out-objects", type=Path, help="{id}.objects.csv: one row per predicted glomerulus")
    p.add_argument("--out-summary", type=Path, help="{id}.summary.csv: count and density of glomeruli")
    p.add_argument("--out-sizes", type=Path, help="{id}.sizes.png: histogram of glomerulus areas")

    p = _stage(sub, "bundle", cmd_bundle, "fold checkpoints + model card -> a model bundle directory")
    p.add_argument("--out", type=Path, required=True, help="bundle directory (replaced whole)")
    p.add_argument("--threshold-json", type=Path, required=True, help="evaluation/threshold.json")
    p.add_argument("--oof-csv", type=Path, required=True, help="evaluation/oof.csv")
    p.add_argument("--folds", required=True, help="JSON {slide: fold} of the training slides")
    p.add_argument("checkpoints", type=Path, nargs="+", help="models/fold{k}/model.pt, in fold order")

    p = _stage(sub, "promote", cmd_promote, "make a bundle the serving one unless its out-of-fold Dice is lower")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--serving", type=Path, required=True, help="serving bundle directory (registry.csv beside it)")
    p.add_argument("--out", type=Path, help="the decision as JSON")

    p = _stage(sub, "kaggle", cmd_kaggle, "offline: predict a Kaggle-layout folder with a bundle -> submission.csv")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--data", type=Path, required=True, help="folder with test/{id}.tiff (and sample_submission.csv)")
    p.add_argument("--out", type=Path, required=True, help="submission.csv")
    p.add_argument("--work-dir", type=Path, help="keep tissue masks and RLEs here (default: a temporary folder)")

    p = _stage(sub, "submit", cmd_submit, "write the Kaggle submission.csv")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--predictions-dir", type=Path, required=True, help="folder of {id}.rle")
    p.add_argument("--out", type=Path, required=True)

    p = _stage(sub, "evaluate", cmd_evaluate, "Dice and object-level precision, recall, F1 per slide")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--submission", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="evaluation/dice.csv")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; PipelineErrors become a one-line message and exit status 1."""
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        config = _config(args)
        args.func(args, config)
    except PipelineError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0
