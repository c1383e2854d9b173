"""Engines behind one interface (:mod:`.base`); :func:`build_engine` picks one from settings."""

from __future__ import annotations

from services.model_server.engines.base import Engine
from services.model_server.settings import EngineKind, ModelServerSettings


def model_location(settings: ModelServerSettings, *, allow_hub: bool = True) -> str:
    """What the engine the settings name will load: a model folder (or a hub id, unless
    ``allow_hub`` is False), resolved from ``settings.model`` through the models cache and
    the registry of trained models. The remote engine loads nothing: the upstream's model
    name, as given. Raises InvalidRequest (field ``model``) for a name that cannot be served."""
    if settings.engine is EngineKind.remote:
        return settings.model
    from services.model_server.models import resolve_model

    return resolve_model(
        settings.model,
        settings.models_dir,
        artifacts_dir=settings.artifacts_dir,
        allow_hub=allow_hub,
    )


def build_engine(settings: ModelServerSettings) -> Engine:
    """Construct (not start) the engine the settings name. Imports are lazy: the remote
    engine must not need torch, and only the vllm engine needs vllm."""
    if settings.engine is EngineKind.remote:
        from services.model_server.engines.remote_engine import RemoteEngine

        return RemoteEngine(settings)
    path = model_location(settings)
    if settings.engine is EngineKind.vllm:
        from services.model_server.engines.vllm_engine import VllmEngine

        return VllmEngine(settings, path)
    from services.model_server.engines.transformers_engine import TransformersEngine

    return TransformersEngine(settings, path)
