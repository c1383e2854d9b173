"""Threads of co-located model services: the launcher's budget, the user's override, and the
engine's own default under a container CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway import ensemble
from services.model_server.engines.device import cpu_quota, default_threads
from services.model_server.settings import ModelServerSettings
from shared.settings import describe_settings_error, load_settings

pytestmark = pytest.mark.unit

ROLES = ("rationalyst", "agent", "scorer")


@pytest.mark.parametrize(
    ("services", "cores", "weight", "expected"),
    [
        (3, 2, 1, 1),
        (3, 1, 1, 1),
        (3, 6, 1, 2),
        (3, 8, 1, 2),
        (1, 8, 1, 8),
        (2, 16, 1, 8),
        (3, 2, 2, 2),  # the agent on a 2-core laptop: both cores
        (3, 1, 2, 1),  # never more threads than cores
        (3, 12, 2, 8),
    ],
)
def test_thread_budget_is_a_weighted_share_at_least_one_at_most_every_core(
    services: int, cores: int, weight: int, expected: int
) -> None:
    assert ensemble.thread_budget(services, cores, weight) == expected


def test_thread_envs_give_every_service_the_budget_and_matching_pools() -> None:
    envs = ensemble.thread_envs(ROLES, cores=list(range(8)), environ={})
    assert set(envs) == set(ROLES)
    assert [envs[r]["MODEL_SERVER_THREADS"] for r in ROLES] == ["2", "4", "2"]
    for env in envs.values():
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["MODEL_SERVER_THREADS"]
        assert env["OMP_WAIT_POLICY"] == "PASSIVE"
        assert env["TOKENIZERS_PARALLELISM"] == "false"
    # vLLM's OpenMP threads are pinned to a run of cores of their own
    binds = [envs[r]["VLLM_CPU_OMP_THREADS_BIND"] for r in ROLES]
    assert binds == ["0,1", "2,3,4,5", "6,7"]


def test_thread_envs_wrap_cores_when_there_are_fewer_than_services() -> None:
    envs = ensemble.thread_envs(ROLES, cores=[0, 1], environ={})
    assert [envs[r]["MODEL_SERVER_THREADS"] for r in ROLES] == ["1", "2", "1"]
    assert [envs[r]["VLLM_CPU_OMP_THREADS_BIND"] for r in ROLES] == ["0", "0,1", "1"]


def test_thread_envs_keep_what_the_user_set() -> None:
    environ = {"MODEL_SERVER_THREADS": "3", "OMP_NUM_THREADS": "5"}
    envs = ensemble.thread_envs(ROLES, cores=[0, 1], environ=environ)
    assert all(env["MODEL_SERVER_THREADS"] == "3" for env in envs.values())
    assert all(env["OMP_NUM_THREADS"] == "5" for env in envs.values())


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_count_names_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="MODEL_SERVER_THREADS"):
        ensemble.thread_envs(ROLES, cores=[0, 1], environ={"MODEL_SERVER_THREADS": value})


def test_model_service_refuses_zero_threads_naming_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("MODEL_SERVER_THREADS", "0")
    with pytest.raises(SystemExit) as raised:
        load_settings(ModelServerSettings)
    message = str(raised.value)
    assert "MODEL_SERVER_THREADS" in message and "greater than or equal to 1" in message
    assert "(got '0')" in message or "(got 0)" in message


def test_settings_error_lists_every_bad_variable() -> None:
    with pytest.raises(ValidationError) as raised:
        ModelServerSettings(threads=-1, max_n=0)
    message = describe_settings_error(ModelServerSettings, raised.value)
    assert "MODEL_SERVER_THREADS" in message and "MODEL_SERVER_MAX_N" in message


def test_up_gives_each_model_service_its_share(monkeypatch, tmp_path) -> None:
    from tests.unit.test_gateway_cli_up import run_up

    monkeypatch.delenv("MODEL_SERVER_THREADS", raising=False)
    monkeypatch.setattr(ensemble, "available_cores", lambda: [0, 1, 2, 3, 4, 5, 6, 7])
    started = run_up(monkeypatch, tmp_path)
    assert [started[r].env["MODEL_SERVER_THREADS"] for r in ROLES] == ["2", "4", "2"]
    assert "MODEL_SERVER_THREADS" not in started["gateway"].env


def test_up_refuses_a_bad_override(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    monkeypatch.setenv("MODEL_SERVER_THREADS", "0")
    result = CliRunner().invoke(app, ["up", "--logs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "MODEL_SERVER_THREADS must be >= 1" in result.output


def _cgroup(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def test_cpu_quota_reads_cgroup_v2(tmp_path: Path) -> None:
    assert cpu_quota(_cgroup(tmp_path, "200000 100000")) == 2.0
    assert cpu_quota(_cgroup(tmp_path, "max 100000")) is None
    assert cpu_quota(tmp_path / "missing") is None


def test_default_threads_follow_the_container_limit(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert default_threads(_cgroup(tmp_path, "250000 100000")) == 2  # 2.5 CPUs -> 2 threads
    assert default_threads(_cgroup(tmp_path, "50000 100000")) == 1  # half a CPU -> 1
    assert default_threads(_cgroup(tmp_path, "max 100000")) == 16  # no limit: every core
