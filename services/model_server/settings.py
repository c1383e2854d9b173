"""Settings of the model service. One codebase, three deployments: the role tells them apart."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shared.schemas import Role
from shared.settings import CommonSettings, default_cache_dir


class EngineKind(StrEnum):
    transformers = "transformers"
    vllm = "vllm"
    remote = "remote"


class ModelServerSettings(CommonSettings):
    """Environment variables carry the prefix ``MODEL_SERVER_`` (``MODEL_SERVER_ROLE=scorer``)."""

    model_config = SettingsConfigDict(env_prefix="MODEL_SERVER_", extra="ignore")

    role: Role = Field(default=Role.agent, description="Which deployment this is.")
    model: str = Field(
        default="smollm2-135m-instruct",
        description="A local Hugging Face model folder, a name in the models cache "
        "(`rationalyst models pull` makes `smollm2-135m-instruct`), the name of a trained model "
        "in the registry under the artifacts root, or a hub id where the network allows. For "
        "the remote engine: the model name the upstream serves. `rationalyst models use` "
        "switches it at run time.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name reported by /v1/models (default: the role)."
    )
    models_dir: str | None = Field(
        default=None,
        description="Models cache (default ~/.cache/rationalyst/models, or "
        "$RATIONALYST_MODELS_DIR).",
    )
    artifacts_dir: Path = Field(
        default_factory=lambda: default_cache_dir() / "artifacts",
        description="Artifacts root shared with the workers: holds the registry of trained "
        "models (`_models/<name>.json`) and the model folders it points at.",
    )
    engine: EngineKind = Field(default=EngineKind.transformers, description="Model backend.")
    device: str = Field(default="auto", description="transformers: cpu, cuda, or auto.")
    dtype: str = Field(
        default="auto",
        description="auto (bf16 on GPUs and on CPUs with avx512_bf16/amx, else fp32), "
        "float32, bfloat16 or float16.",
    )
    max_model_len: int | None = Field(
        default=2048, ge=16, description="Context limit in tokens (default: 2048; None = model's)."
    )
    max_batch_size: int = Field(
        default=16, ge=1, description="transformers: most sequences decoded together."
    )
    batch_wait_ms: float = Field(
        default=5.0, ge=0.0, description="transformers: how long a batch waits for company."
    )
    attention: str = Field(
        default="auto",
        description="transformers: attention implementation. auto: `grouped_decode` on CPUs "
        "(one-token decode steps read each KV head once; several-token passes use sdpa), the "
        "library's default on GPUs; or any transformers name (sdpa, eager, flash_attention_2).",
    )
    prefix_cache_tokens: int = Field(
        default=16384,
        ge=0,
        description="transformers: prompt tokens whose KV cache is kept between requests, so "
        "a prompt computes only what follows its longest cached prefix (shared few-shot demos, "
        "the previous step's prompt). About 23 KB per token on the embedded model in bf16; "
        "0 turns it off.",
    )
    max_n: int = Field(default=16, ge=1, description="Largest n for propose and completions.")
    max_continuations: int = Field(
        default=64, ge=1, description="Most continuations in one /v1/score request."
    )
    max_tokens_limit: int = Field(
        default=1024, ge=1, description="Largest max_tokens a request may ask for."
    )
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="A request still running after this answers 504."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of the engine (torch's pools; vLLM's OpenMP threads). Default: "
        "the cores the process may use, capped by its container's CPU limit; `rationalyst up` "
        "gives each of its model services an equal share of the cores instead.",
    )
    # vLLM
    vllm_gpu_memory_utilization: float = Field(
        default=0.85, gt=0.0, le=1.0, description="vLLM on GPU: share of GPU memory it may take."
    )
    vllm_enforce_eager: bool = Field(
        default=True, description="Skip torch.compile/CUDA graphs (fast start; off for speed)."
    )
    vllm_kv_cache_gib: int = Field(default=1, ge=1, description="vLLM on CPU: KV cache size.")
    vllm_enable_prefix_caching: bool = Field(
        default=True, description="vLLM: reuse the KV cache of shared prompt prefixes."
    )
    # remote
    remote_url: str | None = Field(
        default=None, description="remote engine: base URL of an OpenAI-compatible server."
    )
    remote_api_key: SecretStr | None = Field(default=None, description="remote engine: API key.")
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer folder or hub id (default: the model). The remote engine needs "
        "one to render chat templates and locate token windows.",
    )
    # prompts
    system_prompt: str | None = Field(
        default=None, description="Overrides the role's default system prompt ('' for none)."
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.engine is EngineKind.remote and not self.remote_url:
            raise ValueError("engine=remote needs MODEL_SERVER_REMOTE_URL")
        return self

    @property
    def name(self) -> str:
        return self.served_model_name or self.role.value
