"""Async HTTP client for one model service, shared by the gateway, the worker and tests.

One :class:`httpx.AsyncClient` per upstream, explicit timeouts, the request id forwarded, the
error envelope turned back into :mod:`shared.errors` exceptions, retries only for failures that
cannot have reached the model (connection refused) and never for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from shared.errors import ServiceUnavailable, UpstreamTimeout, from_body
from shared.logging import REQUEST_ID_HEADER, request_id_var
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
    SwitchModelRequest,
    SwitchModelResponse,
)

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)


class ServiceClient:
    """Base JSON client. ``name`` (e.g. ``"scorer"``) prefixes every error message."""

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        connect_retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.connect_retries = connect_retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        headers = {}
        if (rid := request_id_var.get()) is not None:
            headers[REQUEST_ID_HEADER] = rid
        kwargs: dict[str, Any] = {"json": json, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout
        for attempt in range(self.connect_retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
                break
            except httpx.ConnectError as exc:
                if attempt == self.connect_retries:
                    raise ServiceUnavailable(
                        f"{self.name} is unreachable at {self.base_url}: {exc}"
                    ) from exc
                await asyncio.sleep(0.2 * 2**attempt)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(
                    f"{self.name} did not answer {path} in time ({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                raise ServiceUnavailable(f"{self.name} failed on {path}: {exc!r}") from exc
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise from_body(response.status_code, body, prefix=f"{self.name}: ")
        return response

    async def post_model(
        self, path: str, payload: BaseModel, response_type: type[R], timeout: float | None = None
    ) -> R:
        body = payload.model_dump(mode="json", exclude_none=True)
        response = await self.request("POST", path, json=body, timeout=timeout)
        return response_type.model_validate(response.json())

    async def ready(self) -> bool:
        """True when the service answers /ready with 200."""
        try:
            response = await self._http.get("/ready", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


class ModelServiceClient(ServiceClient):
    """Typed calls to one role of the model service."""

    async def rationale(
        self, req: RationaleRequest, timeout: float | None = None
    ) -> RationaleResponse:
        return await self.post_model("/v1/rationale", req, RationaleResponse, timeout)

    async def propose(self, req: ProposeRequest, timeout: float | None = None) -> ProposeResponse:
        return await self.post_model("/v1/propose", req, ProposeResponse, timeout)

    async def score(self, req: ScoreRequest, timeout: float | None = None) -> ScoreResponse:
        return await self.post_model("/v1/score", req, ScoreResponse, timeout)

    async def rollout(self, req: RolloutRequest, timeout: float | None = None) -> RolloutResponse:
        """``n`` completions of a partial solution, each as its steps and its answer."""
        return await self.post_model("/v1/rollout", req, RolloutResponse, timeout)

    async def reward(self, req: RewardRequest, timeout: float | None = None) -> RewardResponse:
        """``POST /v1/reward`` of a reward service (``MODEL_SERVER_ROLE=reward``)."""
        return await self.post_model("/v1/reward", req, RewardResponse, timeout)

    async def chat(
        self, req: ChatCompletionRequest, timeout: float | None = None
    ) -> ChatCompletionResponse:
        """OpenAI-compatible ``POST /v1/chat/completions`` (not streamed)."""
        body = req.model_dump(mode="json", exclude_none=True)
        response = await self.request("POST", "/v1/chat/completions", json=body, timeout=timeout)
        return ChatCompletionResponse.model_validate(response.json())

    async def complete(
        self, req: CompletionRequest, timeout: float | None = None
    ) -> CompletionResponse:
        """OpenAI-compatible ``POST /v1/completions``: raw text, no chat template."""
        body = req.model_dump(mode="json", exclude_none=True)
        response = await self.request("POST", "/v1/completions", json=body, timeout=timeout)
        return CompletionResponse.model_validate(response.json())

    async def switch_model(self, model: str, timeout: float | None = 900.0) -> SwitchModelResponse:
        """Switch the served model (``POST /admin/model``; the service needs its internal
        token set and this client the same token). Waits while the new model loads, minutes
        for a large one: a client timeout (504) does not stop the switch in the service, and
        its /ready says which model it serves."""
        req = SwitchModelRequest(model=model)
        return await self.post_model("/admin/model", req, SwitchModelResponse, timeout)
