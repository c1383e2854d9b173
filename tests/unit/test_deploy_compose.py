"""docker-compose.yml, docker-compose.gpu.yml and .env.example, validated without a Docker engine:
the Compose Specification's JSON schema, and every variable a container gets is a real setting
of its service (derived from the pydantic-settings classes, so config cannot drift)."""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"

SETTINGS = {
    "model-server": ("services.model_server.settings", "ModelServerSettings"),
    "gateway": ("gateway.settings", "GatewaySettings"),
    "worker": ("services.worker.settings", "WorkerSettings"),
}
SERVICE_KIND = {
    "rationalyst": "model-server",
    "agent": "model-server",
    "scorer": "model-server",
    "reward": "model-server",  # optional, under the `reward` profile
    "gateway": "gateway",
    "worker": "worker",
    "redis": None,
}
MODEL_ROLES = ("rationalyst", "agent", "scorer")
# Container variables that belong to no settings class, and who reads them.
OTHER_ENV = {"HF_TOKEN": "huggingface_hub: gated or private hub models"}
# Settings that docker-compose.yml deliberately does not take from .env, and why.
NOT_FROM_DOTENV = {
    "MODEL_SERVER_SERVED_MODEL_NAME": "per role (docker-compose.override.yml)",
    "MODEL_SERVER_SYSTEM_PROMPT": "per role (docker-compose.override.yml)",
    "MODEL_SERVER_TOKENIZER": "per role (docker-compose.override.yml)",
    "WORKER_HOST": "the worker serves no HTTP",
    "WORKER_PORT": "the worker serves no HTTP",
}
# Variables docker compose itself reads from .env.
COMPOSE_CLI_VARS = {"COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}

_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"  # ${VAR...}
    r"|(?P<bare>[A-Za-z_]\w*)"  # $VAR
    r"|(?P<esc>\$))"  # $$
)


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR and $$."""

    def one(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in {":-", "-"}:
            return arg if unset else str(current)
        if op in {":?", "?"}:
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        if op in {":+", "+"}:
            return "" if unset else arg
        return "" if current is None else current

    if isinstance(value, str):
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def variables(value: Any) -> dict[str, tuple[str | None, str]]:
    """Every ${VAR...} used: name -> (operator, argument)."""
    found: dict[str, tuple[str | None, str]] = {}
    if isinstance(value, str):
        for m in _VAR.finditer(value):
            name = m.group("braced") or m.group("bare")
            if name:
                found.setdefault(name, (m.group("op"), m.group("arg") or ""))
    elif isinstance(value, list):
        for v in value:
            found.update({k: o for k, o in variables(v).items() if k not in found})
    elif isinstance(value, dict):
        for v in value.values():
            found.update({k: o for k, o in variables(v).items() if k not in found})
    return found


@cache
def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@cache
def settings_class(kind: str) -> Any:
    module, name = SETTINGS[kind]
    return getattr(importlib.import_module(module), name)


def setting_names(kind: str) -> set[str]:
    cls = settings_class(kind)
    prefix = cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def all_setting_names() -> dict[str, str]:
    return {name: kind for kind in SETTINGS for name in setting_names(kind)}


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@cache
def compose_schema() -> dict[str, Any]:
    from check_jsonschema.builtin_schemas import get_builtin_schema

    schema: dict[str, Any] = get_builtin_schema("vendor.compose-spec")
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


GPU_ENV = {"RATIONALYST_MODEL": "/models/rationalyst-llama3-8b-instruct"}


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_deploy_compose_file_validates_against_the_compose_spec_schema(path: Path) -> None:
    assert compose_schema()["title"] == "Compose Specification"
    assert schema_errors(load(path)) == []
    # and so does what compose runs: the file with its variables substituted
    assert schema_errors(interpolate(load(path), GPU_ENV)) == []


def test_deploy_compose_schema_validation_catches_mistakes() -> None:
    broken = {"services": {"gateway": {"image": "x", "helthcheck": {"test": ["CMD", "true"]}}}}
    assert schema_errors(broken)
    bad_dependency = {"depends_on": {"redis": {"condition": "service_happy"}}, "image": "x"}
    assert schema_errors({"services": {"gateway": bad_dependency, "redis": {"image": "r"}}})


def test_deploy_compose_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    text = "${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $SET $$x"
    assert interpolate(text, env) == "v d d  v $x"
    assert interpolate("${SET:?m}", env) == "v"
    with pytest.raises(MissingVariable, match="UNSET: needed"):
        interpolate("${UNSET:?needed}", env)


@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_deploy_compose_environment_holds_only_real_settings(path: Path) -> None:
    for name, service in load(path)["services"].items():
        kind = SERVICE_KIND[name]
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        if kind is None:
            assert not env, f"{name}: unexpected environment"
            continue
        valid = setting_names(kind)
        for var in env:
            assert var in valid or var in OTHER_ENV, (
                f"{path.name}: {name} gets {var}, which is no setting of {kind}"
            )


def test_deploy_compose_passes_every_setting_through() -> None:
    """A setting added to a service's class must reach its containers (or be listed above)."""
    services = load(BASE)["services"]
    for name, kind in SERVICE_KIND.items():
        if kind is None:
            continue
        env = set(services[name]["environment"])
        missing = setting_names(kind) - env - set(NOT_FROM_DOTENV)
        assert not missing, f"docker-compose.yml: {name} never gets {sorted(missing)}"
    for var, why in NOT_FROM_DOTENV.items():
        assert var in all_setting_names(), f"{var} ({why}) is no longer a setting"
        kind = all_setting_names()[var]
        for name in (n for n, k in SERVICE_KIND.items() if k == kind):
            assert var not in services[name]["environment"]


def test_deploy_compose_wires_the_services_together() -> None:
    services = interpolate(load(BASE), {})["services"]
    for role in MODEL_ROLES:
        env = services[role]["environment"]
        assert env["MODEL_SERVER_ROLE"] == role
        assert env["MODEL_SERVER_HOST"] == "0.0.0.0"
        assert env["MODEL_SERVER_MODEL"] == "smollm2-135m-instruct"
        port = env["MODEL_SERVER_PORT"]
        assert services["gateway"]["environment"][f"GATEWAY_{role.upper()}_URL"] == (
            f"http://{role}:{port}"
        )
        assert f"http://127.0.0.1:{port}/health" in services[role]["healthcheck"]["test"]
    worker = services["worker"]["environment"]
    assert worker["WORKER_AGENT_URL"] == services["gateway"]["environment"]["GATEWAY_AGENT_URL"]
    assert worker["WORKER_SCORER_URL"] == services["gateway"]["environment"]["GATEWAY_SCORER_URL"]
    assert worker["WORKER_REDIS_URL"] == "redis://redis:6379/0"
    tokens = {
        services[n]["environment"][k]
        for n, k in [
            ("agent", "MODEL_SERVER_INTERNAL_TOKEN"),
            ("gateway", "GATEWAY_INTERNAL_TOKEN"),
            ("worker", "WORKER_INTERNAL_TOKEN"),
        ]
    }
    assert tokens == {""}  # one variable feeds all three; unset by default
    raw = load(BASE)["services"]
    assert {raw[n]["environment"][f"{p}_INTERNAL_TOKEN"] for n, p in [
        ("scorer", "MODEL_SERVER"), ("gateway", "GATEWAY"), ("worker", "WORKER")
    ]} == {"${INTERNAL_TOKEN:-}"}  # fmt: skip
    assert worker["WORKER_ARTIFACTS_DIR"] in {
        v.split(":")[1] for v in services["worker"]["volumes"] if v.startswith("artifacts:")
    }


@pytest.mark.parametrize("gpu_file", [False, True], ids=["cpu", "gpu"])
def test_deploy_compose_model_services_read_the_artifacts_where_the_worker_writes(
    gpu_file: bool,
) -> None:
    """The registry's cards hold the worker's paths of trained models: the model services
    mount the same volume read-only at the same path and look for the registry there."""
    base = interpolate(load(BASE), {})["services"]
    gpu = interpolate(load(GPU), GPU_ENV)["services"] if gpu_file else {}
    worker_dir = base["worker"]["environment"]["WORKER_ARTIFACTS_DIR"]
    assert f"artifacts:{worker_dir}" in base["worker"]["volumes"]
    for role in MODEL_ROLES:
        # The GPU file is layered over the base: what it does not set comes from there.
        environment = base[role]["environment"] | gpu.get(role, {}).get("environment", {})
        volumes = gpu.get(role, {}).get("volumes") or base[role]["volumes"]
        assert environment["MODEL_SERVER_ARTIFACTS_DIR"] == worker_dir
        assert f"artifacts:{worker_dir}:ro" in volumes


def test_deploy_compose_publishes_only_the_gateway_on_loopback() -> None:
    services = interpolate(load(BASE), {})["services"]
    published = {n for n, s in services.items() if s.get("ports")}
    assert published == {"gateway"}
    assert services["gateway"]["ports"] == ["127.0.0.1:8100:8100"]
    assert all(not s.get("network_mode") for s in services.values())
    assert not load(GPU)["services"].get("gateway")


@pytest.mark.parametrize("path", [BASE, GPU], ids=lambda p: p.name)
def test_deploy_compose_every_service_is_health_checked_and_waited_for(path: Path) -> None:
    base = load(BASE)["services"]
    for name, service in load(path)["services"].items():
        check = service.get("healthcheck") or base[name].get("healthcheck")
        assert check and check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name}: no healthcheck"
        if SERVICE_KIND[name] in {"model-server", "gateway"}:
            assert any(str(t).endswith("/health") for t in check["test"])
        for dep, cond in (service.get("depends_on") or {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert base[dep].get("healthcheck")


def test_deploy_compose_images_are_pinned_to_the_project_version() -> None:
    version = project_version()
    for path in (BASE, GPU):
        for name, service in interpolate(load(path), GPU_ENV)["services"].items():
            if "image" not in service:
                continue
            image, _, tag = service["image"].rpartition(":")
            assert image and tag and tag != "latest", f"{name}: {service['image']}"
            assert re.match(r"\d+\.\d+", tag)
            if image.startswith("rationalyst/"):
                assert tag == version, f"{name}: {service['image']} != project {version}"
                assert service["build"]["dockerfile"] == (
                    f"docker/{image.removeprefix('rationalyst/')}.Dockerfile"
                )


def test_deploy_compose_redis_persists_the_queue() -> None:
    redis = load(BASE)["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "noeviction" in command
    assert "redis-data:/data" in redis["volumes"]
    assert set(load(BASE)["volumes"]) >= {"models", "artifacts", "redis-data"}


def test_deploy_compose_gpu_override_puts_model_roles_on_vllm_gpus() -> None:
    services = interpolate(load(GPU), GPU_ENV)["services"]
    for role in MODEL_ROLES:
        service = services[role]
        assert service["image"].startswith("rationalyst/model-server-gpu:")
        assert service["environment"]["MODEL_SERVER_ENGINE"] == "vllm"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device["device_ids"] == ["0"]
        assert float(service["environment"]["MODEL_SERVER_VLLM_GPU_MEMORY_UTILIZATION"]) < 0.34
        assert service["shm_size"]
    rationalyst = services["rationalyst"]["environment"]["MODEL_SERVER_MODEL"]
    assert rationalyst == GPU_ENV["RATIONALYST_MODEL"]
    assert services["agent"]["environment"]["MODEL_SERVER_MODEL"] == (
        "meta-llama/Meta-Llama-3-8B-Instruct"
    )
    assert services["worker"]["image"].startswith("rationalyst/worker-gpu:")


def test_deploy_compose_gpu_override_requires_the_rationale_model() -> None:
    with pytest.raises(MissingVariable, match="RATIONALYST_MODEL"):
        interpolate(load(GPU), {})
    interpolate(load(BASE), {})  # the CPU ensemble needs no variable at all


# --------------------------------------------------------------------------------------------
# .env.example

_LINE = re.compile(r"^#\s?([A-Z][A-Z0-9_]*)(=|: )(.*)$")


def env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(configurable NAME=value lines, wired `NAME: note` lines)."""
    configurable: dict[str, str] = {}
    wired: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        assert not re.match(r"^[A-Z][A-Z0-9_]*=", raw), f"uncommented: {raw!r} (keep defaults)"
        m = _LINE.match(raw)
        if m:
            target = configurable if m.group(2) == "=" else wired
            assert m.group(1) not in configurable | wired, f"{m.group(1)} listed twice"
            target[m.group(1)] = m.group(3)
    return configurable, wired


def compose_variables() -> dict[str, tuple[str | None, str]]:
    found = variables(load(GPU))
    found.update(variables(load(BASE)))  # the CPU file's defaults are the documented ones
    return found


def from_dotenv(var: str) -> bool:
    """Does a value of ``var`` in .env reach the container (passthrough or ${var...})?"""
    for service in load(BASE)["services"].values():
        env = service.get("environment") or {}
        if var in env and (env[var] is None or variables(env[var]).keys() == {var}):
            return True
    return False


def test_deploy_env_example_lists_every_setting_and_variable() -> None:
    configurable, wired = env_example()
    listed = set(configurable) | set(wired)
    missing = set(all_setting_names()) - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
    missing_vars = set(compose_variables()) - set(configurable)
    assert not missing_vars, f".env.example lacks the compose variables {sorted(missing_vars)}"
    for name in configurable:
        assert (
            name in all_setting_names()
            or name in compose_variables()
            or name in COMPOSE_CLI_VARS
            or name in OTHER_ENV
        ), f".env.example: {name} is read by nothing"


def test_deploy_env_example_marks_exactly_the_settings_compose_wires() -> None:
    configurable, wired = env_example()
    for name in configurable:
        if name in all_setting_names():
            assert from_dotenv(name), f"{name} is listed as configurable but compose ignores it"
    for name in wired:
        assert name in all_setting_names(), f"{name}: not a setting"
        assert not from_dotenv(name), f"{name} is read from .env: list it as `# {name}=...`"


def test_deploy_env_example_shows_the_real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    configurable, _ = env_example()
    compose_vars = compose_variables()
    for name, shown in configurable.items():
        if name in compose_vars:  # a compose variable: the default the compose file uses
            op, arg = compose_vars[name]
            if op in {":-", "-"}:
                assert shown == arg, f".env.example: {name}={shown}, compose defaults to {arg}"
            continue
        kind = all_setting_names().get(name)
        if kind is None:
            continue
        cls = settings_class(kind)
        field = name.removeprefix(cls.model_config["env_prefix"].upper()).lower()
        for var in list(os.environ):
            if var.startswith(cls.model_config["env_prefix"].upper()):
                monkeypatch.delenv(var)
        default = getattr(cls(), field)
        if shown != "":
            monkeypatch.setenv(name, shown)
        parsed = getattr(cls(), field)
        monkeypatch.delenv(name, raising=False)
        assert parsed == default, f".env.example: {name}={shown} but the default is {default!r}"


def test_deploy_compose_reward_service_is_optional_and_wired() -> None:
    """The reward service starts only with its profile, serves the reward role, and the
    gateway leaves it unconfigured unless .env names it."""
    services = interpolate(load(BASE), {})["services"]
    reward = services["reward"]
    assert reward["profiles"] == ["reward"]
    assert reward["environment"]["MODEL_SERVER_ROLE"] == "reward"
    assert reward["environment"]["MODEL_SERVER_ENGINE"] == "transformers"
    assert "artifacts:/artifacts:ro" in reward["volumes"]
    assert services["gateway"]["environment"]["GATEWAY_REWARD_URL"] is None
    assert "reward" not in services["gateway"]["depends_on"]
