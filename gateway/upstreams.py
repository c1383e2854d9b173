"""The three model services the gateway calls, behind one small protocol.

:class:`shared.clients.ModelServiceClient` satisfies :class:`ModelClient`; unit tests pass
fakes. Nothing here imports FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.settings import GatewaySettings
from shared.clients import ModelServiceClient
from shared.openai_schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)
from shared.schemas import (
    ProposeRequest,
    ProposeResponse,
    RationaleRequest,
    RationaleResponse,
    RewardRequest,
    RewardResponse,
    RolloutRequest,
    RolloutResponse,
    ScoreRequest,
    ScoreResponse,
)

ServiceName = Literal["rationalyst", "agent", "scorer", "reward"]
SERVICES: tuple[ServiceName, ...] = ("rationalyst", "agent", "scorer")
"""The model services every gateway needs; the reward service is optional."""


class ModelClient(Protocol):
    """What the gateway asks of one model service."""

    name: str

    async def rationale(self, req: RationaleRequest) -> RationaleResponse: ...

    async def propose(self, req: ProposeRequest) -> ProposeResponse: ...

    async def score(self, req: ScoreRequest) -> ScoreResponse: ...

    async def rollout(self, req: RolloutRequest) -> RolloutResponse: ...

    async def chat(self, req: ChatCompletionRequest) -> ChatCompletionResponse: ...

    async def complete(self, req: CompletionRequest) -> CompletionResponse: ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


class RewardClient(Protocol):
    """What the gateway asks of the reward service (``MODEL_SERVER_ROLE=reward``)."""

    name: str

    async def reward(self, req: RewardRequest) -> RewardResponse: ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Upstreams:
    """One client per role; ``reward`` only when GATEWAY_REWARD_URL is set."""

    rationalyst: ModelClient
    agent: ModelClient
    scorer: ModelClient
    reward: RewardClient | None = None

    def by_name(self) -> dict[ServiceName, ModelClient]:
        return {"rationalyst": self.rationalyst, "agent": self.agent, "scorer": self.scorer}

    async def aclose(self) -> None:
        for client in self.by_name().values():
            await client.aclose()
        if self.reward is not None:
            await self.reward.aclose()


def build_upstreams(settings: GatewaySettings) -> Upstreams:
    """One :class:`ModelServiceClient` per role with the settings' timeouts and token."""
    token = settings.internal_token.get_secret_value() if settings.internal_token else None

    def client(name: ServiceName, url: str) -> ModelServiceClient:
        return ModelServiceClient(
            name,
            url,
            token=token,
            timeout=settings.upstream_timeout_s,
            connect_timeout=settings.connect_timeout_s,
            connect_retries=settings.connect_retries,
        )

    return Upstreams(
        rationalyst=client("rationalyst", settings.rationalyst_url),
        agent=client("agent", settings.agent_url),
        scorer=client("scorer", settings.scorer_url),
        reward=client("reward", settings.reward_url) if settings.reward_url else None,
    )
