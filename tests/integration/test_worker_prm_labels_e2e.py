"""The prm_labels job end to end on the embedded SmolLM2-135M, over real Redis and HTTP: the
bounds refused at submit, then a job on two generated arithmetic problems whose worker is
killed with -9 mid-shard; a new worker resumes it from the rollout cache, and every
(problem, solution) row exists exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.worker_fixtures import (  # noqa: F401
    JobsEnv,
    jobs,
    jobs_env,
    redis_server,
)

pytestmark = pytest.mark.integration

SPEC: dict[str, Any] = {
    "kind": "prm_labels",
    "task": "multistep_arithmetic_seen",
    "items": 2,
    "n_solutions": 2,
    "n_rollouts": 2,
    "max_steps": 3,
    "max_step_tokens": 32,
    "few_shot": 1,
    "shard_size": 1,
}


@pytest.fixture(scope="module")
def agent_url(model_service_factory: Callable[..., list[Any]]) -> str:
    (service,) = model_service_factory("agent")
    return str(service.url)


def test_prm_labels_job_survives_kill9_without_losing_or_duplicating_rows(
    jobs: JobsEnv,  # noqa: F811
    agent_url: str,
) -> None:
    for bad, field in (
        ({"n_rollouts": 17}, "n_rollouts"),  # over the setting's default bound (16)
        ({"method": "mcts"}, "method"),
        ({"task": "no_such_task"}, "task"),
    ):
        r = jobs.http.post("/v1/jobs", json={**SPEC, **bad})
        assert r.status_code == 422, r.text
        assert field in (r.json()["error"]["field"] or ""), r.text

    worker = jobs.start_worker(agent_url=agent_url)
    job_id = jobs.submit(SPEC)
    cache = jobs.artifacts / "_rollouts"
    status = jobs.wait(
        job_id,
        until=lambda s: any(cache.glob("*.jsonl")) or s["state"] not in ("queued", "running"),
        timeout_s=600,
    )
    assert status["state"] == "running", (status["error"], status["errors"])
    worker.kill9()  # mid-shard: its rows are not written, some rollouts are cached
    jobs.start_worker(agent_url=agent_url)
    status = jobs.wait(job_id, timeout_s=900)
    assert status["state"] == "succeeded", (status["error"], status["errors"])

    stepwise = [
        json.loads(x) for x in jobs.artifact(job_id, "prm_labels/stepwise.jsonl").splitlines()
    ]
    outcome = [
        json.loads(x) for x in jobs.artifact(job_id, "prm_labels/outcome.jsonl").splitlines()
    ]
    report = json.loads(jobs.artifact(job_id, "prm_labels/report.json"))
    ids = [r["id"] for r in stepwise]
    assert len(ids) == len(set(ids)), "a (problem, solution) row is duplicated"
    assert sorted(r["id"] for r in outcome) == sorted(ids)
    problems = {i.split(":")[0] for i in ids}
    assert len(problems) == report["problems_labelled"] == 2 - report["problems_skipped"]
    assert report["problems"] == 2 and report["solutions"] == len(stepwise)
    for row in stepwise:
        n = len(row["completions"])
        assert 1 <= n <= 3 and len(row["labels"]) == len(row["soft_labels"]) == n
        assert all(0.0 <= v <= 1.0 for v in row["soft_labels"])
        assert row["labels"] == [v > 0 for v in row["soft_labels"]]
        assert isinstance(row["solution_correct"], bool)
    # the shard the first worker did not finish was run again from the cache
    assert report["rollouts_cached"] > 0, report
    assert report["steps_labelled"] == sum(len(r["labels"]) for r in stepwise)
    assert set(report["positive_rate_by_step"]) <= {"1", "2", "3"}
