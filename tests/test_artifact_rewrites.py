"""The models an artifact gives without training: each measured type and turned cut with its
stored bytes, malformed records skipped, the best-within-bytes frontier, and ``ciess inspect``
showing it."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ciess_core.artifact.manifest import Manifest
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.requantise import requantise_artifact, requantised_bytes
from ciess_core.artifact.rewrites import Rewrite, best_within, measured_rewrites
from ciess_core.artifact.summary import summarize
from ciess_core.artifact.turned import turned_bytes
from ciess_core.storage import VALUE_TYPES
from tests.test_artifact_turned import source  # noqa: F401  (the float32 LightGCN artifact)


def _measured(value: float) -> dict[str, float]:
    return {"ndcg@20": value, "recall@20": value / 2}


def _with_metrics(manifest: Manifest, **metrics: object) -> Manifest:
    return dataclasses.replace(manifest, metrics={**manifest.metrics, **metrics})


def test_every_measured_type_and_cut_with_its_bytes(source: Path) -> None:  # noqa: F811
    manifest = _with_metrics(
        load_artifact(source).manifest,
        valid_by_value_type={t: _measured(0.3 - 0.01 * i) for i, t in enumerate(VALUE_TYPES)},
        valid_turned={
            "int4": {"5": _measured(0.2), "3": _measured(0.1)},
            "int8": {"x": _measured(0.2), "999": _measured(0.2), "0": _measured(0.2)},
            "bogus": {"5": _measured(0.2)},
            "int4-table": {"4": {"ndcg@20": "high"}, "2": []},
            "float16": ["5"],
        },
    )
    rewrites = measured_rewrites(manifest)
    stored = [r for r in rewrites if r.width is None]
    assert [r.value_type for r in stored] == list(VALUE_TYPES)
    assert all(r.bytes == requantised_bytes(manifest, r.value_type) for r in stored)
    assert stored[0].metrics == _measured(0.3)
    turned = [(r.value_type, r.width, r.bytes) for r in rewrites if r.width is not None]
    assert turned == [
        ("int4", 5, turned_bytes(manifest, 5, "int4")),
        ("int4", 3, turned_bytes(manifest, 3, "int4")),
    ]


def test_a_quantised_artifact_gives_its_own_type_only_and_no_cut(
    source: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    requantise_artifact(source, "int8", tmp_path / "int8")
    manifest = _with_metrics(
        load_artifact(tmp_path / "int8").manifest,
        valid_by_value_type={t: _measured(0.3) for t in VALUE_TYPES},
        valid_turned={"int4": {"5": _measured(0.2)}},
    )
    assert [(r.value_type, r.width) for r in measured_rewrites(manifest)] == [("int8", None)]
    assert measured_rewrites(_with_metrics(manifest, valid_by_value_type=[1, 2])) == []


_REWRITES = st.lists(
    st.builds(
        Rewrite,
        value_type=st.sampled_from(VALUE_TYPES),
        bytes=st.integers(1, 50),
        metrics=st.fixed_dictionaries({"ndcg@20": st.integers(0, 20).map(lambda v: v / 20)}),
        width=st.none() | st.integers(1, 8),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(_REWRITES)
def test_the_frontier_holds_the_best_within_every_budget(rewrites: list[Rewrite]) -> None:
    frontier = best_within(rewrites, lambda r: r.bytes, lambda r: r.metrics["ndcg@20"])
    assert all(r in rewrites for r in frontier)
    for earlier, later in itertools.pairwise(frontier):
        assert earlier.bytes < later.bytes
        assert earlier.metrics["ndcg@20"] < later.metrics["ndcg@20"]
    for budget in range(0, 52):
        fitting = [r for r in rewrites if r.bytes <= budget]
        within = [r for r in frontier if r.bytes <= budget]
        assert bool(fitting) == bool(within)
        if within:  # the last within the budget: the best score, in the fewest bytes
            best = max(r.metrics["ndcg@20"] for r in fitting)
            assert within[-1].metrics["ndcg@20"] == best
            assert within[-1].bytes == min(r.bytes for r in fitting if r.metrics["ndcg@20"] == best)


def test_inspect_shows_the_frontier(source: Path) -> None:  # noqa: F811
    artifact = load_artifact(source)
    assert "without training" not in summarize(artifact)
    as_it_is = _with_metrics(artifact.manifest, valid_by_value_type={"float32": _measured(0.3)})
    assert "without training" not in summarize(dataclasses.replace(artifact, manifest=as_it_is))
    manifest = _with_metrics(
        artifact.manifest,
        valid_by_value_type={"float32": _measured(0.30), "int8": _measured(0.31)},
        valid_turned={"int4": {"5": _measured(0.28), "3": _measured(0.25)}},
    )
    text = summarize(dataclasses.replace(artifact, manifest=manifest))
    section = text.split("without training")[1].split("export check")[0]
    shown = section.splitlines()[2:]  # the title's end, the column heads
    assert len(shown) == 3 and "float32" not in section  # int8 stores less and validates better
    assert shown[0].split()[2:4] == ["int8", "ndcg@20=0.3100"]
    assert "int4, turned and cut to 5 " in shown[1] and "int4, turned and cut to 3 " in shown[2]
    assert int(shown[2].split()[0].replace(",", "")) == turned_bytes(manifest, 3, "int4")
