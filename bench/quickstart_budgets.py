"""The quickstart's budget: a byte budget (the planner) against the paper's sparsity, on the
quickstart's short recipe.

Usage:
    python bench/quickstart_budgets.py --data-dir ../shared/data [--bytes 0.05] [--sparsity 0.9]

Runs what ``scripts/run.sh`` builds its first artifact with, once per budget, each in a fresh
folder: ``ciess search --dataset ml-1m --backbone lightgcn --config
scripts/quickstart-recipe.toml --workers 2`` with ``--budget-bytes`` and with ``--budgets``, one
after the other, each in a folder of its own (so that neither copies the other's stages),
timed from the command's start to its exit. Each row takes the chosen model's
stored bytes, value type and test numbers from the folder's ``summary.json``. Writes
``docs/benchmarks/quickstart-budgets.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import provenance, save_json
from cli_help import DefaultsHelp

from ciess_core.search.files import chosen_candidate

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "docs" / "benchmarks"
RECIPE = ROOT / "scripts" / "quickstart-recipe.toml"


def run_budget(flag: str, value: str, data_dir: str, folder: Path) -> dict[str, Any]:
    """One ``ciess search`` of the quickstart at one budget, timed; its chosen model's row."""
    command = [
        sys.executable, "-m", "ciess_core.cli", "search", "--dataset", "ml-1m",
        "--backbone", "lightgcn", flag, value, "--config", str(RECIPE), "--workers", "2",
        "--out", str(folder),
    ]  # fmt: skip
    environment = {**os.environ, "CIESS_DATA_DIR": data_dir}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    summary = json.loads((folder / "summary.json").read_text())
    (label, result), *_ = summary["budgets"].items()
    chosen = chosen_candidate(result)
    return {
        "budget": f"{flag} {value}",
        "folder": label,
        "value_type": result.get("value_type", "float32"),
        "bytes": chosen["bytes"],
        "sparsity": result["achieved_sparsity"],
        "chosen_kind": result["chosen_kind"],
        "valid_ndcg@20": chosen["valid"]["ndcg@20"],
        "test": {key: result["test"][key] for key in ("recall@20", "ndcg@20")},
        "seconds": round(seconds, 1),
    }


def write_report(report: dict[str, Any], markdown: Path) -> None:
    lines = [
        "# The quickstart's budget: bytes against sparsity",
        "",
        f"Run on {report['machine']}, {report['date']}: `{report['command']}`. Each row is "
        "`ciess search --dataset ml-1m --backbone lightgcn --config "
        "scripts/quickstart-recipe.toml --workers 2` at one budget, in a fresh folder, timed "
        "from start to exit; `scripts/run.sh` builds its first artifact this way. Test numbers "
        "are the clean protocol's, of the short recipe (not the shipped one).",
        "",
        "| budget | value type | stored bytes | sparsity | sizes kept | valid N@20 | test R@20 "
        "| test N@20 | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| `{row['budget']}` | {row['value_type']} | {row['bytes']:,} | "
            f"{row['sparsity']:.4f} | {row['chosen_kind']} | {row['valid_ndcg@20']:.4f} | "
            f"{row['test']['recall@20']:.4f} | {row['test']['ndcg@20']:.4f} | "
            f"{row['seconds']:.0f} |"
        )
    markdown.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument("--data-dir", default=os.environ.get("CIESS_DATA_DIR", "data"))
    parser.add_argument("--bytes", default="0.05", help="the byte budget (--budget-bytes)")
    parser.add_argument("--sparsity", default="0.9", help="the sparsity budget (--budgets)")
    parser.add_argument("--out", type=Path, default=REPORTS / "quickstart-budgets.json")
    arguments = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="quickstart-budgets-") as work:
        for flag, value in (("--budget-bytes", arguments.bytes), ("--budgets", arguments.sparsity)):
            # each in a folder of its own: beside each other, the second would copy the
            # first's full model, teachers and supernet (ciess_core/search/shared_stages.py)
            rows.append(run_budget(flag, value, arguments.data_dir, Path(work) / flag[2:] / "run"))
            print(json.dumps(rows[-1]))
    report = {**provenance(), "recipe": RECIPE.read_text(), "rows": rows}
    save_json(arguments.out, report)
    write_report(report, arguments.out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
