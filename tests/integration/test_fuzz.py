"""Fuzzing the HTTP contracts with schemathesis: requests generated from each service's own
OpenAPI document, sent over real HTTP to a real model service on the embedded model and to a
gateway in front of it (with a real Redis behind its job API).

Two modes per service. *Negative*: bodies and query parameters that break the schema (wrong
types, out-of-range values, missing or unknown fields) must be refused with a 4xx. *Positive*:
valid requests must be answered as documented. In both, every answer must carry a status the
route declares, the content type and body schema declared for it (the shared error envelope
for errors), and an ``X-Request-Id``; no 5xx but the documented 503/504; and the services must
still be ready afterwards.

Bounded: a fixed seed, a fixed number of examples per route, small limits on model work (the
model service's MODEL_SERVER_MAX_TOKENS_LIMIT/MAX_N/MAX_CONTINUATIONS; the gateway's deadline,
and positive bodies capped to those budgets), and a fixed time budget for the whole module.
Schema-valid requests may still be refused by those limits with a 422 naming the field, as
documented, so schemathesis's ``positive_data_acceptance`` check is not among the checks.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import RunningService
from tests.integration.worker_fixtures import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.integration

SEED = 12
# Model work per request stays tiny: a few tokens, a couple of rows.
MODEL_LIMITS = {
    "MODEL_SERVER_MAX_TOKENS_LIMIT": "8",
    "MODEL_SERVER_MAX_N": "2",
    "MODEL_SERVER_MAX_CONTINUATIONS": "4",
    "MODEL_SERVER_REQUEST_TIMEOUT_S": "60",
}
GATEWAY_DEADLINE_S = 3.0
# Positive search bodies: budgets capped (unset ones set) so a search is a step or two.
SEARCH_CAPS = {"max_steps": 2, "n_candidates": 2, "max_step_tokens": 8, "max_rationale_tokens": 8}
SERVED_MODEL = "rationalyst"

EXAMPLES = {GenerationMode.NEGATIVE: 40, GenerationMode.POSITIVE: 20}
# Positive examples of routes that run the model: fewer (a search is seconds on a CPU).
MODEL_ROUTES = {
    "/v1/reason": 8,
    "/v1/select": 12,
    "/v1/rationale": 12,
    "/v1/propose": 12,
    "/v1/score": 12,
    "/v1/completions": 12,
    "/v1/chat/completions": 8,
}
CALL_TIMEOUT_S = 90.0
# The tier's fixed budget of 160 s, shared out among its four tests by what their examples
# cost (so a slow first test cannot leave the others nothing): past a test's share, the
# examples left are not sent, and a warning says how many.
TEST_BUDGET_S: dict[tuple[str, str], float] = {
    ("model_service", "negative"): 25.0,
    ("model_service", "positive"): 60.0,  # every example runs the model
    ("gateway", "negative"): 25.0,
    ("gateway", "positive"): 50.0,
}


MODES = pytest.mark.parametrize(
    "mode", [GenerationMode.NEGATIVE, GenerationMode.POSITIVE], ids=lambda m: m.value
)


def answers_with_request_id(ctx: CheckContext, response: Response, case: Case) -> None:
    """Every answer names its request (X-Request-Id), errors included."""
    assert response.headers.get("x-request-id"), "no X-Request-Id header"


def no_server_error_but_unavailable(ctx: CheckContext, response: Response, case: Case) -> None:
    """5xx only as the documented 503 (a dependency down, busy) or 504 (a timeout)."""
    status = response.status_code
    assert status < 500 or status in (503, 504), f"server error {status}: {response.text[:300]}"


CHECKS = [
    no_server_error_but_unavailable,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    answers_with_request_id,
]


@dataclass
class Report:
    """What one route answered in one mode."""

    label: str
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    note: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        seen = ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses.items()))
        return f"{self.label:<50} {self.seconds:5.1f}s {seen or '-'} {self.note}".rstrip()


def has_invalid_inputs(op: Any) -> bool:
    """Whether negative data can reach the route: a body or query parameters (path segments
    that are free strings cannot be made invalid and still reach it)."""
    return bool(len(op.body) or len(op.query))


def is_multipart(op: Any) -> bool:
    return any(b.media_type.startswith("multipart/") for b in op.body)


def fuzz_operation(
    op: Any,
    base_url: str,
    mode: GenerationMode,
    *,
    prepare: Callable[[Case], Case] | None,
    stop_at: float,
) -> tuple[Report, int]:
    """Send one route its examples; its report and how many examples were not sent (the
    test's time was up)."""
    report = Report(op.label)
    if mode is GenerationMode.NEGATIVE and not has_invalid_inputs(op):
        report.note = "(nothing to make invalid)"
        return report, 0
    strategy = op.as_strategy(generation_mode=mode)
    if prepare is not None:
        strategy = strategy.map(prepare)
    examples = EXAMPLES[mode]
    if mode is GenerationMode.POSITIVE and op.method.upper() == "POST":
        examples = MODEL_ROUTES.get(op.path, examples)
    unsent = 0
    checks = CHECKS
    if mode is GenerationMode.NEGATIVE and is_multipart(op):
        # A multipart form carries every field as text: a "boolean" or "array" purpose arrives
        # as a valid string (or as a field the route does not read) and is rightly accepted.
        checks = [c for c in CHECKS if c is not negative_data_rejection]

    @hypothesis.seed(SEED)
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def run(case: Case) -> None:
        nonlocal unsent
        if time.monotonic() > stop_at:
            unsent += 1
            return
        response = case.call(base_url=base_url, timeout=CALL_TIMEOUT_S)
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:
            report.failures.append(str(exc))

    start = time.monotonic()
    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        report.note = "(nothing to generate)"
    report.seconds = time.monotonic() - start
    return report, unsent


def fuzz(
    schema_url: str,
    base_url: str,
    mode: GenerationMode,
    *,
    prepare: Callable[[Case], Case] | None = None,
    stop_at: float,
) -> list[Report]:
    """Fuzz every route of the document at ``schema_url``; one report per route."""
    schema = schemathesis.openapi.from_url(schema_url)
    reports: list[Report] = []
    unsent = 0
    for result in schema.get_all_operations():
        report, left = fuzz_operation(result.ok(), base_url, mode, prepare=prepare, stop_at=stop_at)
        reports.append(report)
        unsent += left
    print(f"\nfuzzing {base_url} ({mode.value}):\n" + "\n".join(r.line() for r in reports))
    if unsent:
        warnings.warn(
            f"fuzzing {base_url} ({mode.value}): {unsent} example(s) not sent, the test's "
            "share of the tier's budget was spent",
            stacklevel=2,
        )
    return reports


def assert_clean(reports: list[Report]) -> None:
    summary = "\n".join(r.line() for r in reports)
    failures = [f"--- {r.label}\n{f}" for r in reports for f in r.failures[:2]]
    assert not failures, summary + "\n\n" + "\n".join(failures)
    assert sum(sum(r.statuses.values()) for r in reports) > 0, summary


def assert_ready(*urls: str) -> None:
    for url in urls:
        r = httpx.get(f"{url}/ready", timeout=30)
        assert r.status_code == 200, (url, r.text)


def _cap(body: dict[str, Any], name: str, cap: int, *, always: bool = False) -> None:
    """``body[name]`` at most ``cap``; set to it where unset if ``always``."""
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        body[name] = min(value, cap)
    elif always or name in body:
        body[name] = cap


def model_budget(case: Case) -> Case:
    """Positive model-service bodies within the service's limits, so they reach the model."""
    body = case.body
    if isinstance(body, dict):
        for name in ("n", "max_tokens", "max_completion_tokens"):
            if name in body:
                _cap(body, name, 2 if name == "n" else 8)
        if isinstance(body.get("continuations"), list):
            body["continuations"] = body["continuations"][:4]
        if case.operation.path == "/v1/rollout":  # unset, 8 steps of 96 tokens each
            _cap(body, "max_steps", 2, always=True)
            _cap(body, "max_step_tokens", 8, always=True)
    return case


def search_budget(case: Case) -> Case:
    """Positive search bodies with a step or two of tiny budgets, for the served model, with
    a question to answer."""
    body = case.body
    if not isinstance(body, dict) or case.method.upper() != "POST":
        return case
    if case.path in ("/v1/reason", "/v1/chat/completions"):
        for name, cap in SEARCH_CAPS.items():
            _cap(body, name, cap, always=True)
    if case.path == "/v1/chat/completions":
        body["model"] = SERVED_MODEL
        messages = body.get("messages")
        if isinstance(messages, list):
            messages.append({"role": "user", "content": "What is 2 + 3?"})
    if case.path == "/v1/select":
        _cap(body, "max_rationale_tokens", SEARCH_CAPS["max_rationale_tokens"], always=True)
        if isinstance(body.get("candidates"), list):  # the scorer takes 4 at most here
            body["candidates"] = body["candidates"][:4]
    return case


def budget_of(request: pytest.FixtureRequest) -> float:
    target = "gateway" if "gateway" in request.node.name else "model_service"
    return TEST_BUDGET_S[(target, request.node.callspec.params["mode"].value)]


@pytest.fixture
def stop_at(request: pytest.FixtureRequest) -> float:
    """When this test's share of the tier's budget is spent."""
    return time.monotonic() + budget_of(request)


@pytest.fixture(scope="module")
def limited_service(model_service_factory: Callable[..., list[RunningService]]) -> str:
    """One model service (the agent role) with small limits; the gateway below uses it for
    all three roles."""
    (service,) = model_service_factory("agent", env=MODEL_LIMITS)
    return service.url


@pytest.fixture(scope="module")
def fuzz_gateway(
    gateway_factory: Callable[..., str],
    limited_service: str,
    redis_server: RedisServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    artifacts = tmp_path_factory.mktemp("fuzz-artifacts")
    yield gateway_factory(
        rationalyst_url=limited_service,
        agent_url=limited_service,
        scorer_url=limited_service,
        redis_url=redis_server.url,
        artifacts_dir=artifacts,
        data_dirs=[artifacts],
        max_deadline_s=GATEWAY_DEADLINE_S,
        max_upload_bytes=1 << 20,
        served_model_name=SERVED_MODEL,
    )


@MODES
def test_fuzz_model_service_answers_as_documented(
    limited_service: str, mode: GenerationMode, stop_at: float
) -> None:
    prepare = model_budget if mode is GenerationMode.POSITIVE else None
    url = limited_service
    reports = fuzz(f"{url}/openapi.json", url, mode, prepare=prepare, stop_at=stop_at)
    assert_clean(reports)
    assert_ready(limited_service)


@MODES
def test_fuzz_gateway_answers_as_documented(
    fuzz_gateway: str, limited_service: str, mode: GenerationMode, stop_at: float
) -> None:
    prepare = search_budget if mode is GenerationMode.POSITIVE else None
    url = fuzz_gateway
    reports = fuzz(f"{url}/openapi.json", url, mode, prepare=prepare, stop_at=stop_at)
    assert_clean(reports)
    assert_ready(fuzz_gateway, limited_service)
