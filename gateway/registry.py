"""The registry of trained models over HTTP: ``GET /v1/registry/models[/{name}]``.

Training jobs register the models they export (:mod:`shared.model_registry`); this lists them
with their base model, training data, metrics and folder, for ``rationalyst models list`` and
for anyone choosing a model to serve. Read-only: models enter the registry by training.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from shared.errors import NotFound
from shared.gateway_schemas import Strategy
from shared.http import error_responses
from shared.jobs_store import JobStoreSettings
from shared.model_registry import ModelRegistry, RegisteredModel
from shared.schemas import Strict

STRATEGY_MODEL_SUFFIXES: dict[str, Strategy] = {
    "beam": Strategy.beam,
    "best-of-n": Strategy.best_of_n,
    "vote": Strategy.vote,
    "weighted-vote": Strategy.weighted_vote,
}
"""Model ids of the OpenAI-compatible face that select a search strategy:
``<served name>-<suffix>`` (``rationalyst-beam``, ...)."""


def strategy_models(served: str) -> dict[str, Strategy]:
    """The strategy model ids a gateway serving ``served`` lists in /v1/models."""
    return {f"{served}-{suffix}": strategy for suffix, strategy in STRATEGY_MODEL_SUFFIXES.items()}


def model_strategy(model: str, served: str) -> Strategy | None:
    """The strategy a chat request's ``model`` selects (None: the served name itself, whose
    strategy comes from the request); 404 naming ``model`` for any other id."""
    if model == served:
        return None
    strategies = strategy_models(served)
    if model in strategies:
        return strategies[model]
    known = ", ".join([served, *strategies])
    raise NotFound(f"model {model!r} does not exist; this gateway serves {known}", field="model")


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
