"""The ``ciess`` command line.

Configuration comes, in rising precedence, from the built-in defaults, a ``--config`` file (TOML or
JSON, keys named like the long flags with dashes or underscores) and the flags themselves. The data
directory can also come from ``CIESS_DATA_DIR``. User mistakes end in one ``error:`` line and exit
status 2, never a traceback.

Commands beyond the core's (``serve`` and ``worker``, from ``service/``) come from the entry points
of the group ``ciess.commands``: each loads a ``register(subparsers)`` that adds its parser and sets
its handler with ``set_defaults(handler=...)``. The core so never imports the service, and a command
whose module cannot be imported (its extra is not installed) is left out.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import tomllib

from ciess_core.cli_search import add_search_parser, run_search_command
from ciess_core.errors import CiessError, ConfigError

logger = logging.getLogger("ciess")

COMMANDS_GROUP = "ciess.commands"

Handler = Callable[[argparse.Namespace], int]

_TRAIN_DEFAULTS: dict[str, Any] = {
    "dataset": "ml-1m",
    "data_dir": None,
    "backbone": "lightgcn",
    "sizes": "full",
    "sparsity": None,
    "protocol": "clean",
    "out": None,
    "runs_dir": "runs",
    "seed": 42,
    "split_seed": 42,
    "device": "cpu",
    "batch_size": 10_000,
    "max_batches": 3_000,
    "learning_rate": 0.03,
    "eval_every": 200,
    "patience": 3,
    "weight_decay": None,
}


def _load_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist")
    text = file.read_text()
    try:
        values = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config file {file}: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {file}: expected a table of settings at the top level")
    normalised = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(normalised) - set(_TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"config file {file}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_TRAIN_DEFAULTS))}"
        )
    return normalised


def _add_train_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one backbone at a size assignment and write a run directory",
        description="Train a backbone (BPR) at full size, equal sizes (ES) or mixed random sizes "
        "(MR) at a target sparsity; writes config.json, metrics.json, history.jsonl, sizes.npy "
        "and model.pt to a run directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="TOML or JSON file with any of these settings")
    parser.add_argument(
        "--dataset",
        help="ml-1m, yelp2018 or a path to an interactions file "
        f"(default {_TRAIN_DEFAULTS['dataset']})",
    )
    parser.add_argument(
        "--data-dir", help="folder holding the datasets (default: $CIESS_DATA_DIR, then ./data)"
    )
    parser.add_argument("--backbone", choices=["lightgcn", "ngcf", "ncf"], help="default lightgcn")
    parser.add_argument(
        "--sizes",
        choices=["full", "equal", "random"],
        help="full width, equal sizes (ES) or mixed random (MR); default full",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        help="target sparsity c for equal/random, e.g. 0.9 keeps 10%% of the table",
    )
    parser.add_argument(
        "--protocol",
        choices=["clean", "reference"],
        help="clean: select on validation; reference: the authors' test-set "
        "selection, only for comparison with published numbers (default clean)",
    )
    parser.add_argument("--out", help="run directory to create (default runs/<name>-<time>)")
    parser.add_argument("--runs-dir", help="parent of generated run directories (default runs)")
    parser.add_argument("--seed", type=int, help="training seed (default 42)")
    parser.add_argument("--split-seed", type=int, help="50/25/25 split seed (default 42)")
    parser.add_argument("--device", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, help="users per BPR batch (default 10000)")
    parser.add_argument("--max-batches", type=int, help="training batches at most (default 3000)")
    parser.add_argument("--learning-rate", type=float, help="Adam's initial rate (default 0.03)")
    parser.add_argument("--eval-every", type=int, help="batches between evaluations (default 200)")
    parser.add_argument(
        "--patience", type=int, help="evaluations without gain before stopping (default 3)"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        help="L2 on the batch embeddings (default: the backbone's, 1e-3; 1e-4 for NCF)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _train(arguments: argparse.Namespace) -> int:
    # Imported here so that `ciess --help` stays fast and torch-free commands stay torch-free.
    from ciess_core.data import open_dataset, split_per_user
    from ciess_core.models import BackboneConfig, BackboneKind
    from ciess_core.runs import Protocol, RunSpec, execute_and_deploy, run_sizes, write_run
    from ciess_core.sizes import SizeScheme
    from ciess_core.training import TrainConfig

    given = vars(arguments)
    settings = dict(_TRAIN_DEFAULTS)
    if "config" in given:
        settings.update(_load_config_file(given["config"]))
    settings.update({k: v for k, v in given.items() if k in _TRAIN_DEFAULTS})
    progress = not given.get("no_progress", False)

    scheme = SizeScheme(settings["sizes"])
    if scheme is not SizeScheme.FULL and settings["sparsity"] is None:
        raise ConfigError(f"--sizes {scheme.value} needs --sparsity (for example 0.9)")
    overrides: dict[str, Any] = {}
    if settings["weight_decay"] is not None:
        overrides["weight_decay"] = settings["weight_decay"]
    backbone = BackboneConfig.default_for(BackboneKind(settings["backbone"]), **overrides)
    training = TrainConfig(
        batch_size=settings["batch_size"],
        max_batches=settings["max_batches"],
        learning_rate=settings["learning_rate"],
        eval_every=settings["eval_every"],
        patience=settings["patience"],
        seed=settings["seed"],
        device=settings["device"],
    )
    spec = RunSpec(
        dataset=settings["dataset"],
        backbone=backbone,
        training=training,
        size_scheme=scheme,
        target_sparsity=settings["sparsity"],
        protocol=Protocol(settings["protocol"]),
        split_seed=settings["split_seed"],
    )
    data = open_dataset(spec.dataset, settings["data_dir"])
    split = split_per_user(data, seed=spec.split_seed)
    sizes = run_sizes(spec, split.num_users + split.num_items)
    out = settings["out"]
    if out is None:
        label = Path(spec.dataset).stem if "/" in spec.dataset else spec.dataset
        suffix = "" if scheme is SizeScheme.FULL else f"-{settings['sparsity']}"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = (
            Path(settings["runs_dir"])
            / f"{label}-{backbone.kind.value}-{scheme.value}{suffix}-{stamp}"
        )
    out = Path(out)
    if out.exists():
        raise ConfigError(f"run directory {out} already exists; choose another --out")
    model, outcome, history = execute_and_deploy(spec, split, sizes, progress=progress)
    write_run(out, spec, split, data.fingerprint(), model, outcome, history)
    metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(outcome.test_metrics.items()))
    print(f"run: {out}")
    print(f"sparsity: {outcome.achieved_sparsity:.4f}  seconds: {outcome.seconds:.1f}")
    print(f"test ({spec.protocol.value}): {metrics}")
    return 0


def _add_export_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run directory as a versioned artifact",
        description="Rebuild the model of a run directory (config.json, model.pt, sizes.npy) on "
        "its dataset and write an artifact: manifest.json, ragged embedding stores, id maps, "
        "seen items and ONNX scoring graphs. The artifact is checked against the model before "
        "it is renamed into place.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by ciess train")
    parser.add_argument("--out", required=True, help="artifact directory to create")
    parser.add_argument(
        "--data-dir", help="folder holding the datasets (default: $CIESS_DATA_DIR, then ./data)"
    )
    parser.add_argument(
        "--float16", action="store_true", help="store embedding values as float16 (half the bytes)"
    )
    parser.add_argument(
        "--verify-users",
        type=int,
        default=256,
        help="users whose scores are compared with the model after writing (default 256)",
    )


def _export(arguments: argparse.Namespace) -> int:
    from ciess_core.artifact.export import ExportOptions, export_run
    from ciess_core.artifact.reader import load_artifact
    from ciess_core.artifact.summary import summarize
    from ciess_core.data import resolve_data_dir

    options = ExportOptions(
        value_dtype="float16" if arguments.float16 else "float32",
        verify_users=arguments.verify_users,
    )
    out = export_run(
        arguments.run_dir, arguments.out, resolve_data_dir(arguments.data_dir), options
    )
    print(summarize(load_artifact(out)))
    return 0


def _add_inspect_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="validate an artifact and summarise it",
        description="Validate every file of an artifact and print its budget, sparsity, size "
        "histograms, bytes on disk against the dense table, resident bytes and metrics.",
    )
    parser.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="artifact directory")
    parser.add_argument(
        "--plot", metavar="PNG", help="also write a size-by-popularity scatter plot to this PNG"
    )


def _inspect(arguments: argparse.Namespace) -> int:
    from ciess_core.artifact.reader import load_artifact
    from ciess_core.artifact.summary import plot_sizes, summarize

    artifact = load_artifact(arguments.artifact_dir)
    print(summarize(artifact))
    if arguments.plot:
        print(f"plot: {plot_sizes(artifact, Path(arguments.plot))}")
    return 0


@dataclass(frozen=True)
class _Plugins:
    """The installed ``ciess.commands`` entry points: ``(name, register)`` pairs in name order, and
    a ``"name (reason)"`` line for each one left out."""

    registers: tuple[tuple[str, Callable[[Any], None]], ...]
    skipped: tuple[str, ...]


@functools.cache
def _command_plugins() -> _Plugins:
    registers: dict[str, Callable[[Any], None]] = {}
    skipped: list[str] = []
    for entry_point in sorted(entry_points(group=COMMANDS_GROUP), key=lambda point: point.name):
        if entry_point.name in registers:  # argparse refuses a second parser of one name
            logger.warning("command %s twice; ignoring %s", entry_point.name, entry_point.value)
            continue
        try:
            registers[entry_point.name] = entry_point.load()
        except ImportError as error:  # the extra that provides it is not installed
            skipped.append(f"{entry_point.name} ({entry_point.value}: {error})")
    return _Plugins(tuple(registers.items()), tuple(skipped))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ciess",
        description="CIESS embedding compression: train, search sizes, export and serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train_parser(subparsers)
    _add_export_parser(subparsers)
    _add_inspect_parser(subparsers)
    add_search_parser(subparsers)
    for _, register in _command_plugins().registers:
        register(subparsers)
    return parser


_COMMANDS: dict[str, Handler] = {
    "train": _train,
    "export": _export,
    "inspect": _inspect,
    "search": run_search_command,
}


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_command(handler: Handler, arguments: argparse.Namespace) -> int:
    """Run one command the way every ``ciess`` program does: logging at INFO (DEBUG with
    ``arguments.verbose``), and a user mistake (:class:`CiessError`) as one ``error:`` line and
    exit status 2 instead of a traceback."""
    _configure_logging(getattr(arguments, "verbose", False))
    try:
        return handler(arguments)
    except CiessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    _configure_logging(arguments.verbose)
    # Logged here, once logging is set up, rather than where the plugin failed to load.
    for skipped in _command_plugins().skipped:
        logger.debug("command plugin left out: %s", skipped)
    if arguments.command is None:
        parser.print_help()
        return 2
    handler = _COMMANDS.get(arguments.command) or arguments.handler
    return run_command(handler, arguments)


if __name__ == "__main__":
    sys.exit(main())
