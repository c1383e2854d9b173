"""One error vocabulary for the whole ensemble.

Servers raise these; :func:`shared.http.install_error_handlers` maps them to the error
envelope ``{"error": {"type", "message", "request_id", "field"}}``; clients map the envelope
back to the same classes (:func:`from_body`). Nothing else decides an HTTP status.
:class:`ErrorBody` is the envelope as a schema, for the OpenAPI documents.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """What went wrong, in the shared vocabulary."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        description="invalid_request, unauthorized, forbidden, not_found, conflict, "
        "payload_too_large, service_unavailable, engine_error, timeout or internal_error.",
        examples=["invalid_request"],
    )
    message: str = Field(description="For people; names the field or the dependency at fault.")
    request_id: str | None = Field(description="The request's X-Request-Id.")
    field: str | None = Field(
        default=None,
        description="The request field at fault (`body` for a body that is not UTF-8 JSON).",
        examples=["input.paths"],
    )


class ErrorBody(BaseModel):
    """The one error envelope of every service."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class ServiceError(Exception):
    """Base class. ``status`` is the HTTP status; ``type`` the envelope's ``type``."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, *, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after  # seconds; sent as the Retry-After header

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error response."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def body(self, request_id: str | None) -> dict[str, Any]:
        detail: dict[str, Any] = {"type": self.type, "message": self.message}
        detail["request_id"] = request_id
        if self.field is not None:
            detail["field"] = self.field
        return {"error": detail}


class InvalidRequest(ServiceError):
    """A field is wrong: unknown, out of range, empty, or too long for the model."""

    status = 422
    type = "invalid_request"


class Unauthorized(ServiceError):
    status = 401
    type = "unauthorized"


class Forbidden(ServiceError):
    """Authenticated or not, this is not allowed here (e.g. an admin route left disabled)."""

    status = 403
    type = "forbidden"


class NotFound(ServiceError):
    status = 404
    type = "not_found"


class Conflict(ServiceError):
    status = 409
    type = "conflict"


class PayloadTooLarge(ServiceError):
    """An upload (or request body) over the configured size limit."""

    status = 413
    type = "payload_too_large"


class ServiceUnavailable(ServiceError):
    """A dependency is down or not ready (model not loaded, upstream unreachable)."""

    status = 503
    type = "service_unavailable"


class EngineError(ServiceUnavailable):
    """The model engine failed; the service reports itself not ready until it recovers."""

    type = "engine_error"


class UpstreamTimeout(ServiceError):
    status = 504
    type = "timeout"


class InternalError(ServiceError):
    status = 500
    type = "internal_error"


_BY_TYPE: dict[str, type[ServiceError]] = {
    cls.type: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        ServiceUnavailable,
        EngineError,
        UpstreamTimeout,
        InternalError,
    )
}
_BY_STATUS: dict[int, type[ServiceError]] = {
    422: InvalidRequest,
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: ServiceUnavailable,
    504: UpstreamTimeout,
}


def from_body(status: int, body: Any, *, prefix: str = "") -> ServiceError:
    """Turn an error response back into the typed exception a server raised.

    ``prefix`` (for example ``"scorer: "``) names the upstream in the message.
    """
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        cls = _BY_TYPE.get(str(detail.get("type")), _BY_STATUS.get(status, InternalError))
        return cls(prefix + str(detail.get("message", "")), field=detail.get("field"))
    cls = _BY_STATUS.get(status, InternalError)
    return cls(f"{prefix}HTTP {status}: {str(body)[:200]}")
