"""A small evaluation end to end: the real gateway over HTTP in front of the embedded model.

The model is weak (SmolLM2-135M on CPU); these tests check that a run writes its report,
chart and per-example JSONL with full traces, and that a second run resumes without sending
a single request. Budgets are tiny to keep CI fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.worker.evaluation import EvalSpec, SelectionSpec, run_evaluation, run_selection
from services.worker.evaluation.client import GatewayClient

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts the requests that reach the network."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


async def run_counted(spec: EvalSpec | SelectionSpec, url: str) -> tuple[Any, list[str]]:
    transport = CountingTransport()
    async with GatewayClient(url, transport=transport, timeout=600) as client:
        if isinstance(spec, EvalSpec):
            result: Any = await run_evaluation(spec, client=client)
        else:
            result = await run_selection(spec, client=client)
    return result, transport.paths


async def test_eval_run_writes_report_chart_jsonl_and_resumes(
    gateway_url: str, tmp_path: Path
) -> None:
    spec = EvalSpec(
        tasks=["multistep_arithmetic_seen"],
        heuristics=["rationalyst", "greedy"],
        n=2,
        max_steps=2,
        max_step_tokens=48,
        shots=1,
        concurrency=2,
        gateway_url=gateway_url,
        out_dir=tmp_path / "eval",
        label="SmolLM2-135M-Instruct (embedded), integration test",
    )
    result, paths = await run_counted(spec, gateway_url)
    assert paths.count("/v1/reason") == 4
    assert result.errors == 0, result.results_path.read_text()
    records = [
        json.loads(line) for line in (spec.out_dir / "results.jsonl").read_text().splitlines()
    ]
    assert len(records) == 4
    for record in records:
        assert record["error"] is None
        assert 1 <= record["n_steps"] <= 3  # max_steps 2, then at most the forced answer step
        assert len(record["response"]["trace"]) == record["n_steps"]
        assert isinstance(record["correct"], bool) and isinstance(record["parsed"], bool)
        assert record["tokens"]["total"] > 0 and record["latency_s"] > 0
    report = (spec.out_dir / "report.md").read_text()
    assert "| multistep_arithmetic_seen | `rationalyst` | 2 |" in report
    assert "| multistep_arithmetic_seen | `greedy` | 2 |" in report
    assert (spec.out_dir / "accuracy.png").read_bytes().startswith(PNG)
    summary = json.loads((spec.out_dir / "summary.json").read_text())
    assert {(c["task"], c["heuristic"], c["n"]) for c in summary} == {
        ("multistep_arithmetic_seen", "rationalyst", 2),
        ("multistep_arithmetic_seen", "greedy", 2),
    }

    again, paths = await run_counted(spec, gateway_url)
    assert paths == [], "a resumed run sends no request at all"
    assert again.requested == 0 and again.skipped == 4
    assert len((spec.out_dir / "results.jsonl").read_text().splitlines()) == 4


async def test_step_selection_run(gateway_url: str, tmp_path: Path) -> None:
    spec = SelectionSpec(
        tasks=["word_sorting_seen"],
        heuristics=["likelihood", "random"],
        n=2,
        k=3,
        shots=1,
        gateway_url=gateway_url,
        out_dir=tmp_path / "select",
    )
    result, paths = await run_counted(spec, gateway_url)
    assert paths.count("/v1/select") == 4
    assert result.errors == 0
    for cell in result.cells:
        assert cell.n == 2 and cell.chance == pytest.approx(1 / 3)
    likelihood = next(c for c in result.cells if c.heuristic == "likelihood")
    assert likelihood.mean_gold_rank is not None
    assert "Top-1" in (spec.out_dir / "report.md").read_text()
