"""What every route of the gateway and the model service documents and answers: its error
statuses in OpenAPI with the shared envelope as their schema, and the envelope (field `body`)
for bodies that are not UTF-8, not JSON or not a JSON object."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from gateway.testing import fake_upstreams
from services.model_server.app import create_app as create_model_service
from services.model_server.settings import ModelServerSettings
from shared.errors import ErrorBody
from shared.schemas import Role

pytestmark = pytest.mark.unit

PUBLIC = {"/health", "/ready"}
SEARCH = {401, 422, 503, 504}
JOBS = {401, 422, 503}

# The error statuses each route declares beyond the ones the generic rules imply.
GATEWAY: dict[tuple[str, str], set[int]] = {
    ("GET", "/health"): set(),
    ("GET", "/ready"): {503},
    ("POST", "/v1/reason"): SEARCH,
    ("POST", "/v1/select"): SEARCH,
    # OpenAI's statuses: a bad parameter is a 400 (the SDKs' BadRequestError)
    ("POST", "/v1/chat/completions"): {400, 401, 404, 503, 504},
    ("POST", "/v1/reason/{search_id}/cancel"): {401, 404, 422},
    ("POST", "/v1/verify"): SEARCH,
    ("POST", "/v1/chat/completions/{completion_id}/cancel"): {401, 404, 422},
    ("GET", "/v1/models"): {401},
    ("POST", "/v1/jobs"): JOBS | {409},
    ("GET", "/v1/jobs"): JOBS,
    ("GET", "/v1/jobs/{job_id}"): JOBS | {404},
    ("POST", "/v1/jobs/{job_id}/cancel"): JOBS | {404, 409},
    ("GET", "/v1/jobs/{job_id}/artifacts"): JOBS | {404},
    ("GET", "/v1/jobs/{job_id}/artifacts/{name}"): JOBS | {404},
    ("POST", "/v1/files"): {401, 413, 422},
    ("GET", "/v1/files"): {401, 422},
    ("GET", "/v1/files/{file_id}"): {401, 404, 422},
    ("GET", "/v1/files/{file_id}/content"): {401, 404, 422},
    ("DELETE", "/v1/files/{file_id}"): {401, 404, 422},
    ("GET", "/v1/registry/models"): {401},
    ("GET", "/v1/registry/models/{name}"): {401, 404, 422},
    ("GET", "/v1/traces/{trace_id}"): {401, 404, 422, 503},
}
# Routes that answer errors in OpenAI's body (`{"error": {message, type, param, code}}`) with
# OpenAI's statuses (400 for a bad parameter); their 401 comes from the auth middleware.
OPENAI_SHAPED = {("POST", "/v1/chat/completions")}
MODEL_SERVICE: dict[tuple[str, str], set[int]] = {
    ("GET", "/health"): set(),
    ("GET", "/ready"): {503},
    ("POST", "/admin/model"): {401, 403, 409, 422, 503},
    ("POST", "/v1/rationale"): SEARCH,
    ("POST", "/v1/propose"): SEARCH,
    ("POST", "/v1/rollout"): SEARCH,
    ("POST", "/v1/score"): SEARCH,
    ("POST", "/v1/completions"): SEARCH,
    ("POST", "/v1/chat/completions"): SEARCH,
    ("POST", "/v1/reward"): SEARCH,  # the reward role; other roles answer 422
    ("GET", "/v1/models"): {401},
}


def gateway_app() -> FastAPI:
    return create_gateway(GatewaySettings(), clients=fake_upstreams())


def model_service_app(**settings: Any) -> FastAPI:
    return create_model_service(ModelServerSettings(role=Role.agent, **settings))


def operations(app: FastAPI) -> dict[tuple[str, str], dict[str, Any]]:
    doc = app.openapi()
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }


@pytest.mark.parametrize(
    ("make", "expected"),
    [(gateway_app, GATEWAY), (model_service_app, MODEL_SERVICE)],
    ids=["gateway", "model-service"],
)
def test_openapi_every_route_declares_its_error_statuses(make, expected) -> None:  # type: ignore[no-untyped-def]
    app = make()
    ops = operations(app)
    assert set(ops) == set(expected), "a route was added or removed: list its error statuses"
    for key, op in ops.items():
        path = key[1]
        declared = {int(s) for s in op["responses"] if int(s) >= 400}
        assert declared == expected[key], (key, sorted(declared))
        # the generic rules, checked on every route
        assert (401 in declared) == (path not in PUBLIC), key
        if "{" in path:
            assert 404 in declared, key
        openai = make is gateway_app and key in OPENAI_SHAPED
        if op.get("parameters") or op.get("requestBody"):
            assert (400 if openai else 422) in declared, key
        for status in declared:
            content = op["responses"][str(status)]["content"]["application/json"]
            body = "OpenAIErrorBody" if openai and status != 401 else "ErrorBody"
            assert content["schema"] == {"$ref": f"#/components/schemas/{body}"}, (key, status)
            assert op["responses"][str(status)]["description"], (key, status)
    schemas = app.openapi()["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 shape, which nobody answers
    assert schemas["ErrorBody"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"
    }
    detail = schemas["ErrorDetail"]
    assert set(detail["properties"]) == {"type", "message", "request_id", "field"}
    assert set(detail["required"]) == {"type", "message", "request_id"}


def test_openapi_upload_documents_its_multipart_body() -> None:
    op = operations(gateway_app())[("POST", "/v1/files")]
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"]
    assert schema["properties"]["file"] == {"type": "string", "format": "binary"}


def test_error_envelope_matches_its_schema() -> None:
    from shared.errors import InvalidRequest, ServiceUnavailable

    for exc in (InvalidRequest("x: bad", field="x"), ServiceUnavailable("down")):
        body = ErrorBody.model_validate(exc.body("rid-1"))
        assert body.error.request_id == "rid-1"


# -- bodies that are not JSON objects ----------------------------------------------------------

BAD_BODIES: list[tuple[bytes, str | None, str]] = [
    (b'{"question": "\xff\xfe"}', "application/json", "not valid UTF-8"),
    (b"\xc3\x28", "application/json", "not valid UTF-8"),
    (b'{"question": ', "application/json", "malformed JSON"),
    (b"question=1", "application/json", "malformed JSON"),
    (b'{"question": "x"}', "text/plain", "not JSON (Content-Type: text/plain)"),
    (b'{"question": "x"}', None, "not JSON"),
    (b"", "application/json", "empty"),
    (b"[1, 2]", "application/json", "expected a JSON object, got an array"),
    (b'"text"', "application/json", "expected a JSON object, got a string"),
    (b"42", "application/json", "expected a JSON object, got a number"),
]


async def check_bad_bodies(client: httpx.AsyncClient, path: str) -> None:
    for content, content_type, says in BAD_BODIES:
        headers = {"content-type": content_type} if content_type else {}
        r = await client.post(path, content=content, headers={**headers, "X-Request-Id": "r1"})
        assert r.status_code == 422, (path, content, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request", err
        assert err["field"] == "body", err
        assert err["message"].startswith("body: ") and says in err["message"], (content, err)
        assert err["request_id"] == "r1"


@pytest.mark.parametrize("path", ["/v1/reason", "/v1/select", "/v1/jobs"])
async def test_gateway_bad_bodies_get_the_envelope_naming_body(asgi_client, path: str) -> None:  # type: ignore[no-untyped-def]
    settings = GatewaySettings(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5)
    async with asgi_client(create_gateway(settings, clients=fake_upstreams())) as client:
        await check_bad_bodies(client, path)


async def test_gateway_chat_bad_bodies_get_openais_body_naming_body(asgi_client) -> None:  # type: ignore[no-untyped-def]
    async with asgi_client(gateway_app()) as client:
        for content, content_type, says in BAD_BODIES:
            headers = {"content-type": content_type} if content_type else {}
            r = await client.post(
                "/v1/chat/completions", content=content, headers={**headers, "X-Request-Id": "r1"}
            )
            assert r.status_code == 400, (content, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code", "request_id"}, err
            assert err["type"] == "invalid_request_error" and err["param"] == "body", err
            assert err["message"].startswith("body: ") and says in err["message"], (content, err)
            assert err["request_id"] == "r1"


async def test_trace_by_id_unknown_is_a_404_envelope(asgi_client) -> None:  # type: ignore[no-untyped-def]
    async with asgi_client(gateway_app()) as client:
        r = await client.get("/v1/traces/nope", headers={"X-Request-Id": "r404"})
    assert r.status_code == 404
    body = ErrorBody.model_validate(r.json())
    assert body.error.type == "not_found" and body.error.field == "trace_id"
    assert "nope" in body.error.message and body.error.request_id == "r404"


@pytest.mark.parametrize("path", ["/v1/propose", "/v1/score", "/v1/chat/completions", "/v1/reward"])
async def test_model_service_bad_bodies_get_the_envelope_naming_body(  # type: ignore[no-untyped-def]
    fake_engine, asgi_client, path: str
) -> None:
    app = create_model_service(ModelServerSettings(role=Role.agent), engine=fake_engine)
    async with asgi_client(app) as client:
        await check_bad_bodies(client, path)


async def test_a_field_error_inside_a_body_still_names_the_field(asgi_client) -> None:  # type: ignore[no-untyped-def]
    async with asgi_client(gateway_app()) as client:
        r = await client.post("/v1/reason", json={"question": ["not", "a", "string"]})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "question"


async def test_an_unexpected_error_is_a_500_envelope_with_the_request_id() -> None:
    from shared.http import HttpMetrics, install_error_handlers, install_middleware

    app = FastAPI()
    install_error_handlers(app)
    install_middleware(app, HttpMetrics("test"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.get("/boom", headers={"X-Request-Id": "r500"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "r500"
    err = r.json()["error"]
    assert err["type"] == "internal_error" and err["request_id"] == "r500"
    assert "a bug" not in err["message"]  # nothing of the exception's text leaves the process


@pytest.mark.parametrize(
    ("make", "path"),
    [
        (gateway_app, "/v1/reason"),
        (gateway_app, "/v1/chat/completions"),
        (model_service_app, "/v1/chat/completions"),
    ],
)
def test_openapi_streaming_routes_document_both_content_types(make, path: str) -> None:  # type: ignore[no-untyped-def]
    content = operations(make())[("POST", path)]["responses"]["200"]["content"]
    assert {"application/json", "text/event-stream"} <= set(content), content
