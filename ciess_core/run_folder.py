"""A run folder: the one writer (:func:`write_run`) and the one reader (:func:`read_run`).

    config.json    what was trained (the :class:`~ciess_core.runs.RunSpec`, the data's
                   fingerprint, the format version)
    metrics.json   the protocol's numbers (:class:`~ciess_core.runs.RunOutcome`)
    history.jsonl  one line per evaluation
    sizes.npz      the users' and items' sizes (:class:`~ciess_core.sizes.SizeAssignment`)
    model.pt       the deployment model's weights, trained on every interaction

No other module names these files; ``ciess export`` rebuilds the model through :func:`read_run`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ciess_core import __version__
from ciess_core.errors import ConfigError, DataError
from ciess_core.json_form import jsonable
from ciess_core.models import Backbone
from ciess_core.runs import TRAINED_ON_ALL, RunOutcome, RunSpec
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import VALUE_TYPES

logger = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 3
"""3: the sizes are ``sizes.npz``, users' and items' apart (2 kept one bare ``sizes.npy``);
since 2, ``model.pt`` is the deployment model, trained on every interaction (``trained_on``)."""

CONFIG_FILE, METRICS_FILE, HISTORY_FILE = "config.json", "metrics.json", "history.jsonl"
SIZES_FILE, MODEL_FILE = "sizes.npz", "model.pt"


@dataclass(frozen=True)
class StoredRun:
    """A run folder as :func:`read_run` found it.

    Attributes:
        directory: the folder.
        config: ``config.json`` (the run's spec in JSON form, ``num_users``, ``num_items``,
            ``dataset_fingerprint``, ``trained_on``, ...).
        metrics: ``metrics.json`` (``protocol``, ``test``, ``valid``, ``stages``, ...).
        sizes: the deployment model's sizes.
        weights: the deployment model's state dict, on the CPU.
    """

    directory: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    sizes: SizeAssignment
    weights: dict[str, torch.Tensor]


def write_run(
    directory: Path,
    spec: RunSpec,
    dataset_fingerprint: str,
    model: Backbone,
    outcome: RunOutcome,
    history: list[dict[str, Any]],
) -> Path:
    """Write a run folder atomically: files go to a temporary sibling renamed at the end.

    ``model`` is the deployment model (:func:`~ciess_core.runs.train_deployment`, trained on
    every interaction); ``outcome`` holds the protocol's numbers, which measure its recipe.
    """
    directory = Path(directory)
    if directory.exists():
        raise ConfigError(f"run directory {directory} already exists; choose another --out")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        config = {
            "format_version": RUN_FORMAT_VERSION,
            "ciess_version": __version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dataset_fingerprint": dataset_fingerprint,
            "num_users": model.num_users,
            "num_items": model.num_items,
            "trained_on": TRAINED_ON_ALL,
            **jsonable(spec),
        }
        _write_json(staging / CONFIG_FILE, config)
        metrics = {
            "protocol": spec.protocol.value,
            "test": outcome.test_metrics,
            "valid": outcome.valid_metrics,
            "achieved_sparsity": outcome.achieved_sparsity,
            "seconds": round(outcome.seconds, 3),
            "selected_batches": outcome.selected_batches,
            "stages": outcome.stages,
        }
        if outcome.valid_by_value_type:
            metrics["valid_by_value_type"] = outcome.valid_by_value_type
        _write_json(staging / METRICS_FILE, metrics)
        with (staging / HISTORY_FILE).open("w") as handle:
            for row in history:
                handle.write(json.dumps(row) + "\n")
        model.size_assignment().save(staging / SIZES_FILE)
        torch.save(model.state_dict(), staging / MODEL_FILE)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote run %s", directory)
    return directory


def run_folder(directory: Path | str) -> Path:
    """``directory`` as a path, refused (ConfigError naming it) unless it is a folder."""
    run = Path(directory)
    if run.is_dir():
        return run
    if run.exists():
        raise ConfigError(f"run directory {run} is a file, not a folder")
    raise ConfigError(f"run directory {run} does not exist")


def read_run(directory: Path | str) -> StoredRun:
    """Read a run folder written by :func:`write_run`.

    Raises:
        ConfigError: ``directory`` does not exist or is a file.
        DataError: a file is missing or malformed (a field of ``config.json`` of the wrong
            type included), the folder is of another format version, or its sizes do not match
            its users and items; the message names the file (and the field).
    """
    run = run_folder(directory)
    config = _read_json(run, CONFIG_FILE)
    version = config.get("format_version")
    if version != RUN_FORMAT_VERSION:
        raise DataError(
            f"{run / CONFIG_FILE}: run format {version!r}, this version reads "
            f"{RUN_FORMAT_VERSION} (a deployment model trained on all interactions, its sizes "
            f"in {SIZES_FILE}); train it again"
        )
    _check_config(run / CONFIG_FILE, config)
    for name in (METRICS_FILE, SIZES_FILE, MODEL_FILE):
        if not (run / name).is_file():
            raise DataError(f"{run}: not a complete run directory, {name} is missing")
    metrics = _read_json(run, METRICS_FILE)
    sizes = _read_sizes(run / SIZES_FILE)
    recorded = (config["num_users"], config["num_items"])
    if recorded != (sizes.num_users, sizes.num_items):
        raise DataError(
            f"{run / SIZES_FILE} holds {sizes.num_users} users and {sizes.num_items} items, "
            f"{CONFIG_FILE} records {recorded[0]} and {recorded[1]}"
        )
    try:
        weights = torch.load(run / MODEL_FILE, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as error:
        raise DataError(f"{run / MODEL_FILE}: cannot be read ({error})") from None
    return StoredRun(run, config, metrics, sizes, weights)


# config.json's fields that readers of a run use: name -> (JSON types, what it must be, needed).
_CONFIG_FIELDS: dict[str, tuple[tuple[type, ...], str, bool]] = {
    "backbone": ((dict,), "an object", True),
    "dataset": ((str,), "a string", True),
    "dataset_fingerprint": ((str,), "a string", True),
    "num_users": ((int,), "an integer", True),
    "num_items": ((int,), "an integer", True),
    "split_seed": ((int,), "an integer", False),
    "training": ((dict,), "an object", False),
    "target_sparsity": ((int, float, type(None)), "a number or null", False),
    "budget_bytes": ((int, type(None)), "an integer or null", False),
    "size_scheme": ((str, type(None)), "a string or null", False),
    "trained_on": ((str,), "a string", False),
}


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """DataError naming ``path``, the field and its value for a field of ``config`` that a
    reader uses and that is missing (where needed) or of the wrong JSON type."""
    for name, (types, what, needed) in _CONFIG_FIELDS.items():
        if name not in config:
            if needed:
                raise DataError(f"{path}: missing field {name!r}")
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, types):  # a bool is an int in Python
            raise DataError(f"{path}: field {name!r} must be {what}, got {json.dumps(value)}")
    value_type = config.get("training", {}).get("value_type", "float32")
    if value_type not in VALUE_TYPES:
        raise DataError(
            f"{path}: field 'training.value_type' must be one of {list(VALUE_TYPES)}, got "
            f"{json.dumps(value_type)}"
        )


def _read_sizes(path: Path) -> SizeAssignment:
    """:meth:`SizeAssignment.load`, with a truncated or corrupt archive a DataError naming
    ``path``."""
    try:
        return SizeAssignment.load(path)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a readable size assignment file ({error})") from None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _read_json(run: Path, name: str) -> dict[str, Any]:
    path = run / name
    if not path.is_file():
        raise DataError(f"{run}: not a complete run directory, {name} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data
