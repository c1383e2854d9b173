"""Engines behind one interface (:mod:`.base`); :func:`build_engine` picks one from settings."""

from __future__ import annotations

from services.model_server.engines.base import Engine
from services.model_server.settings import EngineKind, ModelServerSettings


def build_engine(settings: ModelServerSettings) -> Engine:
    """Construct (not start) the engine the settings name. Imports are lazy: the remote
    engine must not need torch, and only the vllm engine needs vllm."""
    if settings.engine is EngineKind.remote:
        from services.model_server.engines.remote_engine import RemoteEngine

        return RemoteEngine(settings)
    from services.model_server.models import resolve_model

    path = resolve_model(settings.model, settings.models_dir)
    if settings.engine is EngineKind.vllm:
        from services.model_server.engines.vllm_engine import VllmEngine

        return VllmEngine(settings, path)
    from services.model_server.engines.transformers_engine import TransformersEngine

    return TransformersEngine(settings, path)
