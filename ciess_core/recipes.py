"""Training recipes per dataset and backbone: the shipped file, a user's file, then flags.

A recipe is a flat table of settings (:data:`RECIPE_KEYS`). The shipped ``recipes.toml`` holds the
best configuration measured for each backbone and dataset; a user's ``--config`` file has the same
layout and overrides it; flags (and the service's settings) override both. Every command and
every budget job resolves its recipe here, so the same precedence holds everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from ciess_core.checks import MAX_SEED
from ciess_core.errors import ConfigError

__all__ = ["RECIPE_KEYS", "read_recipe_file", "resolve_recipe"]

#: Every key a recipe may set, with its type.
RECIPE_KEYS: dict[str, type] = {
    "learning_rate": float,
    "weight_decay": float,
    "max_batches": int,
    "eval_every": int,
    "patience": int,
    "batch_size": int,
    "seed": int,
    "episodes": int,
    "iterations": int,
    "reward_penalty": float,
    "supernet_batches": int,
}

#: The least value of each key (a learning rate must also be above 0), and the greatest seed:
#: checked where the value is read, so that a mistake names its file or flag.
RECIPE_MINIMA: dict[str, float] = {
    "learning_rate": 0.0,
    "weight_decay": 0.0,
    "max_batches": 1,
    "eval_every": 0,
    "patience": 1,
    "batch_size": 1,
    "seed": 0,
    "episodes": 1,
    "iterations": 1,
    "reward_penalty": 0.0,
    "supernet_batches": 1,
}

_SECTIONS = ("defaults", "backbones", "datasets")
FLAGS = "flags"  # the source of overrides: their errors name the flag


def read_recipe_file(path: Path | str) -> dict[str, Any]:
    """A recipe file (TOML, or JSON by its suffix) as a table, checked for unknown keys.

    A file may use the layered layout of the shipped ``recipes.toml`` or, for short files, set
    keys at its top level (they apply to every dataset and backbone, as ``[defaults]`` does).
    """
    file = Path(path)
    if file.is_dir():
        raise ConfigError(f"config file {file} is a folder; name a TOML or JSON file")
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {file} is not UTF-8 text ({error.reason} at byte "
                          f"{error.start}); name a TOML or JSON file") from None  # fmt: skip
    try:
        table = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {file}: {error}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"config file {file}: expected a table of settings at the top level")
    flat = {key: value for key, value in table.items() if key not in _SECTIONS}
    checked: dict[str, Any] = {
        "defaults": {
            **_checked(flat, str(file)),
            **_checked(
                _table(table.get("defaults", {}), f"{file} [defaults]"), f"{file} [defaults]"
            ),
        }
    }
    for section in ("backbones", "datasets"):
        checked[section] = {}
        for name, values in _table(table.get(section, {}), f"{file} [{section}]").items():
            where = f"{file} [{section}.{name}]"
            nested = _table(values, where)
            inner = _table(nested.pop("backbones", {}), where) if section == "datasets" else {}
            layer = _checked(nested, where)
            if inner:
                layer["backbones"] = {
                    backbone: _checked(_table(values, f"{where}.{backbone}"), f"{where}.{backbone}")
                    for backbone, values in inner.items()
                }
            checked[section][name] = layer
    return checked


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config file {where}: expected a table, got {value!r}")
    return dict(value)


def _checked(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` with dashes in keys read as underscores, each key known and well typed."""
    checked: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        kind = RECIPE_KEYS.get(key)
        if kind is None:
            raise ConfigError(
                f"config file {where}: unknown setting '{raw_key}'; known: "
                f"{', '.join(sorted(RECIPE_KEYS))}"
            )
        checked[key] = _coerce(key, value, kind, where)
    return checked


def _coerce(key: str, value: Any, kind: type, where: str) -> Any:
    """``value`` of ``key`` as ``kind``, within its limits; ``where`` names its source (a file
    and section, or ``flags``, which names the flag) in the error."""
    name = f"--{key.replace('_', '-')}" if where == FLAGS else f"config file {where}: '{key}'"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be a whole number, got {value}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value}")
    least = RECIPE_MINIMA[key]
    if value < least or (key == "learning_rate" and value <= least):
        relation = "above" if key == "learning_rate" else "at least"
        raise ConfigError(f"{name} must be {relation} {least:g}, got {value}")
    if key == "seed" and value > MAX_SEED:
        raise ConfigError(f"{name} must be at most {MAX_SEED}, got {value}")
    return int(value) if kind is int else float(value)


def _shipped() -> dict[str, Any]:
    source = resources.files("ciess_core").joinpath("recipes.toml")
    with resources.as_file(source) as path:
        return read_recipe_file(path)


def _layers(table: Mapping[str, Any], dataset: str, backbone: str) -> dict[str, Any]:
    """One file's settings for ``dataset`` and ``backbone``, its layers applied in order."""
    merged = dict(table.get("defaults", {}))
    merged.update(table.get("backbones", {}).get(backbone, {}))
    for_dataset = dict(table.get("datasets", {}).get(dataset, {}))
    inner = for_dataset.pop("backbones", {})
    merged.update(for_dataset)
    merged.update(inner.get(backbone, {}))
    return merged


def resolve_recipe(
    dataset: str,
    backbone: str,
    config_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings for ``dataset`` (a registered name or a path: its stem names its section)
    and ``backbone``: the shipped recipe, then ``config_file``'s, then ``overrides`` (None
    values are ignored, so unset flags fall through). Every key of :data:`RECIPE_KEYS` is set."""
    name = Path(dataset).stem.lower() if ("/" in dataset or "\\" in dataset) else dataset.lower()
    recipe = _layers(_shipped(), name, backbone)
    if config_file is not None:
        recipe.update(_layers(read_recipe_file(config_file), name, backbone))
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    recipe.update(_checked(given, FLAGS))
    missing = sorted(set(RECIPE_KEYS) - set(recipe))
    if missing:
        raise ConfigError(f"the recipe for {name}/{backbone} sets no {', '.join(missing)}")
    return recipe
