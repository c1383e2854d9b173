"""Settings base shared by every service: pydantic-settings, one env prefix per service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "rationalyst"


def models_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The models cache: ``override``, else ``$RATIONALYST_MODELS_DIR``, else
    ``~/.cache/rationalyst/models``."""
    if override:
        return Path(override)
    env = os.environ.get("RATIONALYST_MODELS_DIR")
    return Path(env) if env else default_cache_dir() / "models"


class CommonSettings(BaseSettings):
    """Fields every service has. Subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore", env_file=None)

    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to bind.")
    log_level: str = Field(default="INFO", description="Python log level.")
    log_json: bool = Field(default=False, description="Log one JSON object per line.")
    log_payloads: bool = Field(
        default=False, description="Log prompts and outputs (off by default: they may be private)."
    )
    internal_token: SecretStr | None = Field(
        default=None,
        description="Shared secret between gateway/worker and model services. When set, model "
        "services require `Authorization: Bearer <token>` and clients send it.",
    )


def describe_settings_error(settings_cls: type[BaseSettings], exc: ValidationError) -> str:
    """A start-up error that names what the user set: ``MODEL_SERVER_THREADS: must be >= 1
    (got 0)`` rather than pydantic's report on a field called ``threads``."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        name = (prefix + loc[0]).upper() if loc else prefix.rstrip("_")
        given = error.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"{name}: {error.get('msg', 'invalid value')}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Build ``settings_cls`` from the environment and ``overrides``; on a bad value, exit
    with :func:`describe_settings_error`'s message (status 2) instead of a traceback."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise SystemExit(describe_settings_error(settings_cls, exc)) from None
