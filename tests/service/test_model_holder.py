"""The holder: one snapshot per request, swaps that keep the old model on failure."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ciess_core.errors import ArtifactError
from service import model_holder
from service.model_holder import (
    MAX_RETRY_FAILED_LOAD_SECONDS,
    RETRY_FAILED_LOAD_SECONDS,
    ModelHolder,
    ServedModel,
    load_served_model,
    read_pointer,
    write_pointer,
)
from service.settings import Settings
from tests.service.conftest import BaseArtifact


def test_refresh_loads_once_and_follows_the_pointer(
    settings: Settings, base_model: BaseArtifact, tmp_path: Path
) -> None:
    holder = ModelHolder()
    assert holder.refresh(settings) is True
    first = holder.require()
    assert first.version == "v1-base"
    assert holder.refresh(settings) is False  # same version: nothing to do
    copy = tmp_path / "artifacts" / "v2-copy"
    shutil.copytree(base_model.artifact, copy)
    write_pointer(settings, copy, job_id=7)
    assert read_pointer(settings) == copy.resolve()
    assert holder.refresh(settings) is True
    assert holder.require().version == "v2-copy"
    # A request that took the old snapshot still holds a working model.
    assert first.scorer.recommend(first.scorer.user_index(["u1"]), 3)[0].shape == (1, 3)


def test_a_broken_promoted_artifact_leaves_the_old_model_serving(
    settings: Settings, base_model: BaseArtifact, tmp_path: Path
) -> None:
    holder = ModelHolder()
    holder.refresh(settings)
    broken = tmp_path / "artifacts" / "v3-broken"
    shutil.copytree(base_model.artifact, broken)
    (broken / "manifest.json").write_text("{}")
    write_pointer(settings, broken)
    with pytest.raises(ArtifactError):
        holder.refresh(settings)
    assert holder.require().version == "v1-base"
    assert holder.refresh(settings) is False  # not again at the next poll
    with pytest.raises(ArtifactError):
        holder.refresh(settings, force=True)


def test_swap_returns_the_previous_model(settings: Settings, base_model: BaseArtifact) -> None:
    holder = ModelHolder()
    model = load_served_model(base_model.artifact, threads=1)
    assert holder.swap(model) is None
    assert holder.swap(dataclasses.replace(model, version="next")) is model
    assert holder.require().version == "next"


def test_a_failed_version_is_loaded_again_after_a_delay_that_doubles(
    settings: Settings, base_model: BaseArtifact, tmp_path: Path
) -> None:
    """A load may fail for a while (out of memory, out of descriptors): the version is tried
    again, not at every poll, but after a delay that doubles up to a cap."""
    now = [1_000.0]
    holder = ModelHolder(clock=lambda: now[0])
    holder.refresh(settings)
    flaky = tmp_path / "artifacts" / "v4-flaky"
    shutil.copytree(base_model.artifact, flaky)
    values = flaky / "tables/embedding/values.npy"
    intact = values.read_bytes()
    values.write_bytes(intact[:-8])  # unreadable for now
    write_pointer(settings, flaky)
    assert (RETRY_FAILED_LOAD_SECONDS, MAX_RETRY_FAILED_LOAD_SECONDS) == (60.0, 960.0)
    for delay in (60.0, 120.0, 240.0, 480.0, 960.0, 960.0, 960.0):
        with pytest.raises(ArtifactError):
            holder.refresh(settings)
        assert holder.fallback is not None and holder.fallback.version == "v4-flaky"
        now[0] += delay - 1
        assert holder.refresh(settings) is False  # polls within the delay: no load, no error
        now[0] += 1
    assert holder.require().version == "v1-base"
    values.write_bytes(intact)  # the cause passed
    assert holder.refresh(settings) is True
    assert holder.require().version == "v4-flaky" and holder.fallback is None


def test_a_promotion_waits_for_no_load_and_a_stale_load_is_dropped(
    settings: Settings, base_model: BaseArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher loads what the pointer named (slowly); a promotion meanwhile writes the
    pointer and swaps at once; the watcher's load, done, no longer matches the pointer and is
    not served."""
    holder = ModelHolder()
    holder.refresh(settings)
    served = holder.require()
    from_job = tmp_path / "artifacts" / "v2-job"
    rollback = tmp_path / "artifacts" / "v3-rollback"
    for target in (from_job, rollback):
        shutil.copytree(base_model.artifact, target)
    loading, release = threading.Event(), threading.Event()

    def slow_load(directory: Path, threads: int) -> ServedModel:
        loading.set()
        release.wait(timeout=60)
        return load_served_model(directory, threads)

    monkeypatch.setattr(model_holder, "load_served_model", slow_load)
    write_pointer(settings, from_job)  # as a finished job does
    with ThreadPoolExecutor(2) as threads:
        watcher = threads.submit(holder.refresh, settings)
        assert loading.wait(timeout=30)
        promoted = load_served_model(rollback, threads=1)
        write_pointer(settings, rollback)  # the promotion: the pointer first, then the swap
        swap = threads.submit(holder.serve_promoted, promoted)
        assert swap.result(timeout=5) is served  # while the watcher still loads
        assert holder.require() is promoted
        assert not watcher.done()
        release.set()
        assert watcher.result(timeout=60) is False
    assert holder.require() is promoted
    assert holder.refresh(settings) is False  # the pointer names what is served
