# Validation, slide discovery and input functions shared by every rule.

import json
import re
from pathlib import Path

from snakemake.utils import validate

from pipeline.dataset import (
    SAMPLE_SUBMISSION_CSV,
    TEST_TRUTH_CSV,
    TRAIN_CSV,
    discover_slides,
    polygons_path,
)
from pipeline.folds import fold_assignment

validate(config, schema="../schemas/config.schema.yaml")

DATA = Path(config["data_dir"])
RESULTS = Path(config["results_dir"])
SLIDES = {slide.id: slide for slide in discover_slides(DATA)}
TRAIN_IDS = sorted(i for i, s in SLIDES.items() if s.split == "train")
TEST_IDS = sorted(i for i, s in SLIDES.items() if s.split == "test")
FOLDS = list(range(config["train"]["folds"]))
# Slide -> fold, grouped by donor when HuBMAP-20-dataset_information.csv names one; every job
# that needs it gets this one assignment (train as a param, so a change retrains).
FOLD_OF = (
    fold_assignment(DATA, TRAIN_IDS, len(FOLDS), config["train"]["seed"])
    if TRAIN_IDS
    else {}
)
# Slides scored out of fold: every training slide when there is more than one fold.
OOF_IDS = TRAIN_IDS if len(FOLDS) > 1 else []
# Only the slides found, so tiles/index.csv is never read as a slide called "index".
SLIDE_ID_PATTERN = "|".join(re.escape(i) for i in SLIDES) or "(?!)"
LOGS = RESULTS / "logs"
BENCHMARKS = RESULTS / "benchmarks"


def settings(*sections):
    """The config sections a job uses, as JSON, so that it reruns when (only) these change."""
    return json.dumps({name: config[name] for name in sections}, sort_keys=True)


def slide_path(wildcards):
    return str(SLIDES[wildcards.id].path)


def optional(path):
    """[path] if the file exists, else []: optional inputs such as train.csv."""
    return [str(path)] if Path(path).exists() else []


def truth_inputs(wildcards):
    """train.csv (if any) and the slide's polygons (if any): a tile store's truth."""
    polygons = polygons_path(DATA, wildcards.id)
    return optional(DATA / TRAIN_CSV) + ([str(polygons)] if polygons else [])


def tile_stores(wildcards=None):
    return [str(RESULTS / "tiles" / f"{i}.zarr") for i in TRAIN_IDS]


def fold_models(wildcards=None):
    return [str(RESULTS / "models" / f"fold{k}" / "model.pt") for k in FOLDS]


def fold_model_of(wildcards):
    """The model.pt of the fold that validated on slide ``wildcards.id`` (never trained on it)."""
    return str(RESULTS / "models" / f"fold{FOLD_OF[wildcards.id]}" / "model.pt")


def threshold_choice(wildcards=None):
    """evaluation/threshold.json when predict.threshold is auto (the out-of-fold choice), else nothing."""
    if config["predict"]["threshold"] == "auto":
        return [str(RESULTS / "evaluation" / "threshold.json")]
    return []


def has_test_truth():
    return (DATA / TEST_TRUTH_CSV).exists()


def all_outputs():
    """The targets of the default job: every stage's final products that the data allow."""
    outputs = [RESULTS / "slides.csv"]
    if TRAIN_IDS:
        outputs += [RESULTS / "truth" / "check.csv", RESULTS / "filter" / "kept.csv"]
        outputs += fold_models()
        outputs += [RESULTS / "models" / f"fold{k}" / "curves.png" for k in FOLDS]
        outputs.append(RESULTS / "evaluation" / "oof.csv")
    if TRAIN_IDS and TEST_IDS:
        outputs += [RESULTS / "predictions" / f"{i}.png" for i in TEST_IDS]
        outputs += [RESULTS / "predictions" / f"{i}.geojson" for i in TEST_IDS]
        outputs.append(RESULTS / "submission.csv")
        if has_test_truth():
            outputs.append(RESULTS / "evaluation" / "dice.csv")
    return [str(p) for p in outputs]


def write_partial_submission():
    """After a failed run: a submission of the slides that succeeded, naming the missing ones.

    The failed jobs keep Snakemake's exit status non-zero and their errors stay in their logs;
    ``submit.on_missing: fail`` skips this.
    """
    if not TEST_IDS or config["submit"]["on_missing"] != "warn":
        return
    predictions = RESULTS / "predictions"
    if not any((predictions / f"{i}.rle").exists() for i in TEST_IDS):
        return
    log = LOGS / "submit" / "partial_submission.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shell(
        "python -m pipeline submit --data-dir {DATA} --predictions-dir {predictions}"
        " --out {RESULTS}/submission.csv --settings {submit_settings:q} 2> {log}; cat {log} >&2",
        submit_settings=settings("submit"),
    )
