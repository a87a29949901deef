"""What the Ray tests look for on this machine: the Ray worker processes running a pipeline unit,
and a condition polled until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def unit_processes() -> list[int]:
    """Pids of the Ray worker processes running a unit now (Ray titles them ``ray::<task>``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if command.startswith(b"ray::_ray_unit"):
                found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    """``condition()``'s first true value, polled every ``every`` seconds for ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")
