"""``docs/benchmarks/bytes.md`` and its plots from the rows of ``bench/byte_budgets.py``."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

METHOD_ORDER = ("full", "ptq", "magprune", "es", "mr", "ciess", "planner")
METHOD_TEXT = {
    "full": "full model, float32",
    "ptq": "full model quantised after training",
    "magprune": "magnitude pruning (sparse, column indices counted)",
    "es": "equal sizes, float32, plain BPR",
    "mr": "mixed random sizes, float32, plain BPR",
    "ciess": "CIESS as the paper defines it (searched sizes, float32, plain BPR)",
    "planner": "the product: byte planner (value type × sizes, distilled)",
}
BARS_APPLY_TO = ("ml-1m", "lightgcn")
"""The dataset and backbone whose rows the issue sets its quality bars on."""
KEPT_BARS = ((0.05, 0.99), (0.01, 0.95))
"""(ratio, share of the full model's N@20 the planner must keep there), clean protocol."""
PAPER_CIESS_80 = {"recall@20": 0.2436, "ndcg@20": 0.4257}
"""The paper's CIESS on ML-1M LightGCN at 80 % sparsity (`../shared/spec/CIESS.md`, reference protocol)."""


def _started(run_id: str) -> str:
    """When run ``run_id`` started: its id ends in a UTC time (``…-20261206T175906Z``)."""
    return run_id.rsplit("-", 1)[-1]


def write_bytes_report(rows: list[dict[str, Any]], reports: Path) -> None:
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:  # one section per run: its methods are compared within it
        groups[(row["dataset"], row["backbone"], row["protocol"], row["run_id"])].append(row)
    lines = [
        "# Quality per byte: the byte planner against the methods practitioners pick",
        "",
        "Every stored byte of the embedding stores is counted (values, per-row scales, sizes, "
        "column indices of a sparse store, file headers); `ratio` is the budget as a share of "
        "the dense float32 tables' bytes, `bytes` what the method stores (never above the "
        "budget). N@20 and R@20 are test numbers; `of full` compares N@20 with the full "
        "float32 model of the same run. Written by `python bench/byte_budgets.py report` from "
        "`bytes.json`; the clean protocol's rows are the product's numbers.",
        "",
        "Methods:",
        "",
        *[f"- `{method}`: {text}" for method, text in METHOD_TEXT.items()],
        "",
    ]
    lines += _summary(groups)
    newest_first = sorted(groups, key=lambda key: _started(key[3]), reverse=True)
    for key in sorted(newest_first, key=lambda key: key[:3]):
        lines += _section(*key[:3], groups[key], reports)
    notes = reports / "bytes.notes.md"
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    (reports / "bytes.md").write_text("\n".join(lines))


def _summary(groups: dict[tuple[str, str, str, str], list[dict[str, Any]]]) -> list[str]:
    """Per dataset, backbone and protocol, the planner's test N@20 at each ratio as a share of
    its run's full model, from the newest run holding that ratio, and whether it is at or
    above every other method of that run there."""
    newest: dict[tuple[str, str, str], dict[float, tuple[dict[str, Any], list[dict[str, Any]]]]]
    newest = defaultdict(dict)
    for key in sorted(groups, key=lambda key: _started(key[3])):  # later runs overwrite earlier
        rows = groups[key]
        for row in rows:
            if row["method"] == "planner":
                newest[key[:3]][row["byte_ratio"]] = (row, rows)
    if not newest:
        return []
    ratios = sorted({ratio for found in newest.values() for ratio in found}, reverse=True)
    lines = [
        "## Summary",
        "",
        "The planner's test N@20 as a share of the full float32 model's, from the newest run "
        "with that ratio (its section below); `*`: another method of that run scores higher "
        "there.",
        "",
        "| dataset | backbone | protocol | " + " | ".join(f"{r:g}" for r in ratios) + " |",
        "|---|---|---|" + "---|" * len(ratios),
    ]
    for (dataset, backbone, protocol), found in sorted(newest.items()):
        cells = []
        for ratio in ratios:
            if ratio not in found:
                cells.append("–")
                continue
            row, rows = found[ratio]
            full = next((r for r in rows if r["method"] == "full"), None)
            score = row["metrics"]["ndcg@20"]
            beaten = any(
                r["byte_ratio"] == ratio
                and r["method"] not in ("planner", "full")
                and r["metrics"]["ndcg@20"] > score
                for r in rows
            )
            share = "" if full is None else f" ({score / full['metrics']['ndcg@20']:.1%})"
            cells.append(f"{score:.4f}{share}{' *' if beaten else ''}")
        lines.append(f"| {dataset} | {backbone} | {protocol} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _section(
    dataset: str, backbone: str, protocol: str, rows: list[dict[str, Any]], reports: Path
) -> list[str]:
    first = rows[0]
    label = " (reference protocol: compares with published tables only)" * (protocol != "clean")
    full = next((r for r in rows if r["method"] == "full"), None)
    lines = [
        f"## {dataset}, {backbone}, {protocol} protocol{label}",
        "",
        f"Run `{first['run_id']}` on {first['machine']}, {first['date']}, device "
        f"`{first['device']}`: `{first['command']}`. Dense float32 tables: "
        f"{first['dense_fp32_bytes']:,} bytes.",
        "",
        "| ratio | method | value type | bytes | R@20 | N@20 | of full | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def order(row: dict[str, Any]) -> tuple[float, int]:
        ratio = row["byte_ratio"]
        return (-(ratio if ratio is not None else 2.0), METHOD_ORDER.index(row["method"]))

    for row in sorted(rows, key=order):
        metrics = row["metrics"]
        share = "" if full is None else f"{metrics['ndcg@20'] / full['metrics']['ndcg@20']:.1%}"
        ratio = "—" if row["byte_ratio"] is None else f"{row['byte_ratio']:g}"
        extra = f" (minimum {row['row_minimum']} a row)" if "row_minimum" in row else ""
        extra += f" ({row['chosen_kind']} sizes)" if "chosen_kind" in row else ""
        lines.append(
            f"| {ratio} | {row['method']}{extra} | {row['value_type']} | {row['bytes']:,} | "
            f"{metrics['recall@20']:.4f} | {metrics['ndcg@20']:.4f} | {share} | "
            f"{row['seconds']:.0f} |"
        )
    lines += ["", *_bars(rows, full, protocol, (dataset, backbone) == BARS_APPLY_TO), ""]
    plot = _plot(dataset, backbone, protocol, rows, reports)
    if plot is not None:
        lines += [f"![N@20 against stored bytes]({plot})", ""]
    return lines


def _bars(
    rows: list[dict[str, Any]], full: dict[str, Any] | None, protocol: str, barred: bool
) -> list[str]:
    """The issue's bars, checked on these rows; with ``barred`` False (another dataset or
    backbone than the bars are set on) the shares kept are stated without a verdict."""
    planner = {r["byte_ratio"]: r for r in rows if r["method"] == "planner"}
    lines = ["Checks:", ""]
    beaten = [
        f"{r['method']} at {r['byte_ratio']:g}"
        for r in rows
        if r["method"] not in ("planner", "full")
        and r["byte_ratio"] in planner
        and r["metrics"]["ndcg@20"] > planner[r["byte_ratio"]]["metrics"]["ndcg@20"]
    ]
    lines.append(
        "- the planner at or above every method at every ratio (N@20): "
        + ("yes" if not beaten else f"no, below {', '.join(beaten)}")
    )
    if full is not None:
        for ratio, bar in KEPT_BARS:
            if ratio not in planner:
                continue
            kept = planner[ratio]["metrics"]["ndcg@20"] / full["metrics"]["ndcg@20"]
            if barred and protocol == "clean":  # the kept-share bars are the clean protocol's
                verdict = "yes" if kept >= bar else "no"
                lines.append(
                    f"- the planner at {ratio:g} keeps ≥ {bar:.0%} of the full model's N@20: "
                    f"{verdict} ({kept:.1%})"
                )
            else:
                lines.append(
                    f"- the planner at {ratio:g} keeps {kept:.1%} of the full model's N@20 "
                    f"(the issue's {bar:.0%} bar is set on {' '.join(BARS_APPLY_TO)}, clean "
                    "protocol)"
                )
    if barred and protocol == "reference" and 0.05 in planner:
        metrics = planner[0.05]["metrics"]
        reached = all(metrics[k] >= v for k, v in PAPER_CIESS_80.items())
        lines.append(
            "- the planner at 0.05 reaches the paper's CIESS at 80 % (R@20 0.2436, N@20 0.4257, "
            f"paper numbers): {'yes' if reached else 'no'} (R@20 {metrics['recall@20']:.4f}, "
            f"N@20 {metrics['ndcg@20']:.4f})"
        )
    return lines


def _plot(
    dataset: str, backbone: str, protocol: str, rows: list[dict[str, Any]], reports: Path
) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(dataset).name)
    stamp = rows[0]["run_id"].rsplit("-", 1)[-1]  # the run's start, one plot per run
    name = f"plots/bytes-{stem}-{backbone}-{protocol}-{stamp}.png"
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method in METHOD_ORDER:
        points = sorted(
            (r["bytes"], r["metrics"]["ndcg@20"]) for r in rows if r["method"] == method
        )
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        style = "o" if method == "full" else "-o"
        axes.plot(xs, ys, style, label=method, linewidth=2.5 if method == "planner" else 1.2)
    axes.set_xscale("log")
    axes.set_xlabel("stored embedding bytes (log scale)")
    axes.set_ylabel("test N@20")
    axes.set_title(f"{dataset} {backbone}, {protocol} protocol, run {stamp}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    (reports / "plots").mkdir(exist_ok=True)
    figure.savefig(reports / name, dpi=110)
    plt.close(figure)
    return name
