"""Running the real workflow in tests: a tiny synthetic data set, a fast config, job counting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from tests.conftest import REPO

SNAKEFILE = REPO / "workflow" / "Snakefile"

# The real pipeline's scale (window / model input = 3) at tiny sizes, so a CPU run takes minutes.
TINY_SETTINGS = {
    "data_dir": "data",
    "results_dir": "results",
    "tissue": {"downsample": 16},
    "tiles": {"size": 384, "stride": 384, "out_size": 128, "workers": 1},
    "model": {"arch": "Unet", "encoder": "resnet18"},
    "train": {"folds": 2, "epochs": 2, "batch_size": 8, "patience": 2},
    "filter": {"epochs": 1},
    "predict": {"window": 384, "overlap": 0.5, "out_size": 128, "batch_size": 8, "workers": 1, "threshold": "auto"},
}


def make_workdir(workdir: Path, n_train: int = 2, n_test: int = 1, size: int = 2048, seed: int = 3) -> Path:
    """A working directory with ``data/`` (Kaggle layout) and ``config.yaml``; returns the config."""
    from pipeline.synthetic import make_dataset

    make_dataset(workdir / "data", n_train=n_train, n_test=n_test, height=size, width=size, seed=seed)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_SETTINGS))
    return config


def snakemake_command(workdir: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment :func:`snakemake` runs (for a run started in the background)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "2", *extra,
    ]
    return command, env


def snakemake(workdir: Path, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    """Run the repository's workflow in ``workdir`` with its config.yaml; output captured."""
    command, env = snakemake_command(workdir, *extra)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def jobs_run(output: str) -> Counter[str]:
    """Rule -> number of jobs, from the 'Job stats' table Snakemake prints before running."""
    match = re.search(r"Job stats:\n(.*?)\n\n", output, re.S)
    if match is None:
        return Counter()
    counts: Counter[str] = Counter()
    for line in match.group(1).splitlines()[2:]:
        name, count = line.split()
        if name != "total":
            counts[name] = int(count)
    return counts
