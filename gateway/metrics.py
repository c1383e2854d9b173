"""Prometheus metrics of the gateway: shared HTTP metrics plus the search loop's own, all in
one per-app registry (tests build many apps)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.errors import ServiceError
from shared.gateway_schemas import ReasonResponse, SelectResponse, StageTimings, VerifyResponse
from shared.http import HttpMetrics

_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class GatewayMetrics:
    """HTTP request metrics (composed, from :mod:`shared.http`) and search metrics.

    The dedup rate is ``gateway_duplicate_candidates_total / gateway_candidates_total``; the
    share of candidates that only repeated the trajectory is
    ``gateway_repeated_candidates_total / gateway_candidates_total``.
    """

    def __init__(self, namespace: str = "gateway") -> None:
        self.http = HttpMetrics(namespace)
        registry = self.http.registry
        self.searches = Counter(
            f"{namespace}_searches_total",
            "Finished searches by endpoint, heuristic requested and used, and outcome.",
            ["endpoint", "requested", "used", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            f"{namespace}_search_errors_total",
            "Searches that failed, by endpoint and error type.",
            ["endpoint", "type"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            f"{namespace}_stage_seconds",
            "Latency of one stage of a step (rationale, propose, score, step).",
            ["stage"],
            registry=registry,
            buckets=_STAGE_BUCKETS,
        )
        self.overhead_seconds = Histogram(
            f"{namespace}_overhead_seconds",
            "Time a search spent in the gateway itself, outside model-service calls.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
        self.candidates = Counter(
            f"{namespace}_candidates_total", "Candidate steps proposed.", registry=registry
        )
        self.duplicates = Counter(
            f"{namespace}_duplicate_candidates_total",
            "Candidate steps merged as duplicates of an earlier one.",
            registry=registry,
        )
        self.repeats = Counter(
            f"{namespace}_repeated_candidates_total",
            "Candidate steps dropped because they repeated a step of the trajectory.",
            registry=registry,
        )
        self.finishes = Counter(
            f"{namespace}_search_finish_total",
            "Finished /v1/reason searches by how they ended (answer, forced_answer, max_steps, "
            "deadline, no_candidates).",
            ["finish"],
            registry=registry,
        )
        self.steps = Histogram(
            f"{namespace}_steps_per_answer",
            "Steps per /v1/reason search.",
            registry=registry,
            buckets=(1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 32, 48, 64),
        )
        self.fallbacks = Counter(
            f"{namespace}_fallbacks_total",
            "Degradations to another heuristic because a model service was down.",
            ["service", "from_heuristic", "to_heuristic"],
            registry=registry,
        )
        self.cancellations = Counter(
            f"{namespace}_search_cancellations_total",
            "Searches cancelled through the cancel endpoint (disconnects: "
            f"{namespace}_http_cancelled_total).",
            ["via"],
            registry=registry,
        )
        self.verifications = Counter(
            f"{namespace}_verifications_total",
            "Solutions checked by /v1/verify, by verifier and verdict.",
            ["verifier", "verdict"],
            registry=registry,
        )
        self.deadlines = Counter(
            f"{namespace}_deadline_reached_total",
            "Searches cut short by their deadline.",
            registry=registry,
        )

    def _stages(self, timings: StageTimings, *, step: bool = True) -> None:
        for stage, ms in (
            ("rationale", timings.rationale_ms),
            ("propose", timings.propose_ms),
            ("score", timings.score_ms),
            ("step", timings.total_ms if step else None),
        ):
            if ms is not None:
                self.stage_seconds.labels(stage).observe(ms / 1000.0)

    def observe_reason(self, response: ReasonResponse, endpoint: str = "reason") -> None:
        if response.cancelled:
            outcome = "cancelled"
        elif response.deadline_reached:
            outcome = "deadline"
        else:
            outcome = "answered" if response.finished else "unfinished"
        self.searches.labels(
            endpoint, response.heuristic_requested.value, response.heuristic_used.value, outcome
        ).inc()
        self.steps.observe(len(response.steps))
        self.overhead_seconds.observe(max(response.timings.overhead_ms, 0.0) / 1000.0)
        if response.deadline_reached:
            self.deadlines.inc()
        self.finishes.labels(response.finish.value).inc()
        self.repeats.inc(response.repeats)
        for step in response.trace:
            self._stages(step.timings)
            self.candidates.inc(len(step.candidates))
            self.duplicates.inc(step.duplicates)
        for fb in response.fallbacks:
            self.fallbacks.labels(fb.service, fb.from_heuristic.value, fb.to_heuristic.value).inc()

    def observe_select(self, response: SelectResponse) -> None:
        self.searches.labels(
            "select", response.heuristic_requested.value, response.heuristic_used.value, "ranked"
        ).inc()
        self._stages(response.timings, step=False)
        self.candidates.inc(len(response.candidates))
        self.duplicates.inc(sum(c.duplicate_of is not None for c in response.candidates))
        for fb in response.fallbacks:
            self.fallbacks.labels(fb.service, fb.from_heuristic.value, fb.to_heuristic.value).inc()

    def observe_verify(self, response: VerifyResponse) -> None:
        verdict = (
            "unparseable"
            if response.unparseable
            else ("correct" if response.correct else "incorrect")
        )
        self.verifications.labels(response.verifier.value, verdict).inc()

    def observe_error(self, endpoint: str, exc: ServiceError) -> None:
        self.errors.labels(endpoint, exc.type).inc()
