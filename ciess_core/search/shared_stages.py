"""The stages of a pipeline folder that no budget changes: the full model, the phase teachers
and the supernet. A pipeline for other budgets of the same data and recipe copies them from a
finished folder and starts at its search (which does depend on the budgets: its pool keeps the
best assignments at each).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

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
