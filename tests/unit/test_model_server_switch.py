"""Switching the served model at run time (POST /admin/model) on fake engines, and resolving
registered model names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from gateway.ensemble import free_port
from services.model_server.app import create_app
from services.model_server.cli import models_app
from services.model_server.models import resolve_model
from services.model_server.settings import EngineKind, ModelServerSettings
from shared.clients import ModelServiceClient
from shared.errors import Forbidden, InvalidRequest
from shared.model_registry import ModelRegistry, RegisteredModel
from shared.schemas import Role
from tests.unit.conftest import FakeEngine

pytestmark = pytest.mark.unit

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = {"question": "What is 2 + 3?"}


class TrackedEngine(FakeEngine):
    """A fake engine that logs what happens to it in a shared list; ``gate`` holds its
    generate calls, ``start_gate`` its start, and ``start_error`` makes the start fail."""

    def __init__(self, tokenizer: Any, name: str, events: list[str]) -> None:
        super().__init__(tokenizer)
        self.name = name
        self.events = events
        self.gate: asyncio.Event | None = None
        self.start_gate: asyncio.Event | None = None
        self.start_error: Exception | None = None
        self.closed = False

    async def start(self) -> None:
        self.events.append(f"{self.name} starting")
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.start_error is not None:
            raise self.start_error
        await super().start()

    async def close(self) -> None:
        self.closed = True
        self.events.append(f"{self.name} closed")

    async def generate(self, prompt_ids: list[int], params: Any) -> Any:
        self.events.append(f"{self.name} generate")
        if self.gate is not None:
            await self.gate.wait()
        out = await super().generate(prompt_ids, params)
        self.events.append(f"{self.name} generated")
        return out


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def register(artifacts: Path, name: str, path: str) -> None:
    ModelRegistry(artifacts).register(
        RegisteredModel(
            name=name, path=path, base_model="smollm2-135m-instruct", method="full", job_id="j1"
        )
    )


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """An artifacts root with two registered models, trained-a and trained-b."""
    root = tmp_path / "artifacts"
    for name in ("trained-a", "trained-b"):
        register(root, name, str(model_folder(root / "job-1" / name)))
    return root


class Harness:
    """Apps whose first engine is "old" and whose switches build TrackedEngines named after
    the model; ``engines`` maps names to them, ``prepare[name]`` adjusts one before use."""

    def __init__(self, tokenizer: Any, artifacts: Path, models_dir: Path) -> None:
        self.tokenizer = tokenizer
        self.artifacts = artifacts
        self.models_dir = models_dir
        self.events: list[str] = []
        self.engines: dict[str, TrackedEngine] = {}
        self.prepare: dict[str, Callable[[TrackedEngine], None]] = {}

    def factory(self, settings: ModelServerSettings) -> TrackedEngine:
        engine = TrackedEngine(self.tokenizer, settings.model, self.events)
        if settings.model in self.prepare:
            self.prepare[settings.model](engine)
        self.engines[settings.model] = engine
        return engine

    def app(self, token: str | None = TOKEN, **kw: Any) -> Any:
        settings = ModelServerSettings(
            role=Role.rationalyst,
            internal_token=token,
            artifacts_dir=self.artifacts,
            models_dir=str(self.models_dir),
            **kw,
        )
        self.engines["old"] = TrackedEngine(self.tokenizer, "old", self.events)
        return create_app(settings, engine=self.engines["old"], engine_factory=self.factory)


@pytest.fixture
def harness(tokenizer: Any, artifacts: Path, tmp_path: Path) -> Harness:
    return Harness(tokenizer, artifacts, tmp_path / "models-cache")


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true after {timeout_s} s")


async def test_switch_is_403_without_an_internal_token(harness, asgi_client) -> None:
    engines = harness.engines
    async with asgi_client(harness.app(token=None)) as client:
        r = await client.post("/admin/model", json={"model": "trained-a"})
        ready = await client.get("/ready")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["type"] == "forbidden"
    assert "MODEL_SERVER_INTERNAL_TOKEN" in r.json()["error"]["message"]
    assert ready.json()["loaded_model"] == "smollm2-135m-instruct"
    assert "trained-a" not in engines


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["none", "wrong"])
async def test_switch_is_401_without_the_right_token(harness, asgi_client, headers) -> None:
    engines = harness.engines
    async with asgi_client(harness.app()) as client:
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "unauthorized"
    assert "trained-a" not in engines


async def test_switch_serves_the_new_model_and_closes_the_old(
    harness, asgi_client, artifacts
) -> None:
    engines = harness.engines
    async with asgi_client(harness.app()) as client:
        before = (await client.get("/ready")).json()
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        assert r.status_code == 200, r.text
        ready = await client.get("/ready")
        answer = await client.post("/v1/rationale", json=QUESTION, headers=AUTH)
        listed = await client.get("/v1/models", headers=AUTH)
        await wait_for(lambda: engines["old"].closed)
    body = r.json()
    assert body["role"] == "rationalyst"
    assert body["model"] == "trained-a"
    assert body["previous_model"] == before["loaded_model"] == "smollm2-135m-instruct"
    assert body["model_path"] == str(artifacts / "job-1" / "trained-a")
    assert body["engine"] == "fake"
    assert body["load_s"] >= 0
    assert ready.status_code == 200
    assert ready.json()["loaded_model"] == "trained-a"
    assert ready.json()["model_path"] == body["model_path"]
    assert ready.json()["switching_to"] is None
    assert answer.status_code == 200, answer.text
    assert engines["trained-a"].calls and not engines["old"].calls
    assert [m["id"] for m in listed.json()["data"]] == ["rationalyst"]


async def test_request_in_flight_finishes_on_the_old_engine_before_it_closes(
    harness, asgi_client
) -> None:
    engines, events = harness.engines, harness.events
    app = harness.app()
    engines["old"].gate = asyncio.Event()
    async with asgi_client(app) as client:
        in_flight = asyncio.create_task(client.post("/v1/rationale", json=QUESTION, headers=AUTH))
        await wait_for(lambda: "old generate" in events)
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        assert r.status_code == 200, r.text
        after = await client.post("/v1/rationale", json=QUESTION, headers=AUTH)
        assert after.status_code == 200
        assert engines["trained-a"].calls
        await asyncio.sleep(0.05)
        assert not engines["old"].closed, "closed under a request in flight"
        engines["old"].gate.set()
        first = await in_flight
        await wait_for(lambda: engines["old"].closed)
    assert first.status_code == 200, first.text
    assert first.json()["rationale"] == "Step 0."
    assert events.index("old generated") < events.index("old closed")
    assert events.index("trained-a generate") < events.index("old generated")


async def test_second_switch_while_loading_is_409(harness, asgi_client) -> None:
    engines = harness.engines
    app = harness.app()
    start_gate = asyncio.Event()
    harness.prepare["trained-a"] = lambda e: setattr(e, "start_gate", start_gate)
    async with asgi_client(app) as client:
        first = asyncio.create_task(
            client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        )
        await wait_for(lambda: "trained-a" in engines)
        loading = await client.get("/ready")
        second = await client.post("/admin/model", json={"model": "trained-b"}, headers=AUTH)
        served = await client.post("/v1/rationale", json=QUESTION, headers=AUTH)
        start_gate.set()
        done = await first
    assert second.status_code == 409, second.text
    assert second.json()["error"]["type"] == "conflict"
    assert "trained-a" in second.json()["error"]["message"]
    assert "trained-b" not in engines
    assert loading.json()["switching_to"] == "trained-a"
    assert loading.json()["loaded_model"] == "smollm2-135m-instruct"
    assert served.status_code == 200 and engines["old"].calls  # the old one served meanwhile
    assert done.status_code == 200


async def test_switch_during_the_first_load_is_409(harness, asgi_client) -> None:
    engines = harness.engines
    app = harness.app()
    engines["old"].start_gate = asyncio.Event()
    async with asgi_client(app) as client:
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        engines["old"].start_gate.set()
    assert r.status_code == 409, r.text


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no-such-model", "(registered: "),
        ("Org/Some-Hub-Model", "unknown model"),  # a hub id: no download at run time
        ("broken", "not a Hugging Face model folder"),
        ("", "model"),
    ],
)
async def test_switch_to_a_model_that_cannot_be_served_is_422(
    harness, asgi_client, artifacts, model: str, message: str
) -> None:
    engines = harness.engines
    register(artifacts, "broken", str(artifacts / "job-2" / "missing"))
    async with asgi_client(harness.app()) as client:
        r = await client.post("/admin/model", json={"model": model}, headers=AUTH)
        ready = await client.get("/ready")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "model"
    assert message in r.json()["error"]["message"]
    assert set(engines) == {"old"}
    assert ready.json()["loaded_model"] == "smollm2-135m-instruct"


async def test_switch_that_fails_to_load_is_503_and_the_old_model_keeps_serving(
    harness, asgi_client
) -> None:
    engines = harness.engines
    harness.prepare["trained-a"] = lambda e: setattr(
        e, "start_error", RuntimeError("not enough memory")
    )
    async with asgi_client(harness.app()) as client:
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        ready = await client.get("/ready")
        served = await client.post("/v1/rationale", json=QUESTION, headers=AUTH)
        again = await client.post("/admin/model", json={"model": "trained-b"}, headers=AUTH)
    assert r.status_code == 503, r.text
    assert "not enough memory" in r.json()["error"]["message"]
    assert engines["trained-a"].closed
    assert ready.status_code == 200
    assert ready.json()["loaded_model"] == "smollm2-135m-instruct"
    assert served.status_code == 200 and engines["old"].calls
    assert again.status_code == 200  # a failed load does not block the next switch


async def test_switch_recovers_a_service_whose_first_load_failed(harness, asgi_client) -> None:
    engines = harness.engines
    app = harness.app()
    engines["old"].start_error = RuntimeError("corrupt weights")
    async with asgi_client(app) as client:
        await wait_for(lambda: engines["old"].closed)
        before = await client.get("/ready")
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        after = await client.get("/ready")
    assert before.status_code == 503
    assert "corrupt weights" in before.json()["error"]["message"]
    assert r.status_code == 200, r.text
    assert r.json()["previous_model"] is None
    assert after.status_code == 200


async def test_shutdown_closes_the_served_engine(harness, asgi_client) -> None:
    engines = harness.engines
    async with asgi_client(harness.app()) as client:
        r = await client.post("/admin/model", json={"model": "trained-a"}, headers=AUTH)
        assert r.status_code == 200
    assert engines["trained-a"].closed and engines["old"].closed


async def test_remote_engine_switch_changes_the_upstream_model(harness, asgi_client) -> None:
    engines = harness.engines
    app = harness.app(engine=EngineKind.remote, remote_url="http://upstream:8000")
    async with asgi_client(app) as client:
        r = await client.post("/admin/model", json={"model": "Org/Upstream-Model"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["model_path"] == "Org/Upstream-Model"
    assert "Org/Upstream-Model" in engines


async def test_client_switch_model_and_its_errors(harness, asgi_client) -> None:
    for token, app in ((TOKEN, harness.app()), (None, harness.app(token=None))):
        async with asgi_client(app):
            client = ModelServiceClient(
                "rationalyst", "http://test", token=token, transport=httpx.ASGITransport(app)
            )
            async with client:
                if token is None:
                    with pytest.raises(Forbidden, match="rationalyst: the admin API is off"):
                        await client.switch_model("trained-a")
                    continue
                result = await client.switch_model("trained-b")
                assert result.model == "trained-b"
                with pytest.raises(InvalidRequest) as err:
                    await client.switch_model("nope")
                assert err.value.field == "model"


def test_cli_models_use_fails_with_the_error_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(models_app, ["use", "trained-a", "--url", url, "--timeout", "5"])
    assert result.exit_code == 1
    assert "unreachable" in result.output


# --------------------------------------------------------------------------------------------
# Resolution of model names


def test_resolve_model_finds_a_registered_model(artifacts: Path, tmp_path: Path) -> None:
    cache = tmp_path / "models-cache"
    folder = resolve_model("trained-a", cache, artifacts_dir=artifacts)
    assert folder == str(artifacts / "job-1" / "trained-a")
    # Without the registry, the name falls through to a hub id, or is refused when only
    # local models are allowed.
    assert resolve_model("trained-a", cache) == "trained-a"
    with pytest.raises(InvalidRequest) as err:
        resolve_model("trained-c", cache, artifacts_dir=artifacts, allow_hub=False)
    assert err.value.field == "model"


def test_resolve_model_order_folder_cache_registry(artifacts: Path, tmp_path: Path) -> None:
    cache = tmp_path / "models-cache"
    cached = model_folder(cache / "trained-b")
    assert resolve_model("trained-b", cache, artifacts_dir=artifacts) == str(cached)
    folder = artifacts / "job-1" / "trained-a"
    assert resolve_model(str(folder), cache, artifacts_dir=artifacts) == str(folder)


def test_resolve_model_card_paths(artifacts: Path, tmp_path: Path) -> None:
    register(artifacts, "relative", "job-1/trained-a")
    register(artifacts, "gone", str(tmp_path / "deleted"))
    cache = tmp_path / "models-cache"
    folder = resolve_model("relative", cache, artifacts_dir=artifacts)
    assert folder == str(artifacts / "job-1" / "trained-a")
    with pytest.raises(InvalidRequest, match="not a Hugging Face model folder") as err:
        resolve_model("gone", cache, artifacts_dir=artifacts)
    assert err.value.field == "model"
    card = json.loads((artifacts / "_models" / "gone.json").read_text())
    assert card["path"] == str(tmp_path / "deleted")


def test_settings_artifacts_dir_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_SERVER_ARTIFACTS_DIR", str(tmp_path))
    assert ModelServerSettings().artifacts_dir == tmp_path
    monkeypatch.delenv("MODEL_SERVER_ARTIFACTS_DIR")
    assert ModelServerSettings().artifacts_dir.parts[-2:] == ("rationalyst", "artifacts")


async def test_old_engine_is_closed_after_a_bounded_wait(
    harness, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    from services.model_server import serving
    from services.model_server.metrics import ModelMetrics

    monkeypatch.setattr(serving, "DRAIN_GRACE_S", 0.05)
    settings = ModelServerSettings(
        role=Role.rationalyst, request_timeout_s=0.05, artifacts_dir=harness.artifacts
    )
    served = serving.ServedModel(settings, ModelMetrics(), harness.factory)
    old = TrackedEngine(harness.tokenizer, "old", harness.events)
    served.start(old)
    await wait_for(lambda: old.started)
    with served.lease():  # a request that never ends
        await served.switch("trained-a")
        await wait_for(lambda: old.closed)
    assert "still in flight" in caplog.text
    await served.close()
    assert harness.engines["trained-a"].closed


# -- an engine that fails beyond recovery ----------------------------------------------------


async def eventually(check: Callable[[], Any], tries: int = 200) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def break_engine(engine: TrackedEngine) -> None:
    engine.fail = MemoryError()  # FakeEngine turns unhealthy on a MemoryError
    engine.fatal = "MemoryError: out of memory"  # type: ignore[attr-defined]


async def test_fatal_failure_fails_health_then_the_model_is_reloaded(harness, asgi_client) -> None:
    app = harness.app()
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        break_engine(harness.engines["old"])
        sick = await client.get("/health")
        assert sick.status_code == 503
        assert "reloading" in sick.json()["error"]["message"]

        async def healthy_again() -> bool:
            return (await client.get("/health")).status_code == 200

        await eventually(healthy_again)
        assert (await client.get("/ready")).status_code == 200
        r = await client.post("/v1/propose", json=QUESTION, headers=AUTH)
        assert r.status_code == 200
    reloaded = next(e for name, e in harness.engines.items() if name != "old")
    assert f"{reloaded.name} generate" in harness.events
    assert harness.engines["old"].closed


async def test_a_reload_that_fails_stops_the_service(harness, asgi_client) -> None:
    app = harness.app()
    stopped: list[bool] = []
    app.state.model.on_unrecoverable = lambda: stopped.append(True)
    harness.prepare["smollm2-135m-instruct"] = lambda e: setattr(
        e, "start_error", RuntimeError("cannot allocate memory")
    )
    async with asgi_client(app) as client:
        break_engine(harness.engines["old"])
        assert (await client.get("/health")).status_code == 503

        async def gave_up() -> bool:
            return bool(stopped)

        await eventually(gave_up)
        assert (await client.get("/health")).status_code == 503
