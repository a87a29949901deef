"""The experiments of ``bench/experiments`` on the core's extension points, at a tiny scale."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from bench.experiments.evaluators import RetrainEvaluator, RetrainEvaluatorFactory
from bench.experiments.exploration import (
    VARIANTS,
    NoWalk,
    OrnsteinUhlenbeckNoise,
    OrnsteinUhlenbeckWalk,
    UniformNoise,
    UniformWalk,
)
from bench.experiments.layouts import PaddedScorer
from bench.experiments.penalty import (
    PENALTY_BOUNDS,
    PerBudgetPenalty,
    adjust_penalty,
    per_budget_search,
)
from bench.experiments.protocols import ReferenceProtocol, protocol_named
from bench.paper import PAPER_ABLATION_ML1M
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer, ScorerOptions
from ciess_core.data import DatasetSplit, Phase
from ciess_core.errors import ConfigError
from ciess_core.json_form import jsonable
from ciess_core.models import BackboneConfig, BackboneKind
from ciess_core.runs import Protocol, RunSpec, execute_run, run_sizes
from ciess_core.search import SearchConfig, random_walk, start_sizes
from ciess_core.search.files import BudgetFolder
from ciess_core.search.loop import SearchHooks, SearchInputs, run_search
from ciess_core.search.pipeline import build_evaluator, run_pipeline
from ciess_core.sizes import SizeAssignment, SizeScheme
from ciess_core.training import TrainConfig
from tests.test_artifact_scorer import build, export
from tests.test_search_pipeline import (
    check_the_test_phase_teacher_is_trained_once,
    check_two_workers_give_the_same_models_as_one,
    tiny_spec,
)

# --- exploration (spec §8 ablation) -------------------------------------------------------------


def test_the_ablation_has_the_papers_four_variants() -> None:
    assert set(VARIANTS) == {variant for _, variant in PAPER_ABLATION_ML1M}


def test_uniform_and_ornstein_uhlenbeck_noise() -> None:
    rng = np.random.default_rng(5)
    config = SearchConfig()
    uniform = UniformWalk().noise(10_000, config)
    assert isinstance(uniform, UniformNoise)
    draw = uniform.sample(rng)
    assert draw.min() >= -6.0 and draw.max() <= 6.0
    assert draw.std() == pytest.approx(6 / 3**0.5, rel=0.05)
    assert stats.kstest(draw, stats.uniform(-6, 12).cdf).pvalue > 1e-3
    ou = OrnsteinUhlenbeckWalk(theta=0.15).noise(10_000, config)
    assert isinstance(ou, OrnsteinUhlenbeckNoise)
    first, second = ou.sample(rng), ou.sample(rng)
    # x2 = 0.85·x1 + σ·z with x1 = σ·z': correlation 0.85 / √(0.85² + 1).
    assert np.corrcoef(first, second)[0, 1] == pytest.approx(0.85 / np.sqrt(0.85**2 + 1), abs=0.03)
    ou.reset()
    assert np.array_equal(ou.state, np.zeros(10_000))
    with pytest.raises(ConfigError, match="theta"):
        OrnsteinUhlenbeckWalk(theta=0.0)


def test_without_the_walk_the_noisy_start_is_the_size() -> None:
    rng = np.random.default_rng(4)
    states = np.zeros((1_000, 3), dtype=np.float32)
    mu, noise = np.full(1_000, 40.0), rng.normal(0, 6, 1_000)

    def prefers_large(state: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return size

    cpu, config = torch.device("cpu"), SearchConfig()
    walk_rng = np.random.default_rng(9)
    plain = NoWalk().sizes(mu, noise, states, prefers_large, config, walk_rng, cpu)
    assert np.array_equal(plain, start_sizes(mu, noise, 128))
    # No walk draws nothing: the generator is untouched.
    assert walk_rng.random() == np.random.default_rng(9).random()
    walked = VARIANTS["walk-gaussian"].sizes(
        mu, noise, states, prefers_large, config, np.random.default_rng(9), cpu
    )
    assert np.array_equal(walked, random_walk(plain, 5, 5, 128, np.random.default_rng(9)).max(1))


def _search_inputs(split: DatasetSplit) -> SearchInputs:
    train, _ = split.phase(Phase.SEARCH)
    return SearchInputs(
        popularity={
            "users": np.diff(train.indptr).astype(float),
            "items": np.bincount(train.indices, minlength=train.shape[1]).astype(float),
        },
        full_quality={"users": np.full(train.shape[0], 0.5), "items": np.full(train.shape[1], 0.5)},
    )


def test_each_variant_searches_and_the_gaussian_walk_is_the_default(
    clustered_split: DatasetSplit,
) -> None:
    spec = tiny_spec()
    inputs, evaluator = _search_inputs(clustered_split), build_evaluator(spec, clustered_split)
    fields = ("users_mean_size", "items_mean_size", "sparsity", "mean_quality")

    def trace(hooks: SearchHooks | None) -> list[list[float]]:
        outcome = run_search(spec.search, inputs, evaluator, hooks=hooks, progress=False)
        return [[row[field] for field in fields] for row in outcome.trace]

    default = trace(None)
    assert len(default) == spec.search.num_episodes * spec.search.iterations_per_episode
    for name, exploration in VARIANTS.items():
        found = trace(SearchHooks(exploration=exploration))
        assert len(found) == len(default)
        assert (found == default) is (name == "walk-gaussian"), name


# --- per-budget λ -------------------------------------------------------------------------------


def test_penalty_step_is_multiplicative_dual_ascent_within_bounds() -> None:
    # Too dense (sparsity below the budget) raises λ, too sparse lowers it, on target keeps it.
    assert adjust_penalty(0.4, 0.9, 0.8, step=4.0) == pytest.approx(0.4 * math.exp(0.4))
    assert adjust_penalty(0.4, 0.9, 0.95, step=4.0) == pytest.approx(0.4 * math.exp(-0.2))
    assert adjust_penalty(0.4, 0.9, 0.9, step=4.0) == pytest.approx(0.4, rel=1e-12)
    assert adjust_penalty(0.4, 0.9, 0.0, step=1e6) == pytest.approx(PENALTY_BOUNDS[1], rel=1e-12)
    assert adjust_penalty(0.4, 0.0, 0.9, step=1e6) == pytest.approx(PENALTY_BOUNDS[0], rel=1e-12)
    assert adjust_penalty(0.4, 0.9, 0.5, step=0.0) == pytest.approx(0.4, rel=1e-12)
    with pytest.raises(ConfigError, match="penalty"):
        adjust_penalty(0.0, 0.9, 0.5, step=1.0)


def test_per_budget_phases_run_loosest_budget_first_with_scaled_rewards() -> None:
    config, schedule = per_budget_search(
        SearchConfig(num_episodes=7, budgets=(0.95, 0.8, 0.9)), 1.0
    )
    # 7 episodes over 3 budgets: 3 per phase, 9 in all.
    assert (schedule.episodes_per_phase, config.num_episodes) == (3, 9)
    assert [schedule.phase_budget(e) for e in range(9)] == [0.8] * 3 + [0.9] * 3 + [0.95] * 3
    with pytest.raises(ConfigError, match="episode"):
        schedule.phase_budget(9)
    first = schedule(0, [])
    assert first == (config.reward_penalty, 1 / (1 + config.reward_penalty))
    # After an iteration at sparsity 0.5 in phase 0.8: one step up, rewards divided by 1 + λ.
    after = schedule(0, [{"episode": 1, "penalty": 3.0, "sparsity": 0.5}])
    assert after.weight == pytest.approx(3.0 * math.exp(0.3))
    assert after.scale == pytest.approx(1 / (1 + after.weight))
    with pytest.raises(ConfigError, match="λ"):
        PerBudgetPenalty((0.8,), 1, start=0.0, step=0.1)


def test_per_budget_search_steers_the_penalty_towards_each_budget(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    spec = tiny_spec()
    search, schedule = per_budget_search(spec.search, step=4.0)
    spec = dataclasses.replace(spec, search=search)
    summary = run_pipeline(
        spec, clustered_split, tmp_path, progress=False, hooks=SearchHooks(penalty=schedule)
    )
    trace = [
        json.loads(line) for line in (tmp_path / "search" / "trace.jsonl").read_text().splitlines()
    ]
    # 3 episodes over 2 budgets: 2 episodes per phase, the looser budget first.
    assert len(trace) == 4 * 4
    targets = [schedule.phase_budget(row["episode"] - 1) for row in trace]
    assert targets == [0.5] * 8 + [0.8] * 8
    assert trace[0]["penalty"] == search.reward_penalty
    for (before, target), after in zip(zip(trace, targets, strict=True), trace[1:], strict=False):
        # λ moved by exactly one dual step after every iteration, up when too dense.
        expected = np.clip(
            before["penalty"] * np.exp(schedule.step * (target - before["sparsity"])),
            *PENALTY_BOUNDS,
        )
        assert after["penalty"] == pytest.approx(expected)
    for row in trace:  # rewards divided by 1 + λ stay within [−1, 1] however large λ gets
        assert -1.0 <= row["users_mean_reward"] <= 1.0 and -1.0 <= row["items_mean_reward"] <= 1.0
    assert max(row["penalty"] for row in trace) > 10  # the tiny search cannot reach 0.8 quickly
    for budget in ("0.5", "0.8"):
        assert BudgetFolder(tmp_path / f"budget-{budget}").chosen().sparsity >= float(budget)
        assert summary["budgets"][budget]["test"]["recall@20"] > 0


class _InterruptError(Exception):
    pass


def test_an_interrupted_per_budget_search_resumes_with_its_penalty(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    """The schedule keeps no state: λ comes back from the trace the checkpoint restores."""
    search, schedule = per_budget_search(tiny_spec().search, step=4.0)
    inputs, evaluator = (
        _search_inputs(clustered_split),
        build_evaluator(tiny_spec(), clustered_split),
    )
    hooks = SearchHooks(penalty=schedule)
    straight = run_search(search, inputs, evaluator, hooks=hooks, progress=False)

    def stop_in_episode_three(row: dict) -> None:
        if row["episode"] == 3 and row["iteration"] == 1:
            raise _InterruptError

    checkpoint, trace = tmp_path / "checkpoint", tmp_path / "trace.jsonl"
    with pytest.raises(_InterruptError):
        run_search(
            search,
            inputs,
            evaluator,
            hooks=hooks,
            checkpoint_dir=checkpoint,
            trace_path=trace,
            progress=False,
            on_iteration=stop_in_episode_three,
        )
    resumed = run_search(
        search,
        inputs,
        evaluator,
        hooks=hooks,
        checkpoint_dir=checkpoint,
        trace_path=trace,
        progress=False,
    )
    fields = ("episode", "iteration", "penalty", "sparsity", "mean_quality")
    assert [[row[f] for f in fields] for row in resumed.trace] == [
        [row[f] for f in fields] for row in straight.trace
    ]
    with pytest.raises(ConfigError, match="trace_path"):  # λ could not come back without it
        run_search(search, inputs, evaluator, hooks=hooks, checkpoint_dir=checkpoint)


# --- the paper's evaluator ----------------------------------------------------------------------

BACKBONE = BackboneConfig(max_size=16)


def test_retrain_evaluator_gives_per_user_and_per_item_quality(
    clustered_split: DatasetSplit,
) -> None:
    train, valid = clustered_split.phase(Phase.SEARCH)
    training = TrainConfig(
        batch_size=256, max_batches=120, learning_rate=0.02, min_learning_rate=1e-3, seed=3
    )
    evaluator = RetrainEvaluator(train, valid, BACKBONE, training)
    evaluator.prepare()
    signal = evaluator.evaluate(SizeAssignment.equal(train.shape[0], train.shape[1], 8, 16))
    assert signal.user_eval.shape == (train.shape[0],)
    assert signal.item_eval.shape == (train.shape[1],)
    assert np.all((signal.user_eval >= 0) & (signal.user_eval <= 1))
    assert signal.metrics["recall@20"] > 0.5  # clustered data is easy to learn
    # Per item: the mean quality of its training users.
    item = 0
    users = train[:, item].nonzero()[0]
    assert signal.item_eval[item] == pytest.approx(signal.user_eval[users].mean())
    # Each candidate gets a model of its own, seeded apart: the same sizes score differently.
    assert evaluator.calls == 1
    again = evaluator.evaluate(SizeAssignment.equal(train.shape[0], train.shape[1], 8, 16))
    assert evaluator.calls == 2 and not np.array_equal(again.user_eval, signal.user_eval)
    with pytest.raises(ConfigError, match="does not fit a model"):
        evaluator.evaluate(SizeAssignment.equal(1, 2, 4, 16))


def test_a_pipeline_searches_with_the_papers_evaluator(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    factory = RetrainEvaluatorFactory(batches=20)
    summary = run_pipeline(
        tiny_spec(), clustered_split, tmp_path, progress=False, evaluator_factory=factory
    )
    trace = (tmp_path / "search" / "trace.jsonl").read_text().splitlines()
    assert len(trace) == 12
    assert not (tmp_path / "supernet").exists()  # no supernet was trained
    for budget in ("0.5", "0.8"):
        assert BudgetFolder(tmp_path / f"budget-{budget}").chosen().sparsity >= float(budget)
        assert 0.0 < summary["budgets"][budget]["test"]["recall@20"] <= 1.0
    with pytest.raises(ConfigError, match="supernet"):
        factory(dataclasses.replace(tiny_spec(), share_grid=(0.5,)), clustered_split, None)


# --- the reference protocol ---------------------------------------------------------------------


def test_the_reference_protocol_keeps_the_checkpoint_best_on_test(
    clustered_split: DatasetSplit,
) -> None:
    spec = RunSpec(
        dataset="generated",
        backbone=BACKBONE,
        training=TrainConfig(batch_size=128, max_batches=60, eval_every=10, patience=2, seed=3),
        size_scheme=SizeScheme.EQUAL,
        target_sparsity=0.5,
        protocol=protocol_named("reference"),
    )
    assert spec.protocol is ReferenceProtocol.REFERENCE and spec.protocol.selects_on == "test"
    sizes = run_sizes(spec, clustered_split.num_users, clustered_split.num_items)
    _, outcome, history = execute_run(spec, clustered_split, sizes, progress=False)
    assert set(outcome.stages) == {"reference"} and outcome.valid_metrics == {}
    assert {row["stage"] for row in history} == {"test"}
    best = max(history, key=lambda row: row["metrics"]["ndcg@20"])
    assert outcome.test_metrics == best["metrics"]
    assert outcome.selected_batches == best["batch"]
    # Written as the value string, in run folders and JSON alike.
    assert jsonable(spec)["protocol"] == jsonable(spec.protocol) == "reference"
    assert protocol_named("clean") is Protocol.CLEAN
    with pytest.raises(ConfigError, match="unknown protocol"):
        protocol_named("paper")


def test_a_reference_pipeline_picks_its_candidate_on_test(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    spec = dataclasses.replace(tiny_spec(), protocol=ReferenceProtocol.REFERENCE)
    summary = run_pipeline(spec, clustered_split, tmp_path, progress=False)
    assert summary["protocol"] == "reference"
    for budget in ("0.5", "0.8"):
        result = summary["budgets"][budget]
        assert result["protocol"] == "reference" and len(result["candidates"]) == 2
        best = max(result["candidates"], key=lambda run: run["test"]["ndcg@20"])
        assert result["chosen"] == best["candidate"] and result["valid"] == {}


def test_a_reference_test_phase_teacher_is_trained_once(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    check_the_test_phase_teacher_is_trained_once(
        clustered_split, tmp_path, ReferenceProtocol.REFERENCE
    )


def test_two_workers_give_the_same_reference_models_as_one(
    clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    # The protocol travels to the worker processes by name (an enum member), like the clean one.
    check_two_workers_give_the_same_models_as_one(
        clustered_split, tmp_path, ReferenceProtocol.REFERENCE
    )


# --- the padded scorer layout -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BackboneKind), ids=lambda kind: kind.value)
def test_the_padded_layout_scores_as_the_bucketed_one_with_more_work(
    kind: BackboneKind, clustered_split: DatasetSplit, tmp_path: Path
) -> None:
    train, _ = clustered_split.phase(Phase.TEST)
    count = clustered_split.num_users + clustered_split.num_items
    model = build(kind, train, np.random.default_rng(5).integers(1, 33, count))
    artifact = load_artifact(export(model, clustered_split, tmp_path / "a", verify_users=0))
    options = ScorerOptions(max_buckets=4, min_bucket_saving=0, threads=1)
    padded, bucketed = PaddedScorer(artifact, options), ArtifactScorer(artifact, options)
    # One bucket as wide as the widest row, and every user vector kept whole.
    assert len(padded.bucket_widths) == 1
    assert np.all(padded.index.user_widths == padded.index.users.shape[1])
    users = np.arange(artifact.manifest.num_users)
    np.testing.assert_allclose(
        padded.score_all(users), bucketed.score_all(users), rtol=1e-6, atol=1e-6
    )
    for batch in (users[:1], users):
        np.testing.assert_array_equal(
            padded.recommend(batch, 20)[0], bucketed.recommend(batch, 20)[0]
        )
    assert bucketed.index.layout.padded_elements <= padded.index.layout.padded_elements


def test_experiments_leave_the_product_defaults_alone() -> None:
    """Every hook's default is the paper's or the product's: no experiment is on by default."""
    hooks = SearchHooks()
    assert type(hooks.exploration) is type(VARIANTS["walk-gaussian"]) and hooks.penalty is None
    assert tiny_spec().protocol is Protocol.CLEAN
    assert ArtifactScorer.index_type is not PaddedScorer.index_type
