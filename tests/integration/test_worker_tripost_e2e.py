"""tripost_collect end to end: the job API over HTTP, a real worker process and Redis, and the
agent on the embedded SmolLM2-135M. Its attempts are cut short (48 tokens, far less than a
rationale), so every trajectory is dropped as unparseable: the job must fail with the counts
by reason, and leave its report."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.integration.worker_fixtures import (  # noqa: F401
    JobsEnv,
    jobs,
    jobs_env,
    redis_server,
)

pytestmark = pytest.mark.integration


def test_worker_tripost_collect_with_every_trajectory_dropped_fails_with_counts(
    jobs: JobsEnv,  # noqa: F811
    model_service_factory: Callable[..., list],
) -> None:
    (agent,) = model_service_factory("agent")
    jobs.start_worker(agent_url=agent.url)
    job_id = jobs.submit(
        {
            "kind": "tripost_collect",
            "task": "multistep_arithmetic_seen",
            "items": 2,
            "max_tokens": 48,
            "few_shot": 1,
        }
    )
    status = jobs.wait(job_id)
    assert status["state"] == "failed", status
    assert "every trajectory was dropped (2: unparseable: 2)" in status["error"], (
        [e["message"] for e in status["errors"]],
        status["stages"],
    )
    (stage,) = status["stages"]
    assert stage["counts"]["records_in"] == stage["counts"]["records_dropped"] == 2
    report = json.loads(jobs.artifact(job_id, "tripost_collect/report.json"))
    assert report["trajectories"] == 2 and report["kept"] == 0
    assert report["dropped_by_reason"]["unparseable"] == 2
    questions = jobs.artifact(job_id, "tripost_collect/questions.jsonl").splitlines()
    assert len(questions) == 2
