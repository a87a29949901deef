"""Files written whole or not at all: through a staging file beside the target, renamed over it.

A reader (a resumed pipeline, another worker) sees the old file or the new one, never half of
one; a write that fails leaves the old file as it was and no staging file behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """The staging path ``<path>.tmp`` to write; on leaving without an error it replaces
    ``path`` (an atomic rename), after an error it is removed.

    For ``numpy.savez``, which appends ``.npz`` to a name without it, write to an open handle:
    ``with staged_file(path) as staging, staging.open("wb") as handle: np.savez(handle, ...)``.
    """
    path = Path(path)
    staging = path.with_name(path.name + ".tmp")
    try:
        yield staging
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, path)
