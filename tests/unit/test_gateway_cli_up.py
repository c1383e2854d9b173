"""`rationalyst up` options that shape the local ensemble, without starting processes."""

from __future__ import annotations

from pathlib import Path
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


def run_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> dict[str, _Started]:
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
    result = CliRunner().invoke(app, ["up", "--logs-dir", str(tmp_path), *args])
    assert result.exit_code == 1 and "stop here" in result.output, result.output
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
    assert not started["gateway"].env


def test_up_agent_model_applies_to_that_role_only(monkeypatch, tmp_path) -> None:
    started = run_up(monkeypatch, tmp_path, "--agent-model", "tripost-job-1-it3")
    assert model_of(started["agent"].command) == "tripost-job-1-it3"
    assert model_of(started["rationalyst"].command) is None
    assert model_of(started["scorer"].command) is None


def test_up_internal_token_reaches_every_process(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RATIONALYST_INTERNAL_TOKEN", "tok")
    started = run_up(monkeypatch, tmp_path, "--rationalyst-model", "trained-a")
    assert set(started) == {"rationalyst", "agent", "scorer", "gateway"}
    for proc in started.values():
        assert proc.env["MODEL_SERVER_INTERNAL_TOKEN"] == "tok"
        assert proc.env["GATEWAY_INTERNAL_TOKEN"] == "tok"
    assert model_of(started["agent"].command) is None  # the services' own default
