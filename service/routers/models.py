"""The served model: backbone, budget, sparsity, counts, bytes, metrics, creation time, and
whether it serves because the promoted version did not load (``fallback_from``)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.deps import HolderDep, ModelDep
from service.routers.health import fallback_view
from service.routers.recommend import VERSION_HEADER
from service.schemas import ModelBytes, ModelInfo

router = APIRouter(prefix="/v1", tags=["model"])


@router.get(
    "/model",
    response_model=ModelInfo,
    summary="The model that answers top-k requests now",
    responses={503: {"description": "no model loaded yet"}},
)
def model_info(model: ModelDep, holder: HolderDep, response: Response) -> ModelInfo:
    manifest = model.scorer.manifest
    memory = manifest.memory
    response.headers[VERSION_HEADER] = model.version
    return ModelInfo(
        version=model.version,
        backbone=manifest.backbone,
        max_size=manifest.max_size,
        target_sparsity=manifest.target_sparsity,
        budget_bytes=manifest.budget_bytes,
        sparsity=manifest.achieved_sparsity,
        num_users=manifest.num_users,
        num_items=manifest.num_items,
        value_dtype=manifest.value_dtype,
        bytes=ModelBytes(
            embedding_stores=memory.stored,
            embedding_stores_detail=dict(memory.stored_detail),
            dense_equivalent=memory.dense,
            files_on_disk=sum(entry.bytes for entry in manifest.files),
            resident=model.scorer.resident_bytes,
        ),
        metrics=dict(manifest.metrics),
        dataset=dict(manifest.dataset),
        created_at=manifest.created_at,
        loaded_at=model.loaded_at,
        fallback_from=fallback_view(holder.fallback),
    )
