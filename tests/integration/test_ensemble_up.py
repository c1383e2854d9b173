"""`rationalyst up` as a user starts it, on the embedded model over real HTTP: the threads it
gives each model service, work nobody waits for being stopped (a client that goes away, a
cancel from another connection), and the job queue it brings along (a worker and a Redis of its
own, restarted with its jobs when it dies)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ensemble import ROLE_WEIGHTS, ROLES, available_cores, free_port, thread_budget
from tests.integration.worker_fixtures import REDIS_SERVER, TERMINAL

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = float(os.environ.get("RATIONALYST_TEST_READY_TIMEOUT", "600"))
# A search that would run for minutes on a CPU if nothing stopped it.
LONG_SEARCH = {
    "question": "A farmer has 17 sheep and buys 3 times as many goats. He sells 5 goats. "
    "How many animals does he have?",
    "max_steps": 12,
    "n_candidates": 4,
    "max_step_tokens": 64,
    "max_rationale_tokens": 48,
    "temperature": 1.0,
    "seed": 3,
}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.compile(rf"^{re.escape(name)}(\{{([^}}]*)\}})? (\S+)$", re.M)
    total = 0.0
    for match in pattern.finditer(text):
        if not want or (match.group(2) or "") == want:
            total += float(match.group(3))
    return total


@pytest.fixture(scope="module")
def ensemble(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    ports = {name: free_port() for name in ("gateway", *ROLES)}
    logs = tmp_path_factory.mktemp("up-logs")
    artifacts = tmp_path_factory.mktemp("up-artifacts")
    env = {k: v for k, v in os.environ.items() if k != "MODEL_SERVER_THREADS"}
    env["PYTHONUNBUFFERED"] = "1"  # its report is read from the file as it is written
    cmd = [
        str(Path(sys.executable).with_name("rationalyst")),
        "up",
        "--model",
        str(model_path),
        "--logs-dir",
        str(logs),
        "--port",
        str(ports["gateway"]),
        *(arg for role in ROLES for arg in (f"--{role}-port", str(ports[role]))),
        "--start-redis",  # its own, never a Redis that happens to answer on :6379
        "--artifacts-dir",
        str(artifacts),
    ]
    output = logs / "up.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    urls["output"] = str(output)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"rationalyst up exited: {proc.returncode} (logs {logs})"
            if "all ready" in output.read_text(errors="replace"):  # the worker too
                break
            assert time.monotonic() < deadline, f"the ensemble was not ready (logs {logs})"
            time.sleep(1)
        yield urls
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: up stops its children
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def decoded(url: str) -> float:
    page = httpx.get(f"{url}/metrics", timeout=10).text
    return metric(page, "model_server_engine_tokens_total", kind="decode")


def wait_until_idle(urls: dict[str, str], *, within_s: float) -> bool:
    """Wait until no model service decodes a token for 1.5 s; False if that never happens
    within ``within_s``."""
    start = time.monotonic()
    last = [decoded(urls[role]) for role in ROLES]
    while time.monotonic() - start < within_s:
        time.sleep(1.5)
        now = [decoded(urls[role]) for role in ROLES]
        if now == last:
            return True
        last = now
    return False


def test_up_gives_each_model_service_its_share_of_the_cores(ensemble: dict[str, str]) -> None:
    cores = len(available_cores())
    for role in ROLES:
        expected = thread_budget(len(ROLES), cores, ROLE_WEIGHTS.get(role, 1))
        r = httpx.get(f"{ensemble[role]}/ready", timeout=10)
        assert r.status_code == 200
        assert r.json()["threads"] == expected, role


def test_client_that_disconnects_stops_the_model_work(ensemble: dict[str, str]) -> None:
    gateway = ensemble["gateway"]
    for seed in (3, 4, 5, 6):
        assert wait_until_idle(ensemble, within_s=60)
        before = [decoded(ensemble[role]) for role in ROLES]
        try:  # the client gives up after 6 s and closes its connection
            r = httpx.post(
                f"{gateway}/v1/reason",
                json={**LONG_SEARCH, "seed": seed},
                timeout=httpx.Timeout(6, connect=5),
            )
        except httpx.ReadTimeout:
            break
        # A sampled trajectory that reaches its answer within 6 s leaves nothing to stop.
        assert r.status_code == 200 and r.json()["finished"] is True, r.text
    else:
        pytest.fail("every search answered before the client gave up")
    assert sum(decoded(ensemble[role]) for role in ROLES) > sum(before)  # it was working
    idle = wait_until_idle(ensemble, within_s=20)
    assert idle, "model services were still decoding 20 s after the client left"
    page = httpx.get(f"{gateway}/metrics", timeout=10).text
    assert metric(page, "gateway_http_cancelled_total", route="/v1/reason") >= 1
    cancelled_upstream = sum(
        metric(
            httpx.get(f"{ensemble[r]}/metrics", timeout=10).text,
            "model_server_http_cancelled_total",
        )
        for r in ROLES
    )
    assert cancelled_upstream >= 1, "no model service saw its request cancelled"


def stream_and_cancel(gateway: str, seed: int) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """Stream a long search and cancel it by id once its first step arrives; the cancel's
    status and the stream's events."""
    rid = f"cancel-{time.time_ns()}"
    events: list[tuple[str, dict[str, Any]]] = []
    status = 0
    with httpx.Client(timeout=httpx.Timeout(120, connect=5)) as client:
        body = {**LONG_SEARCH, "stream": True, "seed": seed}
        headers = {"X-Request-Id": rid}
        with client.stream("POST", f"{gateway}/v1/reason", json=body, headers=headers) as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event:
                    events.append((event, json.loads(line.removeprefix("data: "))))
                    if event == "step" and len(events) == 1:
                        r = client.post(f"{gateway}/v1/reason/{rid}/cancel")
                        status = r.status_code
                        if status == 200:
                            assert r.json() == {
                                "id": rid,
                                "object": "search.cancel",
                                "status": "cancelled",
                            }
                            again = client.post(f"{gateway}/v1/reason/{rid}/cancel")
                            assert again.status_code == 200
                            assert again.json()["status"] == "already_cancelled"
    return status, events


def test_cancel_endpoint_stops_a_streaming_search(ensemble: dict[str, str]) -> None:
    gateway = ensemble["gateway"]
    for seed in (3, 4, 5):
        status, events = stream_and_cancel(gateway, seed)
        assert events and events[-1][0] == "done", events
        done = events[-1][1]
        if status == 404:  # the sampled first step was already the answer: nothing to cancel
            assert done["finished"] is True and len(done["steps"]) <= 2
            continue
        assert status == 200
        assert done["cancelled"] is True and done["finished"] is False
        assert len(done["steps"]) < LONG_SEARCH["max_steps"]  # type: ignore[operator]
        break
    else:
        pytest.fail("every search answered before it could be cancelled")
    unknown = httpx.post(f"{gateway}/v1/reason/no-such-search/cancel", timeout=10)
    assert unknown.status_code == 404


SAMPLE_ROWS = Path(__file__).resolve().parents[2] / "services/worker/sample_corpus/rationales.jsonl"


def submit_and_wait(gateway: str, spec: dict[str, Any], timeout_s: float = 300) -> dict[str, Any]:
    r = httpx.post(f"{gateway}/v1/jobs", json=spec, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.get(f"{gateway}/v1/jobs/{job_id}", timeout=30).json()
        if status["state"] in TERMINAL:
            return dict(status)
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def up_output(ensemble: dict[str, str]) -> str:
    return Path(ensemble["output"]).read_text(errors="replace")


def wait_for_output(ensemble: dict[str, str], *texts: str, timeout_s: float = 60) -> str:
    """``up``'s output, whitespace-collapsed, once it holds every one of ``texts``: it prints
    after it has acted, so a client can see the effect before the line is written."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = " ".join(up_output(ensemble).split())
        if all(text in out for text in texts) or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def test_up_runs_a_worker_so_a_submitted_job_completes(ensemble: dict[str, str]) -> None:
    out = " ".join(up_output(ensemble).split())
    assert "started by up" in out and "append-only file" in out
    status = submit_and_wait(
        ensemble["gateway"],
        {"kind": "sft_data", "input": {"paths": [str(SAMPLE_ROWS)]}, "limit": 20},
    )
    assert status["state"] == "succeeded", status
    (stage,) = status["stages"]
    assert stage["counts"]["records_kept"] == 20
    assert stage["report"] == {"drop_reasons": {}}


def redis_of(ensemble: dict[str, str]) -> str:
    match = re.search(r"redis://127\.0\.0\.1:\d+/0", up_output(ensemble))
    assert match, up_output(ensemble)
    return match.group(0)


def redis_pid(url: str) -> int:
    import redis

    info: Any = redis.Redis.from_url(url, socket_timeout=2).info("server")
    return int(info["process_id"])


def test_up_restarts_its_redis_and_no_job_is_lost(ensemble: dict[str, str]) -> None:
    gateway = ensemble["gateway"]
    before = submit_and_wait(
        gateway, {"kind": "sft_data", "input": {"paths": [str(SAMPLE_ROWS)]}, "limit": 5}
    )
    assert before["state"] == "succeeded"
    url = redis_of(ensemble)
    pid = redis_pid(url)
    os.kill(pid, signal.SIGKILL)
    # until `up` has it back, the job API says which dependency is down
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = httpx.get(f"{gateway}/v1/jobs/{before['id']}", timeout=30)
        seen.append((r.status_code, r.text))
        if r.status_code == 200:
            break
        time.sleep(0.02)
    assert seen[-1][0] == 200, seen[-5:]
    assert all(code in (200, 503) for code, _ in seen), seen
    # `up` restarts Redis at once: on a loaded machine the restart can come before the first
    # request does; any 503 seen must name Redis (test_worker_api_redis_down_is_503 holds
    # Redis down for as long as it needs)
    for text in (text for code, text in seen if code == 503):
        assert "Redis" in json.loads(text)["error"]["message"], text
    after = httpx.get(f"{gateway}/v1/jobs/{before['id']}", timeout=30).json()
    assert after["state"] == "succeeded" and after["stages"] == before["stages"]
    assert redis_pid(url) != pid
    out = wait_for_output(ensemble, "redis exited", "restarting it", "redis is back")
    assert "redis exited" in out and "restarting it" in out and "redis is back" in out
    # the worker carries on (restarted by `up` if Redis took it down): a new job completes
    again = submit_and_wait(
        gateway, {"kind": "sft_data", "input": {"paths": [str(SAMPLE_ROWS)]}, "limit": 3}
    )
    assert again["state"] == "succeeded", again
