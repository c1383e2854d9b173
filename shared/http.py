"""Server-side HTTP plumbing every service shares: request ids, the error envelope,
bearer-token auth, Prometheus request metrics and the /metrics route."""

from __future__ import annotations

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
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import ErrorBody, InvalidRequest, ServiceError, Unauthorized
from shared.logging import REQUEST_ID_HEADER, request_id_var

logger = logging.getLogger(__name__)

__all__ = [
    "REQUEST_ID_HEADER",
    "HttpMetrics",
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
    return JSONResponse(exc.body(request_id(request)), status_code=exc.status)


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
        logger.exception("unhandled error")
        body = {
            "error": {
                "type": "internal_error",
                "message": f"internal error ({type(exc).__name__}); see the service log",
                "request_id": request_id(request),
            }
        }
        return JSONResponse(body, status_code=500)


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


def install_middleware(
    app: FastAPI,
    metrics: HttpMetrics,
    *,
    token: str | None = None,
    token_list: Iterable[str] = (),
    public_paths: frozenset[str] = frozenset({"/health", "/ready", "/metrics"}),
) -> None:
    """Request id, optional bearer auth, request metrics, and the /metrics route.

    ``token``/``token_list``: accepted bearer tokens; when none is set auth is off. Tokens are
    compared in constant time and never logged.
    """
    accepted = [t for t in (token, *token_list) if t]

    @app.middleware("http")
    async def _mw(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        request.state.request_id = rid
        reset = request_id_var.set(rid)
        start = time.perf_counter()
        try:
            if accepted and request.url.path not in public_paths:
                auth = request.headers.get("authorization", "")
                scheme, _, given = auth.partition(" ")
                if scheme.lower() != "bearer" or not any(
                    hmac.compare_digest(given.encode(), t.encode()) for t in accepted
                ):
                    response: Response = error_response(
                        Unauthorized("missing or invalid bearer token (Authorization header)"),
                        request,
                    )
                    response.headers[REQUEST_ID_HEADER] = rid
                    return response
            response = await call_next(request)
        finally:
            request_id_var.reset(reset)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - start)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
