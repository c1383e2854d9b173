"""Typed client of the gateway's public API (POST /v1/reason, POST /v1/select)."""

from __future__ import annotations

import httpx

from shared.clients import ServiceClient
from shared.gateway_schemas import ReasonRequest, ReasonResponse, SelectRequest, SelectResponse


class GatewayClient(ServiceClient):
    """One httpx client for the gateway; errors come back as :mod:`shared.errors` types."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 900.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__("gateway", base_url, token=api_key, timeout=timeout, transport=transport)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def reason(self, req: ReasonRequest) -> ReasonResponse:
        return await self.post_model("/v1/reason", req, ReasonResponse)

    async def select(self, req: SelectRequest) -> SelectResponse:
        return await self.post_model("/v1/select", req, SelectResponse)

    async def alive(self) -> bool:
        """True when GET /health answers 200."""
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200
