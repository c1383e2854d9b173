"""Server-side HTTP plumbing every service shares: request ids, the error envelope,
bearer-token auth, Prometheus request metrics and the /metrics route."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ErrorBody, InvalidRequest, ServiceError, Unauthorized
from shared.logging import REQUEST_ID_HEADER, request_id_var

logger = logging.getLogger(__name__)

__all__ = [
    "REQUEST_ID_HEADER",
    "HttpMetrics",
    "RequestMiddleware",
    "error_responses",
    "install_error_handlers",
    "install_middleware",
]

ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "Missing or invalid bearer token (where the service requires one).",
    403: "Not allowed here.",
    404: "Not found.",
    409: "Conflicts with the current state.",
    413: "Larger than the upload limit.",
    422: "A field is wrong (`error.field` names it), or the body is not UTF-8 JSON "
    "(`field: body`).",
    503: "A dependency is down or not ready.",
    504: "An upstream call timed out.",
}


def error_responses(
    *statuses: int, notes: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer these error statuses, each with the
    shared envelope as its schema; ``notes`` replace the generic descriptions."""
    notes = notes or {}
    return {
        status: {"model": ErrorBody, "description": notes.get(status, ERROR_DESCRIPTIONS[status])}
        for status in statuses
    }


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(exc: ServiceError, request: Request) -> JSONResponse:
    return JSONResponse(
        exc.body(request_id(request)), status_code=exc.status, headers=exc.headers()
    )


def _field_of(loc: Iterable[object]) -> str:
    """`("body", "steps", 2)` -> `steps[2]`; the body prefix is implied."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path") and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean"}  # fmt: skip


def _body_problem(first: dict[str, Any], request: Request) -> str | None:
    """What is wrong with a body that is not a JSON object at all, in words; None when the
    error is about a field inside the body."""
    loc, kind = tuple(first.get("loc", ())), first.get("type")
    if kind == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        return f"malformed JSON: {first.get('ctx', {}).get('error', 'cannot be parsed')}{where}"
    if loc != ("body",):
        return None
    value = first.get("input")
    if kind == "missing":
        return "empty; expected a JSON object"
    if isinstance(value, bytes | bytearray):  # a Content-Type that is not JSON: left unparsed
        given = request.headers.get("content-type") or "missing"
        return f"not JSON (Content-Type: {given}); send a JSON object as application/json"
    if value is None or type(value) in _JSON_TYPES:
        shown = "null" if value is None else _JSON_TYPES[type(value)]
        return f"expected a JSON object, got {shown}"
    return None


def _unparsable_body(exc: BaseException | None) -> str:
    """Why FastAPI could not parse a body (it raises a bare 400 from the decoding error)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 ({exc.reason} at byte {exc.start}); send JSON encoded as UTF-8"
    return f"cannot be parsed ({type(exc).__name__ if exc else 'unknown error'})"


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the shared envelope; no stack trace leaves the process. A body
    that is not UTF-8, not JSON or not a JSON object is a 422 naming ``body``."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s: %s", exc.type, exc.message)
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ("body",)}
        field = _field_of(first.get("loc", ()))
        msg = first.get("msg", "invalid value")
        problem = _body_problem(first, request)
        if problem is not None:
            field, msg = "body", problem
        message = f"{field}: {msg}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error(s))"
        body = {
            "error": {
                "type": "invalid_request",
                "message": message,
                "request_id": request_id(request),
                "field": field,
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's body decoding
            problem = InvalidRequest(f"body: {_unparsable_body(exc.__cause__)}", field="body")
            return error_response(problem, request)
        kind = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
        }.get(exc.status_code, "http_error")
        body = {
            "error": {"type": kind, "message": str(exc.detail), "request_id": request_id(request)}
        }
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Answered by Starlette's outermost middleware, outside RequestMiddleware: the
        # request id header is set here.
        logger.exception("unhandled error")
        rid = request_id(request)
        body = {
            "error": {
                "type": "internal_error",
                "message": f"internal error ({type(exc).__name__}); see the service log",
                "request_id": rid,
            }
        }
        return JSONResponse(
            body, status_code=500, headers={REQUEST_ID_HEADER: rid} if rid else None
        )


class HttpMetrics:
    """Per-app Prometheus registry (one per app, so tests can build many apps)."""

    def __init__(self, namespace: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{namespace}_http_requests_total",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{namespace}_http_request_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.cancelled = Counter(
            f"{namespace}_http_cancelled_total",
            "Requests cancelled because their client disconnected before the response.",
            ["route"],
            registry=self.registry,
        )


def install_middleware(
    app: FastAPI,
    metrics: HttpMetrics,
    *,
    token: str | None = None,
    token_list: Iterable[str] = (),
    public_paths: frozenset[str] = frozenset({"/health", "/ready", "/metrics"}),
    cancel_paths: Callable[[str], bool] | None = None,
) -> None:
    """Request id, optional bearer auth, request metrics, cancellation of abandoned requests,
    and the /metrics route.

    ``token``/``token_list``: accepted bearer tokens; when none is set auth is off. Tokens are
    compared in constant time and never logged. ``cancel_paths(path)``: whether a request to
    ``path`` is cancelled when its client disconnects (see :class:`RequestMiddleware`).
    """
    accepted = tuple(t for t in (token, *token_list) if t)
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        accepted=accepted,
        public_paths=public_paths,
        cancel_paths=cancel_paths or (lambda path: False),
    )

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


_ON_CLOSE = "rationalyst.on_close"


def on_close(request: Request, callback: Callable[[], Awaitable[None]]) -> None:
    """Run ``callback`` once the request is over, whether it completed, failed or was
    cancelled on a disconnect (only on paths the middleware makes cancellable; elsewhere use
    the response's background task). Callbacks must be idempotent."""
    request.scope.setdefault("state", {}).setdefault(_ON_CLOSE, []).append(callback)


CLIENT_CLOSED = 499
"""Status recorded in the metrics for a request whose client left before its response (the
nginx convention); nothing is sent."""


class RequestMiddleware:
    """The one ASGI middleware of every service: request id (``X-Request-Id``, taken from the
    request or made, set in :data:`shared.logging.request_id_var` and echoed in the
    response), bearer auth, request metrics, and cancellation.

    Cancellation. For paths where ``cancel_paths`` is true, the request body is read first
    and replayed to the app, and the connection is watched while the app runs: when the
    client disconnects, the handler's task is cancelled, before or after its response has
    started (a stream nobody reads is not worth its next model call), which cancels
    everything it awaits (upstream HTTP calls, engine work). The request is counted in
    ``*_http_cancelled_total`` and as status 499. Whatever a handler must release however it
    ends (a stream's concurrency slot) it registers with :func:`on_close`; those callbacks
    run after the app, cancelled or not. Plain ASGI rather than Starlette's
    ``BaseHTTPMiddleware``, which hides the disconnect from the handler and adds a task per
    request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        accepted: tuple[str, ...],
        public_paths: frozenset[str],
        cancel_paths: Callable[[str], bool],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.accepted = accepted
        self.public_paths = public_paths
        self.cancel_paths = cancel_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = CLIENT_CLOSED
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        reset = request_id_var.set(rid)
        try:
            if (
                self.accepted
                and scope["path"] not in self.public_paths
                and not self._authorized(headers)
            ):
                error = Unauthorized("missing or invalid bearer token (Authorization header)")
                response = JSONResponse(error.body(rid), status_code=error.status)
                await response(scope, receive, send_with_id)
            elif self.cancel_paths(scope["path"]):
                await self._cancellable(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500  # answered by the outermost error middleware
            raise
        finally:
            request_id_var.reset(reset)
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and any(
            hmac.compare_digest(given.encode(), t.encode()) for t in self.accepted
        )

    async def _cancellable(self, scope: Scope, receive: Receive, send: Send) -> None:
        body: list[Message] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before the request was read
            body.append(message)
            if not message.get("more_body", False):
                break
        gone = asyncio.Event()
        closers: list[Callable[[], Awaitable[None]]] = scope["state"].setdefault(_ON_CLOSE, [])

        async def replay() -> Message:
            if body:
                return body.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        handler = asyncio.ensure_future(self.app(scope, replay, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                handler.cancel()
                route = getattr(scope.get("route"), "path", scope["path"])
                self.metrics.cancelled.labels(route).inc()
                logger.info("client disconnected: cancelled %s %s", scope["method"], route)
            with contextlib.suppress(asyncio.CancelledError):
                await handler
        finally:
            watcher.cancel()
            handler.cancel()
            for close in closers:
                try:
                    await asyncio.shield(close())
                except Exception:
                    logger.exception("a request's close callback failed")
