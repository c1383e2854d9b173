"""docker/healthcheck.py, the containers' health check: HTTP services by URL, the worker by its
process and its Redis."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


@pytest.fixture(scope="module")
def hc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/health": 200, "/ready": 503}.get(self.path, 404)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_deploy_healthcheck_http_healthy_on_2xx(hc: ModuleType, server: str) -> None:
    assert hc.main(["http", f"{server}/health"]) == 0


def test_deploy_healthcheck_http_unhealthy_on_error_status(
    hc: ModuleType, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hc.main(["http", f"{server}/ready"]) == 1
    assert "answered 503" in capsys.readouterr().err


def test_deploy_healthcheck_http_unhealthy_when_nothing_listens(hc: ModuleType) -> None:
    assert hc.main(["http", f"http://127.0.0.1:{_closed_port()}/health", "--timeout", "1"]) == 1


def test_deploy_healthcheck_http_expands_the_port_variable(
    hc: ModuleType, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_PORT", server.rsplit(":", 1)[1])
    assert hc.main(["http", "http://127.0.0.1:${GATEWAY_PORT}/health"]) == 0


def _fake_proc(root: Path, pid: int, cmdline: list[str], state: str) -> None:
    entry = root / str(pid)
    entry.mkdir()
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
    (entry / "stat").write_text(f"{pid} (python) {state} 1 1 1 0 -1")


def test_deploy_healthcheck_finds_live_worker_processes_only(
    hc: ModuleType, tmp_path: Path
) -> None:
    _fake_proc(tmp_path, 1, ["/sbin/docker-init", "--", "python", "-m", "services.worker"], "S")
    _fake_proc(tmp_path, 7, ["python", "-m", "services.worker"], "R")
    _fake_proc(tmp_path, 8, ["python", "-m", "services.worker"], "Z")  # a zombie is dead
    _fake_proc(tmp_path, 9, ["python", "/opt/rationalyst/healthcheck.py", "worker"], "R")
    (tmp_path / "self").mkdir()
    assert sorted(hc.worker_processes(tmp_path)) == [1, 7]
    assert hc.worker_processes(tmp_path, b"no-such-program") == []


def test_deploy_healthcheck_worker_unhealthy_without_its_process(
    hc: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hc, "worker_processes", lambda: [])
    assert hc.main(["worker"]) == 1
    assert "no live worker process" in capsys.readouterr().err


def test_deploy_healthcheck_worker_checks_redis_only_when_asked(
    hc: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hc, "worker_processes", lambda: [1])
    monkeypatch.setattr(hc, "check_redis", lambda timeout: "redis unreachable: ConnectionError")
    assert hc.main(["worker"]) == 0
    assert hc.main(["worker", "--redis"]) == 1
    monkeypatch.setattr(hc, "check_redis", lambda timeout: None)
    assert hc.main(["worker", "--redis"]) == 0


def test_deploy_healthcheck_redis_ping_uses_the_worker_settings_and_hides_the_url(
    hc: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("redis")
    url = f"redis://:s3cret@127.0.0.1:{_closed_port()}/0"
    monkeypatch.setenv("WORKER_REDIS_URL", url)
    problem = hc.check_redis(1.0)
    assert problem is not None and problem.startswith("redis unreachable")
    assert "s3cret" not in problem
