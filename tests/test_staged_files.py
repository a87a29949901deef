"""Files written whole or not at all (ciess_core.staged_files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ciess_core.staged_files import staged_file


class _StopError(Exception):
    pass


def test_a_finished_write_replaces_the_file_and_a_failed_one_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with staged_file(path) as staging:
        torch.save({"weights": torch.ones(3)}, staging)
        assert not path.exists()  # nothing there until the write is whole
    assert torch.load(path)["weights"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(_StopError), staged_file(path) as staging:
        torch.save({"weights": torch.zeros(3)}, staging)
        raise _StopError
    assert torch.load(path)["weights"].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no staging file left


def test_numpy_archives_through_a_handle_keep_the_name(tmp_path: Path) -> None:
    path = tmp_path / "sizes.npz"
    with staged_file(path) as staging, staging.open("wb") as handle:
        np.savez(handle, sizes=np.arange(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sizes.npz"]
    with np.load(path) as arrays:
        assert arrays["sizes"].tolist() == [0, 1, 2, 3]
