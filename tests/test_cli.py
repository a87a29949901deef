"""The command line: real runs on a tiny generated file, and clean errors for user mistakes."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from ciess_core import cli
from ciess_core.cli import main
from ciess_core.cli_search import DEFAULT_BYTE_BUDGETS
from ciess_core.errors import ConfigError
from ciess_core.pipeline import pipeline_spec
from ciess_core.run_folder import read_run
from ciess_core.search.budgets import ByteBudget
from ciess_core.search.files import BudgetFolder
from ciess_core.search.shared_stages import COPIED_STAGES_FILE, SHARED_STAGES
from ciess_core.sizes import SizeAssignment
from ciess_core.storage import VALUE_TYPES
from ciess_core.training.config import MIN_LEARNING_RATE
from tests.conftest import clustered_interactions


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = clustered_interactions(num_users=60, num_items=60)
    path = tmp_path_factory.mktemp("data") / "pairs.txt"
    lines = [
        f"{data.external_user_ids[u]} {data.external_item_ids[i]}"
        for u, i in zip(data.user_ids, data.item_ids, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_train_recipe(folder: Path) -> Path:
    """A recipe file for a few quick batches."""
    path = folder / "tiny-train.toml"
    path.write_text("max_batches = 20\neval_every = 10\nbatch_size = 128\n")
    return path


def test_train_writes_a_complete_run_directory(
    pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            str(pairs_file),
            "--sizes",
            "equal",
            "--sparsity",
            "0.9",
            "--config",
            str(tiny_train_recipe(tmp_path)),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "metrics.json",
        "history.jsonl",
        "sizes.npz",
        "model.pt",
    }
    run = read_run(out)
    metrics, config = run.metrics, run.config
    assert metrics["protocol"] == "clean"
    assert metrics["achieved_sparsity"] == pytest.approx(1 - 13 / 128)
    assert set(metrics["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    assert set(metrics["valid_by_value_type"]) == set(VALUE_TYPES)  # for budget changes
    assert run.sizes == SizeAssignment.equal(60, 60, 13, 128)
    assert config["size_scheme"] == "equal" and config["backbone"]["kind"] == "lightgcn"
    assert "test (clean)" in capsys.readouterr().out


def test_train_settings_from_a_recipe_file_then_flags(pairs_file: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        "max-batches = 5\neval-every = 5\nbatch-size = 64\n"
        "[backbones.ncf]\nlearning_rate = 0.005\nweight_decay = 1e-5\n"
    )
    out = tmp_path / "run"
    arguments = ["train", "--dataset", str(pairs_file), "--backbone", "ncf", "--sizes", "random"]
    arguments += ["--sparsity", "0.8", "--config", str(recipe), "--weight-decay", "2e-5"]
    assert main([*arguments, "--out", str(out), "--no-progress"]) == 0
    run = read_run(out)
    assert run.sizes.sparsity >= 0.8
    config = run.config
    assert config["backbone"]["kind"] == "ncf"
    assert config["training"]["batch_size"] == 64 and config["training"]["learning_rate"] == 0.005
    assert config["backbone"]["weight_decay"] == 2e-5  # the flag wins over the file


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--dataset", "nowhere.txt"], "nowhere.txt"),
        (["train", "--sizes", "equal"], "needs --sparsity"),
        (["train", "--sizes", "equal", "--sparsity", "1.5"], "target sparsity"),
        (["train", "--config", "missing.toml"], "missing.toml"),
        (["search", "--budgets", "0.8,abc"], "--budgets"),
        (["search", "--learning-rate", "-1"], "--learning-rate must be above 0, got -1.0"),
        (["search", "--seed", "-1"], "--seed must be at least 0, got -1"),
        (["train", "--seed", str(2**70)], "--seed must be at most 4294967295"),
        (["search", "--device", "cudax"], "device must be 'cpu', 'cuda' or 'cuda:N', got 'cudax'"),
        (["search", "--device", "cuda:99"], "device 'cuda:99' was asked for but this machine"),
        (["search", "--budget-bytes", "nan"], "--budget-bytes nan: a budget is a ratio"),
        (["search", "--config", "missing.toml"], "missing.toml"),
    ],
)
def test_user_mistakes_end_in_one_error_line(
    arguments: list[str], message: str, pairs_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = (
        []
        if "--dataset" in arguments or arguments[0] == "search"
        else ["--dataset", str(pairs_file)]
    )
    quiet = [] if arguments[0] == "search" else ["--no-progress"]  # search: bars on a terminal
    assert main([*arguments, *extra, *quiet]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["search", "--budget-bytes", "0"], "--budget-bytes 0: a budget is a ratio"),
        (["search", "--budget-bytes", "0.05,-3"], "--budget-bytes -3: a budget is a ratio"),
        (["search", "--budget-bytes", "5%"], "--budget-bytes must be comma-separated numbers"),
        (
            ["search", "--budget-bytes", "0.05,1.5"],
            "--budget-bytes 1.5: a value above 1 is a number",
        ),
        (["search", "--workers", "0"], "--workers: at least 1 process, got 0"),
        (["export", "nowhere-run", "--out", "x"], "run directory nowhere-run does not exist"),
        (["train", "--sparsity", "0.9"], "--sparsity needs --sizes equal or random"),
        (["train", "--out", "."], "--out . already exists; choose another"),
        (["export", ".", "--out", "."], "--out . already exists; choose another"),
        (["inspect", "nowhere", "--plot", "sizes.txt"], "the format comes from the suffix"),
    ],
)
def test_a_mistaken_flag_is_named_before_any_data_is_looked_for(
    arguments: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no data folder either, the error is the flag's: one round of fixes per mistake,
    and no dataset read for a command that cannot run."""
    monkeypatch.setenv("CIESS_DATA_DIR", str(tmp_path / "no-data-here"))
    monkeypatch.chdir(tmp_path)
    code: int | str | None
    try:
        code = main(arguments)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and "no-data-here" not in error
    assert "Traceback" not in error


def test_a_refused_search_leaves_no_folder_and_a_bad_output_no_lost_training(
    pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What can be refused is refused before anything is written or trained: the corrected
    command then runs in the same folder."""
    out = tmp_path / "search"
    for mistake in (["--seed", "-1"], ["--device", "cuda:99"], ["--executor", "ray"]):
        if mistake[0] == "--executor" and importlib.util.find_spec("ray") is not None:
            continue  # installed: nothing to refuse
        assert main(["search", "--dataset", str(pairs_file), "--out", str(out), *mistake]) == 2
        assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("")
    for command in (
        ["train", "--dataset", str(pairs_file), "--out", str(afile / "run")],
        ["export", str(tmp_path), "--out", str(afile / "artifact")],
        ["inspect", str(tmp_path), "--plot", str(afile / "sizes.png")],
    ):
        assert main(command) == 2
        assert f"{afile} is a file, not a folder" in capsys.readouterr().err


def test_config_files_that_are_no_text_or_a_folder_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "recipe.toml"
    binary.write_bytes(bytes(range(128, 256)))
    assert main(["train", "--config", str(binary)]) == 2
    assert f"config file {binary} is not UTF-8 text" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder" in capsys.readouterr().err
    zero = tmp_path / "zero.toml"
    zero.write_text("episodes = 0\n")
    assert main(["search", "--config", str(zero)]) == 2
    assert f"config file {zero}: 'episodes' must be at least 1, got 0" in capsys.readouterr().err


def test_a_learning_rate_below_the_schedules_floor_lowers_the_floor() -> None:
    spec = pipeline_spec("ml-1m", "lightgcn", overrides={"learning_rate": 0.0005})
    assert spec.training.learning_rate == spec.training.min_learning_rate == 0.0005
    assert pipeline_spec("ml-1m", "lightgcn").training.min_learning_rate == MIN_LEARNING_RATE


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("ciess ")


def test_bad_config_file_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "run.toml"
    settings.write_text("learning_rat = 0.1\n")
    assert main(["train", "--config", str(settings)]) == 2
    assert "learning_rat" in capsys.readouterr().err


def _register_hello(subparsers: Any) -> None:
    """A ``ciess.commands`` plugin whose command fails the way a user mistake does."""

    def hello(arguments: argparse.Namespace) -> int:
        raise ConfigError(f"hello {arguments.name} is not configured")

    parser = subparsers.add_parser("hello", help="say hello")
    parser.add_argument("name")
    parser.set_defaults(handler=hello)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``hello`` (above) and ``broken`` (its module does not exist) as the installed plugins."""
    installed = [
        EntryPoint("hello", "tests.test_cli:_register_hello", cli.COMMANDS_GROUP),
        EntryPoint("broken", "ciess_no_such_module:register", cli.COMMANDS_GROUP),
    ]
    monkeypatch.setattr(cli, "entry_points", lambda group: installed)
    cli._command_plugins.cache_clear()
    yield
    cli._command_plugins.cache_clear()


def test_plugin_commands_run_like_the_core_ones(
    plugins: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ciess")
    assert main(["-v", "hello", "world"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: hello world is not configured")
    assert "Traceback" not in error
    # A plugin that cannot be imported (its extra is missing) is left out, with a debug line.
    assert "command plugin left out: broken (ciess_no_such_module:register" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "hello" in usage and "broken" not in usage


TINY_RECIPE = """
episodes = 2
iterations = 2
supernet_batches = 10
max_batches = 10
eval_every = 5
"""


def test_search_help_lists_at_most_sixteen_options(capsys: pytest.CaptureFixture[str]) -> None:
    # the recipe's flags, the budgets in sparsity or in bytes, and the run's own: no more
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    usage = capsys.readouterr().out
    options = {word.rstrip(",") for word in usage.split() if word.startswith("--")}
    assert len(options | {"-h"}) <= 16


def test_search_runs_end_to_end_and_resumes(
    pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "search"
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    arguments = [
        "search",
        "--dataset",
        str(pairs_file),
        "--budgets",
        "0.9",
        "--out",
        str(out),
        "--config",
        str(recipe),
    ]
    assert main(arguments) == 0
    assert "budget 0.9: sparsity" in capsys.readouterr().out
    sizes = BudgetFolder.of(out, 0.9).chosen()
    assert sizes.sparsity >= 0.9
    assert (out / "search-trace.png").stat().st_size > 0 and (out / "sizes-0.9.png").exists()
    spec = json.loads((out / "spec.json").read_text())
    assert spec["training"]["max_batches"] == 10 and spec["protocol"] == "clean"
    assert spec["distillation"]["teacher"] == "phase" and spec["equal_candidate"] is True
    # The chosen model, trained on all interactions, is a run directory that exports.
    run = BudgetFolder.of(out, 0.9).run
    stored = read_run(run)
    assert stored.sizes == sizes
    config = stored.config
    assert config["size_scheme"] in {"ciess", "equal"} and config["trained_on"].startswith("all")
    assert "deploy" in stored.metrics["stages"]
    artifact = tmp_path / "artifact"
    assert main(["export", str(run), "--out", str(artifact), "--data-dir", str(tmp_path)]) == 0
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["achieved_sparsity"] >= 0.9
    assert main(arguments) == 0  # resumes: every stage is already done
    # A flag that changes the recipe is refused on a folder of another recipe.
    assert main([*arguments, "--max-batches", "3"]) == 2
    assert "training.max_batches: " in capsys.readouterr().err  # names what differs
    assert json.loads((out / "summary.json").read_text())["workers"] == 2  # the default
    # With one worker every stage runs in this process, one after another; the sizes are the same.
    sequential = tmp_path / "apart" / "sequential"  # not beside `out`: trains every stage
    assert main([*arguments[:6], str(sequential), *arguments[7:], "--workers", "1"]) == 0
    assert json.loads((sequential / "summary.json").read_text())["workers"] == 1
    assert read_run(BudgetFolder.of(sequential, 0.9).run).sizes == sizes


@pytest.mark.parametrize("budget", ["10", "0.05,0.00001"], ids=["bytes", "a ratio"])
def test_a_byte_budget_below_the_smallest_store_is_refused_before_any_training(
    budget: str, pairs_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No value type keeps one value per entity in the budget: one error line that names the
    smallest store's bytes, and no folder made."""
    out = tmp_path / "search"
    command = ["search", "--dataset", str(pairs_file), "--out", str(out), "--budget-bytes", budget]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: byte budget ") and "Traceback" not in error
    assert "cannot keep one value for each of the" in error
    assert "the smallest store, int4-table with one value a row, takes" in error
    assert not out.exists()


def test_search_plans_byte_budgets_by_default_and_exports_a_pick_within_the_bytes(
    pairs_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "search"
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    common = ["search", "--dataset", str(pairs_file), "--out", str(out), "--config", str(recipe)]
    assert main([*common, "--budget-bytes", "0.05,x"]) == 2
    assert "--budget-bytes must be comma-separated numbers" in capsys.readouterr().err
    assert main(common) == 0  # no budget named: the default byte budgets
    printed = capsys.readouterr().out
    for ratio in DEFAULT_BYTE_BUDGETS.split(","):
        assert f"budget bytes-{ratio}: sparsity" in printed
    assert " bytes  test R@20" in printed and "budget 0." not in printed
    assert json.loads((out / "spec.json").read_text())["byte_ratios"] == [0.1, 0.05, 0.025]
    # Another budget in a folder beside it starts at its search: no budget changes the rest.
    beside = tmp_path / "search-0.01"
    assert main([*common[:4], str(beside), *common[5:], "--budget-bytes", "0.01"]) == 0
    copied = json.loads((beside / COPIED_STAGES_FILE).read_text())
    assert copied == {stage: str(out) for stage in SHARED_STAGES}
    assert (beside / "full" / "model.pt").read_bytes() == (out / "full" / "model.pt").read_bytes()
    result = json.loads((out / "bytes-0.05" / "result.json").read_text())
    artifact = tmp_path / "artifact"
    run = out / "bytes-0.05" / "run"
    # A dataset given as a file is found as the search found it: no data folder needed.
    monkeypatch.setenv("CIESS_DATA_DIR", str(tmp_path / "no-data-here"))
    assert main(["export", str(run), "--out", str(artifact)]) == 0
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["value_dtype"] == result["value_type"]  # exported as it was selected
    assert manifest["memory"]["stored"] <= 0.05 * manifest["memory"]["dense"]
    rows, tables = manifest["num_users"] + manifest["num_items"], len(manifest["tables"])
    allowed = ByteBudget(0.05).allowed_bytes(rows, manifest["max_size"], tables)
    assert manifest["budget_bytes"] == read_run(run).config["budget_bytes"] == allowed


def test_train_on_a_lightgcn_folder(tmp_path: Path) -> None:
    data = clustered_interactions(num_users=60, num_items=60)
    folder = tmp_path / "lightgcn"
    folder.mkdir()
    csr = data.to_csr()
    for name, half in (("train.txt", slice(0, 7)), ("test.txt", slice(7, None))):
        lines = [" ".join(map(str, [u, *csr[u].indices[half]])) for u in range(data.num_users)]
        (folder / name).write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    arguments = ["train", "--dataset", str(folder), "--config", str(tiny_train_recipe(tmp_path))]
    assert main([*arguments, "--out", str(out), "--no-progress"]) == 0
    assert read_run(out).sizes.num_entities == 60 + 60
