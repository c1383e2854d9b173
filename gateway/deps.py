"""Dependencies of the routes: the typed state container and the request id."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.state import GatewayState
from shared.errors import ServiceUnavailable
from shared.http import request_id


def get_state(request: Request) -> GatewayState:
    state: GatewayState | None = getattr(request.app.state, "gateway", None)
    if state is None:  # only before the lifespan has run
        raise ServiceUnavailable("the gateway is starting")
    return state


def get_request_id(request: Request) -> str | None:
    return request_id(request)


StateDep = Annotated[GatewayState, Depends(get_state)]
RequestIdDep = Annotated[str | None, Depends(get_request_id)]
