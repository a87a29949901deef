"""The statistics of ``bench/serving_types.py``: the median's interval and the verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from bench.serving_types import interval_coverage, median_interval, summarise


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
