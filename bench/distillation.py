"""Cost of distillation per training batch: plain BPR against BPR plus the distillation term.

Usage:
    python bench/distillation.py --data-dir ../shared/data [--batches 40] [--threads 1]

ML-1M LightGCN, test-phase training matrix, batches of 10,000 users. For two widths (ES at 80 %
sparsity, 26 dimensions, and the full 128, the width a CIESS assignment with any full-size entity
propagates at) it times `--batches` batches of plain BPR and of BPR with distillation from a
full-size teacher, for all of a batch's users and for the default 2,048. The teacher is untrained
(the cost does not depend on its weights). Writes `docs/benchmarks/distillation.json` and `.md`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from backbones import provenance, save_json
from cli_help import DefaultsHelp

from ciess_core.data import Phase, load_dataset, resolve_data_dir, split_per_user
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone
from ciess_core.sizes import equal_sizes
from ciess_core.training import TrainConfig, train_bpr
from ciess_core.training.distillation import DistillationConfig, Distiller

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks" / "distillation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    parser.add_argument(
        "--data-dir", help="datasets folder with ml-1m (default: $CIESS_DATA_DIR, else ./data)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=40,
        help="training batches timed per configuration (the mean per batch is kept)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    split = split_per_user(load_dataset("ml-1m", resolve_data_dir(arguments.data_dir)), seed=42)
    train, _ = split.phase(Phase.TEST)
    backbone = BackboneConfig.default_for(BackboneKind.LIGHTGCN, weight_decay=1e-3)
    teacher = build_backbone(backbone, train, torch.Generator().manual_seed(0))
    rows = []
    for width in (26, 128):
        for users in (None, 0, DistillationConfig().users_per_batch):
            distiller = (
                None
                if users is None
                else Distiller(teacher, train, DistillationConfig(users_per_batch=users))
            )
            model = build_backbone(backbone, train, torch.Generator().manual_seed(42))
            model.set_size_assignment(
                equal_sizes(split.num_users, split.num_items, 128, 1 - width / 128)
            )
            config = TrainConfig(max_batches=arguments.batches, eval_every=0)
            result = train_bpr(model, train, config, progress=False, distiller=distiller)
            rows.append(
                {
                    "width": width,
                    "distillation_users": "none" if users is None else (users or "all"),
                    "seconds_per_batch": round(result.seconds_per_batch, 4),
                }
            )
            print(rows[-1], flush=True)
    for row in rows:
        plain = next(r for r in rows if r["width"] == row["width"])
        row["vs_plain"] = round(row["seconds_per_batch"] / plain["seconds_per_batch"], 2)
    record = {
        "rows": rows,
        "batches": arguments.batches,
        "threads": arguments.threads,
        **provenance(),
    }
    save_json(REPORT.with_suffix(".json"), record)
    lines = [
        "# Cost of distillation per training batch",
        "",
        f"Produced by `{record['command']}` on {record['date']} ({record['machine']}); JSON twin "
        "`distillation.json`. ML-1M LightGCN, 10,000 users per batch, mean over "
        f"{arguments.batches} batches. `vs plain`: the batch time over plain BPR's at that width.",
        "",
        "| width | distillation | seconds per batch | vs plain |",
        "|---|---|---|---|",
    ]
    for row in rows:
        users = row["distillation_users"]
        label = "none" if users == "none" else f"{users} users per batch"
        lines.append(
            f"| {row['width']} | {label} | {row['seconds_per_batch']:.4f} | {row['vs_plain']:.2f} |"
        )
    REPORT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
