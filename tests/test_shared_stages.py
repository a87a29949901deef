"""The budget-free stages copied between pipeline folders: finished ones only, never over a
stage the target has, and keyed on what they depend on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ciess_core.json_form import jsonable
from ciess_core.pipeline import pipeline_spec
from ciess_core.search.shared_stages import (
    COPIED_STAGES_FILE,
    SHARED_STAGES,
    copy_shared_stages,
    shared_stages_key,
)


def _stage(folder: Path, name: str, finished: bool, content: str = "weights") -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "model.pt").write_text(content)
    if finished:
        (folder / name / SHARED_STAGES[name]).write_text("{}")


def test_only_finished_stages_the_target_lacks_are_copied(tmp_path: Path) -> None:
    source, out = tmp_path / "source", tmp_path / "out"
    _stage(source, "full", finished=True)
    _stage(source, "teacher", finished=False)  # still training: not a stage to reuse
    _stage(source, "teacher-deploy", finished=True)
    _stage(out, "teacher-deploy", finished=True, content="its own")
    assert copy_shared_stages(source, out) == ["full"]
    assert (out / "full" / "model.pt").read_text() == "weights"
    assert not (out / "teacher").exists() and not (out / "supernet").exists()
    assert (out / "teacher-deploy" / "model.pt").read_text() == "its own"
    assert sorted(path.name for path in out.iterdir()) == [
        COPIED_STAGES_FILE, "full", "teacher-deploy"
    ]  # fmt: skip
    assert json.loads((out / COPIED_STAGES_FILE).read_text()) == {"full": str(source)}
    assert copy_shared_stages(source, out) == []  # nothing left to copy


def test_the_key_ignores_budgets_and_value_types_but_not_the_recipe() -> None:
    spec = pipeline_spec("ml-1m", "lightgcn")
    other_budgets = dataclasses.replace(
        spec,
        byte_ratios=(0.05,),
        search=dataclasses.replace(spec.search, budgets=(0.7,)),
        training=dataclasses.replace(spec.training, value_type="int8"),
    )
    longer = dataclasses.replace(spec, training=dataclasses.replace(spec.training, max_batches=10))
    key = shared_stages_key(jsonable(spec))
    assert shared_stages_key(jsonable(other_budgets)) == key
    assert shared_stages_key(jsonable(longer)) != key
    assert shared_stages_key(jsonable(dataclasses.replace(spec, supernet_batches=5))) != key
