# Validation, slide discovery and input functions shared by every rule.

import json
import re
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import validate

from pipeline.bundle import check_against, read_bundle
from pipeline.config import config_from_dict
from pipeline.config_checks import check_config
from pipeline.dataset import (
    SAMPLE_SUBMISSION_CSV,
    TEST_TRUTH_CSV,
    TRAIN_CSV,
    discover_slides,
    planned_slides,
    polygons_path,
    unsupported_slide_files,
)
from pipeline.folds import fold_assignment
from pipeline.jobenv import put_python_first_on_path
from pipeline.patches import stage_patches

validate(config, schema="../schemas/config.schema.yaml")
# model_bundle: a predict-only run with a trained bundle (no training, no train.csv needed).
BUNDLE = read_bundle(config["model_bundle"]) if config["model_bundle"] else None
# Keys checked against each other (prediction vs training scale, loss names...), and against
# the bundle when serving one: a bad combination fails here, before any job.
check_config(config_from_dict(config), serving=BUNDLE is not None)
if BUNDLE is not None:
    check_against(config_from_dict(config), BUNDLE)

# The jobs run `python -m pipeline`: the Python running Snakemake goes first on PATH, as an
# activated venv would have it, so `.venv/bin/snakemake` works as typed (see pipeline/jobenv.py).
put_python_first_on_path()

RESULTS = Path(config["results_dir"])
LAYOUT = config["data_layout"]
# A patch set (images + masks, no slides) is staged as small one-page slides in the Kaggle
# layout, incrementally (only new or changed images), so every stage below runs on it unchanged.
DATA = (
    Path(config["data_dir"])
    if LAYOUT == "kaggle"
    else stage_patches(
        config["data_dir"], LAYOUT, RESULTS / "staged", warn=logger.warning
    )
)
SLIDES = {slide.id: slide for slide in discover_slides(DATA)}
# Bad inputs warned at every planning (unsupported file names, training slides without truth,
# train.csv ids without a slide); an empty data_dir is an error. Training slides without truth
# are left out (no tiles, folds or out-of-fold check for them).
if BUNDLE is not None:  # predict-only: train/ is not this run's business
    SLIDES = {i: s for i, s in SLIDES.items() if s.split == "test"}
SLIDES = planned_slides(DATA, SLIDES, warn=logger.warning)
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
    """The config sections a job uses, as JSON, so that it reruns when (only) these change.

    "section.key" takes one key of a section (e.g. "slides.backend"): slides.normalise
    concerns training only, so changing it must not redo tissue masks or tiles.
    """
    out = {}
    for name in sections:
        section, _, key = name.partition(".")
        if key:
            out.setdefault(section, {})[key] = config[section][key]
        else:
            out[section] = config[section]
    return json.dumps(out, sort_keys=True)


def slide_path(wildcards):
    return str(SLIDES[wildcards.id].path)


def optional(path):
    """[path] if the file exists, else []: optional inputs such as train.csv."""
    return [str(path)] if Path(path).exists() else []


def truth_inputs(wildcards):
    """train.csv (if any) and the slide's polygons (if any): a tile store's truth."""
    polygons = polygons_path(DATA, wildcards.id)
    return optional(DATA / TRAIN_CSV) + ([str(polygons)] if polygons else [])


def weights_file(value):
    """[path] when a config value names a weights file (not null, not "imagenet"), else [].

    As an input of the rules that read it, replacing the file at the same path reruns them
    (and a missing one stops the run before any job, naming it).
    """
    return [] if value in (None, "", "imagenet") else [str(Path(value).expanduser())]


def encoder_weights(wildcards=None):
    """model.encoder_weights when it is a file: read whenever a model is trained (train, filter)."""
    return weights_file(config["model"]["encoder_weights"])


def filter_weights(wildcards=None):
    """What the filter's first pass reads: filter.checkpoint, or the encoder weights of the model it trains."""
    if not config["filter"]["enabled"]:
        return []
    return weights_file(config["filter"]["checkpoint"]) or encoder_weights()


def tile_stores(wildcards=None):
    return [str(RESULTS / "tiles" / f"{i}.zarr") for i in TRAIN_IDS]


def fold_models(wildcards=None):
    """The ensemble that predicts: the bundle's checkpoints when serving one, else this run's folds."""
    if BUNDLE is not None:
        return [str(p) for p in BUNDLE.checkpoints]
    return [str(RESULTS / "models" / f"fold{k}" / "model.pt") for k in FOLDS]


def fold_model_of(wildcards):
    """The model.pt of the fold that validated on slide ``wildcards.id`` (never trained on it)."""
    return str(RESULTS / "models" / f"fold{FOLD_OF[wildcards.id]}" / "model.pt")


def threshold_choice(wildcards=None):
    """evaluation/threshold.json when predict.threshold is auto (the out-of-fold choice), else nothing."""
    if config["predict"]["threshold"] != "auto":
        return []
    if BUNDLE is not None:
        return [str(BUNDLE.threshold_json)]
    return [str(RESULTS / "evaluation" / "threshold.json")]


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
        outputs.append(RESULTS / "bundle")
        if config["promote_to"]:
            outputs.append(RESULTS / "promotion.json")
    if (TRAIN_IDS or BUNDLE is not None) and TEST_IDS:
        outputs += [RESULTS / "predictions" / f"{i}.png" for i in TEST_IDS]
        outputs += [RESULTS / "predictions" / f"{i}.geojson" for i in TEST_IDS]
        # one binary mask per test image, as patch sets are usually scored
        if LAYOUT != "kaggle":
            outputs += [
                RESULTS / "predictions" / "masks" / f"{i}.png" for i in TEST_IDS
            ]
        outputs.append(RESULTS / "submission.csv")
        if has_test_truth():
            outputs.append(RESULTS / "evaluation" / "dice.csv")
    return [str(p) for p in outputs]
