"""Integration fixtures: real model services on the embedded SmolLM2 as subprocesses on free
loopback ports, and gateways served in-process by uvicorn over real HTTP.

- ``model_service_factory(*roles, env=None, model=None)`` starts one service per role (in
  parallel, each its own process; ``model`` defaults to the embedded one), waits until all are
  ready and returns them; everything it started is stopped at the end of the session. Tests
  that kill a service start their own.
- ``model_services`` is the shared trio ``{"rationalyst": url, "agent": url, "scorer": url}``;
  ``exact_scorer`` a scorer whose scores repeat exactly, for byte-for-byte output comparisons.
- ``gateway_factory(**settings)`` serves a gateway app (``create_app``) on a free port in a
  background thread and returns its URL; ``gateway_url`` is one on the shared trio.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.ensemble import (
    ServiceProcess,
    free_port,
    model_service_command,
    start_process,
    stop_processes,
    wait_ready,
)

READY_TIMEOUT_S = float(os.environ.get("RATIONALYST_TEST_READY_TIMEOUT", "600"))
# Three model processes share the machine: one torch thread each avoids oversubscription.
SERVICE_ENV = {"MODEL_SERVER_THREADS": os.environ.get("MODEL_SERVER_THREADS", "1")}


@dataclass
class RunningService:
    role: str
    url: str
    process: ServiceProcess

    def kill(self) -> None:
        """SIGKILL the service (a crash, not a shutdown) and reap it."""
        self.process.popen.kill()
        self.process.popen.wait(timeout=30)


@pytest.fixture(scope="session")
def model_service_factory(
    model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., list[RunningService]]]:
    log_dir = tmp_path_factory.mktemp("model-service-logs")
    started: list[ServiceProcess] = []

    def start(
        *roles: str, env: Mapping[str, str] | None = None, model: str | None = None
    ) -> list[RunningService]:
        out = []
        for role in roles:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = model_service_command(role, port, model=model or str(model_path))
            proc = start_process(
                f"{role}-{port}", cmd, url, log_dir=log_dir, env={**SERVICE_ENV, **(env or {})}
            )
            started.append(proc)
            out.append(RunningService(role, url, proc))
        wait_ready([s.process for s in out], timeout_s=READY_TIMEOUT_S)
        return out

    yield start
    stop_processes(started)


@pytest.fixture(scope="session")
def model_services(
    model_service_factory: Callable[..., list[RunningService]],
) -> dict[str, str]:
    services = model_service_factory("rationalyst", "agent", "scorer")
    return {s.role: s.url for s in services}


@pytest.fixture(scope="session")
def exact_scorer(model_service_factory: Callable[..., list[RunningService]]) -> str:
    """A scorer whose scores repeat to the last bit: float32, no prefix cache (a prefix taken
    from the cache was computed in a pass of another shape, and bf16 rounds differently
    there). For tests that compare a job's outputs with another run's, byte for byte."""
    env = {"MODEL_SERVER_DTYPE": "float32", "MODEL_SERVER_PREFIX_CACHE_TOKENS": "0"}
    (scorer,) = model_service_factory("scorer", env=env)
    return scorer.url


class _ServerThread:
    """A uvicorn server for an ASGI app on a background thread (its own event loop)."""

    def __init__(self, app: Any, port: int) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="session")
def gateway_factory() -> Iterator[Callable[..., str]]:
    from gateway.app import create_app
    from gateway.settings import GatewaySettings

    servers: list[_ServerThread] = []

    def start(**settings: Any) -> str:
        port = free_port()
        server = _ServerThread(create_app(GatewaySettings(port=port, **settings)), port)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def gateway_url(gateway_factory: Callable[..., str], model_services: dict[str, str]) -> str:
    return gateway_factory(
        rationalyst_url=model_services["rationalyst"],
        agent_url=model_services["agent"],
        scorer_url=model_services["scorer"],
    )
