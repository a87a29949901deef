"""The JSON form of config and records: one conversion for run folders, pipeline specs,
artifact manifests and benchmark rows (numpy only, so that the serving path can use it)."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any


def jsonable(value: Any) -> Any:
    """A JSON-ready copy of ``value``: enums by value, dataclasses and mappings to dicts (keys as
    strings), tuples and lists to lists, NaN and infinities to None (JSON has neither)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
