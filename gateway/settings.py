"""Settings of the gateway. Environment variables carry the prefix ``GATEWAY_``."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from shared.jobs_store import JobStoreSettings
from shared.settings import CommonSettings


class GatewaySettings(CommonSettings, JobStoreSettings):
    """The public reasoning API in front of the three model services, and the job API
    (``redis_url``, ``artifacts_dir``, ``queue_name`` and ``data_dirs`` must match the
    workers')."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    port: int = Field(default=8100, ge=1, le=65535, description="Port to bind.")
    rationalyst_url: str = Field(
        default="http://127.0.0.1:8101", description="Base URL of the rationalyst model service."
    )
    agent_url: str = Field(
        default="http://127.0.0.1:8102", description="Base URL of the agent model service."
    )
    scorer_url: str = Field(
        default="http://127.0.0.1:8103", description="Base URL of the scorer model service."
    )
    reward_url: str = Field(
        default="",
        description="Base URL of the reward model service (MODEL_SERVER_ROLE=reward), used by "
        "the `prm` and `orm` heuristics; empty = not configured (those heuristics answer "
        "422, and /ready leaves it out).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys. When set, every /v1 route requires "
        "`Authorization: Bearer <key>`; keys are never logged.",
    )
    upstream_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Read timeout of one model-service call, within the request's deadline. "
        "A slow call (a busy service) is waited for, never a reason to change method; past "
        "this it is a 504, or with time left, the best trajectory so far.",
    )
    connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Connect timeout of one model-service call."
    )
    connect_retries: int = Field(
        default=2, ge=0, description="Retries of a refused connection (never of a timeout)."
    )
    ready_timeout_s: float = Field(
        default=5.0, gt=0, description="Timeout of each upstream /ready check done by /ready."
    )
    max_deadline_s: float = Field(
        default=600.0,
        gt=0,
        description="Cap on a request's wall time; past it the best trajectory so far is "
        "returned with `deadline_reached` (a request's own deadline_s may be shorter).",
    )
    max_question_chars: int = Field(
        default=4000, ge=1, description="Longest question accepted (422 beyond)."
    )
    max_concurrent_requests: int = Field(
        default=32, ge=1, description="Searches run at once; further requests wait in a queue."
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=0,
        description="Requests that may wait for a slot (default: twice "
        "max_concurrent_requests); one more is refused at once with 503 and Retry-After.",
    )
    queue_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a request waits for a slot before a 503 with Retry-After.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Largest file accepted by `POST /v1/files` (413 beyond; default 512 MiB). "
        "Uploads are kept under `<artifacts>/_files`.",
    )
    max_solution_chars: int = Field(
        default=16000, ge=1, description="Longest solution /v1/verify accepts (422 beyond)."
    )
    verifier_service: Literal["rationalyst", "agent", "scorer"] = Field(
        default="scorer",
        description="Model service whose /v1/chat/completions is the LLM verifier of "
        "/v1/verify (tasks without a scripted verifier, or `verifier: llm`).",
    )
    verifier_max_tokens: int = Field(
        default=256, ge=16, le=2048, description="Most tokens of the LLM verifier's answer."
    )
    served_model_name: str = Field(
        default="rationalyst",
        description="Model name of the OpenAI-compatible endpoint (/v1/models lists it).",
    )
    answer_grace_s: float = Field(
        default=10.0,
        gt=0,
        description="When a search ends without an answer, the agent is asked for the answer "
        "step; past the deadline it may take this long (at most the request's own deadline_s).",
    )

    reasoning_format: Literal["reasoning_content", "reasoning", "think", "none"] = Field(
        default="reasoning_content",
        description="Where /v1/chat/completions puts the search when the request does not say "
        "(`reasoning_format`): reasoning_content (DeepSeek's field), reasoning, think "
        "(`<think>` tags in the content) or none (the steps as content).",
    )
    trace_memory: int = Field(
        default=200,
        ge=0,
        description="Responses of the last N searches kept in memory for `GET /v1/traces/{id}` "
        "and the /ui page (0: none).",
    )
    trace_ttl_s: float = Field(
        default=86400.0,
        ge=0,
        description="How long responses are also kept in the Redis of `redis_url` (so that "
        "every gateway replica, and a restarted one, finds them); 0: memory only. A Redis "
        "that is down never fails a search.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("rationalyst_url", "agent_url", "scorer_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("reward_url")
    @classmethod
    def _optional_http_url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"must be empty or start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.connect_timeout_s > self.upstream_timeout_s:
            raise ValueError("connect_timeout_s cannot exceed upstream_timeout_s")
        return self

    def api_key_values(self) -> list[str]:
        """The accepted API keys in clear (for the auth middleware only)."""
        return [k.get_secret_value() for k in self.api_keys]
