"""Faults under load, on real processes over loopback: a model service killed with SIGKILL
while 16 searches run through the gateway, and Redis restarted (append-only file on, as
compose runs it) in the middle of a pipeline job.

Both stay small: searches of two short steps, a job of a few shards on the real scorer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ensemble import (
    ServiceProcess,
    free_port,
    start_process,
    stop_processes,
    wait_ready,
)
from tests.integration.conftest import READY_TIMEOUT_S, SERVICE_ENV, RunningService
from tests.integration.worker_fixtures import (  # noqa: F401
    REDIS_SERVER,
    JobsEnv,
    RedisServer,
    jobs,
    jobs_env,
)

pytestmark = pytest.mark.integration

CONCURRENT = 16
DEADLINE_S = 90.0
# A search of at most two short steps: the kill lands while most of them are running.
SEARCH = {
    "max_steps": 2,
    "n_candidates": 2,
    "max_step_tokens": 16,
    "max_rationale_tokens": 16,
    "temperature": 0.7,
    "deadline_s": DEADLINE_S,
}
QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A pen costs 2 dollars. How much do 4 pens cost?",
    "Sara had 10 candies and ate 4. How many are left?",
    "A box holds 6 eggs. How many eggs are in 3 boxes?",
]


def score_calls(url: str) -> float:
    """/v1/score requests the service has answered (its request counter)."""
    page = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("model_server_http_requests_total{") and 'route="/v1/score"' in line
    )


async def search(
    client: httpx.AsyncClient, gateway: str, i: int
) -> tuple[int, dict[str, Any], float]:
    body = {"question": QUESTIONS[i % len(QUESTIONS)], "seed": 100 + i, **SEARCH}
    start = time.monotonic()
    r = await client.post(f"{gateway}/v1/reason", json=body)
    return r.status_code, r.json(), time.monotonic() - start


def check_outcome(status: int, body: dict[str, Any], elapsed: float) -> None:
    """200 (the scorer's steps degraded to `random` once it was gone) or a clear 503/504."""
    assert elapsed < DEADLINE_S + 30, f"ran {elapsed:.0f}s past its {DEADLINE_S:g}s deadline"
    if status == 200:
        assert body["heuristic_used"] in ("rationalyst", "random"), body
        assert all(
            (f["service"], f["to_heuristic"]) == ("scorer", "random") for f in body["fallbacks"]
        ), body["fallbacks"]
        assert (body["heuristic_used"] == "random") == bool(body["fallbacks"]), body
        return
    assert status in (503, 504), (status, body)
    assert body["error"]["type"] in ("service_unavailable", "timeout"), body


def restart(service: RunningService) -> ServiceProcess:
    """The same command on the same port, as an orchestrator restarts a crashed container."""
    old = service.process
    proc = start_process(
        f"{old.name}-restarted", old.command, old.url, log_dir=old.log_path.parent, env=SERVICE_ENV
    )
    wait_ready([proc], timeout_s=READY_TIMEOUT_S)
    return proc


async def test_scorer_killed_under_load_degrades_then_recovers(
    model_services: dict[str, str],
    model_service_factory: Callable[..., list[RunningService]],
    gateway_factory: Callable[..., str],
) -> None:
    (scorer,) = model_service_factory("scorer")
    gateway = gateway_factory(
        rationalyst_url=model_services["rationalyst"],
        agent_url=model_services["agent"],
        scorer_url=scorer.url,
    )
    before = score_calls(scorer.url)
    restarted: ServiceProcess | None = None
    timeout = httpx.Timeout(DEADLINE_S + 60, connect=10)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            tasks = [asyncio.ensure_future(search(client, gateway, i)) for i in range(CONCURRENT)]
            # kill the scorer once it is scoring for these searches
            while score_calls(scorer.url) <= before:
                assert not all(t.done() for t in tasks), "the searches ended before any scoring"
                await asyncio.sleep(0.05)
            scorer.kill()
            health = await client.get(f"{gateway}/health")
            outcomes = await asyncio.gather(*tasks)
            seen = Counter(
                f"{s} {b['heuristic_used']}" if s == 200 else str(s) for s, b, _ in outcomes
            )
            print(f"after the kill: {dict(seen)}, slowest {max(e for *_, e in outcomes):.1f}s")
            assert health.status_code == 200
            for status, body, elapsed in outcomes:
                check_outcome(status, body, elapsed)
            degraded = [b for s, b, _ in outcomes if s == 200 and b["fallbacks"]]
            assert degraded, "no search saw the scorer go"
            ready = await client.get(f"{gateway}/ready")
            assert ready.status_code == 503 and "scorer" in ready.json()["error"]["message"]

            restarted = await asyncio.to_thread(restart, scorer)
            assert (await client.get(f"{gateway}/ready")).status_code == 200
            again = await asyncio.gather(*(search(client, gateway, i) for i in range(4)))
            for status, body, _ in again:
                assert status == 200, body
                assert body["heuristic_used"] == "rationalyst" and not body["fallbacks"], body
    finally:
        if restarted is not None:
            stop_processes([restarted])


# -- Redis restarted in the middle of a job -----------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This module's Redis keeps its append-only file, as compose's does."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis-aof"), aof=True)
    server.start()
    yield server
    server.stop()


def triples_file(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"t{i:03d}", "preceding": f"A shelf holds {i} books.",
                   "rationale": "One more book is added.", "following": f"Now it holds {i + 1}.",
                   "source": "test"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    return path


OUTPUTS = ("filter/output.jsonl", "filter/train.jsonl", "filter/dev.jsonl")


def outputs(jobs: JobsEnv, job_id: str) -> dict[str, str]:  # noqa: F811
    return {name: (jobs.artifacts / job_id / name).read_text() for name in OUTPUTS}


def test_redis_restart_mid_job_changes_nothing_in_its_outputs(
    jobs: JobsEnv,  # noqa: F811
    exact_scorer: str,
    tmp_path: Path,
) -> None:
    n = 16
    path = triples_file(tmp_path / "t.jsonl", n)
    spec = {"kind": "filter", "input": {"paths": [str(path)]}, "shard_size": 2, "tau": -1e6}
    worker = jobs.start_worker(scorer_url=exact_scorer)
    undisturbed = jobs.submit(spec)
    assert jobs.wait(undisturbed, timeout_s=180)["state"] == "succeeded"

    job_id = jobs.submit(spec)
    status = jobs.wait(job_id, until=lambda s: s["progress"]["shards_done"] >= 2)
    assert status["progress"]["shards_done"] < status["progress"]["shards_total"], status
    jobs.redis.shutdown()
    time.sleep(2)  # down for a while: the worker's calls to Redis fail meanwhile
    jobs.redis.start()
    status = jobs.wait(job_id, timeout_s=180)
    assert status["state"] == "succeeded", status
    assert worker.popen.poll() is None, f"the worker exited:\n{worker.tail()}"
    got, want = outputs(jobs, job_id), outputs(jobs, undisturbed)
    assert got == want
    ids = [json.loads(line)["id"] for line in got["filter/output.jsonl"].splitlines()]
    assert sorted(ids) == [f"t{i:03d}" for i in range(n)]  # every record exactly once
