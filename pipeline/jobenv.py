"""The environment the workflow's jobs run in: the Python that runs Snakemake comes first on PATH.

The rules call ``python -m pipeline``. Run as ``.venv/bin/snakemake`` without an activated
venv, that ``python`` would be whatever PATH finds first (``No module named pipeline``, or
none at all). Putting the directory of ``sys.executable`` first is what activating the venv
does; a rule's conda environment (``--sdm conda``) is activated inside each job, after this,
so it still comes first there, and cluster jobs inherit the same PATH and re-run this.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path


def put_python_first_on_path(env: MutableMapping[str, str] | None = None, python: str | None = None) -> str:
    """Prepend the directory of ``python`` (default: this interpreter) to ``env["PATH"]``; returns it.

    The path is not resolved: a venv's ``bin/python`` is a symlink to the system Python,
    and it is the venv's ``bin`` that must come first. Nothing changes if it is first already.
    """
    env = os.environ if env is None else env
    folder = str(Path(python or sys.executable).parent)
    entries = env.get("PATH", "").split(os.pathsep) if env.get("PATH") else []
    if not entries or entries[0] != folder:
        env["PATH"] = os.pathsep.join([folder, *entries])
    return env["PATH"]
