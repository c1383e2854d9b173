"""`rationalyst pipeline`'s bookkeeping without an ensemble: the counts it reads from a job
status, the specs it submits, and a job that does not succeed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from services.worker.evaluation.pipeline import (
    JobsClient,
    PipelineError,
    PipelineSpec,
    data_counts,
    stage_table,
)

pytestmark = pytest.mark.unit


def stage(name: str, n_in: int, kept: int, out: int, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "state": "succeeded",
        "counts": {"records_in": n_in, "records_kept": kept, "records_dropped": n_in - kept,
                   "records_failed": 0, "records_out": out},
        "progress": {"records_done": n_in, "records_total": n_in},
        "started_at": 100.0,
        "finished_at": 130.0,
        "busy_s": 25.0,
        "report": report,
    }  # fmt: skip


STATUS = {
    "id": "job-1",
    "state": "succeeded",
    "stages": [
        stage("prefilter", 10, 8, 8, {"drop_reasons": {"below_threshold": 2}}),
        stage("extract", 8, 6, 14, {
            "mode": "boundary", "mode_requested": "auto", "probe": {"follows_markup": False},
            "boundary": {"boundaries": 30, "boundaries_asked": 20,
                         "boundaries_skipped": {"budget": 10},
                         "rationales_dropped": {"repeats_following": 6}},
            "warnings": [], "drop_reasons": {"no_rationale": 2},
        }),
        stage("filter", 14, 5, 5, {"splits": {"train": 4, "dev": 1}, "diff": {"max": 2.0}}),
        stage("sft_data", 5, 5, 5, {"drop_reasons": {}}),
    ],
}  # fmt: skip


def test_pipeline_counts_follow_the_chain_from_documents_to_rows() -> None:
    c = data_counts(STATUS)
    assert (c["documents"], c["documents_prefiltered"], c["boundaries_asked"]) == (10, 8, 20)
    assert (c["triples"], c["kept"], c["rows"]) == (14, 5, 5)
    assert c["extract_mode"] == "boundary" and c["extract_mode_requested"] == "auto"
    assert c["rows_by_split"] == {"train": 4, "dev": 1}
    assert c["rationales_dropped"] == {"repeats_following": 6}
    rows = stage_table(STATUS)
    assert [r["stage"] for r in rows] == ["prefilter", "extract", "filter", "sft_data"]
    assert rows[0]["wall_s"] == 30.0 and rows[0]["per_min"] == pytest.approx(20.0)


def test_pipeline_specs_chain_the_jobs(tmp_path: Path) -> None:
    spec = PipelineSpec(inputs=["corpus.jsonl"], out_dir=tmp_path, limit=7,
                        train={"max_steps": 3}, model_name="mine")  # fmt: skip
    data = spec.data_spec()
    assert data["kind"] == "rationale_pipeline" and data["limit"] == 7
    assert Path(data["input"]["paths"][0]).is_absolute()
    train = spec.train_spec("job-9")
    assert train["data"] == {"job": "job-9"} and train["max_steps"] == 3
    assert train["model_name"] == "mine"


def test_pipeline_job_that_fails_stops_the_pipeline_with_its_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**STATUS, "state": "failed", "error": "no rows"})

    client = JobsClient("http://gw", None)
    client.http = httpx.Client(base_url="http://gw", transport=httpx.MockTransport(handler))
    with pytest.raises(PipelineError, match="train_rationalyst job job-1 failed: no rows"):
        client.wait("train_rationalyst", "job-1", poll_s=0, on_status=None)
