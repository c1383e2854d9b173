"""Work nobody waits for is stopped: a client that disconnects cancels its search, the cancel
endpoints stop one from another connection, and admission control refuses with Retry-After
instead of letting load turn into timeouts."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.state import Limiter, Searches
from gateway.testing import FakeModelService, fake_upstreams
from shared.errors import NotFound, ServiceUnavailable
from shared.schemas import ProposeRequest, ProposeResponse
from tests.unit.test_gateway_api import Q, agent, served

pytestmark = pytest.mark.unit


@dataclass
class HangingAgent(FakeModelService):
    """Proposes normally for the first ``answer_steps`` steps, then hangs until cancelled."""

    answer_steps: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def propose(self, req: ProposeRequest) -> ProposeResponse:
        if len(req.steps) < self.answer_steps:
            return await super().propose(req)
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


# -- admission control ----------------------------------------------------------------------


async def test_full_queue_is_refused_at_once_with_retry_after() -> None:
    hanging = HangingAgent("agent")
    async with served(
        fake_upstreams(agent=hanging), max_concurrent_requests=1, max_queued_requests=0
    ) as client:
        first = asyncio.create_task(client.post("/v1/reason", json=Q))
        await asyncio.wait_for(hanging.started.wait(), 5)
        r = await client.post("/v1/reason", json=Q)
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert "queue" in r.json()["error"]["message"]
        first.cancel()


async def test_queue_timeout_is_503_with_retry_after() -> None:
    hanging = HangingAgent("agent")
    async with served(
        fake_upstreams(agent=hanging), max_concurrent_requests=1, queue_timeout_s=0.05
    ) as client:
        first = asyncio.create_task(client.post("/v1/reason", json=Q))
        await asyncio.wait_for(hanging.started.wait(), 5)
        r = await client.post("/v1/reason", json=Q)
        assert r.status_code == 503
        assert "Retry-After" in r.headers
        first.cancel()


async def test_limiter_estimates_retry_after_from_recent_searches() -> None:
    limiter = Limiter(2, queue_timeout_s=1.0, queue=4)
    admitted = await limiter.acquire()
    assert limiter.running == 1
    limiter.release(admitted)
    assert limiter.running == 0
    limiter._mean_s = 30.0
    limiter.waiting = 3
    assert limiter.retry_after_s() == 60  # 30 s each, 4 ahead over 2 slots
    err = limiter._busy("test")
    assert isinstance(err, ServiceUnavailable) and err.headers() == {"Retry-After": "60"}


# -- the cancel endpoints -------------------------------------------------------------------


async def test_cancel_stops_a_running_search_with_the_steps_so_far() -> None:
    hanging = HangingAgent("agent", proposals=agent().proposals, answer_steps=1)
    async with served(fake_upstreams(agent=hanging)) as client:
        search = asyncio.create_task(
            client.post("/v1/reason", json=Q, headers={"X-Request-Id": "s-1"})
        )
        await asyncio.wait_for(hanging.started.wait(), 5)
        r = await client.post("/v1/reason/s-1/cancel")
        assert r.status_code == 200
        assert r.json() == {"id": "s-1", "object": "search.cancel", "status": "cancelled"}
        done = await asyncio.wait_for(search, 5)
        assert hanging.cancelled.is_set()  # the upstream call in flight was cancelled
        again = await client.post("/v1/reason/s-1/cancel")
        metrics = (await client.get("/metrics")).text
    assert done.status_code == 200
    body = done.json()
    assert body["cancelled"] is True and body["finished"] is False
    assert len(body["steps"]) == 1  # the step chosen before the cancel
    assert any("cancelled during step 1" in w for w in body["warnings"])
    assert again.status_code == 200 and again.json()["status"] == "already_cancelled"
    assert 'gateway_search_cancellations_total{via="api"} 1.0' in metrics


async def test_cancel_unknown_or_finished_search_is_404() -> None:
    async with served() as client:
        done = await client.post("/v1/reason", json=Q, headers={"X-Request-Id": "s-2"})
        finished = await client.post("/v1/reason/s-2/cancel")
        unknown = await client.post("/v1/reason/nope/cancel")
    assert done.status_code == 200
    for r in (finished, unknown):
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found"


async def test_chat_completion_is_cancelled_by_its_completion_id() -> None:
    hanging = HangingAgent("agent")
    chat = {"model": "rationalyst", "messages": [{"role": "user", "content": "2 + 3?"}]}
    async with served(fake_upstreams(agent=hanging)) as client:
        search = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat, headers={"X-Request-Id": "c-1"})
        )
        await asyncio.wait_for(hanging.started.wait(), 5)
        r = await client.post("/v1/chat/completions/chatcmpl-c-1/cancel")
        done = await asyncio.wait_for(search, 5)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert done.status_code == 200
    assert done.json()["id"] == "chatcmpl-c-1"
    assert done.json()["rationalyst"]["cancelled"] is True


def test_searches_registry_rules() -> None:
    class Search:
        stopped = 0

        def cancel(self) -> None:
            self.stopped += 1

    searches = Searches(remember=2)
    a, b = Search(), Search()
    remove = searches.add("a", a)
    assert searches.add("a", b)() is None  # an id in use stays with the first search
    assert searches.cancel("a") == "cancelled" and a.stopped == 1 and b.stopped == 0
    assert searches.cancel("a") == "already_cancelled" and a.stopped == 1
    remove()
    with pytest.raises(NotFound):
        searches.cancel("b")


# -- client disconnects ---------------------------------------------------------------------


async def call_and_disconnect(
    app: Any, path: str, body: dict[str, Any], *, leave_after: asyncio.Event
) -> list[dict[str, Any]]:
    """Send one request straight to the ASGI app and disconnect once ``leave_after`` is set;
    return the messages the app sent."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await leave_after.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_cancels_the_search_and_frees_its_slot(stream: bool) -> None:
    hanging = HangingAgent("agent", proposals=agent().proposals, answer_steps=1 if stream else 0)
    app = create_app(GatewaySettings(), clients=fake_upstreams(agent=hanging))
    async with app.router.lifespan_context(app):
        sent = await call_and_disconnect(
            app, "/v1/reason", {**Q, "stream": stream}, leave_after=hanging.started
        )
        state = app.state.gateway
        assert hanging.cancelled.is_set()
        assert state.limiter.running == 0  # the slot came back
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            metrics = (await client.get("/metrics")).text
    if stream:  # the stream had started: its first step went out before the disconnect
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    else:
        assert not sent  # nobody to answer
        assert 'status="499"' in metrics
    assert 'gateway_http_cancelled_total{route="/v1/reason"} 1.0' in metrics


async def test_a_cancelled_search_forces_no_answer_step() -> None:
    hanging = HangingAgent("agent", proposals=agent().proposals, answer_steps=1)
    async with served(fake_upstreams(agent=hanging)) as client:
        search = asyncio.create_task(
            client.post("/v1/reason", json=Q, headers={"X-Request-Id": "s-3"})
        )
        await asyncio.wait_for(hanging.started.wait(), 5)
        assert (await client.post("/v1/reason/s-3/cancel")).status_code == 200
        done = (await asyncio.wait_for(search, 5)).json()
    assert done["finish"] == "cancelled" and done["cancelled"] is True
    assert not any(step.get("forced_answer") for step in done["trace"])
