"""Fixtures of the worker's integration tests: a real redis-server per test module (which a
test may stop and start again), real worker processes, and the job API served over real HTTP.

Model services come from ``tests/integration/conftest.py`` (``model_services``). Import the
fixtures by name in a test module::

    from tests.integration.worker_fixtures import jobs_env, redis_server  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ensemble import PROJECT_ROOT, child_env, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SAMPLE_CORPUS = PROJECT_ROOT / "services" / "worker" / "sample_corpus" / "corpus.jsonl"
SHIPPED_CORPUS = PROJECT_ROOT / "services" / "worker" / "sample_corpus" / "strategyqa.jsonl"
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class RedisServer:
    """One redis-server on a loopback port, restartable on that port. Nothing kept on disk,
    or with ``aof`` the append-only file as compose configures it (fsync once a second)."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    aof: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--dir", str(self.workdir)]  # fmt: skip
        if self.aof:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            cmd += ["--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL: whatever it held in memory only is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def shutdown(self) -> None:
        """SIGTERM, what a restart by compose or Kubernetes sends: Redis writes out its
        append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@dataclass
class WorkerProcess:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def name_suffix(self) -> str:
        return f":{self.pid}"

    def kill9(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class _ApiServer:
    """The job, files and registry routers in a small app on a background thread (uvicorn,
    its own event loop)."""

    def __init__(self, settings: Any) -> None:
        import uvicorn
        from fastapi import FastAPI

        from gateway.files import create_files_router
        from gateway.jobs import create_jobs_router
        from gateway.registry import create_registry_router
        from shared.http import install_error_handlers

        app = FastAPI()
        install_error_handlers(app)
        app.include_router(create_jobs_router(settings))
        app.include_router(create_files_router(settings, max_upload_bytes=1 << 20))
        app.include_router(create_registry_router(settings))
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the job API did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class JobsEnv:
    """A Redis, an artifacts root, the job API over HTTP and a factory of worker processes."""

    redis: RedisServer
    artifacts: Path
    api_url: str
    logs: Path
    worker_env: dict[str, str]
    http: httpx.Client
    workers: list[WorkerProcess] = field(default_factory=list)
    started: int = 0

    def start_worker(self, **env: Any) -> WorkerProcess:
        merged = {**self.worker_env, **{f"WORKER_{k.upper()}": str(v) for k, v in env.items()}}
        self.started += 1
        log = self.logs / f"worker-{self.started}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "services.worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(merged),
                cwd=PROJECT_ROOT,
            )
        proc = WorkerProcess(popen, log)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()

    def upload(self, name: str, content: bytes) -> str:
        """POST /v1/files; the new file's id."""
        r = self.http.post("/v1/files", files={"file": (name, content)})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.http.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def wait(
        self,
        job_id: str,
        until: Callable[[dict[str, Any]], bool] | None = None,
        timeout_s: float = 600,
    ) -> dict[str, Any]:
        """Poll the job until ``until(status)`` (default: a terminal state)."""
        until = until or (lambda s: s["state"] in TERMINAL)
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(job_id)
            if until(status):
                return status
            if time.monotonic() > deadline:
                logs = "\n".join(w.tail(15) for w in self.workers)
                raise AssertionError(f"job {job_id} timed out: {status}\n{logs}")
            time.sleep(0.3)

    def artifact(self, job_id: str, name: str) -> str:
        r = self.http.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert r.status_code == 200, r.text
        return r.text


@pytest.fixture(scope="module")
def jobs_env(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobsEnv]:
    """Job API + artifacts root on the module's Redis; workers are started by the tests (and
    all stopped at the end of the module). Model-service URLs are set by the tests."""
    from shared.jobs_store import JobStoreSettings

    artifacts = tmp_path_factory.mktemp("artifacts")
    logs = tmp_path_factory.mktemp("worker-logs")
    # jobs read the tests' own files (under pytest's temporary root) and the shipped samples
    data_dirs = [artifacts, tmp_path_factory.getbasetemp(), SAMPLE_CORPUS.parent]
    settings = JobStoreSettings(
        redis_url=redis_server.url, artifacts_dir=artifacts, data_dirs=data_dirs
    )
    api = _ApiServer(settings)
    worker_env = {
        "WORKER_REDIS_URL": redis_server.url,
        "WORKER_ARTIFACTS_DIR": str(artifacts),
        "WORKER_DATA_DIRS": ",".join(str(d) for d in data_dirs),
        "WORKER_SHARD_SIZE": "4",
        "WORKER_LEASE_S": "3",
        "WORKER_POLL_DELAY_S": "0.2",
        "WORKER_RETRY_BACKOFF_S": "0.3",
        "WORKER_CONCURRENCY": "1",
        "WORKER_REQUEST_CONCURRENCY": "4",
        "WORKER_LOG_LEVEL": "INFO",
        # the artifacts root outlives each test's Redis: recover only where a test asks
        "WORKER_RECOVER_ON_START": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    env = JobsEnv(
        redis=redis_server,
        artifacts=artifacts,
        api_url=api.url,
        logs=logs,
        worker_env=worker_env,
        http=httpx.Client(base_url=api.url, timeout=60),
    )
    yield env
    env.stop_workers()
    env.http.close()
    api.stop()


@pytest.fixture
def jobs(jobs_env: JobsEnv) -> Iterator[JobsEnv]:
    """The module's environment, on an empty Redis; the test's workers stop after it."""
    import redis

    if jobs_env.redis.proc is None:
        jobs_env.redis.start()
    redis.Redis.from_url(jobs_env.redis.url).flushall()
    yield jobs_env
    jobs_env.stop_workers()
