"""Service settings: one frozen pydantic-settings model, built once from a TOML file and the
environment.

Precedence, lowest first: the defaults below, the TOML file named by ``CIESS_CONFIG`` (keys are the
field names), ``CIESS_<FIELD>`` environment variables (``CIESS_ADMIN_TOKEN``, ``CIESS_STATE_DIR``…),
then explicit overrides (the command line's flags). ``CIESS_DATA_DIR`` is the same variable the
command line uses. Other ``CIESS_*`` variables (``CIESS_CONFIG``, ``CIESS_ADMIN_TOKEN_FILE``…) are
not settings and are left alone; an unknown key in the file is an error, and
:func:`unknown_variables` names the ``CIESS_*`` variables that neither are settings nor are read
elsewhere in the project (:data:`OTHER_VARIABLES`), for ``ciess serve`` and ``ciess worker`` to warn
about (a mistyped name would otherwise be ignored without a word).

``Settings(...)`` itself is the defaults and its keywords alone (tests build it so); only
:func:`load_settings` reads the file and the environment. A value that is not valid is a
:class:`~ciess_core.errors.ConfigError` naming the setting, the value and where it came from, never
a pydantic traceback.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ciess_core.errors import ConfigError
from service.schemas import MAX_BATCH_USERS, MAX_ID_LENGTH

ENV_PREFIX = "CIESS_"
CONFIG_ENV = "CIESS_CONFIG"
MIN_ADMIN_TOKEN_LENGTH = 32
_STALE_POLLS = 60  # heartbeats a running job may miss before it is failed
DEFAULT_ORIGIN = "the default"

OTHER_VARIABLES = frozenset(
    {
        CONFIG_ENV,
        # docker/entrypoint.sh, docker/compose.secret.yml: the admin token from a file
        "CIESS_ADMIN_TOKEN_FILE",
        "CIESS_ADMIN_TOKEN_SECRET",
        # docker-compose.yml, docker/init-artifact.sh, docker/smoke-test.sh
        "CIESS_IMAGE_TAG",
        "CIESS_INIT_DATASET",
        "CIESS_INIT_TRAIN_ARGS",
        "CIESS_PORT",  # also scripts/run.sh
        "CIESS_RAY_ADDRESS",
        "CIESS_RAY_TOKEN",
        "CIESS_RECIPE_HOST_FILE",
        # scripts/setup.sh, scripts/run.sh, scripts/test.sh
        "CIESS_BUDGET",
        "CIESS_BUDGET_BYTES",
        "CIESS_EXTRAS",
        "CIESS_TORCH_SPEC",
        "CIESS_VENV",
        # bench/torch_server.py
        "CIESS_TORCH_RUN",
        "CIESS_TORCH_THREADS",
    }
)
"""``CIESS_*`` variables that are not settings but that other parts of the project read: never
reported by :func:`unknown_variables`."""


class Settings(BaseSettings):
    """Everything the API and the worker need (``CIESS_<FIELD>`` or ``field`` in the file)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", use_attribute_docstrings=True
    )

    state_dir: Path = Path("state")
    """The service's own folder: job store (``jobs.sqlite3``), artifacts written by jobs
    (``artifacts/<version>``), searches and the ``current.json`` pointer to the served artifact."""
    artifact_dir: Path | None = None
    """The artifact served while ``state_dir`` has no ``current.json`` yet (the first deployment);
    None to start without a model (not ready until one is promoted)."""
    data_dir: Path | None = None
    """Folder of the datasets that budget jobs retrain on (the dataset is the one the served
    artifact's manifest names)."""
    admin_token: str = Field(default="", repr=False)
    """Bearer token of the admin endpoints: at least 32 characters, required unless
    ``dev_mode``."""
    dev_mode: bool = False
    """Allow starting without an admin token, or with a short one (admin endpoints then open, or
    weakly guarded); never in production."""
    poll_seconds: Annotated[float, Field(gt=0)] = 1.0
    """How often the API checks ``current.json`` for a newly promoted model, an idle worker looks
    for a queued job, and a busy one writes its job's heartbeat and checks for cancellation."""
    scorer_threads: Annotated[int, Field(ge=0)] = 1
    """onnxruntime intra-op threads per scorer (1 suits many small requests; 0: onnxruntime's
    choice)."""
    job_method: Literal["search", "equal"] = "search"
    """How budget jobs choose sizes unless the request says: "search" (the product pipeline, as
    ``ciess search``) or "equal" (equal sizes under the same recipe; minutes)."""
    recipe_file: Path | None = None
    """A recipe file (the layout of ``ciess_core/recipes.toml``) overriding the shipped recipe for
    budget jobs, as ``ciess search --config`` does; None: the shipped recipe."""
    max_body_bytes: Annotated[int, Field(ge=1)] = 1_048_576
    """A request body larger than this is refused with 413 before anything (authentication, JSON
    parsing) reads it (:mod:`service.limits`)."""
    max_batch_users: Annotated[int, Field(ge=1, le=MAX_BATCH_USERS)] = 1000
    """User ids one batch request may name (422 beyond; at most
    ``service.schemas.MAX_BATCH_USERS``, which the schema checks first)."""
    max_id_length: Annotated[int, Field(ge=1, le=MAX_ID_LENGTH)] = 256
    """Characters of an external user or item id (422 beyond; at most
    ``service.schemas.MAX_ID_LENGTH``)."""
    max_queued_jobs: Annotated[int, Field(ge=1)] = 8
    """Queued jobs allowed at once; a new budget beyond is refused with 429."""
    keep_alive_timeout_seconds: Annotated[int, Field(ge=1)] = 5
    """An idle keep-alive connection is closed after this (uvicorn's ``timeout_keep_alive``)."""
    header_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    """A connection that has not sent a request's headers this long after it opened (or after
    the request's first byte) is closed (:func:`service.limits.with_header_timeout`): slow or
    silent clients cannot hold connections, and file descriptors, for ever."""

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, *, _origins: Mapping[str, str] | None = None, **values: Any) -> None:
        """The defaults and ``values``; ``_origins`` (setting -> where its value came from) is
        for :func:`load_settings`'s messages and :meth:`origin`.

        Raises:
            ConfigError: an unknown setting, or a value that is not valid.
        """
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError(_explain(error, values, _origins or {})) from None
        self._origins = dict(_origins or {})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The keywords alone: a test's Settings(...) must not depend on the caller's environment.
        # load_settings layers the file and the environment under them.
        return (init_settings,)

    @field_validator("artifact_dir", "data_dir", "recipe_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("state_dir", "artifact_dir", "data_dir", "recipe_file")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated like the original (``model_copy`` would not).

        Raises:
            ConfigError: a change that is not valid.
        """
        origins = {**self._origins, **dict.fromkeys(changes, "the arguments")}
        return type(self)(_origins=origins, **{**self.model_dump(), **changes})

    def origin(self, name: str) -> str:
        """Where setting ``name``'s value came from, for messages: ``CIESS_<NAME>``, ``config
        file <path>``, ``the arguments`` or :data:`DEFAULT_ORIGIN`."""
        return self._origins.get(name, DEFAULT_ORIGIN)

    @property
    def job_db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def current_pointer(self) -> Path:
        return self.state_dir / "current.json"

    @property
    def stale_after_seconds(self) -> float:
        """A running job whose heartbeat (written every ``poll_seconds``) is older than this is
        failed: 60 polls, and never less than a minute (60 s at the default poll)."""
        return max(60.0, _STALE_POLLS * self.poll_seconds)

    def require_admin_token(self) -> None:
        """Refuse to serve without an admin token of at least 32 characters, unless ``dev_mode``
        says so explicitly."""
        if self.dev_mode:
            return
        if not self.admin_token:
            raise ConfigError(
                "no admin token: set CIESS_ADMIN_TOKEN (or admin_token in the CIESS_CONFIG file); "
                "for local development only, CIESS_DEV_MODE=1 starts with open admin endpoints"
            )
        length = len(self.admin_token.strip())
        if length < MIN_ADMIN_TOKEN_LENGTH:
            what = "only whitespace" if length == 0 else f"{length} characters"
            raise ConfigError(
                f"setting admin_token: the admin token is {what}; at least "
                f"{MIN_ADMIN_TOKEN_LENGTH} are required outside development mode (for example "
                "`openssl rand -hex 32`)"
            )


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` by default)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The source looks names up lower-cased; only CIESS_* variables are candidates.
        return {
            name.lower(): value
            for name, value in self._environ.items()
            if name.startswith(ENV_PREFIX)
        }


def setting_variables() -> dict[str, str]:
    """Each setting's environment variable (``CIESS_<NAME>``) and the setting's name."""
    return {f"{ENV_PREFIX}{name.upper()}": name for name in Settings.model_fields}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``CIESS_*`` names in ``environ`` that are neither a setting's variable nor one of
    :data:`OTHER_VARIABLES`, sorted, each followed by the closest known name when one is close
    (``… (did you mean CIESS_STATE_DIR?)`` after a mistyped ``CIESS_STATE_DIR``)."""
    known = [*setting_variables(), *sorted(OTHER_VARIABLES)]
    # compared without the prefix, which every name shares
    stems = {name.removeprefix(ENV_PREFIX): name for name in known}
    unknown = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), stems, n=1)
        unknown.append(f"{name} (did you mean {stems[close[0]]}?)" if close else name)
    return unknown


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} (from ${CONFIG_ENV} or --config) does not exist")
    try:
        values: dict[str, Any] = TomlConfigSettingsSource(Settings, toml_file=path)()
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    return values


def _shown(name: str, value: Any) -> str:
    if name == "admin_token":
        return "(hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _explain(error: ValidationError, values: Mapping[str, Any], origins: Mapping[str, str]) -> str:
    """One line naming each bad setting, its value and where it came from."""
    known = ", ".join(Settings.model_fields)
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "?"
        origin = origins.get(name, "the arguments")
        if item["type"] == "extra_forbidden":
            problems.append(f"{origin}: unknown setting {name}; known: {known}")
        else:
            shown = _shown(name, values.get(name, item.get("input")))
            problems.append(f"setting {name} = {shown} (from {origin}): {item['msg']}")
    return "; ".join(problems)


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None, **overrides: Any
) -> Settings:
    """Settings from the defaults, the TOML file, the environment and ``overrides``, in that order.

    Args:
        environ: the environment to read (default ``os.environ``).
        config_file: the TOML file (default: ``$CIESS_CONFIG`` if set).
        overrides: field values that win over everything (the command line's flags); None is
            "not given".

    Raises:
        ConfigError: a missing or unreadable file, an unknown key in it, or a value that is not
            valid, naming the setting, the value and where it came from.
    """
    environment = os.environ if environ is None else environ
    path = config_file or (Path(environment[CONFIG_ENV]) if environment.get(CONFIG_ENV) else None)
    layers: list[tuple[str, Mapping[str, Any]]] = []  # lowest first; a later layer wins
    if path is not None:
        layers.append((f"config file {path}", _read_file(Path(path))))
    layers.append(("the environment", _Environment(Settings, environment)()))
    layers.append(("the arguments", {k: v for k, v in overrides.items() if v is not None}))
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, layer in layers:
        values.update(layer)
        for name in layer:
            origins[name] = f"{ENV_PREFIX}{name.upper()}" if origin == "the environment" else origin
    return Settings(_origins=origins, **values)
