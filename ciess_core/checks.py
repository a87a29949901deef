"""Checks that several frozen configs share: device names and seeds (torch-free, so that a recipe
file is checked without loading torch)."""

from __future__ import annotations

import re

from ciess_core.errors import ConfigError

#: Seeds every generator accepts (numpy's legacy seeding stops at 2**32 - 1).
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


def check_device(device: str) -> None:
    """Refuse a device other than ``cpu``, ``cuda`` and ``cuda:N`` (a ConfigError naming it)."""
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got '{device}'")


def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed outside [0, :data:`MAX_SEED`] (a ConfigError naming ``name``)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{name} must lie in [0, {MAX_SEED}], got {seed}")
