"""Service settings: one frozen dataclass, built once from a TOML file and the environment.

Precedence, lowest first: the defaults below, the TOML file named by ``CIESS_CONFIG`` (keys are the
field names), then ``CIESS_<FIELD>`` environment variables (``CIESS_ADMIN_TOKEN``,
``CIESS_STATE_DIR``…). ``CIESS_DATA_DIR`` is the same variable the command line uses.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ciess_core.errors import ConfigError
from service.schemas import MAX_BATCH_USERS, MAX_ID_LENGTH

ENV_PREFIX = "CIESS_"
CONFIG_ENV = "CIESS_CONFIG"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Everything the API and the worker need.

    Attributes:
        state_dir: the service's own folder: job store, artifacts written by jobs
            (``artifacts/<version>``), searches and the ``current.json`` pointer to the served
            artifact.
        artifact_dir: the artifact served when ``state_dir`` has no ``current.json`` yet (the
            first deployment); None to start without a model (not ready until one is promoted).
        data_dir: folder of the datasets that budget jobs retrain on (default: $CIESS_DATA_DIR).
        dataset: dataset name or file the jobs load; None: the one the served artifact records.
        admin_token: bearer token of the admin endpoints; required unless ``dev_mode``.
        dev_mode: allow starting without an admin token (admin endpoints then open); never in
            production.
        job_db: SQLite file of the job store (default ``state_dir/jobs.sqlite3``).
        worker_poll_seconds: how often an idle worker looks for a queued job and a busy one
            checks for cancellation and writes its heartbeat.
        model_poll_seconds: how often the API checks ``current.json`` for a newly promoted model.
        stale_after_seconds: a running job whose heartbeat is older than this is failed.
        scorer_threads: onnxruntime intra-op threads per scorer (1 suits many small requests).
        fast_path: answer plain single-user top-k requests ahead of FastAPI's routing
            (:mod:`service.fast_path`; same answers, a fraction of the CPU).
        batch_requests: rank the fast path's requests of one event-loop turn as one batch
            (:mod:`service.batching`; same rankings, less CPU per request under load).
        job_method: how budget jobs choose sizes unless the request says: "search" (the
            product pipeline: CIESS and per-side equal sizes, retrained, chosen on validation,
            as ``ciess search``) or "equal" (equal sizes under the same recipe; minutes).
        recipe_file: a recipe file (the layout of ``ciess_core/recipes.toml``) overriding the
            shipped recipe for budget jobs, as ``ciess search --config`` does; None: shipped.
        max_body_bytes: a request body larger than this is refused with 413 before anything
            (authentication, JSON parsing) reads it (:mod:`service.limits`).
        max_batch_users: user ids one batch request may name (422 beyond; at most
            ``service.schemas.MAX_BATCH_USERS``, which the schema checks first).
        max_id_length: characters of an external user or item id (422 beyond; at most
            ``service.schemas.MAX_ID_LENGTH``).
        max_queued_jobs: queued jobs allowed at once; a new budget beyond is refused with 429.
        keep_alive_timeout_seconds: an idle keep-alive connection is closed after this
            (uvicorn's ``timeout_keep_alive``).
        header_timeout_seconds: a connection that has not sent a request's headers this long
            after it opened (or after the request's first byte) is closed
            (:func:`service.limits.with_header_timeout`): slow or silent clients cannot hold
            connections, and file descriptors, for ever.
    """

    state_dir: Path = Path("state")
    artifact_dir: Path | None = None
    data_dir: Path | None = None
    dataset: str | None = None
    admin_token: str = field(default="", repr=False)
    dev_mode: bool = False
    job_db: Path | None = None
    worker_poll_seconds: float = 1.0
    model_poll_seconds: float = 1.0
    stale_after_seconds: float = 60.0
    scorer_threads: int = 1
    fast_path: bool = True
    batch_requests: bool = True
    job_method: str = "search"
    recipe_file: Path | None = None
    max_body_bytes: int = 1_048_576
    max_batch_users: int = 1000
    max_id_length: int = 256
    max_queued_jobs: int = 8
    keep_alive_timeout_seconds: int = 5
    header_timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "worker_poll_seconds",
            "model_poll_seconds",
            "stale_after_seconds",
            "header_timeout_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name} must be > 0, got {getattr(self, name)}")
        for name in (
            "max_body_bytes",
            "max_queued_jobs",
            "keep_alive_timeout_seconds",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name} must be >= 1, got {getattr(self, name)}")
        for name, ceiling in (
            ("max_batch_users", MAX_BATCH_USERS),
            ("max_id_length", MAX_ID_LENGTH),
        ):
            if not 1 <= getattr(self, name) <= ceiling:
                raise ConfigError(
                    f"setting {name} must lie in [1, {ceiling}], got {getattr(self, name)}"
                )
        if self.scorer_threads < 0:
            raise ConfigError(f"setting scorer_threads must be >= 0, got {self.scorer_threads}")
        if self.job_method not in ("equal", "search"):
            raise ConfigError(
                f"setting job_method must be 'equal' or 'search', got {self.job_method!r}"
            )

    @property
    def job_db_path(self) -> Path:
        return self.job_db if self.job_db is not None else self.state_dir / "jobs.sqlite3"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def current_pointer(self) -> Path:
        return self.state_dir / "current.json"

    def require_admin_token(self) -> None:
        """Refuse to serve without an admin token, unless ``dev_mode`` says so explicitly."""
        if not self.admin_token and not self.dev_mode:
            raise ConfigError(
                "no admin token: set CIESS_ADMIN_TOKEN (or admin_token in the CIESS_CONFIG file); "
                "for local development only, CIESS_DEV_MODE=1 starts with open admin endpoints"
            )


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _convert(name: str, value: Any) -> Any:
    """``value`` (a TOML value or an environment string) as the type of field ``name``."""
    kind = str(_FIELDS[name].type)
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in _TRUE | _FALSE:
                raise ValueError(f"not a boolean: {value!r}")
            return text in _TRUE
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if "Path" in kind:
            return None if value in (None, "") else Path(str(value)).expanduser()
        if kind == "str | None":
            return None if value in (None, "") else str(value)
        return str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"setting {name}: {error}") from None


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} (from ${CONFIG_ENV}) does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    normalised = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(normalised) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_FIELDS))}"
        )
    return normalised


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None, **overrides: Any
) -> Settings:
    """Settings from the defaults, the TOML file, the environment and ``overrides``, in that order.

    Args:
        environ: the environment to read (default ``os.environ``).
        config_file: the TOML file (default: ``$CIESS_CONFIG`` if set).
        overrides: field values that win over everything (the command line's flags).
    """
    environment = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or (Path(environment[CONFIG_ENV]) if environment.get(CONFIG_ENV) else None)
    if path is not None:
        values.update(_read_file(Path(path)))
    for name in _FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in environment:
            values[name] = environment[variable]
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    return Settings(**{name: _convert(name, value) for name, value in values.items()})
