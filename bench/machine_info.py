"""The machine a benchmark ran on, described once for every report."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """``host: N cores (model name)`` from /proc/cpuinfo where it exists."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu})"
