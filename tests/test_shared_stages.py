"""The budget-free stages copied between pipeline folders: finished ones only, never over a
stage the target has, and keyed on what they depend on; a pipeline folder resumes on the data
it was made from only."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ciess_core.errors import ConfigError
from ciess_core.json_form import jsonable
from ciess_core.pipeline import claim_pipeline_folder, pipeline_folder_lock, pipeline_spec
from ciess_core.search.shared_stages import (
    COPIED_STAGES_FILE,
    SHARED_STAGES,
    SHARED_STAGES_FILE,
    copy_shared_stages,
    reuse_sibling_stages,
    shared_stages_key,
    stages_identity,
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


OURS, THEIRS = "a" * 64, "b" * 64


def test_a_folder_of_other_data_is_refused_naming_both_fingerprints(tmp_path: Path) -> None:
    spec, out = pipeline_spec("ml-1m", "lightgcn"), tmp_path / "pipeline"
    claim_pipeline_folder(out, spec, OURS)
    assert json.loads((out / "spec.json").read_text())["dataset_fingerprint"] == OURS
    _started_a_stage(out)
    claim_pipeline_folder(out, spec, OURS)  # the same data resumes
    claim_pipeline_folder(out, spec)  # a check of the spec alone
    refusal = re.escape(f"{out} holds a pipeline trained on other data")
    with pytest.raises(ConfigError, match=refusal) as error:
        claim_pipeline_folder(out, spec, THEIRS)
    assert f"fingerprint {OURS[:16]}…, this data's {THEIRS[:16]}…" in str(error.value)
    # The budget-free stages' record keeps the data they were trained on.
    reuse_sibling_stages(out, stages_identity(jsonable(spec), OURS))
    with pytest.raises(ConfigError, match="trained on other data"):
        reuse_sibling_stages(out, stages_identity(jsonable(spec), THEIRS))
    assert json.loads((out / SHARED_STAGES_FILE).read_text())["fingerprint"] == OURS


def _started_a_stage(out: Path) -> None:
    """What a pipeline's first stage leaves once it has begun: a file under ``full/``."""
    (out / "full").mkdir(exist_ok=True)
    (out / "full" / "history.jsonl").write_text("{}\n")


def test_a_folder_holding_only_its_claim_is_claimed_again_whatever_it_recorded(
    tmp_path: Path,
) -> None:
    """A run that stopped before its first stage wrote a file (a bad flag found late, a
    crash) loses nothing when its folder is claimed for other settings or other data."""
    spec, out = pipeline_spec("ml-1m", "lightgcn"), tmp_path / "pipeline"
    claim_pipeline_folder(out, spec, OURS)
    (out / SHARED_STAGES_FILE).write_text(json.dumps(stages_identity(jsonable(spec), OURS)))
    (out / "full").mkdir()  # an empty folder is no work
    other = dataclasses.replace(spec, training=dataclasses.replace(spec.training, seed=7))
    claim_pipeline_folder(out, other, THEIRS)
    recorded = json.loads((out / "spec.json").read_text())
    assert recorded == {**jsonable(other), "dataset_fingerprint": THEIRS}
    assert not (out / SHARED_STAGES_FILE).exists()
    _started_a_stage(out)
    with pytest.raises(ConfigError, match=r"other settings .*training\.seed: 7 -> 42"):
        claim_pipeline_folder(out, spec, THEIRS)


def test_a_refusal_lists_the_first_differences_each_cut_short(tmp_path: Path) -> None:
    spec, out = pipeline_spec("ml-1m", "lightgcn"), tmp_path / "pipeline"
    claim_pipeline_folder(out, spec, OURS)
    _started_a_stage(out)
    other = pipeline_spec(
        "yelp2018", "ngcf", budgets=tuple(round(0.5 + i / 100, 2) for i in range(40))
    )
    with pytest.raises(ConfigError) as error:
        claim_pipeline_folder(out, other, OURS)
    message = str(error.value)
    assert re.search(r"; and \d+ more\); choose another output folder", message)
    assert len(message) < 1000
    assert "search.budgets: [0.8, 0.9, 0.95] -> [0.5, 0.51," in message and "…" in message


def test_an_older_folder_resumes_and_records_its_data(tmp_path: Path) -> None:
    """A folder written before folders recorded their data: its data is the one its stages
    recorded when it has that record, else the first data it resumes with."""
    spec = pipeline_spec("ml-1m", "lightgcn")
    older, copied = tmp_path / "older", tmp_path / "copied"
    for out in (older, copied):
        out.mkdir()
        (out / "spec.json").write_text(json.dumps(jsonable(spec)))
        _started_a_stage(out)
    claim_pipeline_folder(older, spec, OURS)
    assert json.loads((older / "spec.json").read_text()) == {
        **jsonable(spec), "dataset_fingerprint": OURS}  # fmt: skip
    with pytest.raises(ConfigError, match="trained on other data"):
        claim_pipeline_folder(older, spec, THEIRS)
    (copied / SHARED_STAGES_FILE).write_text(json.dumps(stages_identity(jsonable(spec), THEIRS)))
    with pytest.raises(ConfigError, match=f"fingerprint {THEIRS[:16]}…, this data's {OURS[:16]}…"):
        claim_pipeline_folder(copied, spec, OURS)
    assert "dataset_fingerprint" not in json.loads((copied / "spec.json").read_text())
    claim_pipeline_folder(copied, spec, THEIRS)  # its own data: it resumes and records it
    assert json.loads((copied / "spec.json").read_text())["dataset_fingerprint"] == THEIRS


def test_the_spec_file_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, out = pipeline_spec("ml-1m", "lightgcn"), tmp_path / "older"
    out.mkdir()
    before = json.dumps(jsonable(spec))
    (out / "spec.json").write_text(before)
    real_write = Path.write_text

    def dies_halfway(path: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write(path, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        claim_pipeline_folder(out, spec, OURS)  # records the data: a rewrite
    monkeypatch.undo()
    assert (out / "spec.json").read_text() == before
    assert sorted(path.name for path in out.iterdir()) == ["spec.json"]


def test_a_pipeline_folder_in_use_is_refused_to_a_second_run(tmp_path: Path) -> None:
    """Two runs of one folder would mix their stages (and a folder that holds only its claim
    is claimed anew): the second run, in this process or another, is refused while the first
    holds the folder, and the folder is free again after it."""
    out = tmp_path / "pipeline"
    other = (
        "import sys; from pathlib import Path; from ciess_core.errors import ConfigError\n"
        "from ciess_core.pipeline import pipeline_folder_lock\n"
        "try:\n"
        "    with pipeline_folder_lock(Path(sys.argv[1])): sys.exit(0)\n"
        "except ConfigError as error: print(error); sys.exit(2)\n"
    )
    with pipeline_folder_lock(out):
        with pytest.raises(ConfigError, match="in use by another run"), pipeline_folder_lock(out):
            pass
        refused = subprocess.run(
            [sys.executable, "-c", other, str(out)], capture_output=True, text=True, check=False
        )
        assert refused.returncode == 2 and "in use by another run" in refused.stdout
        claim_pipeline_folder(out, pipeline_spec("ml-1m", "lightgcn"), OURS)
    with pipeline_folder_lock(out):  # released
        assert (out / "spec.json").is_file()
