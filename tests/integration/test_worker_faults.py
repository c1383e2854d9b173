"""Faults: workers killed with SIGKILL mid-shard (three times in one job), two workers on one
job, cancel, a model service that is down, and Redis losing its state. Real processes, real
Redis, the real scorer.

The filter job is the workload: each shard makes real /v1/score calls, so shards take long
enough to be caught running. tau is very low so every record is kept and the output can be
checked for "every record exactly once"."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.ensemble import free_port
from tests.integration.worker_fixtures import JobsEnv, jobs, jobs_env, redis_server  # noqa: F401

pytestmark = pytest.mark.integration


def triples_file(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"t{i:03d}", "preceding": f"Step {i}: we have {i} apples.",
                   "rationale": "Add one more apple.", "following": f"Now we have {i + 1} apples.",
                   "source": "test"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


def filter_spec(path: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": "filter", "input": {"paths": [str(path)]}, "shard_size": 2, "tau": -1e6,
            **extra}  # fmt: skip


def output_ids(jobs: JobsEnv, job_id: str) -> list[str]:  # noqa: F811
    text = jobs.artifact(job_id, "filter/output.jsonl")
    return [json.loads(line)["id"] for line in text.splitlines() if line.strip()]


def running(jobs: JobsEnv, job_id: str) -> dict[str, str]:  # noqa: F811
    raw: dict[bytes, bytes] = redis.Redis.from_url(jobs.redis.url).hgetall(  # type: ignore[assignment]
        f"rationalyst:job:{job_id}:running"
    )
    return {k.decode(): v.decode() for k, v in raw.items()}


def wait_until(predicate: Any, timeout_s: float = 300, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError("condition not reached in time")


def shard_stats(jobs: JobsEnv, job_id: str, n: int) -> list[dict[str, Any]]:  # noqa: F811
    folder = jobs.artifacts / job_id / "filter" / "shards"
    return [json.loads((folder / f"{i:05d}.done.json").read_text()) for i in range(n)]


OUTPUTS = ("filter/output.jsonl", "filter/train.jsonl", "filter/dev.jsonl")


def outputs(jobs: JobsEnv, job_id: str) -> dict[str, str]:  # noqa: F811
    return {name: jobs.artifact(job_id, name) for name in OUTPUTS}


def test_worker_killed_three_times_mid_shard_loses_and_duplicates_nothing(
    jobs: JobsEnv,  # noqa: F811
    exact_scorer: str,
    tmp_path: Path,
) -> None:
    """Three workers in turn are SIGKILLed while each runs a shard (three different shards);
    the job's outputs are those of an undisturbed run of the same spec, byte for byte."""
    n = 20
    path = triples_file(tmp_path / "t.jsonl", n)
    scorer = exact_scorer
    first = jobs.start_worker(scorer_url=scorer)
    undisturbed = jobs.submit(filter_spec(path))
    assert jobs.wait(undisturbed)["state"] == "succeeded"
    first.stop()

    worker = jobs.start_worker(scorer_url=scorer)
    job_id = jobs.submit(filter_spec(path))
    killed: dict[str, int] = {}  # shard key -> pid of the worker killed while running it

    def running_here(pid: int) -> list[str]:
        # a killed worker's entries stay in the hash; only this worker's count
        return [k for k, w in running(jobs, job_id).items() if w.endswith(f":{pid}")]

    for _ in range(3):
        (shard_key,) = wait_until(
            lambda pid=worker.pid: [k for k in running_here(pid) if k not in killed]
        )
        worker.kill9()
        killed[shard_key] = worker.pid
        worker = jobs.start_worker(scorer_url=scorer)  # the replica, restarted
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    ids = output_ids(jobs, job_id)
    assert sorted(ids) == [f"t{i:03d}" for i in range(n)]  # every record exactly once
    (stage,) = status["stages"]
    assert stage["counts"]["records_in"] == n and stage["counts"]["records_kept"] == n
    assert outputs(jobs, job_id) == outputs(jobs, undisturbed)
    stats = shard_stats(jobs, job_id, n // 2)
    for shard_key, pid in killed.items():
        retaken = stats[int(shard_key.split(":")[1])]
        assert not retaken["worker"].endswith(f":{pid}")
        assert retaken["attempt"] >= 2


def test_worker_two_workers_share_one_job(
    jobs: JobsEnv,  # noqa: F811
    model_services: dict[str, str],
    tmp_path: Path,
) -> None:
    n = 12
    path = triples_file(tmp_path / "t.jsonl", n)
    workers = [jobs.start_worker(scorer_url=model_services["scorer"]) for _ in range(2)]
    for w in workers:  # both up before the job exists, so both get shards
        wait_until(lambda w=w: "up:" in w.log.read_text(errors="replace"), timeout_s=120)
    job_id = jobs.submit(filter_spec(path))
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    assert sorted(output_ids(jobs, job_id)) == [f"t{i:03d}" for i in range(n)]
    summary = json.loads(jobs.artifact(job_id, "filter/summary.json"))
    assert {w.split(":")[-1] for w in summary["workers"]} == {str(w.pid) for w in workers}


def test_worker_cancel_stops_the_job_within_one_shard(
    jobs: JobsEnv,  # noqa: F811
    model_services: dict[str, str],
    tmp_path: Path,
) -> None:
    path = triples_file(tmp_path / "t.jsonl", 16)
    jobs.start_worker(scorer_url=model_services["scorer"])
    job_id = jobs.submit(filter_spec(path))
    jobs.wait(job_id, until=lambda s: s["progress"]["shards_done"] >= 1)
    r = jobs.http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["state"] == "cancelled"
    done_at_cancel = r.json()["progress"]["shards_done"]
    wait_until(lambda: not running(jobs, job_id), timeout_s=120)
    time.sleep(2)  # queued shards are taken and skipped
    status = jobs.status(job_id)
    assert status["state"] == "cancelled"
    assert status["progress"]["shards_done"] <= done_at_cancel + 1  # at most the one in flight
    assert status["progress"]["shards_done"] < status["progress"]["shards_total"]
    assert not (jobs.artifacts / job_id / "filter" / "output.jsonl").exists()
    assert (jobs.artifacts / job_id / "state.json").exists()


def test_worker_model_service_down_retries_then_fails(
    jobs: JobsEnv,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = triples_file(tmp_path / "t.jsonl", 4)
    dead = f"http://127.0.0.1:{free_port()}"
    jobs.start_worker(scorer_url=dead, max_shard_attempts=2)
    job_id = jobs.submit(filter_spec(path))
    status = jobs.wait(job_id, timeout_s=180)
    assert status["state"] == "failed"
    assert "after 2 attempts" in status["error"]
    assert "scorer is unreachable" in status["error"]
    attempts = [e for e in status["errors"] if e["type"] == "attempt_failed"]
    assert len(attempts) >= 2


def test_worker_job_survives_a_redis_restart(
    jobs: JobsEnv,  # noqa: F811
    model_services: dict[str, str],
    tmp_path: Path,
) -> None:
    """Redis keeps nothing on disk: after a restart the worker re-registers the job from the
    artifacts root and finishes it (shards already on disk are not redone)."""
    n = 8
    path = triples_file(tmp_path / "t.jsonl", n)
    worker = jobs.start_worker(scorer_url=model_services["scorer"])
    job_id = jobs.submit(filter_spec(path))
    jobs.wait(job_id, until=lambda s: s["progress"]["shards_done"] >= 1)
    worker.kill9()
    jobs.redis.stop()
    jobs.redis.start()  # empty
    assert jobs.http.get(f"/v1/jobs/{job_id}").status_code == 404
    jobs.start_worker(scorer_url=model_services["scorer"], recover_on_start="true")
    wait_until(lambda: jobs.http.get(f"/v1/jobs/{job_id}").status_code == 200, timeout_s=120)
    status = jobs.wait(job_id)
    assert status["state"] == "succeeded", status
    assert sorted(output_ids(jobs, job_id)) == [f"t{i:03d}" for i in range(n)]
