"""The statistics of ``bench/serving_types.py``: the median's interval and the verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.serving_types import (
    POOLED_COVERAGE,
    interval_coverage,
    load_runs,
    median_interval,
    pooled_by_setup,
    pooled_summary,
    summarise,
)


@pytest.mark.parametrize(
    ("count", "low", "high", "coverage"),
    [
        (5, 1, 5, 1 - 2 / 32),  # no narrower interval reaches 95 %: the whole range
        (10, 2, 9, 1 - 2 * 11 / 1024),  # P(B(10, 1/2) <= 1) = 11/1024
        (20, 6, 15, 0.9586105),
    ],
)
def test_the_median_interval_takes_the_binomial_ranks(
    count: int, low: int, high: int, coverage: float
) -> None:
    values = [float(v) for v in range(count, 0, -1)]  # unsorted on purpose
    median, found_low, found_high = median_interval(values)
    assert (found_low, found_high) == (low, high)
    assert median == (count + 1) / 2
    assert interval_coverage(count) == pytest.approx(coverage, abs=1e-7)


def _rows(ratios: list[float], p99_ratios: list[float]) -> list[dict[str, Any]]:
    rows = []
    for number, (ratio, p99) in enumerate(zip(ratios, p99_ratios, strict=True)):
        for value_type, rps, latency in (("float32", 1000.0, 2.0), ("int8", 1000 * ratio, 2 * p99)):
            rows.append(
                {
                    "round": number,
                    "value_type": value_type,
                    "throughput_rps": rps,
                    "p99_ms": latency,
                    "server_cpu_ms_per_request": 0.2,
                }
            )
    return rows


def test_verdicts_judge_the_intervals_bound_against_the_margins() -> None:
    even = [0.99, 1.01, 1.0, 0.98, 1.02, 1.0, 0.995, 1.005, 1.0, 1.0]
    level = summarise(_rows(even, even), margin=0.03, p99_margin=0.10)["int8"]
    assert level["throughput_ratio"] == {"median": 1.0, "low": 0.99, "high": 1.01}
    assert level["throughput_not_lower"] and level["p99_not_higher"]
    slower = [r - 0.05 for r in even]
    behind = summarise(_rows(slower, [r + 0.2 for r in even]), margin=0.03, p99_margin=0.10)
    assert not behind["int8"]["throughput_not_lower"]
    assert not behind["int8"]["p99_not_higher"]


def _run(ratios: list[float], p99_ratios: list[float], **setup: Any) -> dict[str, Any]:
    return {
        "setup": {"margin": 0.03, "p99_margin": 0.10, **setup},
        "rows": _rows(ratios, p99_ratios),
    }


def test_runs_pool_their_rounds_at_the_wider_interval() -> None:
    first = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.03, 0.97, 1.0, 1.01]
    second = [1.0 + (i % 5 - 2) / 100 for i in range(20)]
    pooled = pooled_summary([_run(first, first), _run(second, second)])
    assert pooled is not None
    assert pooled["rounds"] == 30  # the second run's rounds 0..9 do not overwrite the first's
    assert pooled["coverage"] >= POOLED_COVERAGE
    ratios = sorted(first + second)
    rank = 8  # P(B(30, 1/2) <= 7) = 0.0026 <= 0.005 < P(B(30, 1/2) <= 8)
    assert pooled["int8"]["throughput_ratio"]["low"] == ratios[rank - 1]
    assert pooled["int8"]["p99_ratio"]["high"] == ratios[len(ratios) - rank]


def test_a_single_run_or_runs_of_other_setups_do_not_pool() -> None:
    even = [1.0] * 10
    assert pooled_summary([_run(even, even)]) is None
    assert pooled_summary([_run(even, even), _run(even, even, seconds=20)]) is None


def test_pooling_groups_runs_by_setup_and_a_missing_key_counts_at_its_old_value() -> None:
    even = [1.0 + (i % 3 - 1) / 100 for i in range(10)]
    old = _run(even, even)  # recorded before fresh_servers existed
    same = _run(even, even, fresh_servers=False)
    fresh = _run(even, even, fresh_servers=True)
    pooled = pooled_by_setup([old, fresh, same])
    assert [group["runs"] for group in pooled] == [[1, 3]]
    assert pooled[0]["rounds"] == 20
    assert pooled_by_setup([old, fresh]) == []
    assert [group["runs"] for group in pooled_by_setup([fresh, old, fresh])] == [[1, 3]]


def test_load_runs_reads_the_first_runs_single_report(tmp_path: Path) -> None:
    path = tmp_path / "serving-types.json"
    assert load_runs(path) == []
    path.write_text(json.dumps({"setup": {}, "rows": []}))
    assert load_runs(path) == [{"setup": {}, "rows": []}]
    path.write_text(json.dumps({"runs": [{"a": 1}, {"b": 2}], "pooled": None}))
    assert load_runs(path) == [{"a": 1}, {"b": 2}]
