"""The tripost job end to end on the embedded SmolLM2-135M, on CPU, over real Redis and HTTP:
collect (the base model's attempts, the scripted verifier and improver) -> train a few steps
with the weighted loss (the worker killed with -9 after the first checkpoint, a new worker
resumes) -> evaluate the trained model's self-improvement on a seen and an unseen question.
The job succeeds, registers its model and reports the accuracy in its status."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_training import trainer_processes
from tests.integration.worker_fixtures import (  # noqa: F401
    JobsEnv,
    jobs,
    jobs_env,
    redis_server,
)

pytestmark = pytest.mark.integration

SPEC = {
    "kind": "tripost",
    "task": "multistep_arithmetic_seen",
    "items": 3,
    "iterations": 1,
    "gold_sft": False,
    "eval_base": False,
    "model_name": "ci-tripost",
    # the base model follows the format with two worked examples; its errors are fixed by the
    # task's own steps, which gives improvement samples even when no attempt is right
    "collect": {"few_shot": 2, "max_rounds": 2, "max_tokens": 256, "temperature": 0.0},
    "train": {"max_steps": 3, "batch_size": 2, "max_length": 640, "save_steps": 1,
              "learning_rate": 1e-4},
    "eval": {"items": 1, "max_rounds": 2, "max_tokens": 96},
}  # fmt: skip


def test_tripost_job_collects_trains_after_kill9_evaluates_and_registers(
    jobs: JobsEnv,  # noqa: F811
) -> None:
    worker = jobs.start_worker()
    job_id = jobs.submit(SPEC)
    train_dir = jobs.artifacts / job_id / "train_tripost-1"
    first_checkpoint = train_dir / "checkpoints" / "checkpoint-1" / "complete"
    status = jobs.wait(
        job_id,
        until=lambda s: first_checkpoint.exists() or s["state"] not in ("queued", "running"),
        timeout_s=1500,
    )
    assert status["state"] == "running", (status["error"], status["stages"])
    worker.kill9()
    deadline = time.monotonic() + 20  # the kernel takes the trainer down with its worker
    while trainer_processes(train_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainer_processes(train_dir) == []
    jobs.start_worker()
    status = jobs.wait(job_id, timeout_s=1500)
    assert status["state"] == "succeeded", (status["error"], status["errors"])
    assert [s["label"] for s in status["stages"]] == [
        "tripost_collect-1",
        "train_tripost-1",
        "tripost_eval-1",
    ]

    # the collection: counts by reason; the scripted improver gave improvement samples
    report = json.loads(jobs.artifact(job_id, "tripost_collect-1/report.json"))
    assert report["trajectories"] == 3 and report["improver"] == "scripted"
    assert sum(report["dropped_by_reason"].values()) == report["dropped"]
    assert report["kept"] >= 1 and report["samples"]["improvement"] >= 1, report
    samples = jobs.artifact(job_id, "tripost_collect-1/output.jsonl").splitlines()

    # the training resumed from its checkpoint, on every sample exactly once
    training = status["stages"][1]["training"]
    assert training["phase"] == "done" and training["step"] == 3
    assert training["resumed_from_step"] is not None and training["resumed_from_step"] >= 1
    result = json.loads((train_dir / "result.json").read_text())
    data = result["data"]
    assert data["train"]["rows"] + data["dev"]["rows"] == len(samples)
    assert data["train"]["weighted_rows"] >= 1 and data["feedback_weight"] == 1.5
    r = jobs.http.get("/v1/registry/models/ci-tripost-it1")
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["kind"] == "tripost" and card["job_id"] == job_id
    assert card["base_model"] == "smollm2-135m-instruct"

    # the evaluation: one seen and one unseen question, accuracy in the status
    (entry,) = status["result"]["accuracy"]
    assert entry["label"] == "iteration 1" and entry["iteration"] == 1
    assert set(entry["tasks"]) == {"multistep_arithmetic_seen", "multistep_arithmetic_unseen"}
    assert all(t["n"] == 1 for t in entry["tasks"].values())
    assert status["stages"][2]["result"] == entry
    rows = [
        json.loads(x) for x in jobs.artifact(job_id, "tripost_eval-1/output.jsonl").splitlines()
    ]
    assert len(rows) == 2 and all(row["trace"] for row in rows)
    assert "# TriPosT on multistep_arithmetic_seen" in jobs.artifact(job_id, "report.md")
    assert json.loads(jobs.artifact(job_id, "result.json"))["evaluated"] == ["iteration 1"]
