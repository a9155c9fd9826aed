"""The workflow on a real (one-node, localhost) SLURM cluster through the executor plugin.

Uses workflow/profiles/slurm as a user would; the node has no GPU, so the GPU requests of
filter/train/predict/oof are set to 0 on the command line (their partition stays the profile's).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tests.slurm_cluster import missing_requirements, start_cluster, stop_cluster
from tests.workflow_helpers import make_workdir, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster():
    reason = missing_requirements()
    if reason:
        pytest.skip(f"no SLURM test cluster: {reason}")
    yield start_cluster()
    stop_cluster()


def test_workflow_runs_through_the_slurm_executor(cluster: str, tmp_path: Path) -> None:
    make_workdir(tmp_path, n_train=2, n_test=1, size=1536)
    result = snakemake(
        tmp_path,
        "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--jobs", "4",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "--seconds-between-status-checks", "2",
        # --set-resources replaces the profile's list: repeat its partitions, minus the GPUs.
        "--set-resources", *(f"{rule}:{key}" for rule in ("filter", "train", "predict", "oof")
                             for key in ("gpu=0", "slurm_partition=gpu")),
        timeout=1500,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    output = result.stdout + result.stderr
    assert "has been submitted with SLURM jobid" in output
    submission = pd.read_csv(tmp_path / "results" / "submission.csv", dtype=str, keep_default_na=False)
    assert len(submission) == 1
    accounting = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j %P %T"], capture_output=True, text=True)
    states = accounting.stdout.split()
    assert "COMPLETED" in states and "FAILED" not in states
    assert "gpu" in states, "filter/train/predict/oof were not sent to the profile's GPU partition"
