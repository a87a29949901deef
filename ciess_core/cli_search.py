"""``ciess search``: the product pipeline from the command line (resumable)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ciess_core.errors import ConfigError
from ciess_core.executors import DEFAULT_EXECUTOR, DEFAULT_WORKERS, EXECUTORS

logger = logging.getLogger("ciess")

DATA_DIR_HELP = "datasets folder (default $CIESS_DATA_DIR, ./data)"
#: ``ciess search``'s budgets when none are named: byte budgets, the product's (the planner's
#: models keep 100.0 / 99.7 / 98.8 % of the full model's test N@20 at these ratios on ML-1M
#: LightGCN, docs/benchmarks/bytes.md).
DEFAULT_BYTE_BUDGETS = "0.1,0.05,0.025"


def whole_number(least: int, most: int | None, words: str) -> Callable[[str], int]:
    """An argparse type: a whole number from ``least`` to ``most`` (None: no upper bound);
    ``words`` says the range in the error (``"at least 1 process"``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"{words}, got {value}")
        return value

    return parse


#: A ``--workers`` flag: a whole number of processes, 1 or more.
at_least_one = whole_number(1, None, "at least 1 process")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-dir`` and ``--backbone``, as ``ciess train`` and ``ciess search``
    take them."""
    parser.add_argument(
        "--dataset", default="ml-1m", help="ml-1m, yelp2018, a file or a folder (default ml-1m)"
    )
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    parser.add_argument(
        "--backbone",
        default="lightgcn",
        choices=["lightgcn", "ngcf", "ncf"],
        help="the recommender whose embeddings are compressed (default lightgcn)",
    )


def add_search_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="the best model at each budget: CIESS sizes and per-side equal sizes, retrained, "
        "chosen on validation, tested once, trained on all data for export",
        description="Train the full model, search a size for every user and item (CIESS), fit "
        "each budget's candidates on held-out validation, retrain the searched sizes and "
        "per-side equal sizes with distillation (LightGCN's starting from the full model "
        "turned to its principal axes and cut to their sizes), keep the one that validates "
        "better, test it once (clean protocol) and train it on all interactions for export. "
        "Training settings come from the shipped recipe for the dataset and backbone, then "
        "--config, then the flags. Rerun the same command to resume after an interruption; a "
        "new --out beside another folder of the same data and recipe copies its finished full "
        "model, teachers and supernet.",
    )
    add_dataset_arguments(parser)
    parser.add_argument(
        "--budget-bytes",
        help="byte budgets, comma-separated: a number of bytes (250000) or, up to 1, a ratio "
        "of the dense float32 tables' bytes (0.05); the planner picks each one's value type "
        "(float32, float16, int8, int4) and sizes, counting every stored byte (default "
        f"{DEFAULT_BYTE_BUDGETS} unless --budgets is given)",
    )
    parser.add_argument(
        "--budgets",
        help="target sparsities (shares of the float32 parameters pruned, the paper's budgets) "
        "instead of byte budgets, comma-separated; with --budget-bytes they only steer the "
        "search",
    )
    parser.add_argument("--out", help="output folder (default runs/search-<dataset>-<backbone>)")
    add_recipe_arguments(
        parser,
        batches="cap on every training's batches",
        seed="seed of the models, search and sampling",
    )
    parser.add_argument(
        "--workers",
        type=at_least_one,
        default=DEFAULT_WORKERS,
        help="independent stages at a time (teachers beside the search, candidates beside "
        "each other), the threads shared among them; 1: one after another with every thread "
        f"(default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=DEFAULT_EXECUTOR,
        help="where those stages run: local (this process, one after another), processes "
        "(spawned processes on this machine) or ray (Ray tasks on a local cluster or "
        f"$RAY_ADDRESS's; pip install 'ciess[ray]'; default {DEFAULT_EXECUTOR})",
    )


def add_recipe_arguments(parser: argparse.ArgumentParser, batches: str, seed: str) -> None:
    """The flags that override a recipe (``--config`` and four keys) and ``--device``; what
    :func:`recipe_spec` reads. ``batches`` and ``seed``: the help of those two flags."""
    recipe = "default: the recipe's, from ciess_core/recipes.toml and --config"
    parser.add_argument(
        "--config", help="recipe file (TOML or JSON) overriding the shipped recipe's settings"
    )
    parser.add_argument(
        "--learning-rate", type=float, help=f"Adam's initial learning rate; {recipe}"
    )
    parser.add_argument("--weight-decay", type=float, help=f"L2 on the batch embeddings; {recipe}")
    parser.add_argument("--max-batches", type=int, help=f"{batches}; {recipe}")
    parser.add_argument("--seed", type=int, help=f"{seed}; {recipe}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def recipe_spec(arguments: argparse.Namespace, budgets: tuple[float, ...] | None = None) -> Any:
    """The :class:`~ciess_core.pipeline.PipelineSpec` of the dataset, backbone and recipe flags
    of ``arguments`` (:func:`add_recipe_arguments`), at ``budgets`` when given."""
    from ciess_core.pipeline import pipeline_spec

    given: dict[str, Any] = {} if budgets is None else {"budgets": budgets}
    return pipeline_spec(
        arguments.dataset,
        arguments.backbone,
        config_file=arguments.config,
        overrides={
            "learning_rate": arguments.learning_rate,
            "weight_decay": arguments.weight_decay,
            "max_batches": arguments.max_batches,
            "seed": arguments.seed,
        },
        device=arguments.device,
        **given,
    )


def run_search_command(arguments: argparse.Namespace) -> int:
    from ciess_core.pipeline import load_split, run_product_pipeline
    from ciess_core.runs import usable_device
    from ciess_core.search.budgets import ByteBudget
    from ciess_core.search.files import chosen_candidate
    from ciess_core.search.parallel import check_executor

    budgets = _numbers("--budgets", arguments.budgets or "", float)
    spec = recipe_spec(arguments, budgets or None)
    usable_device(spec.training.device)  # before the data is read: the first mistake first
    check_executor(arguments.executor)
    out = Path(arguments.out or f"runs/search-{Path(arguments.dataset).stem}-{arguments.backbone}")
    byte_text = arguments.budget_bytes
    if byte_text is None:
        byte_text = "" if budgets else DEFAULT_BYTE_BUDGETS
    byte_values = _numbers("--budget-bytes", byte_text, float)
    for value in byte_values:  # a ratio is checked here, a count of bytes once the data is read
        if not math.isfinite(value) or value <= 0.0:
            raise ConfigError(
                f"--budget-bytes {value:g}: a budget is a ratio of the dense float32 tables "
                "in (0, 1] or a whole number of bytes above 1"
            )
        if value > 1.0 and not value.is_integer():
            raise ConfigError(
                f"--budget-bytes {value:g}: a value above 1 is a number of bytes and must be "
                "whole (a ratio of the dense float32 tables lies in (0, 1])"
            )
    split, fingerprint = load_split(spec.dataset, arguments.data_dir)
    if byte_values:
        rows, size = split.num_users + split.num_items, spec.search.max_size
        ratios = tuple(
            value
            if value <= 1.0
            else ByteBudget.of_bytes(int(value), rows, size, spec.backbone_tables).ratio
            for value in byte_values
        )
        spec = dataclasses.replace(spec, byte_ratios=ratios)
    summary = run_product_pipeline(
        spec,
        out,
        split,
        fingerprint,
        workers=arguments.workers,
        progress=sys.stderr.isatty(),  # bars on a terminal; logs alone in files and CI
        executor=arguments.executor,
        reuse_siblings=True,  # another budget's folder beside it spares the budget-free stages
    )
    if not spec.byte_ratios:
        _plot(out, split, budgets)
    print(f"search: {out}")
    for label, result in summary["budgets"].items():
        test = result["test"]
        chosen = chosen_candidate(result)
        stored = (
            f"{result['value_type']}, {chosen['bytes']} bytes" if "bytes" in chosen else "float32"
        )
        print(
            f"budget {label}: sparsity {result['achieved_sparsity']:.4f}, {stored}  "
            f"test R@20 {test['recall@20']:.4f}  N@20 {test['ndcg@20']:.4f}  "
            f"({result['protocol']}, {result['chosen_kind']} sizes kept)"
        )
        folder = label if label.startswith("bytes-") else f"budget-{label}"
        print(f"  export: ciess export {out / folder / 'run'} --out ARTIFACT_DIR")
    return 0


def _numbers(flag: str, text: str, kind: type[float] | type[int]) -> tuple[Any, ...]:
    """Comma-separated numbers of ``kind`` (none for an empty ``text``); a ConfigError naming
    ``flag`` otherwise."""
    if not text:
        return ()
    try:
        return tuple(kind(value) for value in text.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ConfigError(f"{flag} must be comma-separated {noun}, got '{text}'") from None


def _plot(out: Path, split: Any, budgets: tuple[float, ...]) -> None:
    try:
        from ciess_core.search.plots import plot_search_run

        plot_search_run(out, split.train, budgets, out)
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'ciess[train]')")
