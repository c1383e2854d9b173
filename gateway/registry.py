"""The registry of trained models over HTTP: ``GET /v1/registry/models[/{name}]``.

Training jobs register the models they export (:mod:`shared.model_registry`); this lists them
with their base model, training data, metrics and folder, for ``rationalyst models list`` and
for anyone choosing a model to serve. Read-only: models enter the registry by training.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from shared.http import error_responses
from shared.jobs_store import JobStoreSettings
from shared.model_registry import ModelRegistry, RegisteredModel
from shared.schemas import Strict


class RegisteredModelList(Strict):
    models: list[RegisteredModel]


def create_registry_router(settings: JobStoreSettings) -> APIRouter:
    """Routes over the registry under ``settings.artifacts_dir`` (the shared volume)."""
    registry = ModelRegistry(settings.artifacts_dir)
    router = APIRouter(prefix="/v1/registry", tags=["registry"])

    @router.get("/models", responses=error_responses(401))
    async def list_models() -> RegisteredModelList:
        """Trained models, newest first."""
        return RegisteredModelList(models=await asyncio.to_thread(registry.list))

    @router.get(
        "/models/{name}", responses=error_responses(401, 404, 422, notes={404: "No such model."})
    )
    async def get_model(name: str) -> RegisteredModel:
        """One trained model: base, data, metrics, folder."""
        return await asyncio.to_thread(registry.get, name)

    return router
