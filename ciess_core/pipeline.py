"""The product pipeline's public API: what ``ciess search``, budget jobs and benchmarks call.

    spec = pipeline_spec("ml-1m", "lightgcn", budgets=(0.9,))   # the shipped recipe
    split, fingerprint = load_split("ml-1m", data_dir=None)
    summary = run_product_pipeline(spec, Path("runs/x"), split, fingerprint)

Stages (all inside :func:`ciess_core.search.pipeline.run_pipeline`): the full model, the
supernet and the CIESS search, the share and spread fits on held-out validation, the retraining of
the searched candidate and of per-side equal sizes (distilled), the pick on validation and one
test (the clean protocol), then the deployment model on every interaction, kept as a run
directory per budget for :func:`ciess_core.artifact.export.export_run`.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ciess_core.data import DatasetSplit, open_dataset, split_per_user
from ciess_core.errors import ConfigError
from ciess_core.executors import DEFAULT_EXECUTOR
from ciess_core.json_form import jsonable
from ciess_core.models import BackboneConfig, BackboneKind
from ciess_core.recipes import resolve_recipe
from ciess_core.runs import Protocol, RunProtocol, Start, usable_device
from ciess_core.search.config import SearchConfig
from ciess_core.search.files import write_json
from ciess_core.search.parallel import check_executor
from ciess_core.search.pipeline import PipelineSpec, StageReport, run_pipeline
from ciess_core.search.planner import check_byte_budgets
from ciess_core.search.shared_stages import (
    SHARED_STAGES_FILE,
    check_same_data,
    recorded_fingerprint,
    reuse_sibling_stages,
    shares_stages_with,
    stages_identity,
)
from ciess_core.training import TrainConfig
from ciess_core.training.config import MIN_LEARNING_RATE

__all__ = [
    "DEFAULT_SPARSITY_BUDGETS",
    "PipelineSpec",
    "Protocol",
    "RunProtocol",
    "load_split",
    "pipeline_spec",
    "run_product_pipeline",
]

logger = logging.getLogger(__name__)

SPLIT_SEED = 42

SPEC_FILE = "spec.json"
#: Held (``flock``) by the run that uses a pipeline folder (:func:`pipeline_folder_lock`).
LOCK_FILE = ".lock"
FINGERPRINT_KEY = "dataset_fingerprint"
"""The key of ``spec.json`` beside the spec's own: the fingerprint of the data the folder's
stages were trained on."""

_LATER_DEFAULTS = {
    ("byte_ratios",): [],
    ("training", "value_type"): "float32",
    ("retrain_start",): "random",
}
"""Settings added to the spec after folders were written without them, with the value that an
older folder's pipeline had (those folders resume)."""


def _with_later_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    for path, value in _LATER_DEFAULTS.items():
        *parents, key = path
        node = stored
        for parent in parents:
            node = node.setdefault(parent, {})
        node.setdefault(key, value)
    return stored


#: Where each backbone's retrainings start. LightGCN: from each phase's teacher turned to its
#: principal axes and cut (the same test N@20 within 0.002 at every byte ratio on ML-1M, with
#: 25 % fewer selection batches and 54 % fewer test-phase batches:
#: docs/benchmarks/rotated-truncation.md); the others' scores change under a turn.
RETRAIN_START = {
    BackboneKind.LIGHTGCN: Start.TEACHER,
    BackboneKind.NGCF: Start.RANDOM,
    BackboneKind.NCF: Start.RANDOM,
}

#: The target sparsities the search is steered to unless told otherwise: the paper's three,
#: and with byte budgets those the planner's were measured with (docs/benchmarks/bytes.md).
DEFAULT_SPARSITY_BUDGETS = (0.8, 0.9, 0.95)


def pipeline_spec(
    dataset: str,
    backbone: str,
    budgets: tuple[float, ...] = DEFAULT_SPARSITY_BUDGETS,
    config_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    protocol: RunProtocol = Protocol.CLEAN,
    byte_ratios: tuple[float, ...] = (),
) -> PipelineSpec:
    """The pipeline for ``dataset`` and ``backbone`` with the recipe of
    :func:`~ciess_core.recipes.resolve_recipe` (shipped file, ``config_file``, ``overrides``).
    ``byte_ratios``: byte budgets to serve instead of the sparsity ``budgets`` (see
    :class:`~ciess_core.search.pipeline.PipelineSpec`).

    ``protocol``: the clean protocol is the product's; another one (the authors' reference
    protocol in ``bench/experiments/protocols.py``) serves comparisons with published tables.
    """
    try:
        kind = BackboneKind(backbone)
    except ValueError:
        raise ConfigError(
            f"unknown backbone {backbone!r}; expected one of {[k.value for k in BackboneKind]}"
        ) from None
    recipe = resolve_recipe(dataset, kind.value, config_file, overrides)
    training = TrainConfig(
        batch_size=recipe["batch_size"],
        max_batches=recipe["max_batches"],
        learning_rate=recipe["learning_rate"],
        min_learning_rate=min(MIN_LEARNING_RATE, recipe["learning_rate"]),
        eval_every=recipe["eval_every"],
        patience=recipe["patience"],
        seed=recipe["seed"],
        device=device,
    )
    return PipelineSpec(
        dataset=dataset,
        backbone=BackboneConfig.default_for(kind, weight_decay=recipe["weight_decay"]),
        training=training,
        search=SearchConfig(
            num_episodes=recipe["episodes"],
            iterations_per_episode=recipe["iterations"],
            reward_penalty=recipe["reward_penalty"],
            budgets=tuple(budgets),
            seed=recipe["seed"],
            device=device,
        ),
        supernet_batches=recipe["supernet_batches"],
        protocol=protocol,
        byte_ratios=tuple(byte_ratios),
        retrain_start=RETRAIN_START[kind],
    )


def load_split(dataset: str, data_dir: Path | str | None = None) -> tuple[DatasetSplit, str]:
    """``dataset`` (a registered name, file or folder) split 50/25/25 as every command splits it,
    and the data's fingerprint."""
    data = open_dataset(dataset, None if data_dir is None else str(data_dir))
    return split_per_user(data, seed=SPLIT_SEED), data.fingerprint()


def claim_pipeline_folder(
    out: Path, spec: PipelineSpec, dataset_fingerprint: str | None = None
) -> None:
    """Make ``out`` the folder of ``spec``'s pipeline on the data of ``dataset_fingerprint``:
    record both in ``out/spec.json`` (written whole or not at all), or check that those
    recorded there are the same, so that a rerun resumes and a changed command never mixes
    stages of two recipes or of two datasets. A folder that recorded no fingerprint (written
    before folders did) resumes and records this one; ``dataset_fingerprint`` None compares the
    spec alone (a benchmark's check before it loads the data). A folder that holds nothing but
    its claim (an earlier run stopped before any stage wrote a file) is claimed anew.

    Raises:
        ConfigError: ``out`` holds a pipeline with other settings, or one of other data.
    """
    out.mkdir(parents=True, exist_ok=True)
    described = jsonable(spec)
    spec_path = out / SPEC_FILE
    if not spec_path.exists():
        _record_claim(spec_path, described, dataset_fingerprint)
        return
    if _holds_no_work(out):  # an earlier run stopped before its first stage wrote a file
        (out / SHARED_STAGES_FILE).unlink(missing_ok=True)
        _record_claim(spec_path, described, dataset_fingerprint)
        return
    stored = _with_later_defaults(json.loads(spec_path.read_text()))
    in_spec = stored.pop(FINGERPRINT_KEY, None)
    if stored != described:
        reuse = ""
        if shares_stages_with(out, described):
            reuse = " (one beside it reuses this folder's full model, teachers and supernet)"
        raise ConfigError(
            f"{out} holds a pipeline with other settings ({spec_path}: "
            f"{_differences(stored, described)}); choose another output folder to start a "
            f"new one{reuse}"
        )
    if dataset_fingerprint is None:
        return
    # an older folder: the data its budget-free stages recorded, if they did
    check_same_data(out, in_spec or recorded_fingerprint(out), dataset_fingerprint)
    if in_spec is None:
        _record_claim(spec_path, described, dataset_fingerprint)


def _holds_no_work(out: Path) -> bool:
    """Whether ``out`` holds nothing but its claim (``spec.json``, the shared-stages record and
    empty folders): a run that stopped before any stage wrote a file, so that nothing is lost
    when the folder is claimed for other settings."""
    claim_files = {SPEC_FILE, SHARED_STAGES_FILE, LOCK_FILE}
    return all(
        path.is_dir() or (path.parent == out and path.name in claim_files)
        for path in out.rglob("*")
    )


def _record_claim(
    spec_path: Path, described: dict[str, Any], dataset_fingerprint: str | None
) -> None:
    """``spec.json``: the spec in JSON form, with the data's fingerprint when it is known."""
    if dataset_fingerprint is not None:
        described = {**described, FINGERPRINT_KEY: dataset_fingerprint}
    write_json(spec_path, described)


def _differences(stored: Any, described: Any) -> str:
    """The settings in which a folder's recorded spec and this run's differ, as
    ``name: recorded -> asked`` (nested settings by their dotted path), the first
    :data:`_DIFFERENCES_SHOWN` of them, each value cut to :data:`_VALUE_SHOWN` characters."""
    parts = _differing(stored, described, "")
    shown = "; ".join(parts[:_DIFFERENCES_SHOWN])
    more = len(parts) - _DIFFERENCES_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


_DIFFERENCES_SHOWN = 5
_VALUE_SHOWN = 60


def _differing(stored: Any, described: Any, where: str) -> list[str]:
    if isinstance(stored, dict) and isinstance(described, dict):
        return [
            part
            for key in sorted(set(stored) | set(described), key=str)
            if stored.get(key) != described.get(key)
            for part in _differing(stored.get(key), described.get(key), f"{where}{key}.")
        ]
    return [f"{where.rstrip('.')}: {_shown(stored)} -> {_shown(described)}"]


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= _VALUE_SHOWN else text[: _VALUE_SHOWN - 1] + "…"


def run_product_pipeline(
    spec: PipelineSpec,
    out: Path,
    split: DatasetSplit,
    dataset_fingerprint: str,
    workers: int = 1,
    progress: bool = True,
    on_stage: StageReport | None = None,
    executor: str = DEFAULT_EXECUTOR,
    reuse_siblings: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the pipeline in ``out`` on ``split`` (:func:`load_split`).

    ``out`` is claimed for ``spec`` and the data first (:func:`claim_pipeline_folder`). With
    ``reuse_siblings`` (``ciess search``), the full model, teachers and supernet it lacks are
    copied from a folder beside it with the same data and recipe
    (:func:`~ciess_core.search.shared_stages.reuse_sibling_stages`); benchmarks that time a
    whole pipeline leave it off. ``workers`` units run at a time on ``executor``
    (``processes``, ``local`` or ``ray``; the same results).
    """
    # what can be refused is refused before the folder is made
    check_byte_budgets(spec, split.num_users + split.num_items)
    usable_device(spec.training.device)
    check_executor(executor)
    with pipeline_folder_lock(out):
        claim_pipeline_folder(out, spec, dataset_fingerprint)
        if reuse_siblings:
            reuse_sibling_stages(out, stages_identity(jsonable(spec), dataset_fingerprint))
        return run_pipeline(
            spec,
            split,
            out,
            progress=progress,
            dataset_fingerprint=dataset_fingerprint,
            workers=workers,
            on_stage=on_stage,
            executor=executor,
        )


@contextmanager
def pipeline_folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the pipeline folder ``out`` (``flock`` of :data:`LOCK_FILE`
    in it) while a run uses it: a second run of the folder, from this process or another, is
    refused instead of mixing its stages with the first's (and a folder that holds only its
    claim is claimed anew only by the run that holds the lock).

    Raises:
        ConfigError: another run holds the folder.
    """
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{out} is in use by another run of the pipeline; wait for it to end or choose "
                "another output folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
