"""The ``ciess`` command line.

Training settings come, in rising precedence, from the shipped recipe for the dataset and backbone
(``ciess_core/recipes.toml``), a ``--config`` recipe file of the same layout and the flags; the
data directory can also come from ``CIESS_DATA_DIR``. User mistakes end in one ``error:`` line and
exit status 2, never a traceback.

Commands beyond the core's (``serve`` and ``worker``, from ``service/``) come from the entry points
of the group ``ciess.commands``: each loads a ``register(subparsers)`` that adds its parser and sets
its handler with ``set_defaults(handler=...)``. The core so never imports the service, and a command
whose module cannot be imported (its extra is not installed) is left out.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

from ciess_core.cli_search import (
    DATA_DIR_HELP,
    add_dataset_arguments,
    add_recipe_arguments,
    add_search_parser,
    recipe_spec,
    run_search_command,
    whole_number,
)
from ciess_core.errors import CiessError, ConfigError
from ciess_core.storage import VALUE_TYPES

logger = logging.getLogger("ciess")

COMMANDS_GROUP = "ciess.commands"

Handler = Callable[[argparse.Namespace], int]


def _add_train_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one backbone at a size assignment and write a run directory",
        description="Train a backbone (BPR) at full size, equal sizes (ES) or mixed random sizes "
        "(MR) at a target sparsity under the clean protocol (select the batch count on "
        "validation, test once), then train the model to serve on every interaction; writes "
        "config.json, metrics.json, history.jsonl, sizes.npz and model.pt to a run directory. "
        "Training settings come from the shipped recipe for the dataset and backbone, then "
        "--config, then the flags.",
    )
    add_dataset_arguments(parser)
    parser.add_argument(
        "--sizes",
        default="full",
        choices=["full", "equal", "random"],
        help="full width, equal sizes (ES) or mixed random sizes (MR) (default full)",
    )
    parser.add_argument(
        "--sparsity", type=float, help="target sparsity for equal/random, e.g. 0.9 keeps 10%%"
    )
    parser.add_argument("--out", help="run directory to create (default runs/<name>-<time>)")
    add_recipe_arguments(parser, batches="cap on the training's batches", seed="training seed")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _train(arguments: argparse.Namespace) -> int:
    # Imported here so that `ciess --help` stays fast and torch-free commands stay torch-free.
    from ciess_core.pipeline import SPLIT_SEED, load_split
    from ciess_core.run_folder import write_run
    from ciess_core.runs import RunSpec, execute_and_deploy, run_sizes
    from ciess_core.sizes import SizeScheme

    scheme = SizeScheme(arguments.sizes)
    if scheme is not SizeScheme.FULL and arguments.sparsity is None:
        raise ConfigError(f"--sizes {scheme.value} needs --sparsity (for example 0.9)")
    if scheme is SizeScheme.FULL and arguments.sparsity not in (None, 0.0):
        raise ConfigError("--sparsity needs --sizes equal or random (full sizes prune nothing)")
    if arguments.out is not None:  # before the training, which would be lost
        new_folder(Path(arguments.out), "--out")
    recipe = recipe_spec(arguments)
    spec = RunSpec(
        dataset=arguments.dataset,
        backbone=recipe.backbone,
        training=recipe.training,
        size_scheme=scheme,
        target_sparsity=arguments.sparsity,
        split_seed=SPLIT_SEED,
    )
    split, fingerprint = load_split(spec.dataset, arguments.data_dir)
    sizes = run_sizes(spec, split.num_users, split.num_items)
    out = arguments.out
    if out is None:
        label = Path(spec.dataset).stem if "/" in spec.dataset else spec.dataset
        suffix = "" if scheme is SizeScheme.FULL else f"-{arguments.sparsity}"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{label}-{spec.backbone.kind.value}-{scheme.value}{suffix}-{stamp}"
    out = new_folder(Path(out), "--out")
    model, outcome, history = execute_and_deploy(
        spec, split, sizes, progress=not arguments.no_progress
    )
    write_run(out, spec, fingerprint, model, outcome, history)
    metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(outcome.test_metrics.items()))
    print(f"run: {out}")
    print(f"sparsity: {outcome.achieved_sparsity:.4f}  seconds: {outcome.seconds:.1f}")
    print(f"test ({spec.protocol.value}): {metrics}")
    return 0


def _add_export_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run directory as a versioned artifact",
        description="Rebuild the model of a run directory (config.json, model.pt, sizes.npz) on "
        "its dataset and write an artifact: manifest.json, ragged embedding stores, id maps, "
        "seen items and ONNX scoring graphs. The artifact is checked against the model before "
        "it is renamed into place.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by ciess train")
    parser.add_argument("--out", required=True, help="artifact directory to create")
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument(
        "--value-type",
        choices=VALUE_TYPES,
        help="how embedding values are stored: float32 (lossless), float16, int8 or int4 "
        "(a float16 scale per row; a quarter or an eighth of float32's bytes), int8-table or "
        "int4-table (one scale per table); default: the type the run was selected in (a byte "
        "budget's pick), else float32",
    )
    parser.add_argument(
        "--verify-users",
        type=whole_number(0, None, "0 or more"),
        default=256,
        help="users whose scores are compared with the model after writing (default 256)",
    )


def _export(arguments: argparse.Namespace) -> int:
    from ciess_core.artifact.export import ExportOptions, export_run
    from ciess_core.artifact.reader import load_artifact
    from ciess_core.artifact.summary import summarize
    from ciess_core.run_folder import run_folder

    run_folder(arguments.run_dir)  # before the data folder: the first mistake first
    new_folder(Path(arguments.out), "--out")
    options = ExportOptions(
        value_dtype=arguments.value_type,
        verify_users=arguments.verify_users,
    )
    out = export_run(arguments.run_dir, arguments.out, arguments.data_dir, options)
    print(summarize(load_artifact(out)))
    return 0


def _add_inspect_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="validate an artifact and summarise it",
        description="Validate every file of an artifact and print its budget, sparsity, size "
        "histograms, bytes on disk against the dense table, resident bytes, metrics, and the "
        "smaller models it gives without training (stored in fewer bits; a full LightGCN also "
        "turned and cut) as its manifest records their validation: at each size, the best.",
    )
    parser.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="artifact directory")
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="also write a size-by-popularity scatter plot to this file (.png, .pdf or .svg; "
        "missing folders are made)",
    )


def _inspect(arguments: argparse.Namespace) -> int:
    from ciess_core.artifact.reader import load_artifact
    from ciess_core.artifact.summary import plot_sizes, summarize

    plot = None if arguments.plot is None else plot_target(Path(arguments.plot))
    artifact = load_artifact(arguments.artifact_dir)
    print(summarize(artifact))
    if plot is not None:
        print(f"plot: {plot_sizes(artifact, plot)}")
    return 0


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _under_folders(path: Path, flag: str) -> Path:
    """``path``, refused when a file stands where one of its folders would be (checked before
    any work, so that no result is lost at the end)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


def new_folder(path: Path, flag: str) -> Path:
    """``path`` for ``flag`` to create: it must not exist, and its folders must be folders."""
    if path.exists():
        raise ConfigError(f"{flag} {path} already exists; choose another")
    return _under_folders(path, flag)


def plot_target(path: Path) -> Path:
    """A ``--plot`` file: a format matplotlib writes by its suffix, not a folder."""
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(
            f"--plot {path}: the format comes from the suffix, one of "
            f"{', '.join(PLOT_SUFFIXES)}; got {path.suffix or 'none'!r}"
        )
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a folder; name a file")
    return _under_folders(path, "--plot")


def _version() -> str:
    try:
        return version("ciess")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


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
    parser.add_argument("--version", action="version", version=f"ciess {_version()}")
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
