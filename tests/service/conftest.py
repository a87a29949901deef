"""Service fixtures: a small artifact built by the core, settings around it, a live server."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from ciess_core.artifact.export import ExportMetadata, ExportOptions, export_model
from ciess_core.data import Phase, load_pairs, split_per_user
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
from ciess_core.training import TrainConfig, train_bpr
from service.cli import uvicorn_connection_options
from service.main import create_app
from service.settings import Settings
from tests.conftest import clustered_interactions

REPOSITORY = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token-of-32-characters-at-least"
DATASET_FILE = "clustered.txt"


@dataclasses.dataclass(frozen=True)
class BaseArtifact:
    data_dir: Path
    artifact: Path


def write_dataset(path: Path) -> None:
    """The clustered test interactions as a ``user item`` file."""
    source = clustered_interactions()
    pairs = zip(source.user_ids.tolist(), source.item_ids.tolist(), strict=True)
    lines = [f"{source.external_user_ids[u]} {source.external_item_ids[i]}" for u, i in pairs]
    path.write_text("\n".join(lines) + "\n")


def export_lightgcn(
    data_dir: Path,
    out: Path,
    metadata: Mapping[str, Any],
    train_batches: int = 0,
    sizes: torch.Tensor | None = None,
) -> Path:
    """A LightGCN (d_max 16) on the clustered dataset file of ``data_dir``, trained for
    ``train_batches`` (none: its initial weights), with ``sizes`` (None: full width), exported
    to ``out`` with the data's name, fingerprint and split seed beside ``metadata``."""
    data = load_pairs(data_dir / DATASET_FILE)
    split = split_per_user(data, seed=42)
    train, _ = split.phase(Phase.TEST)
    config = BackboneConfig.default_for(BackboneKind.LIGHTGCN, max_size=16, num_layers=2)
    model = build_backbone(config, train, torch.Generator().manual_seed(0))
    if sizes is not None:
        model.set_embedding_sizes(sizes)
    if train_batches:
        train_bpr(
            model,
            train,
            TrainConfig(batch_size=256, max_batches=train_batches, eval_every=0),
            progress=False,
        )
    return export_model(
        model,
        train,
        split.external_user_ids,
        split.external_item_ids,
        out,
        ExportMetadata(
            dataset=DATASET_FILE,
            dataset_fingerprint=data.fingerprint(),
            split_seed=42,
            **metadata,
        ),
        ExportOptions(verify_users=16 if train_batches else 0, threads=1),
    )


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> BaseArtifact:
    """A trained LightGCN (d_max 16) on a clustered dataset file, exported as an artifact."""
    root = tmp_path_factory.mktemp("service-base")
    data_dir = root / "data"
    data_dir.mkdir()
    write_dataset(data_dir / DATASET_FILE)
    metadata = {
        "size_scheme": "full",
        "metrics": {"protocol": "clean", "test": {"recall@20": 0.5}},
    }
    artifact = export_lightgcn(data_dir, root / "artifacts" / "v1-base", metadata, train_batches=30)
    return BaseArtifact(data_dir=data_dir, artifact=artifact)


TINY_RECIPE = """
episodes = 1
iterations = 2
supernet_batches = 5
max_batches = 20
batch_size = 256
eval_every = 10
"""


@pytest.fixture
def settings(base_model: BaseArtifact, tmp_path: Path) -> Settings:
    """Settings with a fresh state folder, short jobs (a tiny recipe) and fast polling."""
    recipe = tmp_path / "tiny-recipe.toml"
    recipe.write_text(TINY_RECIPE)
    return Settings(
        state_dir=tmp_path / "state",
        artifact_dir=base_model.artifact,
        data_dir=base_model.data_dir,
        admin_token=TOKEN,
        poll_seconds=0.2,
        recipe_file=recipe,
    )


def admin_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def live_server(
    settings: Settings, log_level: str = "warning", **app_options: bool
) -> Iterator[str]:
    """uvicorn on loopback (a free port) in a thread, with ``ciess serve``'s connection options;
    yields the base URL, stops it after. ``app_options`` go to :func:`create_app`; at
    ``log_level`` "info", uvicorn writes its access log."""
    config = uvicorn.Config(
        create_app(settings, **app_options),
        host="127.0.0.1",
        port=free_port(),
        log_level=log_level,
        **uvicorn_connection_options(settings),  # what ``ciess serve`` runs
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def worker_environment(settings: Settings) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        {
            "CIESS_STATE_DIR": str(settings.state_dir),
            "CIESS_ARTIFACT_DIR": str(settings.artifact_dir),
            "CIESS_DATA_DIR": str(settings.data_dir),
            "CIESS_ADMIN_TOKEN": settings.admin_token,
            "CIESS_POLL_SECONDS": str(settings.poll_seconds),
            "CIESS_JOB_METHOD": settings.job_method,
            "CIESS_RECIPE_FILE": str(settings.recipe_file or ""),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPOSITORY),
        }
    )
    return environment


@contextmanager
def worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m service.jobs.worker`` in its own process group, stopped (or killed) after."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service.jobs.worker"],
        env=worker_environment(settings),
        cwd=REPOSITORY,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(
    condition: Callable[[], bool], timeout: float = 120.0, every: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(every)


def get_job(client: httpx.Client, job_id: int) -> dict[str, object]:
    response = client.get(f"/v1/admin/jobs/{job_id}", headers=admin_headers())
    response.raise_for_status()
    job: dict[str, object] = response.json()
    return job


def group_alive(group: int) -> bool:
    """Whether a live (not zombie) process of process group ``group`` remains."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False
