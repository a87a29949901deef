"""The holder: one snapshot per request, swaps that keep the old model on failure."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from ciess_core.errors import ArtifactError
from service.model_holder import ModelHolder, load_served_model, read_pointer, write_pointer
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
    assert holder.refresh(settings) is False  # not retried until a forced reload
    with pytest.raises(ArtifactError):
        holder.refresh(settings, force=True)


def test_swap_returns_the_previous_model(settings: Settings, base_model: BaseArtifact) -> None:
    holder = ModelHolder()
    model = load_served_model(base_model.artifact, threads=1)
    assert holder.swap(model) is None
    assert holder.swap(dataclasses.replace(model, version="next")) is model
    assert holder.require().version == "next"
