"""Domain errors, one module for all of them.

Every user-facing failure (bad file, bad config, bad artifact) raises one of these with a message
that names the offending file, line, field or value. The CLI turns them into a one-line error and a
non-zero exit; the service maps them to HTTP status codes in one place.
"""

from __future__ import annotations


class CiessError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(CiessError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


class DataError(CiessError, ValueError):
    """An input data file is missing or malformed."""


class ArtifactError(CiessError, ValueError):
    """An exported artifact is missing, corrupt or of an unknown schema version."""
