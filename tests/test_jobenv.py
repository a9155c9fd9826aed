"""The jobs' PATH: the directory of the Python running Snakemake first, unresolved, once."""

from __future__ import annotations

import os

from pipeline.jobenv import put_python_first_on_path


def test_venv_bin_goes_first_once() -> None:
    env = {"PATH": os.pathsep.join(["/usr/bin", "/bin"])}
    put_python_first_on_path(env, "/srv/app/.venv/bin/python")  # a symlink to /usr/bin/python3.11: not resolved
    assert env["PATH"].split(os.pathsep) == ["/srv/app/.venv/bin", "/usr/bin", "/bin"]
    put_python_first_on_path(env, "/srv/app/.venv/bin/python")
    assert env["PATH"].split(os.pathsep) == ["/srv/app/.venv/bin", "/usr/bin", "/bin"]  # not twice
    empty: dict[str, str] = {}
    assert put_python_first_on_path(empty, "/opt/conda/envs/x/bin/python") == "/opt/conda/envs/x/bin"
