"""Consistency checks across config keys, run when the workflow starts.

The schema checks each key on its own; these check keys against each other (the
prediction scale against the training scale, loss names against the known losses)
and that the weights files the config names exist, so a bad config fails before the
first job instead of after hours of training (or, for a missing weights file whose
rule's output exists, not at all: Snakemake would keep the old output).
Light on imports (no torch) so that parsing the Snakefile stays fast; the stages
that need the same checks (:mod:`pipeline.losses`, :mod:`pipeline.predict`) call
these functions too.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

from pipeline.batch_size import check_setting as check_batch_size
from pipeline.config import Config, ModelConfig, PredictConfig, TrainConfig
from pipeline.errors import ConfigError

# The loss names pipeline.losses.LOSSES implements (a test keeps the two equal).
LOSS_NAMES = ("bce", "weighted_bce", "dice", "focal", "lovasz", "border_bce")


def check_loss_terms(terms: Mapping[str, float], key: str) -> None:
    """ConfigError unless ``train.<key>`` names known losses with weights >= 0, one > 0."""
    if not terms:
        raise ConfigError(None, f"train.{key}: no loss terms (e.g. {{bce: 1.0, dice: 1.0}})")
    unknown = sorted(set(terms) - set(LOSS_NAMES))
    if unknown:
        raise ConfigError(
            None, f"train.{key}: unknown loss(es) {', '.join(unknown)} (known: {', '.join(LOSS_NAMES)})"
        )
    bad = {n: w for n, w in terms.items() if not w >= 0}
    if bad or not any(w > 0 for w in terms.values()):
        raise ConfigError(None, f"train.{key}: weights must be >= 0 with at least one > 0, got {dict(terms)}")


def check_loss_schedule(cfg: TrainConfig) -> None:
    """The loss terms, the optional fine-tune schedule (``loss_finetune`` from ``finetune_from_epoch``)
    and the border term's parameters (``border_w0`` >= 0, ``border_sigma`` > 0, as the schema says)."""
    check_loss_terms(cfg.loss, "loss")
    if not cfg.border_w0 >= 0 or not cfg.border_sigma > 0:
        raise ConfigError(None, f"train.border_w0 must be >= 0 and train.border_sigma > 0, got "
                                f"{cfg.border_w0} and {cfg.border_sigma}")
    if cfg.loss_finetune is not None:
        check_loss_terms(cfg.loss_finetune, "loss_finetune")
        if cfg.finetune_from_epoch is None or cfg.finetune_from_epoch < 1:
            raise ConfigError(
                None, "train.finetune_from_epoch: must be an epoch >= 1 when train.loss_finetune is set"
            )


def check_deep_supervision(cfg: ModelConfig) -> None:
    """``model.deep_supervision`` supervises U-Net++'s nested decoder outputs: ConfigError for another arch."""
    if cfg.deep_supervision and cfg.arch.lower() != "unetplusplus":
        raise ConfigError(
            None, f"model.deep_supervision: true needs model.arch UnetPlusPlus (its nested decoder outputs), "
            f"got model.arch {cfg.arch}"
        )


def check_input_norm_combination(colour_method: str, input_method: str) -> None:
    """ConfigError when colour normalisation (``slides.normalise``) and ``model.input_norm`` are both asked for.

    Both rescale each slide's intensities from its thumbnail; composing them would need each
    one's statistics taken after the other (:mod:`pipeline.input_norm`).
    """
    if colour_method != "none" and input_method != "none":
        raise ConfigError(None, f"slides.normalise: {colour_method} and model.input_norm: {input_method} both "
                                "rescale each slide's intensities from its thumbnail; set one of them to none")


def check_predict_scale(cfg: PredictConfig) -> int:
    """Full-res pixels per model pixel (``predict.window / predict.out_size``); must be an integer >= 1."""
    if cfg.window <= 0 or cfg.out_size <= 0 or cfg.window % cfg.out_size:
        raise ConfigError(
            None, f"predict.window ({cfg.window}) must be a positive multiple of predict.out_size ({cfg.out_size})"
        )
    return cfg.window // cfg.out_size


def _check_shrinks(config: Config) -> list[str]:
    problems = []
    for section, window_key in (("tiles", "size"), ("predict", "window")):
        cfg = getattr(config, section)
        window, out = getattr(cfg, window_key), cfg.out_size
        if out > window:
            problems.append(
                f"{section}.out_size ({out}) is larger than {section}.{window_key} ({window}): "
                "windows are only ever shrunk to the model's input"
            )
    return problems


def _check_scales(config: Config) -> list[str]:
    """The model must see slides at the scale it was trained on: window / out_size the same in both."""
    tiles, predict = config.tiles, config.predict
    if min(tiles.size, tiles.out_size, predict.window, predict.out_size) <= 0:
        return []  # the schema (or check_predict_scale) reports these
    trained = Fraction(tiles.size, tiles.out_size)
    predicted = Fraction(predict.window, predict.out_size)
    if trained == predicted:
        return []
    return [
        f"predict.window/predict.out_size ({predict.window}/{predict.out_size} = 1/{float(predicted):g} scale) "
        f"differs from tiles.size/tiles.out_size ({tiles.size}/{tiles.out_size} = 1/{float(trained):g}): "
        "the models would predict at another scale than they were trained at"
    ]


def _check_weights_files(config: Config) -> list[str]:
    """A weights file named by model.encoder_weights (unless "imagenet") or filter.checkpoint must exist."""
    named = [("model.encoder_weights", config.model.encoder_weights)]
    if config.filter.enabled:
        named.append(("filter.checkpoint", config.filter.checkpoint))
    return [
        f"{key}: {value!r} is not an existing file"
        + (' (nor "imagenet")' if key == "model.encoder_weights" else "")
        for key, value in named
        if value and value != "imagenet" and not Path(value).expanduser().is_file()
    ]


def check_config(config: Config, serving: bool = False) -> None:
    """Every problem of ``config`` above at once, as one ConfigError naming the keys and values.

    Relative weights paths are relative to the working directory, as in the jobs. ``serving``
    (a predict-only run with a model bundle): nothing is trained, so the prediction scale is
    checked against the bundle (:func:`pipeline.bundle.check_against`), not against ``tiles``,
    and no training weights file is needed.
    """
    problems = _check_shrinks(config)
    if not serving:
        problems += _check_scales(config) + _check_weights_files(config)
    checks = [lambda: check_loss_schedule(config.train), lambda: check_batch_size(config.predict.batch_size)]
    if not serving:  # a bundle's checkpoints carry their own normalisation (checked when predicting)
        checks.append(lambda: check_input_norm_combination(config.slides.normalise, config.model.input_norm))
    if not serving:  # a predict-only run trains nothing: deep supervision plays no part
        checks.append(lambda: check_deep_supervision(config.model))
    if config.predict.out_size <= config.predict.window:  # else reported above
        checks.insert(0, lambda: check_predict_scale(config.predict))
    for check in checks:
        try:
            check()
        except ConfigError as err:
            problems.append(err.problem)
    if problems:
        raise ConfigError(None, "; ".join(problems))
