"""A one-node SLURM cluster on localhost for the executor-plugin test (needs root).

Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them): a munge key, ``munged`` as
the munge user, a minimal ``slurm.conf`` without accounting, then ``slurmctld`` and
``slurmd``. Jobs are queried with ``squeue`` (no ``sacct`` without a database), so
``MinJobAge`` keeps finished jobs visible long enough for the plugin to see them end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")


def missing_requirements() -> str | None:
    """Why a cluster cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "squeue"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install slurm-wlm munge)"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise RuntimeError(f"SLURM test cluster: {what} not ready after {timeout:.0f} s")


def _node_idle(host: str) -> bool:
    result = subprocess.run(["sinfo", "-h", "-N", "-n", host, "-o", "%t"], capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip().startswith("idle")


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return total_kb // 1024 - 1024


def start_cluster() -> str:
    """Start munged and a fresh slurmctld and slurmd; return the node name."""
    host = socket.gethostname()
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        if not MUNGE_KEY.exists():
            _run("mungekey", "--create", "--keyfile", str(MUNGE_KEY))
        _run("chown", "munge:munge", str(MUNGE_KEY))
        os.chmod(MUNGE_KEY, 0o400)
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
            _run("chown", "-R", "munge:munge", folder)
        _run("runuser", "-u", "munge", "--", "munged")
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    for folder in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(
        "\n".join(
            [
                "ClusterName=pipeline-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "AuthType=auth/munge",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "ReturnToService=2",
                "MinJobAge=600",
                "StateSaveLocation=/var/spool/slurmctld",
                "SlurmdSpoolDir=/var/spool/slurmd",
                "SlurmctldPidFile=/run/slurmctld.pid",
                "SlurmdPidFile=/run/slurmd.pid",
                "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
                "SlurmdLogFile=/var/log/slurm/slurmd.log",
                f"NodeName={host} CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN",
                # The partitions workflow/profiles/slurm names, both on this one node.
                "PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    stop_cluster()  # daemons left from an earlier run would keep their old slurm.conf
    _run("slurmctld")
    _run("slurmd")
    _wait_for(lambda: _node_idle(host), f"node {host}")
    return host


def stop_cluster() -> None:
    """Stop the SLURM daemons and wait until they are gone (munged stays: it is harmless)."""
    for daemon in ("slurmd", "slurmctld"):
        subprocess.run(["pkill", "-x", daemon], capture_output=True)
    _wait_for(
        lambda: subprocess.run(["pgrep", "-x", "slurmctld|slurmd"], capture_output=True).returncode != 0,
        "shutdown of slurmctld/slurmd",
    )
