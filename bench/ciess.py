"""CIESS benchmark: the whole pipeline per backbone, beside ES, MR and the full model.

Usage:
    python bench/ciess.py run --backbone lightgcn --weight-decay 1e-3 --protocol reference
    python bench/ciess.py paper-cost --backbone lightgcn --weight-decay 1e-3
    python bench/ciess.py ablation --budgets 0.9 --variants walk-gaussian,no-walk,walk-ou,walk-uniform
    python bench/ciess.py es-fit --item-quality own --supernet-batches 2000
    python bench/ciess.py shapes --budgets 0.9 --user-share 0.75 --shapes floor:items:0.3:pop
    python bench/ciess.py merge --dataset yelp2018 rows.json   # rows written with --results
    python bench/ciess.py plots --dataset yelp2018 --item-quality own --fit-shares
    python bench/ciess.py spread-check --item-quality own --fit-shares --distill --fit-spread
    python bench/ciess.py report

Research settings the product does not have come from `bench/experiments` (the paper's evaluator,
the reference protocol, per-budget λ, the exploration ablation), plugged into the core's
extension points. `run` executes (or resumes) `ciess_core.search.pipeline.run_pipeline` under
`bench/_work/ciess-<dataset>-<backbone>-<protocol>/` and appends one row per budget to
`docs/benchmarks/ciess-<dataset>.json`, keyed like the backbones report. The ES, MR and full rows
come from `docs/benchmarks/backbones.json` (same code, split, seed, protocol and weight decay; run
`bench/backbones.py quality` with the same settings). `--device cuda` runs every stage on a GPU;
`--results FILE` sends the rows to another file (for runs on a lent machine), which `merge` then
appends to the dataset's JSON twin. `paper-cost` times one iteration of the
paper's evaluator (a model trained from scratch for 1,500 batches, then evaluated) and multiplies
it by M·T. `ablation` runs the search once per exploration variant (spec §8: with and without the
random walk, Gaussian, OU and uniform noise) at the given budget, each in its own work folder that
starts from the `run` folder's full model and supernet (same data, backbone and schedules), and
records rows with method `ciess-ablation`. `es-fit` is the control for `run --fit-shares`: the
same share fit applied to the ES assignment (equal sizes within each side, the users' share of
the budget chosen on validation by the `run` folder's supernet), then retrained; rows `es-fit`.
`shapes` retrains hand-shaped assignments under a `run` folder's settings (its teachers when
distilling), to tell which within-side spreads of sizes survive retraining (rows `shape`, see
:func:`shaped_sizes`). `spread-check` scores a run's picks, with each side's spread shrunk,
with the run's supernet on the validation the search saw, on the part it never saw
(`--selection-share`) and on test (`bench/spread_check.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from backbones import DEFAULT_SEED, load_rows, machine, merge_rows, provenance, save_json, split_of
from backbones import RESULTS as BACKBONE_RESULTS
from cli_help import DefaultsHelp
from experiments.evaluators import RetrainEvaluator, RetrainEvaluatorFactory
from experiments.exploration import VARIANTS as ABLATION_VARIANTS
from experiments.penalty import per_budget_search
from experiments.protocols import protocol_named
from paper import PAPER_ABLATION_ML1M, PAPER_METRICS, bet_row, paper_row

from ciess_core.data import DATASETS, Phase
from ciess_core.json_form import jsonable
from ciess_core.models import BackboneConfig, BackboneKind
from ciess_core.search import Exploration, GaussianWalk, ItemQuality, SearchConfig
from ciess_core.search.files import BudgetFolder
from ciess_core.search.fit import DEFAULT_SHARE_GRID, DEFAULT_SPREAD_GRID, equal_split_candidate
from ciess_core.search.loop import SearchHooks
from ciess_core.search.pipeline import (
    Candidate,
    EvaluatorFactory,
    PipelineSpec,
    build_evaluator,
    prepare_teachers,
    retrain_budget,
    run_pipeline,
    selection_views,
)
from ciess_core.search.pool import rescale_to_total
from ciess_core.sizes import SizeAssignment, equal_sizes, parameter_budget
from ciess_core.training import TrainConfig
from ciess_core.training.distillation import DistillationConfig, TeacherSource

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LEARNING_RATE = TrainConfig().learning_rate
WORK = ROOT / "bench" / "_work"
logger = logging.getLogger("bench.ciess")


#: Measured cost of the paper's evaluator (`paper-cost`), one record per dataset, backbone, device.
PAPER_COST = ROOT / "docs" / "benchmarks" / "ciess-paper-cost.json"


def results_path(dataset: str) -> Path:
    return ROOT / "docs" / "benchmarks" / f"ciess-{dataset}-experiments.json"


def rows_path(arguments: argparse.Namespace) -> Path:
    """Where this command's rows go: ``--results`` if given, else the dataset's JSON twin."""
    return Path(arguments.results) if arguments.results else results_path(arguments.dataset)


def spec_from(arguments: argparse.Namespace) -> PipelineSpec:
    kind = BackboneKind(arguments.backbone)
    penalty = arguments.reward_penalty or DATASETS[arguments.dataset].reward_penalty
    search = SearchConfig(
        num_episodes=arguments.episodes,
        iterations_per_episode=arguments.iterations,
        reward_penalty=penalty,
        budgets=tuple(arguments.budgets),
        seed=arguments.seed,
        item_quality=ItemQuality(arguments.item_quality),
        device=arguments.device,
    )
    if arguments.penalty_control == "per-budget":  # M episodes rounded up to whole phases
        search, _ = per_budget_search(search, arguments.penalty_step)
    return PipelineSpec(
        dataset=arguments.dataset,
        backbone=BackboneConfig.default_for(kind, weight_decay=arguments.weight_decay),
        training=TrainConfig(
            learning_rate=arguments.learning_rate,
            max_batches=arguments.max_batches,
            eval_every=200,
            patience=3,
            seed=arguments.seed,
            device=arguments.device,
        ),
        search=search,
        supernet_batches=arguments.supernet_batches,
        finetune_batches=arguments.finetune_batches,
        retrain_top=arguments.retrain_top,
        protocol=protocol_named(arguments.protocol),
        share_grid=DEFAULT_SHARE_GRID if arguments.fit_shares else (),
        distillation=distillation_from(arguments),
        spread_grid=DEFAULT_SPREAD_GRID if arguments.fit_spread else (),
        selection_share=arguments.selection_share,
        equal_candidate=False,
    )


def evaluator_factory(arguments: argparse.Namespace) -> EvaluatorFactory:
    """The search's evaluator: the core's supernet, or the paper's (from scratch per candidate)."""
    if arguments.evaluator == "retrain":
        return RetrainEvaluatorFactory(arguments.paper_batches)
    return build_evaluator


def search_hooks(
    arguments: argparse.Namespace, spec: PipelineSpec, exploration: Exploration | None = None
) -> SearchHooks:
    """The search's exploration (the paper's unless given) and, with `--penalty-control
    per-budget`, the λ schedule of `experiments.penalty`."""
    penalty = None
    if arguments.penalty_control == "per-budget":
        _, penalty = per_budget_search(spec.search, arguments.penalty_step)
    return SearchHooks(exploration=exploration or GaussianWalk(), penalty=penalty)


def distillation_from(arguments: argparse.Namespace) -> DistillationConfig | None:
    if not arguments.distill:
        return None
    return DistillationConfig(
        weight=arguments.distill_weight,
        temperature=arguments.distill_temperature,
        users_per_batch=arguments.distill_users,
        teacher=TeacherSource(arguments.distill_teacher),
    )


def run_dir(arguments: argparse.Namespace, even: bool = True) -> Path:
    """The `run` folder of these arguments: the search's folder, plus a suffix for a
    distilled retraining and one for each fit option (spread fit, held-out selection), all
    starting from a copy of the search's stages. ``even=False``: the folder without the fit
    options' suffixes."""
    name = search_dir(arguments).name
    if arguments.distill:  # the search is the same; only the retraining differs
        name += f"-distill-w{arguments.distill_weight:g}-t{arguments.distill_temperature:g}"
        if arguments.distill_users != DistillationConfig().users_per_batch:
            name += f"-u{arguments.distill_users}"
        if arguments.distill_teacher != DistillationConfig().teacher.value:
            name += f"-teacher-{arguments.distill_teacher}"
    if even and arguments.fit_spread:  # more variants in the share fit
        name += "-spread"
    if even and arguments.selection_share:  # the search sees part of validation: its own
        name += f"-sel{arguments.selection_share:g}"
    if arguments.seed != DEFAULT_SEED:  # every stage is seeded
        name += f"-seed{arguments.seed}"
    if arguments.from_scratch:
        name += "-from-scratch"
    return WORK / name


def search_dir(arguments: argparse.Namespace) -> Path:
    """The folder whose full model, supernet and search these arguments' runs share."""
    name = (
        f"ciess-{arguments.dataset}-{arguments.backbone}-{arguments.protocol}-{arguments.evaluator}"
    )
    if arguments.item_quality != "users":  # the paper's item quality keeps the original name
        name += f"-items-{arguments.item_quality}"
    if arguments.penalty_control != "fixed":  # so does the paper's fixed λ
        name += f"-penalty-{arguments.penalty_control}"
    if arguments.fit_shares:
        name += "-fit"
    if arguments.learning_rate != DEFAULT_LEARNING_RATE:
        name += f"-lr{arguments.learning_rate:g}"
    return WORK / name


def copy_earlier_stages(arguments: argparse.Namespace, out: Path) -> None:
    """Start a `run` folder from the stages it shares with earlier runs: everything before the
    share fit with the run that has no fit options, and the search's with the search folder.
    With ``--selection-share`` the search is not shared (it sees only part of validation)."""
    searched = () if arguments.selection_share else ("search",)
    if out != run_dir(arguments, even=False):
        copy_shared_stages(
            run_dir(arguments, even=False), out, ("full", "supernet", *searched, "teacher")
        )
    if out != search_dir(arguments):
        copy_shared_stages(search_dir(arguments), out, ("full", "supernet", *searched))


def copy_shared_stages(source: Path, out: Path, stages: tuple[str, ...]) -> None:
    """Start ``out`` from ``source``'s finished stages (same data, backbone and schedules)."""
    for stage in stages:
        if (source / stage).is_dir() and not (out / stage).exists():
            shutil.copytree(source / stage, out / stage)


def budget_rows(
    arguments: argparse.Namespace, method: str, summary: dict[str, Any], **extra: Any
) -> list[dict[str, Any]]:
    """One JSON row per budget of a pipeline summary (keyed as the backbones report)."""
    return [
        {
            "dataset": arguments.dataset,
            "backbone": arguments.backbone,
            "method": method,
            "target_sparsity": float(budget),
            "achieved_sparsity": round(result["achieved_sparsity"], 6),
            "split": "test",
            "protocol": arguments.protocol,
            "weight_decay": arguments.weight_decay,
            "learning_rate": arguments.learning_rate,
            "device": arguments.device,
            "evaluator": arguments.evaluator,
            "item_quality": arguments.item_quality,
            "penalty_control": arguments.penalty_control,
            "fit_shares": arguments.fit_shares,
            "fit_spread": arguments.fit_spread,
            "selection_share": arguments.selection_share,
            "seed": arguments.seed,
            "distillation": budget_distillation(arguments),
            "metrics": {m: round(result["test"][m], 6) for m in PAPER_METRICS},
            "valid_metrics": {m: round(v, 6) for m, v in result["valid"].items()},
            "seconds": round(result["seconds"], 1),
            "pipeline_timings": summary["timings"],
            "pipeline_workers": summary.get("workers", 1),
            "pipeline_seconds_this_call": summary.get("seconds_this_call"),
            **extra,
            **provenance(),
        }
        for budget, result in summary["budgets"].items()
    ]


def same_search(row: dict[str, Any], arguments: argparse.Namespace) -> bool:
    """Whether ``row`` came from a search with these arguments' backbone, protocol and options
    (rows older than an option count as having had it off; rows of the deleted options, policy
    rollouts and near-tie order, match none)."""
    return (
        row["backbone"] == arguments.backbone
        and row["protocol"] == arguments.protocol
        and row.get("item_quality", "users") == arguments.item_quality
        and row.get("penalty_control", "fixed") == arguments.penalty_control
        and not row.get("policy_rollouts")
        and bool(row.get("fit_shares")) == arguments.fit_shares
        and not row.get("even_tolerance")
        and bool(row.get("fit_spread")) == arguments.fit_spread
        and row.get("selection_share", 0.0) == arguments.selection_share
        and row.get("seed", DEFAULT_SEED) == arguments.seed
        and row.get("learning_rate", DEFAULT_LEARNING_RATE) == arguments.learning_rate
        and row.get("device", "cpu") == arguments.device
        and row.get("distillation") == budget_distillation(arguments)
    )


def budget_distillation(arguments: argparse.Namespace) -> dict[str, Any] | None:
    config = distillation_from(arguments)
    return None if config is None else jsonable(config)


def ablation(arguments: argparse.Namespace) -> None:
    """One search per exploration variant at ``arguments.budgets`` (spec §8), each with its
    exploration from `experiments.exploration`."""
    spec = spec_from(arguments)
    split = split_of(arguments)
    shared = run_dir(arguments)
    variants = arguments.variants.split(",")
    unknown = sorted(set(variants) - set(ABLATION_VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(ABLATION_VARIANTS)}")
    for variant in variants:
        out = WORK / f"ablation-{shared.name}-{variant}"
        copy_shared_stages(shared, out, ("full", "supernet"))  # as the main run's
        logger.info("ablation %s in %s", variant, out)
        summary = run_pipeline(
            spec,
            split,
            out,
            progress=not arguments.no_progress,
            evaluator_factory=evaluator_factory(arguments),
            hooks=search_hooks(arguments, spec, ABLATION_VARIANTS[variant]),
        )
        rows = [
            r
            for r in load_rows(rows_path(arguments))
            if not (
                r["method"] == "ciess-ablation"
                and same_search(r, arguments)
                and r.get("variant") == variant
            )
        ]
        trace = [json.loads(line) for line in (out / "search" / "trace.jsonl").open()]
        last_episode = [t for t in trace if t["episode"] == trace[-1]["episode"]]
        last_reward = np.mean(
            [(t["users_mean_reward"] + t["items_mean_reward"]) / 2 for t in last_episode]
        )
        rows += budget_rows(
            arguments,
            "ciess-ablation",
            summary,
            variant=variant,
            search_best_mean_quality=round(max(t["mean_quality"] for t in trace), 6),
            search_last_episode_reward=round(float(last_reward), 6),
            search_min_sparsity=round(min(t["sparsity"] for t in trace), 6),
            search_max_sparsity=round(max(t["sparsity"] for t in trace), 6),
        )
        save_json(rows_path(arguments), rows)
        write_report(arguments.dataset)


def run(arguments: argparse.Namespace) -> None:
    spec = spec_from(arguments)
    split = split_of(arguments)
    out = run_dir(arguments)
    if not arguments.from_scratch:  # else every stage runs here, timed as one call
        copy_earlier_stages(arguments, out)
    started = time.perf_counter()
    summary = run_pipeline(
        spec,
        split,
        out,
        progress=not arguments.no_progress,
        workers=arguments.workers,
        evaluator_factory=evaluator_factory(arguments),
        hooks=search_hooks(arguments, spec),
    )
    rows = [
        r
        for r in load_rows(rows_path(arguments))
        if not (
            r["method"] == "ciess"
            and r.get("evaluator") == arguments.evaluator
            and same_search(r, arguments)
        )
    ]
    rows += budget_rows(
        arguments,
        "ciess",
        summary,
        search={
            "episodes": spec.search.num_episodes,
            "iterations": spec.search.iterations_per_episode,
            "reward_penalty": spec.search.reward_penalty,
            "supernet_batches": spec.supernet_batches,
            "finetune_batches": spec.finetune_batches,
            "retrain_top": spec.retrain_top,
        },
    )
    save_json(rows_path(arguments), rows)
    logger.info("pipeline call took %.0f s", time.perf_counter() - started)
    write_report(arguments.dataset)


def es_control(arguments: argparse.Namespace, fit: bool) -> None:
    """ES retrained under a `run` folder's settings: the control for a CIESS variant.

    ``fit``: the share fit applied to ES itself (per-side equal sizes, the users' share picked on
    validation by the run folder's supernet), the control for ``--fit-shares``; it tells how much
    of a share-fitted CIESS result comes from weighing users against items rather than from the
    search. With ``--distill`` the retraining distils from the run folder's full model, as the
    CIESS run's does. Rows: ``es`` + ``-fit`` and/or ``-distill``.
    """
    spec = spec_from(arguments)
    if fit:
        spec = dataclasses.replace(spec, share_grid=DEFAULT_SHARE_GRID)
    method = "es" + ("-fit" if fit else "") + ("-distill" if spec.distillation else "")
    if method == "es":
        raise SystemExit("es-control needs --fit-shares or --distill (plain ES: backbones.py)")
    split = split_of(arguments)
    # The run's full model and supernet: in the search's folder, or in the run's own when a
    # distilled run did the search itself.
    shared = next(
        (d for d in (search_dir(arguments), run_dir(arguments)) if (d / "full").is_dir()),
        search_dir(arguments),
    )
    out = WORK / f"{method}-{run_dir(arguments).name}"
    evaluator = None
    if fit:
        # the fits' view: with --selection-share, the validation part the search never saw
        evaluator = build_evaluator(
            spec, selection_views(spec, split)[1], cache_dir=shared / "supernet"
        )
        evaluator.prepare()
    teachers, _ = prepare_teachers(spec, split, shared, progress=False)
    summary: dict[str, Any] = {"budgets": {}, "timings": {}}
    for budget in spec.search.budgets:
        folder = BudgetFolder.of(out, budget)
        started = time.perf_counter()
        shape = (split.num_users, split.num_items)
        candidates = [
            Candidate(
                equal_split_candidate(spec, evaluator, *shape, budget, folder)
                if fit
                else equal_sizes(*shape, spec.search.max_size, budget),
                "equal",
            )
        ]
        summary["timings"][f"fit_{budget:g}"] = round(time.perf_counter() - started, 2)
        result = retrain_budget(
            spec, split, budget, candidates, folder.path, progress=False, teachers=teachers
        )
        summary["budgets"][f"{budget:g}"] = result
        summary["timings"][f"retrain_{budget:g}"] = result["seconds"]
    rows = [
        r
        for r in load_rows(rows_path(arguments))
        if not (
            r["method"] == method
            and r["backbone"] == arguments.backbone
            and r["protocol"] == arguments.protocol
            and r.get("distillation") == budget_distillation(arguments)
            and r.get("device", "cpu") == arguments.device
            and r.get("selection_share", 0.0) == arguments.selection_share
            and r.get("seed", DEFAULT_SEED) == arguments.seed
        )
    ]
    rows += budget_rows(arguments, method, summary)
    save_json(rows_path(arguments), rows)
    write_report(arguments.dataset)


def allocate(weights: np.ndarray, total: int, max_size: int) -> np.ndarray:
    """Integer sizes in [1, max_size] proportional to ``weights`` that sum to at most ``total``
    (floors, then the largest fractional parts take the dimensions left)."""
    wanted = weights / weights.sum() * total
    sizes = np.clip(np.floor(wanted), 1, max_size)
    left = int(total - sizes.sum())
    if left > 0:
        order = np.argsort(-(wanted - np.floor(wanted)), kind="stable")
        sizes[order[:left]] += 1
    while sizes.sum() > total:
        sizes[np.argmax(sizes)] -= 1
    return np.minimum(sizes, max_size).astype(np.int64)


def floored(total: int, fraction: float, key: np.ndarray) -> np.ndarray:
    """The lowest ``fraction`` of a side by ``key`` at size 1, the rest equal (the highest keys
    take the remainder): a budget moved without widening anyone past the rest."""
    count = len(key)
    low = round(fraction * count)
    order = np.argsort(key, kind="stable")
    sizes = np.ones(count, dtype=np.int64)
    rest = order[low:]
    base, extra = divmod(total - low, len(rest))
    sizes[rest] = base
    sizes[rest[len(rest) - extra :]] += 1
    return sizes


def shaped_sizes(
    shape: str,
    train: Any,
    budget: float,
    user_share: float,
    max_size: int,
    searched: SizeAssignment | None,
) -> SizeAssignment:
    """One hand-shaped assignment at ``budget`` with the users' share ``user_share`` of it.

    Shapes (a side not named stays equal within itself):
    - ``pop:<side>:<alpha>``: sizes ∝ training popularity^alpha within the side;
    - ``floor:<side>:<fraction>:<key>``: the side's lowest ``fraction`` by ``key`` (``pop``:
      popularity; ``search``: the run's CIESS sizes, ties by popularity) at size 1, the rest
      equal;
    - ``shrink:<factor>``: the run's CIESS assignment with each side's spread around its mean
      scaled by ``factor`` (its own users' share);
    - ``search:<side>``: the side keeps the run's CIESS sizes, rescaled to its part of the budget
      (:func:`rescale_to_total`), the other side equal.
    """
    num_users, num_items = train.shape
    own = {} if searched is None else {"users": searched.user_sizes, "items": searched.item_sizes}
    popularity = {
        "users": np.maximum(np.diff(train.indptr), 1).astype(np.float64),
        "items": np.maximum(np.bincount(train.indices, minlength=num_items), 1).astype(np.float64),
    }
    total = parameter_budget(num_users + num_items, max_size, budget)
    kind, *parameters = shape.split(":")
    if kind == "shrink":
        if searched is None:
            raise SystemExit("shape shrink needs the run folder's CIESS sizes for this budget")
        parts = []
        for side_sizes in own.values():
            mean = side_sizes.mean()
            parts.append(
                np.clip(np.round(mean + float(parameters[0]) * (side_sizes - mean)), 1, max_size)
            )
        sizes = np.concatenate(parts).astype(np.int64)
        while sizes.sum() > total:
            sizes[np.argmax(sizes)] -= 1
        return SizeAssignment.from_concatenated(sizes, num_users, max_size)
    items_total = max(total - int(total * user_share), num_items)
    totals = {"users": total - items_total, "items": items_total}
    sides = {
        side: allocate(np.ones_like(popularity[side]), totals[side], max_size)
        for side in ("users", "items")
    }
    side = parameters[0]
    if kind == "pop":
        sides[side] = allocate(popularity[side] ** float(parameters[1]), totals[side], max_size)
    elif kind == "search":
        if searched is None:
            raise SystemExit("shape search needs the run folder's CIESS sizes for this budget")
        sides[side] = rescale_to_total(own[side], totals[side], max_size)
    elif kind == "floor":
        key = popularity[side]
        if parameters[2] == "search":
            if searched is None:
                raise SystemExit("key search needs the run folder's CIESS sizes for this budget")
            key = own[side] + 1e-6 * key
        sides[side] = floored(totals[side], float(parameters[1]), key)
    else:
        raise SystemExit(f"unknown shape {shape!r}: pop, floor, search or shrink")
    return SizeAssignment(sides["users"], sides["items"], max_size)


def shapes(arguments: argparse.Namespace) -> None:
    """Retrain each of ``--shapes`` at each budget under the run folder's settings; rows
    ``shape`` (with ``shape``, ``user_share`` and each side's mean and spread)."""
    spec = spec_from(arguments)
    split = split_of(arguments)
    folder = run_dir(arguments)
    teachers, _ = prepare_teachers(spec, split, folder, progress=False)
    evaluator = build_evaluator(spec, split, cache_dir=folder / "supernet")
    evaluator.prepare()  # the run's supernet, loaded: its score of each shape goes in the row
    metric = spec.training.selection_metric
    train, _ = split.phase(Phase.SEARCH)
    new_rows = []
    for shape in arguments.shapes.split(","):
        for budget in spec.search.budgets:
            searched_folder = BudgetFolder.of(folder, budget)
            searched = searched_folder.chosen() if searched_folder.finished() else None
            sizes = shaped_sizes(
                shape, train, budget, arguments.user_share, spec.search.max_size, searched
            )
            out = WORK / f"shape-{shape.replace(':', '_')}-{folder.name}" / f"budget-{budget:g}"
            result = retrain_budget(
                spec, split, budget, [Candidate(sizes)], out, progress=False, teachers=teachers
            )
            row = budget_rows(
                arguments,
                "shape",
                {"budgets": {f"{budget:g}": result}, "timings": {}},
                shape=shape,
                user_share=arguments.user_share if not shape.startswith("shrink") else None,
                users_size_mean=round(float(sizes.user_sizes.mean()), 3),
                users_size_std=round(float(sizes.user_sizes.std()), 3),
                items_size_mean=round(float(sizes.item_sizes.mean()), 3),
                items_size_std=round(float(sizes.item_sizes.std()), 3),
                supernet_valid=round(evaluator.evaluate(sizes).metrics[metric], 6),
            )[0]
            logger.info("shape %s at %g: test N@20 %.4f", shape, budget, row["metrics"]["ndcg@20"])
            new_rows.append(row)
    keys = {(r["shape"], r["target_sparsity"], json.dumps(r["distillation"])) for r in new_rows}
    rows = [
        r
        for r in load_rows(rows_path(arguments))
        if not (
            r["method"] == "shape"
            and r["backbone"] == arguments.backbone
            and (r["shape"], r["target_sparsity"], json.dumps(r["distillation"])) in keys
        )
    ]
    save_json(rows_path(arguments), rows + new_rows)
    write_report(arguments.dataset)


def spread_check(arguments: argparse.Namespace) -> None:
    """Print (and keep beside the run folder) :func:`spread_check.spread_table` for a run."""
    from spread_check import spread_table

    spec = spec_from(arguments)
    split = split_of(arguments)
    folder = run_dir(arguments)
    method = "es-fit" + ("-distill" if spec.distillation else "")
    control = WORK / f"{method}-{run_dir(arguments, even=arguments.selection_share > 0).name}"
    lines = spread_table(spec, selection_views(spec, split), split, folder, control)
    (WORK / f"spread-check-{folder.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


PLOTS = ROOT / "docs" / "benchmarks" / "plots"


def plots(arguments: argparse.Namespace) -> None:
    """The search trace and the sizes-by-popularity plots of a `run` folder, into the reports'
    plots folder (one subfolder per run), then the report again."""
    from ciess_core.search.plots import plot_search_run

    out = run_dir(arguments)
    split = split_of(arguments)
    title = f"{arguments.dataset} {arguments.backbone}: "
    plot_search_run(out, split.train, arguments.budgets, PLOTS / out.name, title)
    write_report(arguments.dataset)


def paper_cost(arguments: argparse.Namespace) -> None:
    """Time the paper's evaluator for one iteration; extrapolate to M·T iterations."""
    spec = spec_from(arguments)
    split = split_of(arguments)
    train, valid = split.phase(Phase.SEARCH)
    training = TrainConfig(
        learning_rate=arguments.learning_rate,
        max_batches=arguments.paper_batches,
        eval_every=0,
        seed=arguments.seed,
        device=arguments.device,
    )
    evaluator = RetrainEvaluator(train, valid, spec.backbone, training)
    sizes = equal_sizes(split.num_users, split.num_items, 128, 0.8)
    signal = evaluator.evaluate(sizes)
    iterations = spec.search.num_episodes * spec.search.iterations_per_episode
    device = arguments.device.split(":")[0]
    records = [
        r
        for r in load_rows(PAPER_COST)
        if (r["dataset"], r["backbone"], r["device"])
        != (arguments.dataset, arguments.backbone, device)
    ]
    records.append(
        {
            "dataset": arguments.dataset,
            "backbone": arguments.backbone,
            "device": device,
            "batches_per_iteration": arguments.paper_batches,
            "seconds_per_iteration": round(signal.seconds, 1),
            "iterations": iterations,
            "seconds_total": round(signal.seconds * iterations, 0),
            "machine": machine(),
            "command": "python bench/ciess.py " + " ".join(sys.argv[1:]),
        }
    )
    save_json(PAPER_COST, records)
    write_report(arguments.dataset)


def wall_note(row: dict[str, Any]) -> str:
    """With workers, stages overlap: the wall time of the call that finished the pipeline."""
    workers = row.get("pipeline_workers", 1)
    if workers == 1:
        return ""
    return (
        f" summed over stages; with {workers} workers, stages side by side, the call that "
        f"finished it took {row['pipeline_seconds_this_call'] / 60:.1f} min of wall time"
    )


def variant_label(row: dict[str, Any]) -> str:
    """The search settings that tell one CIESS row from another, in a few words."""
    parts = [row["evaluator"], f"item q {row.get('item_quality', 'users')}"]
    if row.get("learning_rate", DEFAULT_LEARNING_RATE) != DEFAULT_LEARNING_RATE:
        parts.append(f"lr {row['learning_rate']:g}")
    if row.get("penalty_control", "fixed") != "fixed":
        parts.append(f"λ {row['penalty_control']}")
    if row.get("policy_rollouts"):
        parts.append("rollouts")
    if row.get("fit_shares"):
        parts.append("share fit")
    if row.get("even_tolerance"):
        parts.append(f"evenest within {row['even_tolerance']:.1%}")
    if row.get("fit_spread"):
        parts.append("spread fit")
    if row.get("selection_share"):
        parts.append(f"fits on {row['selection_share']:.0%} of validation held out")
    if row.get("distillation"):
        parts.append(distillation_label(row["distillation"]))
    if row.get("seed", DEFAULT_SEED) != DEFAULT_SEED:
        parts.append(f"seed {row['seed']}")
    return ", ".join(parts)


def control_label(row: dict[str, Any]) -> str:
    """A baseline's or ES control's method, with its distillation and fit settings if any."""
    parts = []
    if row.get("selection_share"):
        parts.append(f"fit on {row['selection_share']:.0%} of validation held out")
    if row.get("distillation"):
        parts.append(distillation_label(row["distillation"]))
    return f"{row['method']} [{', '.join(parts)}]" if parts else str(row["method"])


def distillation_label(config: dict[str, Any]) -> str:
    users = config.get("users_per_batch", 0) or "all"
    teacher = config.get("teacher", "search")
    return (
        f"distilled w {config['weight']:g} τ {config['temperature']:g}, {users} users/batch, "
        f"teacher {teacher}"
    )


def shape_table(
    shapes: list[dict[str, Any]], searched: list[dict[str, Any]], controls: list[dict[str, Any]]
) -> list[str]:
    """The `shapes` rows beside the share-fitted ES control and the CIESS row retrained the same
    way (same backbone, protocol, budget and distillation)."""

    def same(row: dict[str, Any], shape: dict[str, Any]) -> bool:
        keys = ("backbone", "protocol", "target_sparsity", "distillation")
        same_device = row.get("device", "cpu") == shape.get("device", "cpu")
        return same_device and all(row.get(key) == shape.get(key) for key in keys)

    lines = [
        "## Size shapes: which spreads within a side survive retraining",
        "",
        "Hand-shaped assignments (`python bench/ciess.py shapes …`, see `shaped_sizes`) retrained "
        "under a `run` folder's settings, beside the ES control with the share fit and the CIESS "
        "row retrained the same way. `pop:<side>:<α>`: sizes ∝ popularity^α within the side; "
        "`floor:<side>:<f>:<key>`: the side's lowest fraction f by key at size 1, the rest "
        "equal; `search:<side>`: the side keeps the CIESS assignment's sizes, rescaled to its "
        "part of the budget; `shrink:<s>`: the CIESS assignment with each side's spread around "
        "its mean scaled by s. The other side stays equal. The supernet's valid score is the run's "
        "supernet's validation NDCG@20 of the shape (the evaluator the search and the share fit "
        "rank assignments by).",
        "",
        "| backbone | c | shape | users' share | users mean ± sd | items mean ± sd | supernet's "
        "valid score | R@20 | N@20 | N@20 vs ES + share fit | N@20 vs CIESS | retraining |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(shapes, key=lambda r: (r["backbone"], r["target_sparsity"], r["shape"])):
        control = next(
            (c for c in reversed(controls) if c["method"].startswith("es-fit") and same(c, r)),
            None,
        )
        ciess = next(
            (
                c
                for c in reversed(searched)
                if c.get("fit_shares") and not c.get("even_tolerance") and same(c, r)
            ),
            None,
        )
        n20 = r["metrics"]["ndcg@20"]

        def versus(other: dict[str, Any] | None, n20: float = n20) -> str:
            return "–" if other is None else f"{n20 / other['metrics']['ndcg@20'] - 1:+.1%}"

        share = "CIESS's" if r.get("user_share") is None else f"{r['user_share']:.2f}"
        lines.append(
            f"| {r['backbone']} | {r['target_sparsity']:.2f} | `{r['shape']}` | {share} | "
            f"{r['users_size_mean']:.1f} ± {r['users_size_std']:.1f} | "
            f"{r['items_size_mean']:.1f} ± {r['items_size_std']:.1f} | "
            + (f"{r['supernet_valid']:.4f}" if "supernet_valid" in r else "–")
            + f" | {r['metrics']['recall@20']:.4f} | {n20:.4f} | {versus(control)} | "
            f"{versus(ciess)} | {r['seconds'] / 60:.1f} min |"
        )
    return [*lines, ""]


def write_report(dataset: str) -> None:
    rows = load_rows(results_path(dataset))
    baselines = [r for r in load_rows(BACKBONE_RESULTS) if r["dataset"] == dataset]
    lines = [
        f"# CIESS on {dataset}",
        "",
        "Produced by `bench/ciess.py` (JSON twin: `ciess-" + dataset + ".json`; the ES, MR and "
        "full rows are read from `backbones.json`, trained by the same code with the same split, "
        "seed, protocol and weight decay). Paper numbers are the CIESS paper's Table 1 "
        "(references, not ours), compared only with our reference-protocol rows.",
        "",
    ]
    ablations = [r for r in rows if r["method"] == "ciess-ablation"]
    es_controls = [r for r in rows if r["method"].startswith("es-")]
    shape_rows = [r for r in rows if r["method"] == "shape"]
    rows = [r for r in rows if r["method"] == "ciess"]
    for protocol in ("reference", "clean"):
        ours = [r for r in rows if r["protocol"] == protocol]
        if not ours:
            continue
        lines += [
            f"## Test metrics, {protocol} protocol",
            "",
            "Per backbone and budget: our full model, ES and MR (from `backbones.json`), the ES "
            "controls (`es-fit`: ES with the share fit, the control for CIESS's `share fit`; "
            "`es-distill`: ES retrained with distillation from the run's full model, the control "
            "for CIESS's `distilled`), then every CIESS variant run (search settings in "
            "brackets), with N@20 relative to our plain ES.",
            "",
            "| backbone | c | method | achieved c | R@5 | R@20 | N@5 | N@20 | N@20 vs our ES | "
            "paper CIESS R@20 | paper CIESS N@20 | BET R@20 / N@20 | device | time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        groups = sorted({(r["backbone"], r["target_sparsity"]) for r in ours})
        for backbone, target in groups:
            paper = paper_row(backbone, "ciess", target, dataset)
            bet = bet_row(backbone, target, dataset)
            variants = [
                r for r in ours if (r["backbone"], r["target_sparsity"]) == (backbone, target)
            ]
            recipes = {
                (r["weight_decay"], r.get("learning_rate", DEFAULT_LEARNING_RATE)) for r in variants
            }
            same = [
                b
                for b in baselines
                if b["backbone"] == backbone
                and b["protocol"] == protocol
                and (b.get("weight_decay"), b.get("learning_rate", DEFAULT_LEARNING_RATE))
                in recipes
                and (b["target_sparsity"] in (None, target))
            ]
            same += [
                r
                for r in es_controls
                if (r["backbone"], r["protocol"], r["target_sparsity"])
                == (backbone, protocol, target)
            ]
            plain = [b for b in same if b["method"] == "es"]
            for entry in [*sorted(same, key=lambda b: b["method"]), *variants]:
                m = entry["metrics"]
                is_ciess = entry["method"] == "ciess"
                device = entry.get("device", "cpu")
                # The latest plain ES on the entry's device (rows of one device share a cap).
                es = next(
                    (b for b in reversed(plain) if b.get("device", "cpu") == device),
                    plain[-1] if plain else None,
                )
                versus = (
                    f"{m['ndcg@20'] / es['metrics']['ndcg@20'] - 1:+.1%}"
                    if (is_ciess or entry["method"].startswith("es-")) and es is not None
                    else "–"
                )
                lines.append(
                    f"| {backbone} | {target:.2f} | "
                    + (f"ciess [{variant_label(entry)}]" if is_ciess else control_label(entry))
                    + f" | {entry['achieved_sparsity']:.4f} | {m['recall@5']:.4f} | "
                    f"{m['recall@20']:.4f} | {m['ndcg@5']:.4f} | {m['ndcg@20']:.4f} | {versus} | "
                    + (
                        f"{paper['recall@20']:.4f} | {paper['ndcg@20']:.4f}"
                        if paper and is_ciess
                        else "– | –"
                    )
                    + " | "
                    + (
                        f"{bet['recall@20']:.4f} / {bet['ndcg@20']:.4f}"
                        if bet and is_ciess
                        else "–"
                    )
                    + f" | {entry.get('device', 'cpu')} | {entry['seconds'] / 60:.1f} min |"
                )
        lines.append("")
        for backbone, device in sorted({(r["backbone"], r.get("device", "cpu")) for r in ours}):
            latest = [
                r for r in ours if r["backbone"] == backbone and r.get("device", "cpu") == device
            ][-1]
            timings = latest.get("pipeline_timings", {})
            if timings:
                lines += [
                    f"{backbone}, latest run ({variant_label(latest)}, "
                    f"{latest.get('device', 'cpu')}): pipeline wall time per stage (seconds): "
                    + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
                    + f"; total {sum(timings.values()) / 60:.1f} min"
                    + wall_note(latest)
                    + ".",
                    "",
                ]
    if ablations:
        lines += [
            "## Ablation of the exploration (spec §8)",
            "",
            "Same full model, supernet, schedule and budget for every variant; only the search's "
            "exploration changes. Test metrics of the retrained assignment; the search columns come "
            "from its trace (best mean quality of an assignment, the users' and items' mean reward "
            "averaged over the last episode, and the range of sparsities the search visited). "
            "Time: the search and the retraining (the full model and supernet are shared).",
            "",
            "| backbone | protocol | item q | c | variant | achieved c | R@20 | N@20 | paper R@20 / N@20 (ML-1M, LightGCN) | best search quality | last-episode reward | sparsity visited | time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(
            ablations, key=lambda r: (r["backbone"], r["target_sparsity"], r["variant"])
        ):
            ablation_paper = (
                PAPER_ABLATION_ML1M.get((round(r["target_sparsity"], 2), r["variant"]))
                if dataset == "ml-1m" and r["backbone"] == "lightgcn"
                else None
            )
            lines.append(
                f"| {r['backbone']} | {r['protocol']} | {r.get('item_quality', 'users')} | "
                f"{r['target_sparsity']:.2f} | {r['variant']} | {r['achieved_sparsity']:.4f} | "
                f"{r['metrics']['recall@20']:.4f} | {r['metrics']['ndcg@20']:.4f} | "
                + (f"{ablation_paper[0]:.4f} / {ablation_paper[1]:.4f}" if ablation_paper else "–")
                + " | "
                f"{r['search_best_mean_quality']:.4f} | {r['search_last_episode_reward']:.4f} | "
                f"{r['search_min_sparsity']:.3f}–{r['search_max_sparsity']:.3f} | "
                f"{sum(v for k, v in r['pipeline_timings'].items() if k == 'search' or k.startswith('retrain')) / 60:.1f} min |"
            )
        lines.append("")
    if shape_rows:
        lines += shape_table(shape_rows, rows, es_controls)
    for cost in load_rows(PAPER_COST):
        if cost["dataset"] != dataset:
            continue
        lines += [
            f"Paper's evaluator here ({cost['backbone']}, {cost['device']}, {cost['machine']}): "
            "one iteration (fresh model at ES 0.8 sizes, "
            f"{cost['batches_per_iteration']} batches, then validation) took "
            f"{cost['seconds_per_iteration']:.0f} s; × {cost['iterations']} iterations = "
            f"{cost['seconds_total'] / 3600:.1f} h.",
            "",
        ]
    pictures = sorted(PLOTS.glob(f"ciess-{dataset}-*/*.png"))
    if pictures:
        lines += [
            "## Plots",
            "",
            "Written by `python bench/ciess.py plots …` from each run's folder: per episode the "
            "users' and items' mean reward and mean size (`search-trace`), and every entity's "
            "size against its training popularity at each budget (`sizes-<c>`).",
            "",
        ]
        lines += [
            f"![{path.parent.name}: {path.stem}](plots/{path.parent.name}/{path.name})"
            for path in pictures
        ] + [""]
    notes = ROOT / "docs" / "benchmarks" / f"ciess-{dataset}-experiments.notes.md"
    if notes.exists():  # hand-written findings, kept apart so that regenerating keeps them
        lines += ["## Findings", "", notes.read_text().strip(), ""]
    (ROOT / "docs" / "benchmarks" / f"ciess-{dataset}-experiments.md").write_text(
        "\n".join(lines) + "\n"
    )


RUN_COMMANDS = {
    "run": "the whole CIESS pipeline (full model, search, retraining) and its rows",
    "paper-cost": "time the paper's evaluator per iteration and multiply it out",
    "ablation": "the exploration ablation of spec §8 on one budget",
    "es-fit": "ES with the users' share fitted as CIESS's share fit does",
    "es-control": "ES retrained exactly as a run's CIESS assignments (share fit, distillation)",
    "shapes": "retrain hand-shaped size assignments under a run's settings",
    "plots": "search-trace and size-by-popularity plots of a run's folder",
    "spread-check": "a run's picks with each side's spread shrunk, scored on seen and unseen data",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in RUN_COMMANDS.items():
        command = commands.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=DefaultsHelp,
        )
        command.add_argument("--dataset", default="ml-1m", help="dataset name in --data-dir")
        command.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR)")
        command.add_argument("--backbone", default="lightgcn", help="lightgcn, ngcf or ncf")
        command.add_argument(
            "--weight-decay", type=float, default=1e-3, help="L2 on the batch's embeddings"
        )
        command.add_argument(
            "--protocol",
            default="reference",
            choices=["reference", "clean"],
            help="reference: the paper's (test picks the stop); clean: validation does",
        )
        command.add_argument(
            "--evaluator",
            default="supernet",
            choices=["supernet", "retrain"],
            help="the search's quality evaluator: ours (supernet) or the paper's (retrain, "
            "--paper-batches per candidate; experiments/evaluators.py)",
        )
        command.add_argument(
            "--budgets", type=float, nargs="+", default=[0.8, 0.9, 0.95], help="target sparsities"
        )
        command.add_argument("--episodes", type=int, default=30, help="search episodes M")
        command.add_argument("--iterations", type=int, default=10, help="iterations per episode T")
        command.add_argument(
            "--reward-penalty", type=float, help="λ (default: the dataset's, see ciess search)"
        )
        command.add_argument(
            "--supernet-batches", type=int, default=3000, help="batches training the supernet"
        )
        command.add_argument(
            "--finetune-batches",
            type=int,
            default=0,
            help="fine-tuning batches per scored candidate",
        )
        command.add_argument(
            "--retrain-top", type=int, default=1, help="assignments retrained per budget"
        )
        command.add_argument(
            "--item-quality",
            default="users",
            choices=["users", "own"],
            help="an item's quality: its users' (the paper's) or its own ranks",
        )
        command.add_argument(
            "--penalty-control",
            default="fixed",
            choices=["fixed", "per-budget"],
            help="one λ for every budget, or one search phase per budget with λ steered "
            "(experiments/penalty.py)",
        )
        command.add_argument(
            "--penalty-step", type=float, default=0.1, help="λ step η with --penalty-control"
        )
        command.add_argument(
            "--fit-shares",
            action="store_true",
            help="refit the users' share of each budget before retraining",
        )
        command.add_argument(
            "--fit-spread",
            action="store_true",
            help="with --fit-shares: also try each side's spread shrunk by 0 / 0.5 / 1",
        )
        command.add_argument(
            "--selection-share",
            type=float,
            default=0.0,
            help="with --fit-shares: validation held out from the search for the fits (0: off)",
        )
        command.add_argument(
            "--max-batches", type=int, default=4000, help="cap on every training's batches"
        )
        command.add_argument(
            "--paper-batches",
            type=int,
            default=1500,
            help="batches per candidate of the paper's evaluator (paper-cost, --evaluator retrain)",
        )
        command.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of every stage")
        command.add_argument(
            "--learning-rate", type=float, default=DEFAULT_LEARNING_RATE, help="Adam's"
        )
        command.add_argument("--device", default="cpu", help="cpu or cuda[:N] (every stage)")
        command.add_argument(
            "--results",
            help="JSON file the rows go to (default: docs/benchmarks/ciess-<dataset>.json)",
        )
        command.add_argument(
            "--distill",
            action="store_true",
            help="retrain with distillation from the run's full model",
        )
        command.add_argument(
            "--distill-weight",
            type=float,
            default=DistillationConfig().weight,
            help="weight of the distillation term",
        )
        command.add_argument(
            "--distill-temperature",
            type=float,
            default=DistillationConfig().temperature,
            help="softmax temperature τ",
        )
        command.add_argument(
            "--distill-users",
            type=int,
            default=DistillationConfig().users_per_batch,
            help="users per batch given a candidate list (0: all)",
        )
        command.add_argument(
            "--distill-teacher",
            default=DistillationConfig().teacher.value,
            choices=[source.value for source in TeacherSource],
            help="search: the full model of the search split; phase: one full model per phase",
        )
        command.add_argument(
            "--from-scratch",
            action="store_true",
            help="run: a folder of its own (suffix -from-scratch) that copies no stage from "
            "earlier runs, so that one call times the whole pipeline",
        )
        command.add_argument(
            "--workers",
            type=int,
            default=1,
            help="processes for the pipeline's independent stages (same results)",
        )
        command.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "ablation":
            command.add_argument(
                "--variants",
                default=",".join(ABLATION_VARIANTS),
                help="comma-separated exploration variants",
            )
        if name == "shapes":
            command.add_argument(
                "--shapes",
                required=True,
                help="comma-separated: pop:<side>:<α>, floor:<side>:<f>:<pop|search>, "
                "search:<side>, shrink:<factor> (see shaped_sizes)",
            )
            command.add_argument(
                "--user-share",
                type=float,
                default=0.75,
                help="users' share of the budget for the shapes that split it",
            )
    report = commands.add_parser("report", help="rewrite the report from its JSON twin")
    report.add_argument("--dataset", default="ml-1m")
    merge = commands.add_parser("merge", help="append rows written with --results to the twin")
    merge.add_argument("--dataset", default="ml-1m")
    merge.add_argument("files", nargs="+")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if arguments.command == "report":
        write_report(arguments.dataset)
    elif arguments.command == "merge":
        target = results_path(arguments.dataset)
        added = merge_rows(target, [Path(f) for f in arguments.files])
        logger.info("merged %d rows into %s", added, target)
        write_report(arguments.dataset)
    elif arguments.command == "run":
        run(arguments)
    elif arguments.command == "ablation":
        ablation(arguments)
    elif arguments.command == "es-fit":
        es_control(arguments, fit=True)
    elif arguments.command == "es-control":
        es_control(arguments, fit=arguments.fit_shares)
    elif arguments.command == "shapes":
        shapes(arguments)
    elif arguments.command == "plots":
        plots(arguments)
    elif arguments.command == "spread-check":
        spread_check(arguments)
    else:
        paper_cost(arguments)


if __name__ == "__main__":
    main()
