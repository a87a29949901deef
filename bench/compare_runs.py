"""Two pipeline folders of the same recipe, stage by stage: where do their results part?

Usage:
    python bench/compare_runs.py bench/_work/scale-out-processes-2 bench/_work/scale-out-ray-2-full

For every stage the pipeline writes (the full model, the phase teachers, the supernet, the
search's pool, each budget's fits, candidates, pick and deployment model) it prints whether the
two folders hold the same thing: identical weights, or the largest absolute difference of any
weight; for a candidate its selected batch count and validation N@20; for a budget its pick and
test N@20. The first stage that differs is where an executor, a thread count or a machine
changed the floats; every stage after it inherits the difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODELS = ("full/model.pt", "teacher/model.pt", "teacher-deploy/model.pt", "supernet/supernet.pt")


def _state(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def weight_difference(first: Path, second: Path) -> str:
    """'identical', or the largest absolute difference over the tensors both files hold."""
    if not first.exists() or not second.exists():
        return "missing in " + ("both" if first.exists() == second.exists() else "one")
    if first.read_bytes() == second.read_bytes():
        return "identical"
    a, b = _state(first), _state(second)
    if a.keys() != b.keys():
        return f"different tensors: {sorted(a.keys() ^ b.keys())}"
    largest = max(
        (float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel()),
        default=0.0,
    )
    return "same values" if largest == 0.0 else f"max |difference| {largest:.3g}"


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _arrays_equal(first: Path, second: Path) -> bool:
    if not first.exists() or not second.exists():
        return first.exists() == second.exists()
    with np.load(first) as a, np.load(second) as b:
        return a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def _candidate(record: dict[str, Any] | None) -> str:
    if record is None:
        return "–"
    valid = record.get("valid", {}).get("ndcg@20")
    shown = f"{valid:.6f}" if valid is not None else "–"
    return f"{record['kind']}, {record.get('selected_batches')} batches, valid N@20 {shown}"


def compare(first: Path, second: Path) -> list[tuple[str, str]]:
    """(stage, verdict) for every stage of the two folders, in the pipeline's order."""
    rows = [(name, weight_difference(first / name, second / name)) for name in MODELS]
    rows.append(
        (
            "search/pool",
            "same"
            if _json(first / "search/pool/pool.json") == _json(second / "search/pool/pool.json")
            else "different",
        )
    )
    budgets = sorted({p.name for p in [*first.glob("budget-*"), *second.glob("budget-*")]})
    for budget in budgets:
        a, b = first / budget, second / budget
        for fit in ("fit.json", "equal-fit.json"):
            same = _json(a / fit) == _json(b / fit)
            rows.append((f"{budget}/{fit}", "same" if same else "different"))
        for index in range(len(list(a.glob("candidate_*.json")))):
            name = f"candidate_{index}"
            sizes = (
                "same sizes"
                if _arrays_equal(a / f"{name}.npz", b / f"{name}.npz")
                else "sizes differ"
            )
            records = [_json(folder / f"{name}.json") for folder in (a, b)]
            rows.append(
                (
                    f"{budget}/{name}",
                    f"{sizes}; {_candidate(records[0])} | {_candidate(records[1])}",
                )
            )
        results = [_json(folder / "result.json") or {} for folder in (a, b)]
        picks = " | ".join(
            f"{r.get('chosen_kind')}, test N@20 {r.get('test', {}).get('ndcg@20', float('nan')):.6f}"
            for r in results
        )
        rows.append((f"{budget}/result", picks))
        rows.append(
            (f"{budget}/run/model.pt", weight_difference(a / "run/model.pt", b / "run/model.pt"))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="a pipeline folder")
    parser.add_argument("second", type=Path, help="another pipeline folder of the same recipe")
    arguments = parser.parse_args()
    print(f"| stage | {arguments.first.name} against {arguments.second.name} |")
    print("|---|---|")
    for stage, verdict in compare(arguments.first, arguments.second):
        print(f"| {stage} | {verdict} |")


if __name__ == "__main__":
    main()
