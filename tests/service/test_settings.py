"""Settings: defaults < TOML file < environment < arguments, validation as one-line ConfigErrors,
the admin-token rule and the settings budget."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ciess_core.errors import ConfigError
from service.settings import (
    MIN_ADMIN_TOKEN_LENGTH,
    OTHER_VARIABLES,
    Settings,
    load_settings,
    unknown_variables,
)

REPOSITORY = Path(__file__).resolve().parents[2]

TOKEN = "t" * MIN_ADMIN_TOKEN_LENGTH


def test_precedence_is_defaults_file_environment_arguments(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text(
        'state_dir = "/srv/state"\nscorer_threads = 2\nmax_queued_jobs = 3\npoll_seconds = 0.5\n'
    )
    environ = {
        "CIESS_CONFIG": str(config),
        "CIESS_SCORER_THREADS": "4",
        "CIESS_MAX_QUEUED_JOBS": "5",
    }
    settings = load_settings(environ, max_queued_jobs=6)
    assert settings.max_body_bytes == Settings().max_body_bytes  # default
    assert settings.state_dir == Path("/srv/state")  # file
    assert settings.poll_seconds == 0.5  # file
    assert settings.scorer_threads == 4  # environment over file
    assert settings.max_queued_jobs == 6  # argument over environment over file
    assert settings.job_db_path == Path("/srv/state/jobs.sqlite3")


def test_an_explicit_config_file_and_environment_strings(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text(f'admin_token = "{TOKEN}"\ndev_mode = false\n')
    settings = load_settings(
        {"CIESS_DEV_MODE": "yes", "CIESS_ARTIFACT_DIR": "", "CIESS_RECIPE_FILE": "~/r.toml"},
        config_file=config,
    )
    assert settings.admin_token == TOKEN and TOKEN not in repr(settings)
    assert settings.dev_mode is True
    assert settings.artifact_dir is None  # an empty variable is "not set"
    assert settings.recipe_file == Path("~/r.toml").expanduser()


def test_none_arguments_are_not_given_and_other_variables_are_ignored() -> None:
    settings = load_settings(
        {"CIESS_STATE_DIR": "/a", "CIESS_ADMIN_TOKEN_FILE": "/x", "CIESS_NO_SUCH": "1"},
        artifact_dir=None,
    )
    assert settings.state_dir == Path("/a") and settings.artifact_dir is None
    assert load_settings({"CIESS_STATE_DIR": "/a"}, state_dir="/b").state_dir == Path("/b")


def test_settings_built_directly_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIESS_SCORER_THREADS", "7")
    assert Settings().scorer_threads == 1
    assert load_settings().scorer_threads == 7


@pytest.mark.parametrize(
    ("environ", "phrase"),
    [
        ({"CIESS_DEV_MODE": "maybe"}, "setting dev_mode = 'maybe' \\(from CIESS_DEV_MODE\\)"),
        ({"CIESS_SCORER_THREADS": "two"}, "setting scorer_threads = 'two'"),
        ({"CIESS_POLL_SECONDS": "0"}, "setting poll_seconds = '0' .*greater than 0"),
        ({"CIESS_MAX_BATCH_USERS": "1000000"}, "setting max_batch_users = '1000000'"),
        ({"CIESS_JOB_METHOD": "magic"}, "setting job_method = 'magic'.*'search' or 'equal'"),
        ({"CIESS_CONFIG": "/no/such/file.toml"}, "/no/such/file.toml .*does not exist"),
    ],
)
def test_bad_values_are_one_line_config_errors(environ: dict[str, str], phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase) as raised:
        load_settings(environ)
    assert "\n" not in str(raised.value) and "pydantic" not in str(raised.value)


def test_a_bad_file_value_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text("max_body_bytes = -1\n")
    with pytest.raises(ConfigError, match=f"max_body_bytes = -1 \\(from config file {config}\\)"):
        load_settings({}, config_file=config)
    config.write_text("max_body_bytes = \n")
    with pytest.raises(ConfigError, match=f"config file {config}: "):
        load_settings({}, config_file=config)


def test_unknown_file_keys_are_rejected_with_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text("admin_tokn = 'typo'\n")
    with pytest.raises(ConfigError, match=r"unknown setting admin_tokn; known: state_dir, .*"):
        load_settings({}, config_file=config)


def test_replace_validates() -> None:
    settings = Settings(poll_seconds=0.5)
    assert settings.replace(scorer_threads=3).scorer_threads == 3
    assert settings.replace(scorer_threads=3).poll_seconds == 0.5
    with pytest.raises(ConfigError, match="setting poll_seconds = 0 \\(from the arguments\\)"):
        settings.replace(poll_seconds=0)
    with pytest.raises(ConfigError, match="unknown setting worker_poll_seconds"):
        Settings(worker_poll_seconds=1)


def test_stale_jobs_are_60_polls_and_at_least_a_minute() -> None:
    assert Settings().stale_after_seconds == 60.0
    assert Settings(poll_seconds=0.2).stale_after_seconds == 60.0
    assert Settings(poll_seconds=5).stale_after_seconds == 300.0


def test_an_admin_token_of_32_characters_is_required_outside_dev_mode() -> None:
    with pytest.raises(ConfigError, match="CIESS_ADMIN_TOKEN"):
        Settings().require_admin_token()
    with pytest.raises(ConfigError, match="31 characters; at least 32"):
        Settings(admin_token="x" * 31).require_admin_token()
    with pytest.raises(ConfigError, match="only whitespace"):
        Settings(admin_token=" " * 40).require_admin_token()
    with pytest.raises(ConfigError) as raised:
        Settings(admin_token="secret-but-short").require_admin_token()
    assert "secret-but-short" not in str(raised.value)
    Settings(admin_token=TOKEN).require_admin_token()
    Settings(dev_mode=True).require_admin_token()
    Settings(dev_mode=True, admin_token="short").require_admin_token()


def test_at_most_15_settings() -> None:
    assert len(Settings.model_fields) <= 15


def test_each_setting_knows_where_its_value_came_from(tmp_path: Path) -> None:
    config = tmp_path / "ciess.toml"
    config.write_text("scorer_threads = 2\n")
    settings = load_settings({"CIESS_STATE_DIR": "/s"}, config_file=config, data_dir="/d")
    assert settings.origin("state_dir") == "CIESS_STATE_DIR"
    assert settings.origin("scorer_threads") == f"config file {config}"
    assert settings.origin("data_dir") == "the arguments"
    assert settings.origin("poll_seconds") == "the default"
    replaced = settings.replace(poll_seconds=2)
    assert replaced.origin("poll_seconds") == "the arguments"
    assert replaced.origin("state_dir") == "CIESS_STATE_DIR"


def test_unknown_variables_are_the_ciess_ones_that_nothing_reads() -> None:
    environ = {
        "CIESS_STAT_DIR": "x",  # a typo of a setting's variable
        "CIESS_WORKERS": "2",  # a flag, not a setting
        "CIESS_STATE_DIR": "s",
        "CIESS_ADMIN_TOKEN_FILE": "/run/secrets/token",  # read by docker/entrypoint.sh
        "CIESS_CONFIG": "/etc/ciess.toml",
        "STATE_DIR": "x",  # not ours
    }
    assert unknown_variables(environ) == [
        "CIESS_STAT_DIR (did you mean CIESS_STATE_DIR?)",
        "CIESS_WORKERS",
    ]


# Names that look like variables but are not: bench/serving.py's dict of servers.
_NOT_VARIABLES = {"CIESS_SERVERS"}
_READERS = ("ciess_core", "service", "scripts", "docker", "bench", "docker-compose.yml")


def test_no_ciess_variable_that_the_project_reads_is_unknown() -> None:
    """Every ``CIESS_*`` name in the code, scripts and docker files is a setting's variable or
    one of OTHER_VARIABLES, so that none is warned about at start."""
    names: set[str] = set()
    for reader in _READERS:
        root = REPOSITORY / reader
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                text = path.read_text(errors="replace")
                names |= set(re.findall(r"(?<![A-Za-z0-9_])CIESS_[A-Z0-9_]*[A-Z0-9]", text))
    names -= _NOT_VARIABLES
    assert "CIESS_ADMIN_TOKEN_FILE" in names and "CIESS_PORT" in names  # the scan finds them
    assert unknown_variables(dict.fromkeys(names, "")) == []
    assert names | {"CIESS_CONFIG"} >= OTHER_VARIABLES  # and none is listed without a reader
