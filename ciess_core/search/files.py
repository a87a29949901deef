"""Stage files of the pipeline: finished stages are read back, results written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_cached(path: Path) -> dict[str, Any] | None:
    """The result a finished stage left in ``path``, if it did."""
    if not path.exists():
        return None
    cached: dict[str, Any] = json.loads(path.read_text())
    return cached


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a staging file, so that a reader never sees half."""
    staging = path.with_suffix(path.suffix + ".tmp")
    staging.write_text(json.dumps(value, indent=1) + "\n")
    staging.replace(path)
