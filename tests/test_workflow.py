"""The real Snakemake workflow end to end on tiny synthetic slides (CPU, a few minutes).

One full run is shared by the tests; each test that changes the data works on its own copy
(relative paths and preserved modification times keep Snakemake's view of the copy intact).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
import zarr

from pipeline.rle import parse
from pipeline.synthetic import write_synthetic_slide
from tests.conftest import REPO, SHARED_DATA
from tests.workflow_helpers import jobs_run, make_workdir, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    workdir = tmp_path_factory.mktemp("workflow")
    config = make_workdir(workdir)
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "promote_to": "models/serving"}))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, result


def _copy(workdir: Path, dest: Path) -> Path:
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


def test_full_run_writes_every_stage(first_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, result = first_run
    results = workdir / "results"
    sheet = pd.read_csv(results / "slides.csv", dtype={"id": str}, keep_default_na=False)
    assert sorted(sheet["split"]) == ["test", "train", "train"]
    assert (sheet["error"] == "").all()
    assert (pd.read_csv(results / "truth" / "check.csv")["status"] == "ok").all()
    kept = pd.read_csv(results / "filter" / "kept.csv")
    scores = pd.read_csv(results / "filter" / "scores.csv")
    assert 0 < len(kept) <= len(scores)
    for fold in (0, 1):
        assert (results / "models" / f"fold{fold}" / "model.pt").stat().st_size > 0
        assert len(pd.read_csv(results / "models" / f"fold{fold}" / "metrics.csv")) >= 1
    submission = pd.read_csv(results / "submission.csv", dtype=str, keep_default_na=False)
    test_id = sheet.loc[sheet["split"] == "test", "id"].item()
    assert submission["id"].tolist() == [test_id]
    parse(submission["predicted"].item(), (2048, 2048))  # a valid RLE for the slide
    # whole-slide out-of-fold validation: each training slide scored by the fold that never trained on it
    oof = pd.read_csv(results / "evaluation" / "oof.csv", dtype={"slide": str})
    train_ids = sorted(sheet.loc[sheet["split"] == "train", "id"])
    assert oof["slide"].tolist() == [*train_ids, "mean"]
    for row in oof.iloc[:-1].itertuples():
        ckpt = torch.load(results / "models" / f"fold{int(row.fold)}" / "model.pt", weights_only=True)
        assert row.slide in ckpt["val_slides"] and row.slide not in ckpt["train_slides"]
        assert 0.0 <= row.dice <= 1.0 and row.truth_area > 0
    assert len(pd.read_csv(results / "evaluation" / "oof_thresholds.csv")) == 19
    choice = json.loads((results / "evaluation" / "threshold.json").read_text())
    store = zarr.open_array(store=str(results / "predictions" / f"{test_id}.zarr"), mode="r")
    assert store.attrs["threshold"] == choice["threshold"]  # predict.threshold: auto, chosen out of fold
    assert "out-of-fold mean Dice" in store.attrs["threshold_source"]
    dice = pd.read_csv(results / "evaluation" / "dice.csv")
    assert dice["id"].tolist() == [test_id, "mean"]
    assert 0.0 <= dice["dice"].iloc[-1] <= 1.0
    # the model bundle, promoted to the (empty) serving directory
    card = yaml.safe_load((results / "bundle" / "model.yaml").read_text())
    assert card["folds"] == ["fold0.pt", "fold1.pt"] and card["training_slides"] == train_ids
    assert card["threshold"]["value"] == choice["threshold"] and card["validation"]["oof_dice"] == choice["oof_dice"]
    assert card["geometry"] == {"tile_size": 384, "out_size": 128}
    assert json.loads((results / "promotion.json").read_text())["promoted"] is True
    assert (workdir / "models" / "serving" / "fold1.pt").is_file()
    assert (workdir / "models" / "registry.csv").read_text().count("\n") == 2
    for rule in ("tissue", "tiles", "filter", "train", "oof", "oof_summary", "bundle", "predict", "encode", "submit",
                 "evaluate"):
        assert list((results / "logs" / rule).iterdir()), f"no log for {rule}"
        assert list((results / "benchmarks" / rule).iterdir()), f"no benchmark for {rule}"
    assert not list(results.rglob("*.partial")), "temporary files left behind"


def test_second_run_has_nothing_to_do(first_run, tmp_path: Path) -> None:
    workdir = _copy(first_run[0], tmp_path / "copy")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_nightly_run_processes_only_the_new_slide(first_run, tmp_path: Path) -> None:
    workdir = _copy(first_run[0], tmp_path / "night")
    write_synthetic_slide(workdir / "data" / "test" / "0a1b2c3d4.tiff", 2048, 2048, seed=99)
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = jobs_run(result.stdout + result.stderr)
    assert ran == {"slide_sheet": 1, "tissue": 1, "predict": 1, "encode": 1, "submit": 1, "evaluate": 1, "all": 1}
    submission = pd.read_csv(workdir / "results" / "submission.csv", dtype=str, keep_default_na=False)
    assert "0a1b2c3d4" in submission["id"].tolist() and len(submission) == 2


def test_predict_only_run_and_kaggle_command_with_the_bundle(first_run, tmp_path: Path) -> None:
    """A new machine with only a bundle and test slides: the workflow predicts, and so does the offline command."""
    workdir, _ = first_run
    bundle = workdir / "models" / "serving"
    serve = tmp_path / "serve"
    (serve / "data" / "test").mkdir(parents=True)
    for slide in (workdir / "data" / "test").iterdir():
        shutil.copy2(slide, serve / "data" / "test" / slide.name)
    settings = yaml.safe_load((workdir / "config.yaml").read_text())
    settings.pop("promote_to")
    (serve / "config.yaml").write_text(yaml.safe_dump({**settings, "model_bundle": str(bundle)}))
    result = snakemake(serve)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = jobs_run(result.stdout + result.stderr)
    assert {"train", "tiles", "filter", "oof", "bundle"}.isdisjoint(ran) and ran["predict"] == 1
    served = pd.read_csv(serve / "results" / "submission.csv", dtype=str, keep_default_na=False)
    trained = pd.read_csv(workdir / "results" / "submission.csv", dtype=str, keep_default_na=False)
    assert served.equals(trained)  # the same models, threshold and post-processing
    # the Kaggle command: no Snakemake, the bundle's own config
    out = tmp_path / "kaggle.csv"
    kaggle = subprocess.run(
        [sys.executable, "-m", "pipeline", "kaggle", "--bundle", str(bundle), "--data", str(serve / "data"),
         "--out", str(out), "--settings", json.dumps({"predict": {"workers": 1}, "tiles": {"workers": 1}})],
        capture_output=True, text=True, timeout=600,
    )
    assert kaggle.returncode == 0, kaggle.stderr[-3000:]
    assert pd.read_csv(out, dtype=str, keep_default_na=False).equals(served)
    # a setting that contradicts the bundle stops the run before any job, naming it
    (serve / "config.yaml").write_text(yaml.safe_dump(
        {**settings, "model_bundle": str(bundle), "predict": {**settings["predict"], "window": 768}}))
    refused = snakemake(serve, "--forceall")
    assert refused.returncode != 0
    assert "predict.window/predict.out_size is 768/128" in refused.stderr and "384/128" in refused.stderr
    assert "Job stats" not in refused.stdout + refused.stderr


def test_changed_model_settings_retrain(first_run, tmp_path: Path) -> None:
    workdir = _copy(first_run[0], tmp_path / "retrain")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["train"]["epochs"] = 3
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--dry-run")
    ran = jobs_run(result.stdout + result.stderr)
    assert ran["train"] == 2 and ran["oof"] == 2 and ran["oof_summary"] == 1 and ran["predict"] == 1
    assert "tiles" not in ran and "tissue" not in ran


def test_colour_normalisation_retrains_on_the_same_tiles(first_run, tmp_path: Path) -> None:
    workdir = _copy(first_run[0], tmp_path / "colour")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config.setdefault("slides", {})["normalise"] = "reinhard"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--dry-run")
    ran = jobs_run(result.stdout + result.stderr)
    assert ran["filter"] == 1 and ran["train"] == 2 and ran["oof"] == 2 and ran["predict"] == 1
    assert "tiles" not in ran and "tissue" not in ran  # tile stores keep raw pixels and the slide's statistics


def test_corrupt_slides_fail_only_their_own_jobs(first_run, tmp_path: Path) -> None:
    workdir = _copy(first_run[0], tmp_path / "corrupt")
    good = next((workdir / "data" / "test").glob("*.tiff"))
    corrupt = workdir / "data" / "test" / "deadbeef0.tiff"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # truncated
    unreadable = SHARED_DATA / "wsi" / "openslide-fixtures" / "unreadable.svs"  # a corrupt JPEG tile
    if unreadable.exists():
        shutil.copy(unreadable, workdir / "data" / "test" / "unreadable1.svs")
    new_good = workdir / "data" / "test" / "0a1b2c3d4.tiff"
    write_synthetic_slide(new_good, 2048, 2048, seed=99)
    result = snakemake(workdir, "--keep-going")
    assert result.returncode != 0
    results = workdir / "results"
    assert (results / "predictions" / "0a1b2c3d4.rle").exists()
    assert not (results / "predictions" / "deadbeef0.rle").exists()
    failed_logs = " ".join(p.read_text() for p in (results / "logs").rglob("deadbeef0.log"))
    assert "SlideError" in failed_logs and "deadbeef0.tiff" in failed_logs
    submission = pd.read_csv(results / "submission.csv", dtype=str, keep_default_na=False).set_index("id")
    assert submission.loc["deadbeef0", "predicted"] == ""
    new_rle = (results / "predictions" / "0a1b2c3d4.rle").read_text().strip()
    assert submission.loc["0a1b2c3d4", "predicted"] == new_rle
    if unreadable.exists():
        assert not (results / "predictions" / "unreadable1.rle").exists()
        unreadable_logs = " ".join(p.read_text() for p in (results / "logs").rglob("unreadable1.log"))
        assert "SlideError" in unreadable_logs and "unreadable1.svs" in unreadable_logs
        assert submission.loc["unreadable1", "predicted"] == ""
    missing = "deadbeef0, unreadable1" if unreadable.exists() else "deadbeef0"
    assert f"no prediction for {missing.count(',') + 1} slide(s): {missing}" in result.stderr


def test_lint_and_snakefmt(tmp_path: Path) -> None:
    make_workdir(tmp_path, n_train=2, n_test=1, size=1024)
    lint = snakemake(tmp_path, "--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", str(REPO / "workflow")], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
