"""``ciess search``: the CIESS pipeline from the command line (resumable)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ciess_core.errors import ConfigError

logger = logging.getLogger("ciess")


def add_search_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "search",
        help="search a size for every user and item under one or more budgets (CIESS)",
        description="Train the full model, prepare the quality evaluator, run the TD3 search with "
        "random-walk exploration, then retrain the best assignments of every budget and test "
        "them. Rerun the same command with the same --out to resume after an interruption.",
    )
    parser.add_argument("--dataset", default="ml-1m", help="ml-1m, yelp2018 or a file path")
    parser.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR, ./data)")
    parser.add_argument("--backbone", default="lightgcn", choices=["lightgcn", "ngcf", "ncf"])
    parser.add_argument(
        "--budgets",
        default="0.8,0.9,0.95",
        help="target sparsities, comma-separated (default 0.8,0.9,0.95)",
    )
    parser.add_argument("--out", help="output directory (default runs/search-<dataset>-<backbone>)")
    parser.add_argument(
        "--evaluator",
        default="supernet",
        choices=["supernet", "retrain"],
        help="supernet (fast, default) or retrain (the paper's, slow)",
    )
    parser.add_argument("--episodes", type=int, default=30, help="episodes M (default 30)")
    parser.add_argument("--iterations", type=int, default=10, help="iterations per episode T")
    parser.add_argument(
        "--reward-penalty", type=float, help="λ (default: the dataset's, 0.4 ML-1M, 0.2 Yelp2018)"
    )
    parser.add_argument(
        "--penalty-control",
        default="fixed",
        choices=["fixed", "per-budget"],
        help="fixed: one λ and one search for every budget (the paper's); per-budget: one phase "
        "per budget with λ steered until the search's sparsity reaches it",
    )
    parser.add_argument(
        "--penalty-step",
        type=float,
        default=0.1,
        help="per-budget λ step η: λ ← λ·exp(η·(budget − sparsity)) (default 0.1)",
    )
    parser.add_argument(
        "--policy-rollouts",
        action="store_true",
        help="after every episode also score the actors' own sizes, without exploration noise",
    )
    parser.add_argument(
        "--fit-shares",
        action="store_true",
        help="before retraining, refit each budget's assignments with the users' share of the "
        "budget at 0.30, 0.35, …, 0.95 and keep the variants the supernet scores best on "
        "validation",
    )
    parser.add_argument(
        "--equal-candidate",
        action="store_true",
        help="also retrain per-side equal sizes at each budget (share-fitted with --fit-shares) "
        "and keep whichever candidate the protocol's pick prefers; the result says which kind",
    )
    parser.add_argument(
        "--even-tolerance",
        type=float,
        default=0.0,
        help="with --fit-shares: variants scoring within this relative tolerance of the best "
        "(e.g. 0.002) count as tied, and the one whose sizes spread least within each side is "
        "retrained first (0: pure score order)",
    )
    parser.add_argument(
        "--fit-spread",
        action="store_true",
        help="with --fit-shares: also try each side's spread of sizes shrunk towards its mean "
        "(factors 0, 0.5, 1 per side) on the best share-fitted variants",
    )
    parser.add_argument(
        "--selection-share",
        type=float,
        default=0.0,
        help="with --fit-shares: the fraction of every user's validation interactions held out "
        "from the search, on which the fits score their variants (e.g. 0.5; 0: off, one "
        "validation set for the search and the fits)",
    )
    parser.add_argument("--noise", default="gaussian", choices=["gaussian", "ou", "uniform"])
    parser.add_argument("--no-random-walk", action="store_true", help="ablation: no random walk")
    parser.add_argument(
        "--item-quality",
        default="users",
        choices=["users", "own"],
        help="an item's quality: its training users' eval (users, the paper's) or its own ranks "
        "for its validation users (own)",
    )
    parser.add_argument("--supernet-batches", type=int, default=3000)
    parser.add_argument("--finetune-batches", type=int, default=0)
    parser.add_argument(
        "--retrain-batches",
        type=int,
        default=1500,
        help="batches per candidate with --evaluator retrain",
    )
    parser.add_argument(
        "--retrain-top", type=int, default=3, help="assignments retrained per budget"
    )
    parser.add_argument(
        "--distill",
        action="store_true",
        help="retrain the chosen assignments with distillation from the full model",
    )
    parser.add_argument(
        "--distill-weight", type=float, default=1.0, help="weight of the distillation term"
    )
    parser.add_argument(
        "--distill-temperature", type=float, default=1.0, help="softmax temperature τ"
    )
    parser.add_argument(
        "--distill-users",
        type=int,
        default=2048,
        help="users of each batch given the teacher's candidate list (0: all)",
    )
    parser.add_argument(
        "--distill-teacher",
        default="search",
        choices=["search", "phase"],
        help="search: the full model of the search split teaches every phase; phase: the test "
        "phase gets its own full model, trained on train + validation (one more training)",
    )
    parser.add_argument("--protocol", default="clean", choices=["clean", "reference"])
    parser.add_argument("--max-batches", type=int, default=3000, help="full model / retraining")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes for independent stages (the test phase's teacher beside the search, the "
        "budgets' retrainings beside each other); each takes its share of the threads. Same "
        "results; 2 suits a 2-core machine",
    )
    parser.add_argument("--no-progress", action="store_true")


def run_search_command(arguments: argparse.Namespace) -> int:
    from ciess_core.data import DATASETS, open_dataset, split_per_user
    from ciess_core.models import BackboneConfig, BackboneKind
    from ciess_core.runs import Protocol, jsonable
    from ciess_core.search.config import (
        ExplorationNoise,
        ItemQuality,
        PenaltyControl,
        SearchConfig,
    )
    from ciess_core.search.fit import DEFAULT_SHARE_GRID, DEFAULT_SPREAD_GRID
    from ciess_core.search.pipeline import (
        EvaluatorKind,
        PipelineSpec,
        run_pipeline,
    )
    from ciess_core.search.plots import plot_search_run
    from ciess_core.training import TrainConfig
    from ciess_core.training.distillation import DistillationConfig, TeacherSource

    try:
        budgets = tuple(float(value) for value in arguments.budgets.split(","))
    except ValueError:
        raise ConfigError(
            f"--budgets must be comma-separated numbers, got '{arguments.budgets}'"
        ) from None
    penalty = arguments.reward_penalty
    if penalty is None:
        known = DATASETS.get(arguments.dataset.lower())
        penalty = known.reward_penalty if known is not None else 0.4
    noise = {
        "gaussian": ExplorationNoise.GAUSSIAN,
        "ou": ExplorationNoise.ORNSTEIN_UHLENBECK,
        "uniform": ExplorationNoise.UNIFORM,
    }[arguments.noise]
    backbone = BackboneConfig.default_for(BackboneKind(arguments.backbone))
    training = TrainConfig(
        max_batches=arguments.max_batches,
        eval_every=arguments.eval_every,
        patience=arguments.patience,
        seed=arguments.seed,
        device=arguments.device,
    )
    search = SearchConfig(
        num_episodes=arguments.episodes,
        iterations_per_episode=arguments.iterations,
        reward_penalty=penalty,
        penalty_control=PenaltyControl(arguments.penalty_control),
        penalty_step=arguments.penalty_step,
        policy_rollouts=arguments.policy_rollouts,
        exploration_noise=noise,
        random_walk=not arguments.no_random_walk,
        item_quality=ItemQuality(arguments.item_quality),
        budgets=budgets,
        seed=arguments.seed,
        device=arguments.device,
    )
    spec = PipelineSpec(
        dataset=arguments.dataset,
        backbone=backbone,
        training=training,
        search=search,
        evaluator=EvaluatorKind(arguments.evaluator),
        supernet_batches=arguments.supernet_batches,
        finetune_batches=arguments.finetune_batches,
        retrain_batches=arguments.retrain_batches,
        retrain_top=min(arguments.retrain_top, search.pool_size),
        protocol=Protocol(arguments.protocol),
        share_grid=DEFAULT_SHARE_GRID if arguments.fit_shares else (),
        distillation=(
            DistillationConfig(
                weight=arguments.distill_weight,
                temperature=arguments.distill_temperature,
                users_per_batch=arguments.distill_users,
                teacher=TeacherSource(arguments.distill_teacher),
            )
            if arguments.distill
            else None
        ),
        equal_candidate=arguments.equal_candidate,
        even_tolerance=arguments.even_tolerance,
        spread_grid=DEFAULT_SPREAD_GRID if arguments.fit_spread else (),
        selection_share=arguments.selection_share,
    )
    out = Path(arguments.out or f"runs/search-{Path(arguments.dataset).stem}-{arguments.backbone}")
    out.mkdir(parents=True, exist_ok=True)
    described = _describe(spec)
    spec_path = out / "spec.json"
    stored = json.loads(spec_path.read_text()) if spec_path.exists() else None
    if stored is not None:  # a search from before an option ran with the option's default
        for name, default in jsonable(SearchConfig()).items():
            stored.get("search", {}).setdefault(name, default)
        stored.setdefault("share_grid", [])
        stored.setdefault("distillation", None)
        stored.setdefault("equal_candidate", False)
        stored.setdefault("even_tolerance", 0.0)
        stored.setdefault("spread_grid", [])
        stored.setdefault("selection_share", 0.0)
    if stored is not None and stored != described:
        raise ConfigError(
            f"{out} holds a search with other settings ({spec_path}); "
            "choose another --out to start a new one"
        )
    spec_path.write_text(json.dumps(described, indent=1) + "\n")
    data = open_dataset(arguments.dataset, arguments.data_dir)
    split = split_per_user(data, seed=42)
    summary = run_pipeline(
        spec,
        split,
        out,
        progress=not arguments.no_progress,
        dataset_fingerprint=data.fingerprint(),
        workers=arguments.workers,
    )
    try:
        plot_search_run(out, split.train, budgets, out)
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'ciess[train]')")
    print(f"search: {out}")
    for budget, result in summary["budgets"].items():
        test = result["test"]
        print(
            f"budget {budget}: sparsity {result['achieved_sparsity']:.4f}  "
            f"test R@20 {test['recall@20']:.4f}  N@20 {test['ndcg@20']:.4f}  ({result['protocol']}"
            f"{', equal sizes kept' if result.get('chosen_kind') == 'equal' else ''})"
        )
        if (out / f"budget-{budget}" / "run").is_dir():
            print(f"  export: ciess export {out / f'budget-{budget}' / 'run'} --out ARTIFACT_DIR")
    return 0


def _describe(spec: Any) -> dict[str, Any]:
    from ciess_core.runs import jsonable

    described: dict[str, Any] = jsonable(spec)
    return described
