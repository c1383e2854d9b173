"""Settings base shared by every service: pydantic-settings, one env prefix per service."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "rationalyst"


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
