"""Peak and current memory of the benchmark process, from /proc on Linux.

Each measurement runs in its own process. VmHWM (peak resident set) is reset by exec and
by writing 5 to clear_refs; getrusage's ru_maxrss is the fallback elsewhere, though in a
forked child it keeps the parent's peak from before the fork.
"""

from __future__ import annotations

import resource
from pathlib import Path


def status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS: current, VmHWM: peak), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set in MB."""
    hwm = status_kb("VmHWM")
    return hwm / 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss_mb() -> float:
    """Reset the peak mark to the current RSS and return that baseline in MB.

    Without the reset, memory freed after loading the input would hide a method's peak
    under the loader's; where it cannot be reset, the max RSS so far is the baseline.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = status_kb("VmRSS")
        if rss is not None and status_kb("VmHWM") is not None:
            return rss / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
