"""`rationalyst up` options that shape the local ensemble, without starting processes: models,
tokens, and the job queue (which Redis, the worker's environment, restarts)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway import ensemble
from gateway.cli import app

pytestmark = pytest.mark.unit


class _Started:
    def __init__(self, name: str, command: list[str], url: str, env: dict[str, str]) -> None:
        self.name, self.command, self.url, self.env = name, command, url, env
        self.pid = 0

    def alive(self) -> bool:
        return True


def run_up(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *args: str,
    reachable: tuple[str, ...] = (),
    redis_server: str | None = "/usr/bin/redis-server",
    exit_code: int = 1,
) -> dict[str, _Started]:
    """Run `up` until it would wait for readiness; ``reachable``: the Redis URLs that answer."""
    started: dict[str, _Started] = {}

    def start_process(name: str, command: Any, url: str, **kw: Any) -> _Started:
        started[name] = _Started(name, list(command), url, dict(kw.get("env") or {}))
        return started[name]

    def wait_ready(*_: Any, **__: Any) -> None:
        raise ensemble.EnsembleError("stop here")

    monkeypatch.setattr(ensemble, "start_process", start_process)
    monkeypatch.setattr(ensemble, "wait_ready", wait_ready)
    monkeypatch.setattr(ensemble, "stop_processes", lambda procs: None)
    monkeypatch.setattr(ensemble, "port_in_use", lambda *a, **kw: False)
    monkeypatch.setattr(ensemble, "redis_ping", lambda url, **kw: url in reachable)
    monkeypatch.setattr(ensemble, "find_redis_server", lambda: redis_server)
    monkeypatch.setattr(ensemble, "free_port", lambda host="127.0.0.1": 16390)
    monkeypatch.setattr(ensemble.JobQueue, "wait_server", lambda self, proc, timeout_s=0: None)
    for var in ("WORKER_REDIS_URL", "GATEWAY_REDIS_URL", "WORKER_DATA_DIRS", "GATEWAY_DATA_DIRS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORKER_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    result = CliRunner().invoke(app, ["up", "--logs-dir", str(tmp_path), *args])
    assert result.exit_code == exit_code, result.output
    if exit_code == 1 and started:
        assert "stop here" in result.output, result.output
    return started


def model_of(command: list[str]) -> str | None:
    return command[command.index("--model") + 1] if "--model" in command else None


def test_up_rationalyst_model_applies_to_that_role_only(monkeypatch, tmp_path) -> None:
    started = run_up(
        monkeypatch, tmp_path, "--model", "/models/base", "--rationalyst-model", "trained-a"
    )
    assert model_of(started["rationalyst"].command) == "trained-a"
    assert model_of(started["agent"].command) == "/models/base"
    assert model_of(started["scorer"].command) == "/models/base"


def test_up_agent_model_applies_to_that_role_only(monkeypatch, tmp_path) -> None:
    started = run_up(monkeypatch, tmp_path, "--agent-model", "tripost-job-1-it3")
    assert model_of(started["agent"].command) == "tripost-job-1-it3"
    assert model_of(started["rationalyst"].command) is None
    assert model_of(started["scorer"].command) is None


def test_up_internal_token_reaches_every_process(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RATIONALYST_INTERNAL_TOKEN", "tok")
    started = run_up(monkeypatch, tmp_path, "--rationalyst-model", "trained-a")
    assert set(started) == {"redis", "rationalyst", "agent", "scorer", "gateway", "worker"}
    for name in ("rationalyst", "agent", "scorer", "gateway"):
        assert started[name].env["MODEL_SERVER_INTERNAL_TOKEN"] == "tok"
        assert started[name].env["GATEWAY_INTERNAL_TOKEN"] == "tok"
    assert started["worker"].env["WORKER_INTERNAL_TOKEN"] == "tok"
    assert model_of(started["agent"].command) is None  # the services' own default


def test_up_starts_a_redis_with_an_append_only_file_when_none_answers(
    monkeypatch, tmp_path
) -> None:
    started = run_up(monkeypatch, tmp_path)
    redis, gateway, worker = started["redis"], started["gateway"], started["worker"]
    cmd = redis.command
    assert cmd[0] == "/usr/bin/redis-server" and cmd[cmd.index("--port") + 1] == "16390"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "always"
    aof_dir = Path(cmd[cmd.index("--dir") + 1])
    assert aof_dir == (tmp_path / "artifacts" / "_redis").resolve() and aof_dir.is_dir()
    url = "redis://127.0.0.1:16390/0"
    assert gateway.env["GATEWAY_REDIS_URL"] == worker.env["WORKER_REDIS_URL"] == url
    assert gateway.env["GATEWAY_ARTIFACTS_DIR"] == worker.env["WORKER_ARTIFACTS_DIR"]
    assert worker.env["WORKER_AGENT_URL"] == started["agent"].url
    assert worker.env["WORKER_SCORER_URL"] == started["scorer"].url
    assert worker.command[-2:] == ["-m", "services.worker"]


def test_up_worker_gets_one_thread_and_its_training_all_cores(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    worker = run_up(monkeypatch, tmp_path)["worker"]
    assert worker.env["OMP_NUM_THREADS"] == worker.env["MKL_NUM_THREADS"] == "1"
    assert worker.env["WORKER_TRAIN_THREADS"] == str(len(ensemble.available_cores()))


def test_up_uses_the_redis_on_the_default_url_or_the_configured_one(monkeypatch, tmp_path) -> None:
    default = ensemble.DEFAULT_REDIS_URL
    started = run_up(monkeypatch, tmp_path, reachable=(default,))
    assert "redis" not in started
    assert started["gateway"].env["GATEWAY_REDIS_URL"] == default
    assert started["worker"].env["WORKER_REDIS_URL"] == default
    mine = "redis://127.0.0.1:7000/3"
    started = run_up(monkeypatch, tmp_path, "--redis-url", mine, reachable=(mine, default))
    assert "redis" not in started and started["worker"].env["WORKER_REDIS_URL"] == mine
    started = run_up(monkeypatch, tmp_path, "--start-redis", reachable=(default,))
    assert started["worker"].env["WORKER_REDIS_URL"] == "redis://127.0.0.1:16390/0"


def test_up_says_what_to_do_when_no_redis_can_be_had(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(ensemble, "start_process", lambda *a, **kw: pytest.fail("started"))
    result_env = {"COLUMNS": "200"}
    monkeypatch.setattr(ensemble, "redis_ping", lambda url, **kw: False)
    monkeypatch.setattr(ensemble, "find_redis_server", lambda: None)
    monkeypatch.setenv("WORKER_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.delenv("WORKER_REDIS_URL", raising=False)
    monkeypatch.delenv("GATEWAY_REDIS_URL", raising=False)
    monkeypatch.setattr(ensemble, "port_in_use", lambda *a, **kw: False)
    result = CliRunner().invoke(app, ["up", "--logs-dir", str(tmp_path)], env=result_env)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "redis-server is not installed" in text and "--no-worker" in text
    monkeypatch.setenv("WORKER_REDIS_URL", "redis://:secret@127.0.0.1:7000/0")
    result = CliRunner().invoke(app, ["up", "--logs-dir", str(tmp_path)], env=result_env)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "is not reachable" in text and "secret" not in text


def test_up_no_worker_starts_models_and_gateway_only(monkeypatch, tmp_path) -> None:
    started = run_up(monkeypatch, tmp_path, "--no-worker")
    assert set(started) == {"rationalyst", "agent", "scorer", "gateway"}
    assert not started["gateway"].env


class _Proc:
    """A process that is dead once ``deaths`` reaches it."""

    def __init__(self, name: str, alive: bool = True, code: int = 1) -> None:
        self.name, self._alive = name, alive
        self.popen = SimpleNamespace(returncode=code)
        self.log_path = Path("/dev/null")

    def alive(self) -> bool:
        return self._alive

    def log_tail(self) -> str:
        return ""


def test_supervise_restarts_redis_and_worker_and_returns_any_other_death(monkeypatch) -> None:
    printed: list[str] = []
    console = SimpleNamespace(print=lambda text, **kw: printed.append(text))
    redis, worker, gateway = _Proc("redis", False), _Proc("worker", False), _Proc("gateway")
    procs: list[Any] = [redis, _Proc("agent"), gateway, worker]
    restarted: list[str] = []

    def restart(p: Any) -> Any:
        restarted.append(p.name)
        if len(restarted) == 2:  # after both came back, the gateway dies
            gateway._alive = False
        return _Proc(p.name)

    queue = SimpleNamespace(wait_server=lambda proc: None, jobs_kept=lambda: 3,
                            url="redis://127.0.0.1:1/0")  # fmt: skip
    monkeypatch.setattr(ensemble.time, "sleep", lambda s: None)
    dead = ensemble.supervise(procs, {"redis", "worker"}, queue, console, restart)  # type: ignore[arg-type]
    assert dead is gateway and restarted == ["redis", "worker"]
    assert any("503" in line and "append-only file" in line for line in printed)
    assert any("redis is back" in line and "3 job(s)" in line for line in printed)


def test_restart_policy_backs_off_within_its_window() -> None:
    policy = ensemble.RestartPolicy(window_s=60, max_delay_s=30)
    delays = [policy.delay("worker", now=t) for t in (0, 1, 2, 3, 4, 5, 6)]
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert policy.delay("worker", now=1000) == 0.0  # a long life resets it
    assert policy.delay("redis", now=1000) == 0.0


def test_up_reward_model_starts_a_reward_service_with_its_share(monkeypatch, tmp_path) -> None:
    from tests.unit.test_thread_budget import ROLES

    monkeypatch.delenv("MODEL_SERVER_THREADS", raising=False)
    monkeypatch.setattr(ensemble, "available_cores", lambda: list(range(10)))
    started = run_up(monkeypatch, tmp_path, "--reward-model", "prm-ci", "--engine", "vllm")
    reward = started["reward"].command
    assert reward[reward.index("--role") + 1] == "reward"
    assert model_of(reward) == "prm-ci"
    assert reward[reward.index("--engine") + 1] == "vllm"  # the pooling runner
    gateway = started["gateway"].command
    assert gateway[gateway.index("--reward-url") + 1] == started["reward"].url
    # four services share the ten cores (the agent a double share), as in thread_budget
    shares = [started[r].env["MODEL_SERVER_THREADS"] for r in (*ROLES, "reward")]
    assert shares == ["2", "4", "2", "2"]


def test_up_reward_service_never_takes_the_remote_engine(monkeypatch, tmp_path) -> None:
    started = run_up(
        monkeypatch, tmp_path, "--reward-model", "prm-ci", "--engine", "remote", exit_code=1
    )
    reward = started["reward"].command
    assert reward[reward.index("--engine") + 1] == "transformers"


def test_up_without_reward_model_starts_no_reward_service(monkeypatch, tmp_path) -> None:
    started = run_up(monkeypatch, tmp_path)
    assert "reward" not in started
    assert "--reward-url" not in started["gateway"].command
