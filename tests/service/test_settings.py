"""Settings: defaults, TOML file, environment (in that order), validation, the token rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciess_core.errors import ConfigError
from service.settings import Settings, load_settings


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text('state_dir = "/srv/state"\nadmin_token = "from-file"\nscorer_threads = 2\n')
    settings = load_settings(
        {"CIESS_CONFIG": str(config), "CIESS_ADMIN_TOKEN": "from-env", "CIESS_DEV_MODE": "yes"}
    )
    assert settings.state_dir == Path("/srv/state")
    assert settings.admin_token == "from-env"
    assert settings.scorer_threads == 2
    assert settings.dev_mode is True
    assert settings.job_db_path == Path("/srv/state/jobs.sqlite3")
    assert "from-env" not in repr(settings)


def test_overrides_win_and_none_is_ignored() -> None:
    settings = load_settings({"CIESS_STATE_DIR": "/a"}, state_dir="/b", artifact_dir=None)
    assert settings.state_dir == Path("/b") and settings.artifact_dir is None


@pytest.mark.parametrize(
    ("environ", "phrase"),
    [
        ({"CIESS_DEV_MODE": "maybe"}, "not a boolean"),
        ({"CIESS_SCORER_THREADS": "two"}, "scorer_threads"),
        ({"CIESS_WORKER_POLL_SECONDS": "0"}, "must be > 0"),
        ({"CIESS_JOB_METHOD": "magic"}, "job_method"),
        ({"CIESS_CONFIG": "/no/such/file.toml"}, "does not exist"),
    ],
)
def test_bad_values_are_config_errors(environ: dict[str, str], phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_settings(environ)


def test_unknown_file_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text("admin_tokn = 'typo'\n")
    with pytest.raises(ConfigError, match="admin_tokn"):
        load_settings({}, config_file=config)


def test_an_admin_token_is_required_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="CIESS_ADMIN_TOKEN"):
        Settings().require_admin_token()
    Settings(dev_mode=True).require_admin_token()
    Settings(admin_token="x").require_admin_token()
