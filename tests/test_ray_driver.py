"""Cancelling a Ray-backed job: its process, the Ray driver, stopped by the job worker, takes
its units on the cluster with it. A cluster of its own (``ray start``), in a module of its own:
``ray stop`` ends every Ray process of the machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_executors import _unit_processes, _wait_for


def test_a_stopped_driver_takes_its_ray_units_with_it(tmp_path: Path) -> None:
    """A budget job's process is the Ray driver of its pipeline: when the job worker stops it
    (a cancellation: SIGTERM), its units on the cluster stop too."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'ciess[ray]'")
    ray_command = Path(sys.executable).parent / "ray"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    start = [str(ray_command), "start", "--head", f"--port={port}", "--num-cpus=1",
             "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    no_token = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a test's own loopback cluster
    subprocess.run(start, check=True, capture_output=True, timeout=120, env=no_token)
    try:
        driver = subprocess.Popen(
            [sys.executable, "-c", _DRIVER],
            env={**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(Path.cwd())},
        )
        try:
            _wait_for(_unit_processes, 90)
        finally:
            driver.terminate()
            driver.wait(timeout=30)
        _wait_for(lambda: _unit_processes() == [], 30)
    finally:
        subprocess.run([str(ray_command), "stop", "--force"], capture_output=True, timeout=120)


_DRIVER = """
from ciess_core.search.parallel import stage_runner
from tests.test_executors import _sleep
with stage_runner("ray", 1) as runner:
    runner.submit(_sleep, 300.0).result()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
