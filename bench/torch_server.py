"""The baseline of bench/serving.py: a plain FastAPI + PyTorch server over the dense model.

What one would serve without an artifact: the run's PyTorch model loaded from ``model.pt``, its
batch-independent representation (LightGCN/NGCF propagation, NCF as is) computed once at start-up
as dense d_max-wide tensors, and per request ``score_all_items`` in eager mode, the user's training
items masked, ``torch.topk``. Same route and response body as the service's single-user top-k, so
the same load generator drives both and the answers can be compared item by item.

Run (one process per uvicorn worker; configuration through the environment):
    CIESS_TORCH_RUN=runs/x CIESS_DATA_DIR=../shared/data \\
        uvicorn bench.torch_server:app_from_environment --factory --port 8100 --workers 2
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

from ciess_core.artifact.export import load_run


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendationResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: str


def create_app(run_dir: Path, data_dir: Path, threads: int = 1) -> FastAPI:
    torch.set_num_threads(threads)
    run = load_run(run_dir, data_dir)
    model = run.model.eval()
    with torch.no_grad():
        representation = model.represent()
    seen_indptr = torch.from_numpy(run.train.indptr.astype(np.int64))
    seen_indices = torch.from_numpy(run.train.indices.astype(np.int64))
    user_lookup = {str(label): index for index, label in enumerate(run.external_user_ids)}
    item_labels = [str(label) for label in run.external_item_ids]
    version = f"torch:{run_dir.name}"
    app = FastAPI(title="PyTorch dense baseline")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready", "model_version": version}

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationResponse)
    def recommend(
        user_id: str, k: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> RecommendationResponse:
        user = user_lookup.get(user_id)
        if user is None:
            raise HTTPException(status_code=404, detail=f"unknown user id {user_id!r}")
        with torch.no_grad():
            scores = model.score_all_items(representation, torch.tensor([user]))[0]
            scores[seen_indices[seen_indptr[user] : seen_indptr[user + 1]]] = -torch.inf
            top_scores, top_items = torch.topk(scores, min(k, scores.numel()))
        return RecommendationResponse(
            user_id=user_id,
            items=[
                ScoredItem(item_id=item_labels[item], score=score)
                for item, score in zip(top_items.tolist(), top_scores.tolist(), strict=True)
                if score != -float("inf")
            ],
            model_version=version,
        )

    return app


def app_from_environment() -> FastAPI:
    return create_app(
        Path(os.environ["CIESS_TORCH_RUN"]),
        Path(os.environ["CIESS_DATA_DIR"]),
        int(os.environ.get("CIESS_TORCH_THREADS", "1")),
    )
