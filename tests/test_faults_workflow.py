"""The standing fault table of the workflow, as a nightly operator meets the faults (issue 11).

One case per row, each with the real workflow: a SIGKILLed run, two runs at once, a changed
setting, a failed run, a bad config, a bare PATH. Each asserts that the message names the
file or key, and that nothing a rerun would trust is left behind.

One run is shared (the module fixture ``killed_and_recovered``): it starts a run, refuses a
second run on the same results from another checkout while the first holds them, SIGKILLs the
first in the middle of a predict job, and recovers with the README's nightly command. Cases
that change things work on copies of its result (as tests/test_workflow.py does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline.rle import parse
from tests.conftest import REPO
from tests.workflow_helpers import TINY_SETTINGS, jobs_run, make_workdir, snakemake, snakemake_command

pytestmark = pytest.mark.slow

# The flags of the README's nightly recipe (a test below keeps the README to them).
NIGHTLY_FLAGS = ("--keep-going", "--rerun-incomplete", "--nolock")
# The tiny settings, cheaper still: one fold (no out-of-fold jobs), no first-pass training.
FAULT_SETTINGS = {
    **TINY_SETTINGS,
    "train": {**TINY_SETTINGS["train"], "folds": 1},
    "filter": {**TINY_SETTINGS["filter"], "enabled": False},
    "predict": {**TINY_SETTINGS["predict"], "threshold": 0.5},
}
SLIDE_SIZE = 1024


def _write_config(workdir: Path, **changes: dict) -> None:
    settings = json.loads(json.dumps(FAULT_SETTINGS))
    for section, values in changes.items():
        if isinstance(values, dict):
            settings[section] = {**settings.get(section, {}), **values}
        else:
            settings[section] = values
    (workdir / "config.yaml").write_text(yaml.safe_dump(settings))


def _copy(workdir: Path, dest: Path) -> Path:
    """A copy of a run's working directory, without the Snakemake lock the killed run left there."""
    shutil.copytree(workdir, dest, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    return dest


def _partials(results: Path) -> list[Path]:
    return sorted(results.rglob("*.partial"))


def _test_ids(workdir: Path) -> list[str]:
    return sorted(p.stem for p in (workdir / "data" / "test").glob("*.tiff"))


@dataclass
class SharedRun:
    workdir: Path
    first_pid: int
    second: subprocess.CompletedProcess[str]  # the run refused while the first held the results
    killed_partial: Path  # the predict job's temporary the kill left behind
    recovery: subprocess.CompletedProcess[str]  # the nightly command after the kill


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 900.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (rc {process.returncode}) before {what}:\n{(out + err)[-4000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def killed_and_recovered(tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    workdir = tmp_path_factory.mktemp("faults")
    make_workdir(workdir, n_train=2, n_test=2, size=SLIDE_SIZE)
    _write_config(workdir)
    results = workdir / "results"
    lock_file = results / ".pipeline.lock"

    # 1. the first run, in the background, in its own process group (as cron / systemd / SLURM start it)
    command, env = snakemake_command(workdir)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        _wait_for(lambda: lock_file.exists() and f'"pid": {first.pid}' in lock_file.read_text(), first,
                  "the first run took the results lock")

        # 2. a second checkout pointed at the same results while the first runs: refused
        other = tmp_path_factory.mktemp("other_checkout")
        _write_config(other, data_dir=str(workdir / "data"), results_dir=str(results))
        second = snakemake(other)
        assert first.poll() is None, "the first run ended before the second one was tried"

        # 3. SIGKILL the whole first run (Snakemake and its job) in the middle of a predict job
        killed_partial = _wait_for(lambda: next(iter((results / "predictions").glob(".*.partial")), None),
                                   first, "a predict job was writing")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert killed_partial.exists() and lock_file.exists()
    assert list((workdir / ".snakemake" / "locks").iterdir()), "Snakemake's own lock was not left behind"

    # 4. the README's nightly command recovers by itself
    recovery = snakemake(workdir, *NIGHTLY_FLAGS)
    return SharedRun(workdir, first.pid, second, killed_partial, recovery)


# --------------------------------------------------------------------------- row 3: locks


def test_second_run_on_the_same_results_is_refused(killed_and_recovered: SharedRun) -> None:
    run = killed_and_recovered
    second = run.second
    results = run.workdir / "results"
    assert second.returncode != 0
    assert "RunLockError" in second.stderr and "another run is using this results directory" in second.stderr
    assert str(results) in second.stderr and f"pid {run.first_pid} on " in second.stderr
    assert "Finished jobid" not in second.stdout + second.stderr  # it ran no job
    assert jobs_run(second.stdout + second.stderr)  # ... though it had planned some


def test_nightly_command_recovers_from_a_killed_run(killed_and_recovered: SharedRun) -> None:
    run = killed_and_recovered
    recovery = run.recovery
    output = recovery.stdout + recovery.stderr
    assert recovery.returncode == 0, output[-5000:]
    results = run.workdir / "results"
    assert f"taking over the lock of a run that ended without releasing it (pid {run.first_pid} on " in output
    assert f"{run.killed_partial.relative_to(run.workdir)}: removed, the temporary output of a job that was killed" \
        in output
    assert jobs_run(output)["predict"] >= 1  # the killed (incomplete) job ran again
    assert not _partials(results), "temporaries left behind"
    assert not (results / ".pipeline.lock").exists(), "the lock was not released"
    submission = pd.read_csv(results / "submission.csv", dtype=str, keep_default_na=False)
    assert sorted(submission["id"]) == _test_ids(run.workdir)
    for slide_id, rle in zip(submission["id"], submission["predicted"], strict=True):
        assert rle == (results / "predictions" / f"{slide_id}.rle").read_text().strip()
        parse(rle, (SLIDE_SIZE, SLIDE_SIZE))


def test_readme_nightly_recipe_is_the_tested_one() -> None:
    readme = (REPO / "README.md").read_text()
    nightly = readme[readme.index("## Nightly runs"):]
    nightly = nightly[: nightly.index("\n## ", 1)]
    commands = re.findall(r"^.*\.venv/bin/snakemake .*$", nightly, re.M)
    assert len(commands) >= 2, "no cron and systemd command in the README's Nightly runs"
    for line in commands:
        for flag in NIGHTLY_FLAGS:
            assert flag in line.split(), f"README nightly command lacks {flag}: {line}"


# --------------------------------------------------------------------------- row 1: a train job stuck for good


def test_train_rerun_without_epochs_left_writes_the_model(killed_and_recovered: SharedRun, tmp_path: Path) -> None:
    """A resumable setting changes: Snakemake deletes model.pt, keeps last.pt, and reruns train."""
    workdir = _copy(killed_and_recovered.workdir, tmp_path / "retrain")
    model = workdir / "results" / "models" / "fold0" / "model.pt"
    before = torch.load(model, weights_only=True)
    _write_config(workdir, train={"device": "cpu"})  # was auto (RESUMABLE_TRAIN_KEYS)
    target = "results/models/fold0/model.pt"
    result = snakemake(workdir, target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert jobs_run(result.stdout + result.stderr)["train"] == 1
    log = (workdir / "results" / "logs" / "train" / "fold0.log").read_text()
    assert "resuming fold 0 from" in log and "epoch 1/" not in log  # nothing trained again
    assert "no better epoch left to train: model.pt written from the best epoch" in log
    after = torch.load(model, weights_only=True)
    assert after["epoch"] == before["epoch"]
    for key, value in before["state_dict"].items():
        assert torch.equal(after["state_dict"][key], value), key
    again = snakemake(workdir, target, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


# --------------------------------------------------------------------------- row 2: stale predictions


def test_failed_run_never_ships_a_stale_prediction(killed_and_recovered: SharedRun, tmp_path: Path) -> None:
    workdir = _copy(killed_and_recovered.workdir, tmp_path / "stale")
    results = workdir / "results"
    rescanned, untouched = _test_ids(workdir)
    old_rle = (results / "predictions" / f"{rescanned}.rle").read_text().strip()
    good_rle = (results / "predictions" / f"{untouched}.rle").read_text().strip()

    # a slide re-scanned under the same id arrives corrupt: its old .rle is of the old scan
    slide = workdir / "data" / "test" / f"{rescanned}.tiff"
    slide.write_bytes(slide.read_bytes()[: slide.stat().st_size // 3])
    result = snakemake(workdir, "--keep-going")
    assert result.returncode != 0
    submission = pd.read_csv(results / "submission.csv", dtype=str, keep_default_na=False).set_index("id")
    assert submission.loc[rescanned, "predicted"] == "" != old_rle
    assert submission.loc[untouched, "predicted"] == good_rle  # up to date: still shipped
    message = f"1 stale prediction(s) left out (made with earlier slides, models or settings): {rescanned}"
    assert message in result.stderr
    assert message in (results / "logs" / "submit" / "partial_submission.log").read_text()

    # a config whose predict jobs all fail: nothing is up to date, so no submission at all
    _write_config(workdir, predict={"device": "cuda:99"})
    result = snakemake(workdir, "--keep-going")
    assert result.returncode != 0
    assert not (results / "submission.csv").exists()
    removed = re.search(r"submission\.csv: removed, no prediction is up to date: 2 stale prediction\(s\) left out "
                        r"\(made with earlier slides, models or settings\): ([\w, ]+)", result.stderr)
    assert removed is not None, result.stderr[-3000:]
    assert sorted(removed[1].split(", ")) == [rescanned, untouched]
    assert "cuda:99" in (results / "logs" / "predict" / f"{untouched}.log").read_text()  # the job's own error
    assert not _partials(results)


# --------------------------------------------------------------------------- row 4: late config errors


@pytest.fixture(scope="module")
def small_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("config_errors")
    make_workdir(workdir, n_train=2, n_test=1, size=512)
    return workdir


@pytest.mark.parametrize(
    ("changes", "messages"),
    [
        ({"predict": {"window": 768}},
         ["predict.window/predict.out_size (768/128", "tiles.size/tiles.out_size (384/128"]),
        ({"train": {"loss": {"bce": 1.0, "dcie": 1.0}}}, ["train.loss: unknown loss(es) dcie"]),
        ({"tiles": {"out_size": 512}}, ["tiles.out_size (512) is larger than tiles.size (384)"]),
        ({"predict": {"out_size": 512}}, ["predict.out_size (512) is larger than predict.window (384)"]),
    ],
    ids=["scale", "loss", "tiles_out_size", "predict_out_size"],
)
def test_inconsistent_config_fails_before_any_job(small_workdir: Path, changes: dict, messages: list[str]) -> None:
    _write_config(small_workdir, **changes)
    result = snakemake(small_workdir, "--dry-run")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ConfigError" in output
    for message in messages:
        assert message in output, output[-3000:]
    assert not (small_workdir / "results").exists()


def test_patience_zero_is_valid_and_documented(small_workdir: Path) -> None:
    _write_config(small_workdir, train={"patience": 0})
    result = snakemake(small_workdir, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    readme = (REPO / "config" / "README.md").read_text()
    assert "0 disables early stopping" in readme


# --------------------------------------------------------------------------- row 5: the README's command, bare PATH


def test_readme_command_runs_without_an_activated_venv(tmp_path: Path) -> None:
    """`.venv/bin/snakemake --cores all --config data_dir=... results_dir=...` in the checkout, as typed.

    The jobs run `python -m pipeline`; with the venv not on PATH that used to be whatever `python`
    is there (none here). One target, the slide sheet, keeps it short; config/config.yaml's 4 folds
    need 4 donors.
    """
    make_workdir(tmp_path, n_train=4, n_test=1, size=512)
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"  # no venv on it
    command = [
        ".venv/bin/snakemake", str(results / "slides.csv"), "--cores", "all",
        "--config", f"data_dir={tmp_path / 'data'}", f"results_dir={results}",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert len(pd.read_csv(results / "slides.csv")) == 5


# --------------------------------------------------------------------------- row 6: weights files are inputs


def test_replaced_weights_files_rerun_their_rules(killed_and_recovered: SharedRun, tmp_path: Path) -> None:
    workdir = _copy(killed_and_recovered.workdir, tmp_path / "weights")
    checkpoint = workdir / "last_night.pt"
    shutil.copy(workdir / "results" / "models" / "fold0" / "model.pt", checkpoint)
    _write_config(workdir, filter={"enabled": True, "checkpoint": "last_night.pt"})
    target = "results/filter/kept.csv"
    result = snakemake(workdir, target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    # last night's model is replaced by tonight's, at the same path
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, checkpoint)
    plan = snakemake(workdir, target, "--dry-run")
    output = plan.stdout + plan.stderr
    assert jobs_run(output)["filter"] == 1, output[-3000:]
    assert re.search(r"Updated input files:.*last_night\.pt", output), output[-3000:]

    # model.encoder_weights as a file is an input of train (and of filter, which trains stage 1)
    (workdir / "encoder.pt").write_bytes(b"weights")
    _write_config(workdir, model={"encoder_weights": "encoder.pt"}, filter={"enabled": True})
    plan = snakemake(workdir, "--dry-run")
    output = plan.stdout + plan.stderr
    assert plan.returncode == 0, output[-3000:]
    for rule in ("filter", "train"):
        assert re.search(rf"rule {rule}:\n\s+input: [^\n]*encoder\.pt", output), f"{rule}: {output[-3000:]}"

    # a missing one stops the run before any job, naming the key and the file (else Snakemake,
    # finding no way to remake model.pt, would keep the old one)
    (workdir / "encoder.pt").unlink()
    plan = snakemake(workdir, "--dry-run")
    output = plan.stdout + plan.stderr
    assert plan.returncode != 0
    assert "ConfigError" in output and "model.encoder_weights: 'encoder.pt' is not an existing file" in output
