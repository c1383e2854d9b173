"""A real model service started on a registered trained model, then switched to another one
over real HTTP with `rationalyst models use` (the embedded SmolLM2 stands in for both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.ensemble import (
    ServiceProcess,
    free_port,
    model_service_command,
    start_process,
    stop_processes,
    wait_ready,
)
from services.model_server.cli import models_app
from shared.model_registry import ModelRegistry, RegisteredModel
from tests.integration.conftest import READY_TIMEOUT_S, SERVICE_ENV

pytestmark = pytest.mark.integration

TOKEN = "integration-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def artifacts(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts root where two "trained" models are registered: links to the embedded
    model's folder, where a training job would have written its output."""
    root = tmp_path_factory.mktemp("artifacts")
    registry = ModelRegistry(root)
    for name in ("trained-a", "trained-b"):
        folder = root / "job-1" / name
        folder.parent.mkdir(exist_ok=True)
        folder.symlink_to(model_path, target_is_directory=True)
        registry.register(
            RegisteredModel(
                name=name, path=str(folder), base_model="smollm2-135m-instruct", method="full"
            )
        )
    return root


@pytest.fixture(scope="module")
def service(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A rationalyst service started with `--model trained-a` (a registered name)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **SERVICE_ENV,
        "MODEL_SERVER_ARTIFACTS_DIR": str(artifacts),
        "MODEL_SERVER_INTERNAL_TOKEN": TOKEN,
    }
    proc: ServiceProcess = start_process(
        "rationalyst-switch",
        model_service_command("rationalyst", port, model="trained-a"),
        url,
        log_dir=tmp_path_factory.mktemp("model-switch-logs"),
        env=env,
    )
    try:
        wait_ready([proc], timeout_s=READY_TIMEOUT_S)
        yield url
    finally:
        stop_processes([proc])


def rationale(url: str) -> httpx.Response:
    body = {"question": "Tom has 3 apples and buys 5 more. How many now?", "max_tokens": 16}
    return httpx.post(f"{url}/v1/rationale", json=body, headers=AUTH, timeout=120)


def test_model_service_serves_a_registered_model_and_switches_to_another(
    service: str, artifacts: Path
) -> None:
    ready = httpx.get(f"{service}/ready", timeout=10).json()
    assert ready["loaded_model"] == "trained-a"
    assert ready["model_path"] == str(artifacts / "job-1" / "trained-a")
    assert ready["model"] == "rationalyst"
    r = rationale(service)
    assert r.status_code == 200, r.text
    assert r.json()["num_tokens"] > 0

    denied = httpx.post(f"{service}/admin/model", json={"model": "trained-b"}, timeout=10)
    assert denied.status_code == 401
    unknown = httpx.post(
        f"{service}/admin/model", json={"model": "no-such-model"}, headers=AUTH, timeout=10
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "model"

    result = CliRunner().invoke(
        models_app, ["use", "trained-b", "--url", service, "--token", TOKEN, "--timeout", "300"]
    )
    assert result.exit_code == 0, result.output
    assert "rationalyst now serves trained-b" in result.output
    assert "was trained-a" in result.output

    ready = httpx.get(f"{service}/ready", timeout=10).json()
    assert ready["loaded_model"] == "trained-b"
    assert ready["model_path"] == str(artifacts / "job-1" / "trained-b")
    r = rationale(service)
    assert r.status_code == 200, r.text
    models = httpx.get(f"{service}/v1/models", headers=AUTH, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["rationalyst"]
