"""Resident value types: should the scorer keep its vectors as float16 or int8 instead of float32?

The artifact's embedding store may be float16, int8 or int4, but the scorer decodes it on load
and keeps the scored vectors (LightGCN: the propagated mean of layers; NGCF: the concatenated
layers) in float32, so every value type has the same resident bytes. This benchmark measures the
alternative the issue left open, scoring from narrower vectors kept in memory, on one loaded
artifact, against the float32 scorer in the same process:

- ``float16``: user and item vectors rounded to float16; the ``dot`` product as an onnxruntime
  float16 ``MatMul``, cast back to float32 for the ranking.
- ``int8``: user and item vectors as int8 codes with a float32 scale per row (symmetric,
  max |x| / 127); ``MatMulInteger`` (→ int32, the user codes shifted to uint8 with zero point
  128: the same products) and both scales applied after.

For each layout: the resident bytes (what the scorer keeps, vectors and scales included), the
one-user latency of ``recommend`` (top-20, seen items excluded: the service's request) as median
and p99 over ``--users`` sampled users, users/s at ``--batch``, the share of users whose top-20
equals the float32 scorer's and the mean overlap, and — with ``--held-out`` — Recall@20 and
NDCG@20 of each layout's lists on that held-out part. Timings are taken in ``--rounds`` rounds,
the layouts' order rotated each round; the report gives each layout's median and its paired
ratio to float32 (median over rounds). One onnxruntime thread (a service worker's setting).

    python bench/resident_types.py --artifact ARTIFACT_DIR
    python bench/resident_types.py --weights RUN/full/model.pt --held-out ml-1m:search

``--weights`` takes a LightGCN state dict trained on the held-out phase's training set (e.g. a
byte-budget run's ``pipeline/full/model.pt``, a search-phase model) and exports it as a float32
artifact in a temporary directory first.

Only LightGCN and NGCF artifacts (NCF's tower keeps float32 activations whatever the layout).
Results go to ``OUT/resident-types.json`` (an entry per artifact, re-running one replaces it) and
``OUT/resident-types.md`` (findings from ``resident-types.notes.md``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backbones import load_rows, provenance, save_json, write_with_findings
from cli_help import DefaultsHelp

from ciess_core.artifact.export import export_model
from ciess_core.artifact.reader import load_artifact
from ciess_core.artifact.scorer import ArtifactScorer, DotIndex, ScorerOptions
from ciess_core.data import DatasetSplit, Phase, load_dataset, resolve_data_dir, split_per_user
from ciess_core.evaluation import ranking_metrics_from_hits
from ciess_core.models import BackboneConfig, BackboneKind, build_backbone

ROOT = Path(__file__).resolve().parent.parent
TOP_K = 20
LAYOUTS = ("float32", "float16", "int8")
USER_ZERO_POINT = 128
FloatArray = npt.NDArray[np.float32]


# -- narrower dot products -----------------------------------------------------------------------
def _session(nodes: list[Any], inputs: list[Any], output: Any) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "dot", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def float16_dot() -> ort.InferenceSession:
    """users (B, w) float16 × items_t (w, n) float16 → (B, n) float32."""
    tensor = helper.make_tensor_value_info
    return _session(
        [
            helper.make_node("MatMul", ["users", "items_t"], ["products"]),
            helper.make_node("Cast", ["products"], ["scores"], to=TensorProto.FLOAT),
        ],
        [
            tensor("users", TensorProto.FLOAT16, ["B", "w"]),
            tensor("items_t", TensorProto.FLOAT16, ["w", "n"]),
        ],
        tensor("scores", TensorProto.FLOAT, ["B", "n"]),
    )


def int8_dot() -> ort.InferenceSession:
    """users (B, w) uint8 (int8 codes + 128, zero point 128) × items_t (w, n) int8 → int32, then
    × user_scales (B, 1) × item_scales (1, n). onnxruntime's int8 × int8 kernel took 11 times the
    uint8 × int8 one's time here (one user, 38,048 × 13 items), hence the shifted user codes."""
    tensor = helper.make_tensor_value_info
    zero_point = helper.make_tensor("zero_point", TensorProto.UINT8, [], [USER_ZERO_POINT])
    return _session(
        [
            helper.make_node("Constant", [], ["user_zero_point"], value=zero_point),
            helper.make_node(
                "MatMulInteger", ["users", "items_t", "user_zero_point"], ["products"]
            ),
            helper.make_node("Cast", ["products"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["as_float", "user_scales"], ["by_user"]),
            helper.make_node("Mul", ["by_user", "item_scales"], ["scores"]),
        ],
        [
            tensor("users", TensorProto.UINT8, ["B", "w"]),
            tensor("items_t", TensorProto.INT8, ["w", "n"]),
            tensor("user_scales", TensorProto.FLOAT, ["B", 1]),
            tensor("item_scales", TensorProto.FLOAT, [1, "n"]),
        ],
        tensor("scores", TensorProto.FLOAT, ["B", "n"]),
    )


def quantise_rows(matrix: FloatArray) -> tuple[npt.NDArray[np.int8], FloatArray]:
    """Symmetric int8 codes per row and the (n, 1) float32 scales (max |row| / 127; 1 for zeros)."""
    peak = np.abs(matrix).max(axis=1, keepdims=True)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(matrix / scales), -127, 127).astype(np.int8)
    return codes, scales


class Float16DotIndex(DotIndex):
    """The same buckets and widths as :class:`DotIndex`, the vectors kept as float16."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.users = self.users.astype(np.float16)
        self.item_blocks = [block.astype(np.float16) for block in self.item_blocks]
        self.session = float16_dot()


class Int8DotIndex(DotIndex):
    """The same buckets and widths as :class:`DotIndex`, the vectors kept as int8 codes with a
    float32 scale per row (each item's scale taken over its whole vector, before bucketing).
    The float32 vectors are dropped once coded (``users`` and ``item_blocks`` left empty)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        codes, self.user_scales = quantise_rows(self.users)
        self.user_codes = (codes.astype(np.int16) + USER_ZERO_POINT).astype(np.uint8)
        self.item_codes: list[npt.NDArray[np.int8]] = []
        self.item_scales: list[FloatArray] = []
        for block in self.item_blocks:
            codes, scales = quantise_rows(np.ascontiguousarray(block.T))
            self.item_codes.append(np.ascontiguousarray(codes.T))
            self.item_scales.append(np.ascontiguousarray(scales.T))
        self.users = np.empty((0, 0), np.float32)
        self.item_blocks = []
        self.session = int8_dot()

    @property
    def nbytes(self) -> int:
        codes = self.user_codes.nbytes + sum(block.nbytes for block in self.item_codes)
        scales = self.user_scales.nbytes + sum(block.nbytes for block in self.item_scales)
        return int(codes + scales)

    def user_scores(self, user: int) -> FloatArray:
        return self._int8_products(
            self.user_codes[user : user + 1],
            self.user_scales[user : user + 1],
            int(self.user_widths[user]),
        )

    def scores(self, user_ids: npt.NDArray[np.int64], out: FloatArray | None = None) -> FloatArray:
        if out is not None:
            raise ValueError("the int8 layout serves LightGCN and NGCF only (no tower scores)")
        widest = int(self.user_widths[user_ids].max()) if user_ids.size else 1
        return self._int8_products(self.user_codes[user_ids], self.user_scales[user_ids], widest)

    def _int8_products(
        self, rows: npt.NDArray[np.uint8], row_scales: FloatArray, widest_user: int
    ) -> FloatArray:
        result = np.empty((rows.shape[0], self.layout.order.size), np.float32)
        for (start, end, _), block, scales in zip(
            self.layout.bounds, self.item_codes, self.item_scales, strict=True
        ):
            common = max(1, min(block.shape[0], widest_user, rows.shape[1]))
            feeds = {
                "users": np.ascontiguousarray(rows[:, :common]),
                "items_t": np.ascontiguousarray(block[:common]),
                "user_scales": row_scales,
                "item_scales": scales,
            }
            (result[:, start:end],) = self.session.run(None, feeds)
        return result


def scorer_for(layout: str, directory: Path) -> ArtifactScorer:
    index_types: dict[str, type[DotIndex]] = {
        "float32": DotIndex,
        "float16": Float16DotIndex,
        "int8": Int8DotIndex,
    }

    class LayoutScorer(ArtifactScorer):
        index_type = index_types[layout]

    scorer = LayoutScorer(load_artifact(directory), ScorerOptions(threads=1))
    if scorer.ncf_parts is not None:
        raise SystemExit(f"{directory}: an NCF artifact; this benchmark covers LightGCN and NGCF")
    return scorer


def resident_bytes(scorer: ArtifactScorer) -> int:
    """The scorer's resident bytes, the vectors counted by the layout's ``nbytes`` (for int8 the
    codes and their scales; ``resident_detail``'s vector parts are the base class's arrays)."""
    detail = scorer.resident_detail
    return int(
        scorer.resident_bytes
        - detail["user_vectors"]
        - detail["item_buckets"]
        + scorer.index.nbytes
    )


# -- measurements --------------------------------------------------------------------------------
def top_lists(scorer: ArtifactScorer, users: npt.NDArray[np.int64], batch: int = 512) -> Any:
    return np.concatenate(
        [
            scorer.recommend(users[start : start + batch], TOP_K)[0]
            for start in range(0, users.size, batch)
        ]
    )


def one_user_latencies(scorer: ArtifactScorer, users: npt.NDArray[np.int64]) -> list[float]:
    seconds = []
    for user in users.tolist():
        started = time.perf_counter()
        scorer.recommend([user], TOP_K)
        seconds.append(time.perf_counter() - started)
    return seconds


def batch_rate(scorer: ArtifactScorer, users: npt.NDArray[np.int64], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, users.size, batch):
        scorer.recommend(users[start : start + batch], TOP_K)
    return users.size / (time.perf_counter() - started)


def held_out_metrics(lists: Any, held_out: Any) -> dict[str, float]:
    users = np.flatnonzero(np.diff(held_out.indptr) > 0)
    rows = held_out[users]
    hits = np.zeros((users.size, TOP_K), dtype=bool)
    for row, user in enumerate(users.tolist()):
        relevant = rows.indices[rows.indptr[row] : rows.indptr[row + 1]]
        hits[row] = np.isin(lists[user], relevant)
    metrics = ranking_metrics_from_hits(hits, np.diff(rows.indptr), ks=(TOP_K,))
    return {name: float(values.mean()) for name, values in metrics.items()}


def held_out_phase(held_out: str, data_dir: str | None) -> tuple[DatasetSplit, Phase]:
    """The split and phase that ``DATASET:PHASE`` names."""
    dataset, phase = held_out.split(":")
    return split_per_user(load_dataset(dataset, resolve_data_dir(data_dir)), seed=42), Phase(phase)


def export_weights(weights: Path, split: DatasetSplit, phase: Phase, out: Path) -> Path:
    """The LightGCN state dict ``weights`` on ``phase``'s training set, exported to ``out``."""
    train, _ = split.phase(phase)
    config = BackboneConfig.default_for(BackboneKind.LIGHTGCN)
    model = build_backbone(config, train, torch.Generator().manual_seed(0))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return export_model(
        model.eval(), train, split.external_user_ids, split.external_item_ids, out / "artifact"
    )


def measure(
    args: argparse.Namespace, directory: Path, split_phase: tuple[DatasetSplit, Phase] | None
) -> dict[str, Any]:
    scorers = {layout: scorer_for(layout, directory) for layout in LAYOUTS}
    reference = scorers["float32"]
    everyone = np.arange(reference.num_users, dtype=np.int64)
    sample = np.random.default_rng(args.seed).choice(
        everyone, size=min(args.users, everyone.size), replace=False
    )
    held_out = None
    if split_phase is not None:
        split, phase = split_phase
        train, held_out = split.phase(phase)
        if (train != reference.seen).nnz:
            raise SystemExit(
                f"{directory}: its seen items are not the {phase.value} phase's training set"
            )
    lists = {layout: top_lists(scorer, everyone) for layout, scorer in scorers.items()}
    timings: dict[str, dict[str, list[float]]] = {
        layout: {"median_ms": [], "p99_ms": [], "batch_users_per_s": []} for layout in LAYOUTS
    }
    for round_index in range(args.rounds):
        shift = round_index % len(LAYOUTS)
        for layout in LAYOUTS[shift:] + LAYOUTS[:shift]:
            seconds = np.asarray(one_user_latencies(scorers[layout], sample)) * 1e3
            timings[layout]["median_ms"].append(float(np.median(seconds)))
            timings[layout]["p99_ms"].append(float(np.quantile(seconds, 0.99)))
            timings[layout]["batch_users_per_s"].append(
                batch_rate(scorers[layout], sample, args.batch)
            )
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    for layout in LAYOUTS:
        same = (lists[layout] == lists["float32"]).all(axis=1)
        overlap = [
            np.intersect1d(mine, theirs).size / TOP_K
            for mine, theirs in zip(lists[layout], lists["float32"], strict=True)
        ]
        row: dict[str, Any] = {
            "layout": layout,
            "resident_bytes": resident_bytes(scorers[layout]),
            "vector_bytes": int(scorers[layout].index.nbytes),
            "same_top20_share": float(same.mean()),
            "mean_top20_overlap": float(np.mean(overlap)),
            "rounds": timings[layout],
        }
        for name, values in timings[layout].items():
            row[name] = statistics.median(values)
            base = timings["float32"][name]
            row[f"{name}_ratio"] = statistics.median(
                [mine / theirs for mine, theirs in zip(values, base, strict=True)]
            )
        if held_out is not None:
            row["held_out"] = held_out_metrics(lists[layout], held_out)
        rows.append(row)
    manifest = reference.manifest
    return {
        **provenance(),
        "artifact": str(args.weights or directory),
        "backbone": manifest.backbone,
        "users": reference.num_users,
        "items": reference.num_items,
        "buckets": [list(bucket) for bucket in reference.bucket_widths],
        "held_out": args.held_out or None,
        "timed_users": int(sample.size),
        "batch": args.batch,
        "rounds_run": args.rounds,
        "rows": rows,
    }


# -- report --------------------------------------------------------------------------------------
def write_report(entries: list[dict[str, Any]], path: Path) -> None:
    lines = [
        "# Resident value types",
        "",
        "Written by `bench/resident_types.py` from `resident-types.json`; see the script's",
        "docstring for what is measured. One onnxruntime thread; latency: one user's top-20 with",
        "seen items excluded; ratios: median over rounds of the paired ratio to float32.",
    ]
    for entry in entries:
        lines += [
            "",
            f"## {entry['backbone']} {entry['artifact']}",
            "",
            f"{entry['machine']}; {entry['date']}; `{entry['command']}`",
            "",
            f"{entry['users']:,} users, {entry['items']:,} items, buckets (items, width) "
            f"{entry['buckets']}; {entry['timed_users']:,} users timed, {entry['rounds_run']} "
            f"rounds; held-out: {entry['held_out'] or 'none'}.",
            "",
            "| layout | resident bytes | vector bytes | median ms (ratio) | p99 ms (ratio) | "
            f"users/s at {entry['batch']} (ratio) | same top-20 | top-20 overlap | held-out R@20 |"
            " held-out N@20 |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in entry["rows"]:
            held = row.get("held_out") or {}
            recall = f"{held['recall@20']:.4f}" if held else "—"
            ndcg = f"{held['ndcg@20']:.4f}" if held else "—"
            lines.append(
                f"| {row['layout']} | {row['resident_bytes']:,} | {row['vector_bytes']:,} | "
                f"{row['median_ms']:.3f} ({row['median_ms_ratio']:.2f}) | "
                f"{row['p99_ms']:.3f} ({row['p99_ms_ratio']:.2f}) | "
                f"{row['batch_users_per_s']:,.0f} ({row['batch_users_per_s_ratio']:.2f}) | "
                f"{row['same_top20_share']:.1%} | {row['mean_top20_overlap']:.1%} | "
                f"{recall} | {ndcg} |"
            )
    write_with_findings(path, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp
    )
    parser.add_argument("--artifact", help="artifact directory (LightGCN or NGCF)")
    parser.add_argument(
        "--weights", help="a LightGCN model.pt to export first (needs --held-out: its training set)"
    )
    parser.add_argument(
        "--held-out",
        help="DATASET:PHASE whose held-out part scores each layout's lists (the artifact's seen "
        "items must be that phase's training set), e.g. ml-1m:search",
    )
    parser.add_argument("--data-dir", help="datasets folder (default $CIESS_DATA_DIR, ./data)")
    parser.add_argument("--users", type=int, default=3000, help="users timed one at a time")
    parser.add_argument("--batch", type=int, default=64, help="users per batched call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--rewrite", action="store_true", help="rewrite the page from the JSON")
    args = parser.parse_args(argv)
    out = Path(args.out)
    json_path = out / "resident-types.json"
    entries = load_rows(json_path)
    if not args.rewrite:
        if bool(args.artifact) == bool(args.weights):
            parser.error("give one of --artifact and --weights (or --rewrite)")
        if args.weights and not args.held_out:
            parser.error("--weights needs --held-out (the phase it was trained for)")
        split_phase = held_out_phase(args.held_out, args.data_dir) if args.held_out else None
        with tempfile.TemporaryDirectory() as work:
            directory = Path(args.artifact or "")
            if args.weights and split_phase is not None:
                directory = export_weights(Path(args.weights), *split_phase, Path(work))
            entry = measure(args, directory, split_phase)
        entries = [e for e in entries if e["artifact"] != entry["artifact"]] + [entry]
        save_json(json_path, entries)
    write_report(entries, out / "resident-types.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
