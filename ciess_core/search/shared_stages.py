"""The stages of a pipeline folder that no budget changes: the full model, the phase teachers
and the supernet. A pipeline for other budgets of the same data and recipe copies them from a
finished folder and starts at its search (which does depend on the budgets: its pool keeps the
best assignments at each). Each folder of ``ciess search`` and of a budget job records what its
stages depend on (:data:`SHARED_STAGES_FILE`), and a new one copies from the folders beside it
that recorded the same.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ciess_core.errors import ConfigError
from ciess_core.run_folder import RUN_FORMAT_VERSION
from ciess_core.search.files import read_cached, write_json
from ciess_core.search.teachers import TEACHER_DIRECTORIES

logger = logging.getLogger(__name__)

#: Each budget-free stage's folder and the file it writes last, once everything else is there.
SHARED_STAGES = {
    "full": "summary.json",
    **{name: "summary.json" for name in TEACHER_DIRECTORIES.values()},
    "supernet": "supernet.json",
}


#: Where a pipeline folder records the stages it copied, each with the folder it came from.
COPIED_STAGES_FILE = "copied-stages.json"
#: Where a pipeline folder records what its budget-free stages depend on
#: (:func:`stages_identity`).
SHARED_STAGES_FILE = "shared-stages.json"


def shared_stages_key(described: dict[str, Any]) -> dict[str, Any]:
    """What the budget-free stages of a pipeline depend on, from its spec as
    :func:`~ciess_core.json_form.jsonable` describes it: the dataset, backbone, training (its
    value type aside: it changes scores, not weights), protocol and supernet schedule."""
    training = {key: value for key, value in described["training"].items() if key != "value_type"}
    return {
        "dataset": described["dataset"],
        "backbone": described["backbone"],
        "training": training,
        "protocol": described.get("protocol", "clean"),
        "supernet_batches": described["supernet_batches"],
    }


def copy_shared_stages(source: Path, out: Path) -> list[str]:
    """Copy every stage of :data:`SHARED_STAGES` that ``source`` finished and ``out`` lacks into
    ``out``; returns their names, also recorded in ``out``'s :data:`COPIED_STAGES_FILE`. Each is
    copied to a hidden folder and renamed into place, so a failed copy leaves the stage missing
    (trained again), never half there."""
    copied = []
    out.mkdir(parents=True, exist_ok=True)
    for name, last_file in SHARED_STAGES.items():
        if (out / name).exists() or not (source / name / last_file).is_file():
            continue
        staging = out / f".{name}.copy"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source / name, staging, ignore=shutil.ignore_patterns("*.tmp"))
            staging.rename(out / name)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            logger.warning("could not copy %s from %s (%s): it trains again", name, source, error)
            continue
        copied.append(name)
    if copied:
        logger.info("reused %s from %s", ", ".join(copied), source)
        record = out / COPIED_STAGES_FILE
        known = read_cached(record) or {}
        write_json(record, {**known, **{name: str(source) for name in copied}})
    return copied


def stages_identity(described: dict[str, Any], dataset_fingerprint: str) -> dict[str, Any]:
    """What the budget-free stages of a pipeline (its spec as ``jsonable`` describes it) on the
    data of ``dataset_fingerprint`` are, down to the run format: two folders with the same
    identity train the same stages."""
    return {
        "fingerprint": dataset_fingerprint,
        "format": RUN_FORMAT_VERSION,
        **shared_stages_key(described),
    }


def shares_stages_with(folder: Path, described: dict[str, Any]) -> bool:
    """Whether a pipeline of ``described``'s spec in a new folder beside ``folder`` would copy
    ``folder``'s budget-free stages (on the same data): ``folder`` recorded the identity those
    stages need. False for a folder that recorded none or one that cannot be read."""
    try:
        recorded = read_cached(folder / SHARED_STAGES_FILE)
    except (OSError, ValueError):
        return False
    if recorded is None:
        return False
    recorded.pop("fingerprint", None)
    return recorded == {"format": RUN_FORMAT_VERSION, **shared_stages_key(described)}


def recorded_fingerprint(folder: Path) -> str | None:
    """The fingerprint of the data ``folder``'s budget-free stages were trained on, as its
    :data:`SHARED_STAGES_FILE` records it (None: none recorded, or not readable)."""
    try:
        recorded = read_cached(folder / SHARED_STAGES_FILE)
    except (OSError, ValueError):
        return None
    fingerprint = None if recorded is None else recorded.get("fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def check_same_data(folder: Path, recorded: str | None, fingerprint: str) -> None:
    """Raise ConfigError when ``folder``, whose stages were trained on the data of ``recorded``
    (None: not recorded), is to go on with the data of ``fingerprint``, another one."""
    if recorded is not None and recorded != fingerprint:
        raise ConfigError(
            f"{folder} holds a pipeline trained on other data (dataset fingerprint "
            f"{recorded[:16]}…, this data's {fingerprint[:16]}…); choose another output folder "
            "to start a new one"
        )


def reuse_sibling_stages(out: Path, identity: dict[str, Any]) -> list[str]:
    """Record ``identity`` in ``out`` (:data:`SHARED_STAGES_FILE`) and copy the budget-free
    stages ``out`` lacks from the folders beside it that recorded the same, newest first;
    returns the names copied.

    Raises:
        ConfigError: ``out`` recorded stages trained on the data of another fingerprint (its
            record is left as it is).
    """
    out.mkdir(parents=True, exist_ok=True)
    check_same_data(out, recorded_fingerprint(out), identity["fingerprint"])
    write_json(out / SHARED_STAGES_FILE, identity)
    siblings = [path.parent for path in out.parent.glob(f"*/{SHARED_STAGES_FILE}")]
    copied: list[str] = []
    for other in sorted(siblings, key=lambda path: path.stat().st_mtime, reverse=True):
        if other.resolve() == out.resolve():
            continue
        try:
            same = read_cached(other / SHARED_STAGES_FILE) == identity
        except (OSError, ValueError):
            continue
        if same:
            copied += copy_shared_stages(other, out)
    return copied
