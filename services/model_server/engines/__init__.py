"""Engines behind one interface (:mod:`.base`); :func:`build_engine` picks one from settings."""

from __future__ import annotations

from typing import Any, cast

from services.model_server.engines.base import Engine
from services.model_server.settings import EngineKind, ModelServerSettings
from shared.errors import InvalidRequest
from shared.schemas import Role

REMOTE_REWARD_UNSUPPORTED = (
    "MODEL_SERVER_ROLE=reward loads its model itself: use MODEL_SERVER_ENGINE=transformers "
    "(CPU or GPU) or vllm (vLLM's pooling runner); an OpenAI-compatible upstream serves no "
    "reward model"
)


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
    if settings.role is Role.reward:
        return build_reward_engine(settings)
    if settings.engine is EngineKind.remote:
        from services.model_server.engines.remote_engine import RemoteEngine

        return RemoteEngine(settings)
    path = model_location(settings)
    if settings.engine is EngineKind.vllm:
        from services.model_server.engines.vllm_engine import VllmEngine

        return VllmEngine(settings, path)
    from services.model_server.engines.transformers_engine import TransformersEngine

    return TransformersEngine(settings, path)


def build_reward_engine(settings: ModelServerSettings) -> Engine:
    """The reward role's engine: transformers, or vLLM's pooling runner. The remote engine,
    and a folder that is not a reward model, fail at start-up with a message that says so
    (InvalidRequest naming ``engine`` or ``model``)."""
    from services.model_server.engines.reward_engine import (
        NotARewardModel,
        TransformersRewardEngine,
        VllmRewardEngine,
    )

    if settings.engine is EngineKind.remote:
        raise InvalidRequest(f"engine=remote: {REMOTE_REWARD_UNSUPPORTED}", field="engine")
    cls = VllmRewardEngine if settings.engine is EngineKind.vllm else TransformersRewardEngine
    try:
        engine: Any = cls(settings, model_location(settings))
    except NotARewardModel as exc:
        raise InvalidRequest(str(exc), field="model") from exc
    return cast(Engine, engine)
