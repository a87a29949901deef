"""Top-k over all items from an artifact alone: numpy, scipy and onnxruntime (no torch).

Loading does the batch-independent work once: LightGCN propagates its ragged layer-0 table over
the normalised graph (scipy), NGCF runs its per-layer ONNX graphs between sparse products, NCF
projects both halves of its first tower layer. The item vectors are then sorted by effective width
(index of the last non-zero + 1) into a few buckets, each a dense (width, items) matrix, and a
request multiplies the user vectors, truncated to each bucket's width, with every bucket through
the ``dot`` graph. Scores come out in bucket order; seen items are excluded there and the top-k
positions are mapped back to internal item ids.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import scipy.sparse as sp

from ciess_core.artifact.buckets import BucketLayout, bucket_layout, effective_widths
from ciess_core.artifact.labels import LabelIndex
from ciess_core.artifact.propagation import (
    lightgcn_propagate,
    mean_normalized_adjacency_with_self_loops,
    symmetric_normalized_adjacency,
)
from ciess_core.artifact.ragged import unpack
from ciess_core.artifact.reader import Artifact, load_artifact
from ciess_core.errors import ArtifactError, ConfigError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]

# NCF's tower materialises (users, items, h1) activations, a block of users at a time: with the
# tower as Gemms, 2**20 elements (4 ML-1M users) answered a service batch of 64 users fastest on
# one thread, with the same top-20 at every cap (docs/benchmarks/ncf-tower-graph.md).
_MAX_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class ScorerOptions:
    """How the scorer lays out and runs its work.

    Attributes:
        max_buckets: most width buckets for the item matrix (1 = one matrix at the widest row).
        min_bucket_saving: a bucket must save this fraction of the one-bucket work.
        threads: onnxruntime intra-op threads (0: onnxruntime's default, all cores).
    """

    max_buckets: int = 4
    min_bucket_saving: float = 0.02
    threads: int = 0

    def __post_init__(self) -> None:
        if self.max_buckets < 1:
            raise ConfigError(f"max_buckets must be >= 1, got {self.max_buckets}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path.name}: onnxruntime cannot load the graph ({error})") from None


def _run(session: ort.InferenceSession, feeds: Mapping[str, FloatArray]) -> list[FloatArray]:
    outputs: list[FloatArray] = session.run(None, dict(feeds))
    return outputs


class DotIndex:
    """User vectors and width-bucketed item vectors scored by the ``dot`` graph.

    Every row counts as wide as :meth:`row_widths` says: its effective width (a subclass may
    say otherwise, e.g. a benchmark's zero-padded baseline).

    Attributes:
        users: (U, w_u) float32 user vectors.
        layout: the item permutation and bucket bounds.
        item_blocks: per bucket, (width, items in bucket) float32 C-contiguous (transposed).
    """

    def __init__(
        self,
        users: FloatArray,
        items: FloatArray,
        session: ort.InferenceSession,
        options: ScorerOptions,
        layout: BucketLayout | None = None,
    ) -> None:
        self.session = session
        user_widths, item_widths = self.row_widths(users), self.row_widths(items)
        users = np.ascontiguousarray(users[:, : int(user_widths.max())])
        self.users = users
        self.user_widths = user_widths
        if layout is None:
            layout = bucket_layout(item_widths, options.max_buckets, options.min_bucket_saving)
        self.layout = layout
        self.item_blocks = [
            np.ascontiguousarray(items[layout.order[start:end], :width].T)
            for start, end, width in layout.bounds
        ]

    @staticmethod
    def row_widths(matrix: FloatArray) -> IdArray:
        """(n,) int64 width of every row of ``matrix`` (n, w): its effective width."""
        return effective_widths(matrix)

    @property
    def nbytes(self) -> int:
        return int(self.users.nbytes + sum(block.nbytes for block in self.item_blocks))

    def user_scores(self, user: int) -> FloatArray:
        """(1, num_items) float32 scores of one internal user, in bucket order.

        What :meth:`scores` gives for a batch of one, without the batch bookkeeping: a request for
        one user spends more time in that bookkeeping than in the products themselves.
        """
        row = self.users[user : user + 1]  # a view: one row of a C-contiguous matrix
        return self._products(row, int(self.user_widths[user]))

    def scores(self, user_ids: IdArray, out: FloatArray | None = None) -> FloatArray:
        """(B, num_items) float32 scores in bucket order for internal user ids (B,)."""
        widest_user = int(self.user_widths[user_ids].max()) if user_ids.size else 1
        return self._products(self.users[user_ids], widest_user, out)

    def _products(
        self, rows: FloatArray, widest_user: int, out: FloatArray | None = None
    ) -> FloatArray:
        """``rows`` (B, w) times every bucket; added to ``out`` when given."""

        def bucket_scores(block: FloatArray) -> FloatArray:
            # Past either side's width every product is zero: multiply only the common prefix.
            common = max(1, min(block.shape[0], widest_user, rows.shape[1]))
            users = np.ascontiguousarray(rows[:, :common])
            (scores,) = _run(self.session, {"users": users, "items_t": block[:common]})
            return scores

        if out is None and len(self.item_blocks) == 1:  # one bucket: its scores are the result
            return bucket_scores(self.item_blocks[0])
        num_items = self.layout.order.size
        result = np.zeros((rows.shape[0], num_items), np.float32) if out is None else out
        for (start, end, _), block in zip(self.layout.bounds, self.item_blocks, strict=True):
            if out is None:
                result[:, start:end] = bucket_scores(block)
            else:
                result[:, start:end] += bucket_scores(block)
        return result


class ArtifactScorer:
    """Scores every item for a user, from an artifact alone.

    Item ids are internal (0..num_items-1) everywhere; :meth:`user_index`, :meth:`item_index` and
    :meth:`item_labels` map to and from the external ids (a :class:`LabelIndex` each way in).
    ``index_type`` lays out the dot products (a subclass may swap in another :class:`DotIndex`
    for a benchmark's baseline).
    """

    index_type: type[DotIndex] = DotIndex

    def __init__(self, artifact: Artifact, options: ScorerOptions | None = None) -> None:
        self.options = options or ScorerOptions()
        self.manifest = artifact.manifest
        self.num_users = artifact.manifest.num_users
        self.num_items = artifact.manifest.num_items
        self.external_user_ids = artifact.external_user_ids
        self.external_item_ids = artifact.external_item_ids
        self._user_id_index = LabelIndex(self.external_user_ids)
        self._item_id_index = LabelIndex(self.external_item_ids)
        threads = self.options.threads
        self.ncf_tower: ort.InferenceSession | None = None
        self.ncf_parts: tuple[FloatArray, FloatArray] | None = None
        topk_graph = artifact.graph_paths.get("topk")
        # Artifacts exported before the topk graph existed rank with numpy instead.
        self.topk = None if topk_graph is None else _session(topk_graph, threads)
        if artifact.manifest.backbone == "ncf":
            self.index = self._load_ncf(artifact, threads)
        else:
            dot = _session(artifact.graph_paths["dot"], threads)
            if artifact.manifest.backbone == "lightgcn":
                users, items = _lightgcn_vectors(artifact)
            else:
                users, items = _ngcf_vectors(artifact, threads)
            self.index = self.index_type(users, items, dot, self.options)
        # Each user's seen items kept once: as positions in bucket order (what the ranking
        # masks), in the narrowest unsigned type, rows by ``_seen_indptr``. The item ids and the
        # CSR matrix are rebuilt from them where asked (seen_rows, item_degrees, seen).
        self._seen_indptr = artifact.seen.indptr
        self._seen_positions = self.index.layout.position[artifact.seen.indices].astype(
            np.min_scalar_type(max(self.num_items - 1, 0))
        )
        logger.info(
            "loaded %s artifact %s: %d users, %d items, buckets %s, resident %.1f MB",
            self.manifest.backbone,
            artifact.directory,
            self.num_users,
            self.num_items,
            [(end - start, width) for start, end, width in self.index.layout.bounds],
            self.resident_bytes / 1e6,
        )

    def _load_ncf(self, artifact: Artifact, threads: int) -> DotIndex:
        manifest, width = artifact.manifest, artifact.manifest.max_size
        users = np.arange(manifest.num_users)
        items = np.arange(manifest.num_users, manifest.num_entities)
        gmf, mlp = artifact.tables["gmf"], artifact.tables["mlp"]
        user_session = _session(artifact.graph_paths["ncf_user"], threads)
        user_part, user_gmf = _run(
            user_session,
            {"mlp": unpack(mlp, width, users), "gmf": unpack(gmf, width, users)},
        )
        item_session = _session(artifact.graph_paths["ncf_item"], threads)
        (item_part,) = _run(item_session, {"mlp": unpack(mlp, width, items)})
        dot = _session(artifact.graph_paths["dot"], threads)
        index = self.index_type(user_gmf, unpack(gmf, width, items), dot, self.options)
        # The tower sees items in the same (bucket) order as the GMF half.
        self.ncf_parts = (user_part, np.ascontiguousarray(item_part[index.layout.order]))
        self.ncf_tower = _session(artifact.graph_paths["ncf_tower"], threads)
        return index

    # -- seen items -----------------------------------------------------------------------------
    def seen_rows(self, user_ids: npt.ArrayLike) -> sp.csr_matrix:
        """(len(user_ids), num_items) boolean CSR: each user's training items (internal ids,
        ascending in each row), built for these users from what the scorer keeps."""
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        rows, positions = self._seen_entries(ids)
        items = self.index.layout.order[positions]
        order = np.lexsort((items, rows))
        counts = np.bincount(rows, minlength=ids.size)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return sp.csr_matrix(
            (np.ones(items.size, dtype=bool), items[order], indptr),
            shape=(ids.size, self.num_items),
        )

    @property
    def seen(self) -> sp.csr_matrix:
        """(num_users, num_items) boolean CSR of every user's training items; built anew at each
        access (tests and benchmarks; the service asks for :meth:`seen_rows`)."""
        return self.seen_rows(np.arange(self.num_users))

    def item_degrees(self) -> npt.NDArray[np.int64]:
        """(num_items,) training interactions per item, in internal item order."""
        by_position = np.bincount(self._seen_positions, minlength=self.num_items)
        degrees = np.empty(self.num_items, dtype=np.int64)
        degrees[self.index.layout.order] = by_position
        return degrees

    # -- memory ---------------------------------------------------------------------------------
    @property
    def resident_detail(self) -> dict[str, int]:
        """Bytes kept in memory by part."""
        detail = {
            "user_vectors": int(self.index.users.nbytes),
            "item_buckets": int(sum(block.nbytes for block in self.index.item_blocks)),
            "item_order": int(self.index.layout.order.nbytes + self.index.layout.position.nbytes),
            "seen": int(self._seen_indptr.nbytes + self._seen_positions.nbytes),
            "id_maps": int(
                self.external_user_ids.nbytes
                + self.external_item_ids.nbytes
                + self._user_id_index.nbytes
                + self._item_id_index.nbytes
            ),
        }
        if self.ncf_parts is not None:
            detail["ncf_user_part"] = int(self.ncf_parts[0].nbytes)
            detail["ncf_item_part"] = int(self.ncf_parts[1].nbytes)
        return detail

    @property
    def resident_bytes(self) -> int:
        return sum(self.resident_detail.values())

    @property
    def bucket_widths(self) -> list[tuple[int, int]]:
        """(items, width) per bucket."""
        return [(end - start, width) for start, end, width in self.index.layout.bounds]

    # -- item geometry --------------------------------------------------------------------------
    def item_vectors(self) -> FloatArray:
        """(num_items, w) float32 item side of the dot products, in internal item order.

        LightGCN: the propagated vectors (mean of layers 0..K); NGCF: the concatenated layers;
        NCF: the GMF item table (the tower half of its score has no item vector). Rebuilt from
        the width buckets (zeros past each row's width) into a new array: the caller keeps it.
        """
        layout = self.index.layout
        width = max(block.shape[0] for block in self.index.item_blocks)
        vectors = np.zeros((self.num_items, width), dtype=np.float32)
        for (start, end, bucket_width), block in zip(
            layout.bounds, self.index.item_blocks, strict=True
        ):
            vectors[layout.order[start:end], :bucket_width] = block.T
        return vectors

    # -- scoring --------------------------------------------------------------------------------
    def _check_users(self, user_ids: npt.ArrayLike) -> IdArray:
        ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_users):
            raise ConfigError(
                f"user ids must lie in [0, {self.num_users}), got [{ids.min()}, {ids.max()}]"
            )
        return ids

    def _bucket_order_scores(self, user_ids: IdArray) -> FloatArray:
        """(B, num_items) float32 scores, items in bucket order."""
        if self.ncf_parts is None or self.ncf_tower is None:
            return self.index.scores(user_ids)
        user_part, item_part = self.ncf_parts
        block = max(1, _MAX_BLOCK_ELEMENTS // (self.num_items * item_part.shape[1]))
        scores = np.empty((user_ids.size, self.num_items), dtype=np.float32)
        for start in range(0, user_ids.size, block):
            chunk = user_ids[start : start + block]
            (scores[start : start + block],) = _run(
                self.ncf_tower, {"user_part": user_part[chunk], "item_part": item_part}
            )
        return self.index.scores(user_ids, out=scores)

    def score_all(self, user_ids: npt.ArrayLike) -> FloatArray:
        """Scores of every item, in internal item order, seen items included.

        Args:
            user_ids: (B,) internal user ids.

        Returns:
            (B, num_items) float32.
        """
        ids = self._check_users(user_ids)
        return self._bucket_order_scores(ids)[:, self.index.layout.position]

    def recommend(
        self, user_ids: npt.ArrayLike, k: int, exclude_seen: bool = True
    ) -> tuple[IdArray, FloatArray]:
        """Each user's top-k items, best first, seen items excluded.

        Args:
            user_ids: (B,) internal user ids.
            k: list length; at most num_items.
            exclude_seen: drop the user's training items from the ranking.

        Returns:
            (items (B, k) int64 internal ids, scores (B, k) float32). Ties break towards the lower
            item id. When fewer than k items are left, the tail has item -1 and score -inf.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        ids = self._check_users(user_ids)
        k = min(k, self.num_items)
        layout = self.index.layout
        if ids.size == 1 and self.ncf_parts is None:  # one user: the lean path, same result
            scores = self.index.user_scores(int(ids[0]))
        else:
            scores = self._bucket_order_scores(ids)
        if exclude_seen:
            scores[self._seen_entries(ids)] = -np.inf
        # One more than asked: when the k-th and (k+1)-th scores differ the top-k set is unique;
        # when they tie, the row is ranked in full so that ties go to the lower item id.
        fetched = min(k + 1, self.num_items)
        values, positions = self._top(scores, fetched)
        items = layout.order[positions]
        if np.any(values[:, 1:] == values[:, :-1]):  # ties inside the list: lower item id first
            ranking = np.lexsort((items, -values), axis=1)
            items = np.take_along_axis(items, ranking, axis=1)
            values = np.take_along_axis(values, ranking, axis=1)
        top_items, top_scores = items[:, :k].copy(), values[:, :k].copy()
        if fetched > k:
            kth, next_best = values[:, k - 1], values[:, k]
            for row in np.flatnonzero((kth == next_best) & ~np.isneginf(kth)):
                exact = np.lexsort((layout.order, -scores[row]))[:k]
                top_items[row], top_scores[row] = layout.order[exact], scores[row, exact]
        top_items[np.isneginf(top_scores)] = -1
        return top_items, top_scores

    def _seen_entries(self, ids: IdArray) -> tuple[IdArray, IdArray]:
        """(row in ``ids``, position in bucket order) of every seen entry: the CSR rows gathered
        directly, without scipy's fancy indexing (which costs more than the ranking of a user)."""
        indptr, indices = self._seen_indptr, self._seen_positions
        if ids.size == 1:  # a request's case: one slice
            user = int(ids[0])
            positions = indices[indptr[user] : indptr[user + 1]]
            return np.zeros(positions.size, np.int64), positions.astype(np.int64)
        starts, ends = indptr[ids].astype(np.int64), indptr[ids + 1].astype(np.int64)
        counts = ends - starts
        rows = np.repeat(np.arange(ids.size), counts)
        first = np.cumsum(counts) - counts  # where each row starts in the gathered output
        positions = np.arange(int(counts.sum())) + np.repeat(starts - first, counts)
        return rows, indices[positions].astype(np.int64)

    def _top(self, scores: FloatArray, count: int) -> tuple[FloatArray, IdArray]:
        """Each row's ``count`` largest scores, best first, and their positions: (B, count) each."""
        positions: IdArray
        if self.topk is not None and count < scores.shape[1]:
            values, found = _run(
                self.topk, {"scores": scores, "k": np.array([count], dtype=np.int64)}
            )
            return values, np.asarray(found, dtype=np.int64)
        if count < scores.shape[1]:
            positions = np.argpartition(-scores, count - 1, axis=1)[:, :count]
        else:
            positions = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        order = np.argsort(-np.take_along_axis(scores, positions, axis=1), axis=1, kind="stable")
        positions = np.take_along_axis(positions, order, axis=1)
        return np.take_along_axis(scores, positions, axis=1), positions

    # -- ids ------------------------------------------------------------------------------------
    def find_user(self, external_user_id: str) -> int:
        """Internal id of one external user id; -1 for an unknown user."""
        return self._user_id_index.find(external_user_id)

    def user_index(self, external_user_ids: npt.ArrayLike) -> IdArray:
        """Internal ids of external user ids; -1 for an unknown user (the caller decides: 404)."""
        if isinstance(external_user_ids, list):  # the service's case: no round trip via numpy
            labels = external_user_ids
        else:
            labels = np.asarray(external_user_ids).reshape(-1).tolist()
        return self._user_id_index.lookup([str(label) for label in labels])

    def item_index(self, external_item_ids: list[str]) -> IdArray:
        """(len(external_item_ids),) internal ids of external item ids; -1 for an unknown item."""
        return self._item_id_index.lookup(external_item_ids)

    def item_labels(self, item_ids: npt.ArrayLike) -> npt.NDArray[np.str_]:
        """External ids of internal item ids (-1, an empty slot, maps to "")."""
        ids = np.asarray(item_ids, dtype=np.int64)
        labels = self.external_item_ids[np.clip(ids, 0, None)]
        return np.where(ids >= 0, labels, "")


def _lightgcn_vectors(artifact: Artifact) -> tuple[FloatArray, FloatArray]:
    """Final (U, w) user and (I, w) item vectors: mean of the propagated layers."""
    table = artifact.tables["embedding"]
    layer0 = unpack(table)  # (N, widest size)
    final = lightgcn_propagate(
        symmetric_normalized_adjacency(artifact.seen), layer0, artifact.manifest.num_layers
    )
    return final[: artifact.manifest.num_users], final[artifact.manifest.num_users :]


def _ngcf_vectors(artifact: Artifact, threads: int) -> tuple[FloatArray, FloatArray]:
    """Final user and item vectors [layer_1; …; layer_K; ego]: the ego part, the only ragged
    one, goes last so that rows end at their size and the width buckets can cut them."""
    manifest = artifact.manifest
    adjacency = mean_normalized_adjacency_with_self_loops(artifact.seen)
    layer0 = unpack(artifact.tables["embedding"])
    ego = unpack(artifact.tables["embedding"], manifest.max_size)
    parts = []
    for layer in range(manifest.num_layers):
        session = _session(artifact.graph_paths[f"ngcf_layer_{layer}"], threads)
        side = np.asarray(adjacency @ ego, dtype=np.float32)
        ego, normalized = _run(session, {"side": side, "ego": ego})
        parts.append(normalized)
    final = np.concatenate([*parts, layer0], axis=1)
    return final[: manifest.num_users], final[manifest.num_users :]


def load_scorer(directory: Path | str, options: ScorerOptions | None = None) -> ArtifactScorer:
    """Validate the artifact in ``directory`` and build its scorer."""
    return ArtifactScorer(load_artifact(directory), options)
