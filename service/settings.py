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
        job_max_batches: BPR batches of a job's training (upper bound; early stopping applies).
        job_batch_size: users per BPR batch in a job.
        job_eval_every: batches between validation evaluations in a job (0: never).
        job_method: how jobs choose sizes unless the request says: "equal" (ES sizes) or
            "search" (the CIESS pipeline, with the small settings below).
        search_episodes: episodes of a job's search.
        search_iterations: iterations per episode of a job's search.
        search_supernet_batches: supernet training batches of a job's search.
        search_fit_shares: refit the search's assignment to the budget with the users' share
            of it chosen on validation before retraining (``ciess search --fit-shares``; in
            docs/benchmarks/ciess-ml-1m.md it lifts the search's result at every budget).
        search_equal_candidate: a search job also retrains per-side equal sizes (share-fitted
            when ``search_fit_shares`` is on) and keeps whichever the validation pick prefers
            (``ciess search --equal-candidate``): a searched assignment that retrains worse than
            equal sizes is never served. Costs one more retraining per job.
        search_even_tolerance: with ``search_fit_shares``, share-fit variants scoring within
            this relative tolerance of the best count as tied, and the evenest is retrained
            (``ciess search --even-tolerance``; 0: off). The supernet over-rates uneven sizes
            by about 0.2–0.3 % (docs/benchmarks/ciess-ml-1m.notes.md, sessions 13 and 15).
        search_fit_spread: with ``search_fit_shares``, the fit also tries each side's spread of
            sizes shrunk towards its mean (``ciess search --fit-spread``).
        search_selection_share: with ``search_fit_shares``, the fraction of every user's
            validation interactions held out from the search, on which the fits score
            (``ciess search --selection-share``; 0: off). The search fits its sizes to the
            validation it is rewarded on, noise included (notes, session 16).
        job_distill: a job's final model also learns from a full-size model of the same data
            (the search's own full model, or one trained for the job on the search split):
            :mod:`ciess_core.training.distillation`, ``ciess search --distill``. In
            docs/benchmarks/ciess-ml-1m.md it lifts ES by 6–12 % N@20 at 80–95 % sparsity; it
            costs one full-size training per equal-sizes job.
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
    job_max_batches: int = 3000
    job_batch_size: int = 10_000
    job_eval_every: int = 200
    job_method: str = "equal"
    search_episodes: int = 30
    search_iterations: int = 10
    search_supernet_batches: int = 3000
    search_fit_shares: bool = False
    search_equal_candidate: bool = False
    search_even_tolerance: float = 0.0
    search_fit_spread: bool = False
    search_selection_share: float = 0.0
    job_distill: bool = False

    def __post_init__(self) -> None:
        for name in ("worker_poll_seconds", "model_poll_seconds", "stale_after_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name} must be > 0, got {getattr(self, name)}")
        for name in ("job_max_batches", "job_batch_size", "search_episodes", "search_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name} must be >= 1, got {getattr(self, name)}")
        if self.scorer_threads < 0 or self.job_eval_every < 0:
            raise ConfigError("settings scorer_threads and job_eval_every must be >= 0")
        if not 0.0 <= self.search_even_tolerance < 1.0:
            tolerance = self.search_even_tolerance
            raise ConfigError(f"setting search_even_tolerance must lie in [0, 1), got {tolerance}")
        if not 0.0 <= self.search_selection_share < 1.0:
            share = self.search_selection_share
            raise ConfigError(f"setting search_selection_share must lie in [0, 1), got {share}")
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
