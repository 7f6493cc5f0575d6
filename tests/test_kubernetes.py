"""Offline checks of the Kubernetes deployment (deploy/kubernetes): no cluster, no Docker, no GPU.

What `kubectl apply -k` on a real cluster would trip over is checked here instead:
  * every kustomization renders with `kubectl kustomize` (kustomize v2.0.3 of Debian's kubectl 1.20
    up to v5 of current kubectl);
  * every rendered object validates strictly (unknown fields are errors) against the Kubernetes API
    JSON schemas of the oldest and newest version that kubernetes-validate ships (K8S_VERSIONS); the
    ServiceMonitor custom resource against a schema of the fields this project uses;
  * checkov's Kubernetes policies pass, and each skipped check is one that fails without its skip;
  * the liveness command (the canary) passes on a real tritonserver serving the demo model, fails without one;
  * the pod runs what compose runs: the real entrypoints, given the rendered environment and
    arguments, build the tritonserver / bertqa / locust command lines that match the declared
    ports, probes and Services; images, environment and admin-key handling follow docker-compose.yml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertqa.server import free_ports
from test_compose import (
    CPU_OVERRIDE,
    EXPORT_ENTRYPOINT,
    LOCUST_ENTRYPOINT,
    PROMETHEUS_CONFIG,
    TRITON_ENTRYPOINT,
    TRITON_METRICS,
    _calls,
    _fake_command,
    _run,
    dockerignore_patterns,
    interpolate,
    is_dockerignored,
    load_yaml,
    make_repository,
    merge_compose,
)

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "kubernetes"
OVERLAYS = {"gpu": "overlays/gpu", "cpu": "overlays/cpu"}
KUSTOMIZATIONS = {**OVERLAYS, "monitoring": "monitoring", "loadtest": "loadtest", "checkpoint": "examples/checkpoint"}
ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"
# Oldest and newest API schemas of kubernetes-validate 1.37 (1.25: Pod Security admission is GA,
# policy/v1 and autoscaling/v2 exist).
K8S_VERSIONS = ("1.25.0", "1.37.0")
CANARY = ["python3", "-m", "bertqa.canary", "--url", "http://127.0.0.1:8000", "--timeout", "5"]
DOCS_HEADING = "## Kubernetes"

# monitoring.coreos.com/v1 ServiceMonitor is a custom resource: no schema in the Kubernetes API.
# This is the subset of the prometheus-operator API (ServiceMonitorSpec, Endpoint) that
# deploy/kubernetes uses, closed to other fields so that a misspelt one fails; extend it with a field
# when a manifest starts using one.
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
CUSTOM_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA}


# --- tools ------------------------------------------------------------------------------------


def _tool(path: str | None, name: str, how: str) -> str:
    """A tool make test installs: a missing one fails under CI (so it cannot silently pass), skips elsewhere."""
    if path and Path(path).is_file():
        return path
    message = f"{name} not found: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def kubectl() -> str:
    return _tool(os.environ.get("KUBECTL") or shutil.which("kubectl"), "kubectl",
                 "apt-get install kubernetes-client (.ci/run does this), or set KUBECTL")


def checkov() -> str:
    # `make test` installs it into a venv of its own (its pins would downgrade the project's packages).
    candidates = [os.environ.get("CHECKOV"), str(Path(sys.prefix) / "checkov" / "bin" / "checkov"), shutil.which("checkov")]
    return _tool(next((c for c in candidates if c and Path(c).is_file()), None), "checkov",
                 "run `make test` (it installs checkov into .venv/checkov), or set CHECKOV")


def render(directory: Path) -> list[dict]:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / path) for name, path in KUSTOMIZATIONS.items()}


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str, init: bool = False) -> dict:
    (match,) = [c for c in pod_spec(workload)["initContainers" if init else "containers"] if c["name"] == name]
    return match


def triton(rendered, overlay: str = "gpu") -> dict:
    return container(find(rendered[overlay], "Deployment", "triton"), "triton")


def export_init(rendered, overlay: str = "gpu") -> dict:
    return container(find(rendered[overlay], "Deployment", "triton"), "export", init=True)


def literal_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def env_names(c: dict) -> set[str]:
    return {e["name"] for e in c.get("env", [])}


def named_ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(load_yaml(COMPOSE))


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return interpolate(merge_compose(load_yaml(COMPOSE), load_yaml(CPU_OVERRIDE)))


def size_bytes(size) -> int:
    """compose ("1g", "512m") and Kubernetes ("1Gi", "512Mi") sizes in bytes."""
    number, unit = re.fullmatch(r"(\d+)\s*([kmgt]?)i?b?", str(size).lower()).groups()
    return int(number) * 1024 ** " kmgt".index(unit or " ")


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    return sum(float(n) * units[u] for n, u in parts)


# --- rendering and schema validation ------------------------------------------------------------


def test_every_kustomization_renders(rendered):
    kinds = {name: sorted({o["kind"] for o in objects}) for name, objects in rendered.items()}
    for overlay in (*OVERLAYS, "checkpoint"):
        assert kinds[overlay] == ["Deployment", "Namespace", "NetworkPolicy", "PodDisruptionBudget",
                                  "Service", "ServiceAccount"]
    assert kinds["monitoring"] == ["HorizontalPodAutoscaler", "ServiceMonitor"]
    assert kinds["loadtest"] == ["Job", "NetworkPolicy", "Service"]
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == "bertqa", obj["metadata"]["name"]


def test_every_manifest_file_belongs_to_a_kustomization():
    """A manifest nobody renders is never validated nor applied."""
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for key in ("resources", "bases", "patchesStrategicMerge"):
            listed |= {(kustomization.parent / entry).resolve() for entry in spec.get(key) or []}
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p != ADAPTER_VALUES}
    assert manifests - listed == set()


def validate(obj: dict, version: str) -> None:
    import jsonschema
    import kubernetes_validate

    custom = CUSTOM_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if custom:
        jsonschema.validate(obj, custom)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_api_schema(rendered, version):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")
    problems = []
    for name, objects in rendered.items():
        for obj in objects:
            try:
                validate(obj, version)
            except Exception as err:  # noqa: BLE001 - report every object, not the first
                problems.append(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {str(err)[:400]}")
    assert problems == []


def test_schema_validation_rejects_broken_objects(rendered):
    """The validators are not no-ops: a misspelt field, a wrong type, a CRD typo all fail."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a dev dependency")
    deployment = json.loads(json.dumps(find(rendered["gpu"], "Deployment", "triton")))
    misspelt = json.loads(json.dumps(deployment))
    probe = container(misspelt, "triton").pop("readinessProbe")
    container(misspelt, "triton")["readinesProbe"] = probe
    wrong_type = json.loads(json.dumps(deployment))
    container(wrong_type, "triton")["ports"][0]["containerPort"] = "eight thousand"
    monitor = json.loads(json.dumps(find(rendered["monitoring"], "ServiceMonitor", "triton")))
    monitor["spec"]["endpoints"][0]["intervall"] = monitor["spec"]["endpoints"][0].pop("interval")
    for broken in (misspelt, wrong_type, monitor):
        with pytest.raises(Exception):
            validate(broken, K8S_VERSIONS[-1])


# --- security scan ------------------------------------------------------------------------------

SKIP_ANNOTATION = re.compile(r"^checkov\.io/skip\d+$")


def without_skips(objects: list[dict]) -> list[dict]:
    copies = json.loads(json.dumps(objects))
    for obj in copies:
        annotations = obj["metadata"].get("annotations") or {}
        for key in [k for k in annotations if SKIP_ANNOTATION.match(k)]:
            del annotations[key]
    return copies


INSECURE_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "insecure", "namespace": "bertqa"},
    "spec": {"containers": [{"name": "c", "image": "busybox:latest",
                             "securityContext": {"privileged": True, "runAsUser": 0}}]},
}


@pytest.fixture(scope="module")
def checkov_results(rendered, tmp_path_factory) -> dict[str, dict[str, list]]:
    """One checkov run over three folders: the manifests as rendered, the same without their skip
    annotations, and a deliberately insecure pod. {folder: {"failed"|"skipped": [(check, resource)]}}."""
    binary = checkov()
    root = tmp_path_factory.mktemp("checkov")
    for folder, transform in (("as-rendered", lambda o: o), ("without-skips", without_skips)):
        (root / folder).mkdir()
        for name, objects in rendered.items():
            (root / folder / f"{name}.yaml").write_text(yaml.safe_dump_all(transform(objects), sort_keys=False))
    (root / "insecure").mkdir()
    (root / "insecure" / "pod.yaml").write_text(yaml.safe_dump(INSECURE_POD))
    # --skip-download: no call to the vendor's platform (offline; also no telemetry).
    result = subprocess.run([binary, "--directory", str(root), "--framework", "kubernetes", "--skip-download",
                             "--output", "json"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    report = report if isinstance(report, dict) else next(r for r in report if r["check_type"] == "kubernetes")
    grouped: dict[str, dict[str, list]] = {}
    for outcome in ("failed", "skipped", "passed"):
        for check in report["results"].get(f"{outcome}_checks", []):
            folder = check["file_path"].strip("/").split("/")[0]
            entry = (check["check_id"], check["resource"], Path(check["file_path"]).stem)
            grouped.setdefault(folder, {}).setdefault(outcome, []).append(entry)
    return grouped


def test_checkov_passes_every_kustomization(checkov_results):
    results = checkov_results["as-rendered"]
    assert results.get("failed", []) == []
    assert len(results["passed"]) > 100, "checkov ran its Kubernetes policies"


def test_every_checkov_skip_is_needed_and_justified(checkov_results, rendered):
    skipped = sorted(set(checkov_results["as-rendered"].get("skipped", [])))
    assert sorted(set(checkov_results["without-skips"].get("failed", []))) == skipped
    for objects in rendered.values():
        for obj in objects:
            for key, value in (obj["metadata"].get("annotations") or {}).items():
                if SKIP_ANNOTATION.match(key):
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) >= 30, (key, value)


def test_checkov_flags_an_insecure_pod(checkov_results):
    failed = {check for check, _, _ in checkov_results["insecure"]["failed"]}
    # privileged, root, latest tag, no probes, no limits, no read-only root filesystem
    assert {"CKV_K8S_16", "CKV_K8S_23", "CKV_K8S_14", "CKV_K8S_8", "CKV_K8S_11", "CKV_K8S_22"} <= failed


# --- the Triton pod against docker-compose.yml and the entrypoint -------------------------------


def image_repository(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def test_images_are_the_compose_images_at_a_pinned_tag(rendered, compose):
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    services = compose["services"]
    pairs = [(triton(rendered, o)["image"], services["triton"]["image"]) for o in OVERLAYS]
    pairs += [(export_init(rendered, o)["image"], services["export"]["image"]) for o in OVERLAYS]
    pairs += [(container(find(rendered["loadtest"], "Job", job), "locust")["image"], services[svc]["image"])
              for job, svc in (("locust-master", "locust-master"), ("locust-worker", "locust-worker"))]
    for image, compose_image in pairs:
        assert image_repository(image) == image_repository(compose_image)
        assert image.endswith(f":{version}"), f"{image}: tag it with the project version, not latest"


def test_triton_ports_match_compose_and_entrypoint(rendered, compose):
    ports = named_ports(triton(rendered))
    compose_ports = sorted(int(str(p).rsplit(":", 1)[1]) for p in compose["services"]["triton"]["ports"])
    assert sorted(ports.values()) == compose_ports
    entrypoint = TRITON_ENTRYPOINT.read_text()
    for name, flag in (("http", "--http-port"), ("grpc", "--grpc-port"), ("metrics", "--metrics-port")):
        assert f"{flag}={ports[name]}" in entrypoint


def test_services_reach_the_declared_ports(rendered):
    objects = rendered["gpu"]
    deployment = find(objects, "Deployment", "triton")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = named_ports(container(deployment, "triton"))
    expected = {"triton": {"http", "grpc"}, "triton-grpc": {"grpc"}, "triton-metrics": {"metrics"}}
    for name, port_names in expected.items():
        service = find(objects, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert {p["targetPort"] for p in service["spec"]["ports"]} == port_names, name
        for port in service["spec"]["ports"]:
            assert port["port"] == ports[port["targetPort"]], "Service port = container port, as in compose"
    assert find(objects, "Service", "triton-grpc")["spec"]["clusterIP"] == "None", "headless: per-pod DNS"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = find(objects, "PodDisruptionBudget", "triton")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_network_policy_opens_inference_to_all_and_metrics_to_the_cluster(rendered):
    """compose publishes 8000/8001 on TRITON_BIND_ADDRESS and metrics on loopback only."""
    objects = rendered["gpu"]
    labels = find(objects, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    policy = find(objects, "NetworkPolicy", "triton")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    rules = {port["port"]: rule.get("from") for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert set(rules) == set(named_ports(triton(rendered)))
    assert rules["http"] is None and rules["grpc"] is None, "any client"
    assert rules["metrics"] == [{"namespaceSelector": {}}], "pods of the cluster (Prometheus), nobody outside"
    locust = find(rendered["loadtest"], "NetworkPolicy", "locust")
    (rule,) = locust["spec"]["ingress"]
    assert rule["ports"] == [{"port": "master"}]
    assert rule["from"][0]["podSelector"]["matchLabels"] == \
        locust_job(rendered, "locust-worker")["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_limit_leaves_room_beside_dev_shm(rendered, overlay):
    """A memory-backed emptyDir is charged to the container: /dev/shm must fit well inside the limit."""
    pod = pod_spec(find(rendered[overlay], "Deployment", "triton"))
    shm = next(v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
    limit = triton(rendered, overlay)["resources"]["limits"]["memory"]
    assert size_bytes(limit) >= 4 * size_bytes(shm["emptyDir"]["sizeLimit"]), (limit, shm)


def test_probes_match_the_compose_health_check(rendered, compose):
    """compose has one health check: readiness or the canary. The probe here that runs the same
    check runs it on the same schedule; the startup probe allows compose's start period."""
    healthcheck = compose["services"]["triton"]["healthcheck"]
    command = " ".join(map(str, healthcheck["test"]))
    spec = triton(rendered)
    ports = named_ports(spec)
    for probe in (spec["readinessProbe"], spec["startupProbe"]):
        assert probe["httpGet"]["path"] == "/v2/health/ready"
        assert ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"]) == ports["http"]
    if "bertqa.canary" in command:
        canary_options = command.split("bertqa.canary", 1)[1].replace("localhost", "127.0.0.1").split()
        assert canary_options == CANARY[3:], command
        counterpart = spec["livenessProbe"]
    else:
        match = re.search(r"https?://[^/'\"]+:(\d+)(/v2/health/\w+)", command)
        assert match and (int(match.group(1)), match.group(2)) == (ports["http"], "/v2/health/ready"), command
        counterpart = spec["readinessProbe"]
    assert counterpart["periodSeconds"] == seconds(healthcheck["interval"])
    assert counterpart["timeoutSeconds"] == seconds(healthcheck["timeout"])
    assert counterpart["failureThreshold"] == healthcheck["retries"]
    startup = spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= seconds(healthcheck["start_period"])


def test_liveness_runs_the_canary_inference(rendered):
    spec = triton(rendered)
    liveness = spec["livenessProbe"]
    assert liveness["exec"]["command"] == CANARY
    url = CANARY[CANARY.index("--url") + 1]
    assert url.rsplit(":", 1)[1] == str(named_ports(spec)["http"]), "the canary asks this container's HTTP port"
    assert liveness["timeoutSeconds"] > float(CANARY[CANARY.index("--timeout") + 1]), "kubelet must not cut it short"
    assert liveness["failureThreshold"] >= 2, "one slow answer under load is no reason to restart"


def liveness_against(url: str) -> subprocess.CompletedProcess:
    """The liveness command as the kubelet runs it, with this interpreter as python3 and another URL."""
    command = [sys.executable, *CANARY[1:]]
    command[command.index("--url") + 1] = url
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_liveness_command_passes_on_a_healthy_server_and_fails_without_one(triton_server):
    result = liveness_against(f"http://{triton_server.http_url}")
    assert result.returncode == 0, result.stderr
    (closed,) = free_ports(1)
    result = liveness_against(f"http://127.0.0.1:{closed}")
    assert result.returncode == 1 and result.stderr.startswith("canary failed"), result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_environment_matches_compose(rendered, compose, compose_cpu, overlay):
    service = (compose if overlay == "gpu" else compose_cpu)["services"]["triton"]
    spec = triton(rendered, overlay)
    assert env_names(spec) == set(service["environment"])
    defaults = {k: str(v) for k, v in service["environment"].items() if k != "TRITON_ADMIN_KEY"}
    assert literal_env(spec) == defaults
    scripts = TRITON_ENTRYPOINT.read_text() + (TRITON_ENTRYPOINT.parent / "select_models.py").read_text()
    for name in env_names(spec):
        assert name in scripts, f"{name} is set but the Triton entrypoint never reads it"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_export_init_container_matches_the_compose_export_service(rendered, compose, overlay):
    service = compose["services"]["export"]
    spec = export_init(rendered, overlay)
    assert literal_env(spec) == {k: str(v) for k, v in service["environment"].items()}
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == "models"]
    (compose_target,) = [v.split(":")[1] for v in service["volumes"] if v.startswith("./model_repository:")]
    assert mount["mountPath"] == compose_target


def test_admin_key_comes_from_an_optional_secret(rendered):
    for overlay in OVERLAYS:
        (entry,) = [e for e in triton(rendered, overlay)["env"] if e["name"] == "TRITON_ADMIN_KEY"]
        assert "value" not in entry, "never a literal key in a manifest"
        reference = entry["valueFrom"]["secretKeyRef"]
        # Optional: without the Secret the entrypoint picks a random key, i.e. admin APIs closed (as compose).
        assert reference == {"name": "triton-admin-key", "key": "TRITON_ADMIN_KEY", "optional": True}
    for objects in rendered.values():
        assert not [o for o in objects if o["kind"] == "Secret"], "the key is created by the operator, not committed"
    entrypoint = TRITON_ENTRYPOINT.read_text()
    assert 'if [ -z "${TRITON_ADMIN_KEY:-}" ]' in entrypoint and "secrets.token_urlsafe" in entrypoint


def run_triton_entrypoint(tmp_path: Path, spec: dict, secret: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """docker/triton/entrypoint.sh with the container's environment, a fake tritonserver recording its arguments."""
    if not (tmp_path / "bin").is_dir():
        (tmp_path / "bin").mkdir()
        _fake_command(tmp_path / "bin", "tritonserver")
        make_repository(tmp_path)
    env = literal_env(spec)
    if secret is not None:
        env["TRITON_ADMIN_KEY"] = secret
    # In the pod the repository is the entrypoint's default, /models (checked by the caller).
    env["TRITON_MODEL_REPOSITORY"] = str(tmp_path / "model_repository")
    result = _run(TRITON_ENTRYPOINT, tmp_path, env)
    calls = [c for c in _calls(tmp_path / "calls.log") if c[0] == "tritonserver"]
    return result, (calls[-1][1:] if calls else [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoint_given_the_pod_environment_serves_the_declared_ports(rendered, tmp_path, overlay):
    deployment = find(rendered[overlay], "Deployment", "triton")
    spec = container(deployment, "triton")
    result, args = run_triton_entrypoint(tmp_path, spec, secret=None)
    assert result.returncode == 0, result.stderr
    ports = named_ports(spec)
    for name, flag in (("http", "--http-port"), ("grpc", "--grpc-port"), ("metrics", "--metrics-port")):
        assert f"{flag}={ports[name]}" in args
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True
    assert re.search(r'repository="\$\{TRITON_MODEL_REPOSITORY:-' + re.escape(mount["mountPath"]) + r'\}"',
                     TRITON_ENTRYPOINT.read_text()), "the entrypoint's default repository is the mounted one"
    (exit_timeout,) = [int(a.split("=", 1)[1]) for a in args if a.startswith("--exit-timeout-secs=")]
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > exit_timeout, "in-flight requests finish first"
    assert ("--allow-gpu-metrics=false" in args) == (overlay == "cpu")
    # Without the Secret: a random key, admin APIs closed; with it: that key.
    assert "TRITON_ADMIN_KEY not set" in result.stderr
    result, args = run_triton_entrypoint(tmp_path, spec, secret="k8s-secret-0123456789abcdef")
    assert "--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key=k8s-secret-0123456789abcdef" in args


def test_triton_pod_mirrors_the_compose_runtime_settings(rendered, compose):
    service = compose["services"]["triton"]
    deployment = find(rendered["gpu"], "Deployment", "triton")
    pod = pod_spec(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in triton(rendered)["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert size_bytes(shm["sizeLimit"]) == size_bytes(service["shm_size"]), "compose shm_size"
    assert pod["terminationGracePeriodSeconds"] == seconds(service["stop_grace_period"])
    assert pod["shareProcessNamespace"] is (service.get("init") is True), "compose init: true = a reaping PID 1"
    dockerfile_user = re.search(r"^USER (\d+):(\d+)", (ROOT / "docker" / "triton.Dockerfile").read_text(), re.MULTILINE)
    security = pod["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == tuple(map(int, dockerfile_user.groups()))
    assert security["runAsNonRoot"] is True


# Volume types the "restricted" Pod Security Standard admits (the bertqa namespace enforces it).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pod_templates(rendered) -> list[tuple[str, dict]]:
    return [(f"{name}: {o['kind']}/{o['metadata']['name']}", pod_spec(o))
            for name, objects in rendered.items() for o in objects if o["kind"] in ("Deployment", "Job")]


def test_every_pod_meets_the_restricted_pod_security_standard(rendered):
    """Otherwise the namespace's pod-security.kubernetes.io/enforce: restricted label rejects the pod."""
    (namespace,) = [o for o in rendered["gpu"] if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for where, pod in pod_templates(rendered):
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), where
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False, where
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, (where, volume)
        for c in pod.get("initContainers", []) + pod["containers"]:
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert "add" not in context["capabilities"] and not context.get("privileged"), (where, c["name"])
            # Read-only root filesystem everywhere; /tmp is the writable scratch space.
            assert context["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), (where, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (where, c["name"], kind)


def test_gpu_overlay_requests_a_gpu_and_cpu_overlay_none(rendered):
    for spec in (triton(rendered, "gpu"), export_init(rendered, "gpu")):
        assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" in json.dumps(pod_spec(find(rendered["gpu"], "Deployment", "triton"))["tolerations"])
    cpu_pod = pod_spec(find(rendered["cpu"], "Deployment", "triton"))
    assert "nvidia.com/gpu" not in json.dumps(cpu_pod)
    for spec in cpu_pod["initContainers"] + cpu_pod["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][kind]), (spec["name"], kind)
    assert literal_env(triton(rendered, "cpu"))["BERTQA_GPU"] == "0"


def test_export_init_container_runs_the_export_entrypoint_over_the_committed_repository(rendered, tmp_path):
    """The init container copies the configs the export image carries, then runs its entrypoint."""
    spec = export_init(rendered)
    script = spec["args"][-1]
    source, target = re.fullmatch(r"cp -R (\S+)/\. (\S+)/ && exec bertqa-export", script).groups()
    dockerfile = (ROOT / "docker" / "export.Dockerfile").read_text()
    (copied_to,) = re.findall(r"^COPY \. (\S+)$", dockerfile, re.MULTILINE)
    assert source == f"{copied_to}/model_repository"
    assert "/opt/bertqa/bin/bertqa-export" in dockerfile and "PATH=/opt/bertqa/bin:" in dockerfile
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == "models"]
    assert target == mount["mountPath"] == "/models"
    # What the image carries: every committed repository file, no exported weights.
    patterns = dockerignore_patterns()
    committed = subprocess.run(["git", "ls-files", "model_repository"], capture_output=True, text=True, cwd=ROOT,
                               check=True).stdout.split()
    assert committed and not [f for f in committed if is_dockerignored(f, patterns)]
    # Whatever .gitignore keeps out of git as exported output stays out of the images too.
    exported = [line.replace("[0-9]*", "1").replace("*", "x") for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.startswith("model_repository/")]
    assert "model_repository/x/1/x.onnx" in exported
    assert [path for path in exported if not is_dockerignored(path, patterns)] == []
    # The entrypoint with the container's environment: no checkpoint -> the demo into the mounted repository.
    (tmp_path / "bin").mkdir()
    _fake_command(tmp_path / "bin", "bertqa")
    result = _run(EXPORT_ENTRYPOINT, tmp_path, literal_env(spec))
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path / "calls.log") == [["bertqa", "install-demo", "--repository", mount["mountPath"]]]


def test_checkpoint_example_exports_the_mounted_checkpoint(rendered, tmp_path):
    spec = export_init(rendered, "checkpoint")
    assert literal_env(spec)["CHECKPOINT"], "a non-empty CHECKPOINT selects export over the demo"
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == "checkpoint"]
    assert mount["readOnly"] is True
    default = re.search(r'checkpoint_dir="\$\{CHECKPOINT_DIR:-(\S+)\}"', EXPORT_ENTRYPOINT.read_text()).group(1)
    assert mount["mountPath"] == default
    (tmp_path / "bin").mkdir()
    _fake_command(tmp_path / "bin", "bertqa")
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    result = _run(EXPORT_ENTRYPOINT, tmp_path, {**literal_env(spec), "CHECKPOINT_DIR": str(checkpoint)})
    assert result.returncode == 0, result.stderr
    formats = [c[c.index("--format") + 1] for c in _calls(tmp_path / "calls.log")]
    assert formats == ["onnx", "onnx-int8"], "no GPU here: auto = ONNX and int8 ONNX"
    models = [m["mountPath"] for m in spec["volumeMounts"] if m["name"] == "models"]
    for call in _calls(tmp_path / "calls.log"):
        assert call[:2] == ["bertqa", "export"] and call[call.index("--repository") + 1] == models[0]


# --- monitoring: ServiceMonitor, adapter rule, HPA ----------------------------------------------


def test_service_monitor_scrapes_like_the_compose_prometheus(rendered):
    monitor = find(rendered["monitoring"], "ServiceMonitor", "triton")
    service = find(rendered["gpu"], "Service", "triton-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "triton")
    assert endpoint["path"] == job.get("metrics_path", "/metrics")
    assert endpoint["interval"] == prometheus["global"]["scrape_interval"]
    annotations = find(rendered["gpu"], "Deployment", "triton")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == named_ports(triton(rendered))["metrics"]
    assert annotations["prometheus.io/path"] == endpoint["path"]


def test_autoscaler_uses_the_adapter_metric_on_triton_metrics(rendered):
    hpa = find(rendered["monitoring"], "HorizontalPodAutoscaler", "triton")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = find(rendered["gpu"], "Deployment", "triton")
    assert (target["kind"], target["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    query = rule["metricsQuery"]
    used = set(re.findall(r"\bnv_[a-z0-9_]+", query + rule["seriesQuery"]))
    assert used == {"nv_inference_queue_duration_us", "nv_inference_request_success"} and used <= TRITON_METRICS
    for counter in used:
        assert f"rate({counter}{{<<.LabelMatchers>>}}" in query, f"{counter} is a counter: rate() it per pod"
    for opening, closing in ("()", "[]", "{}"):
        assert query.count(opening) == query.count(closing)
    assert {"namespace", "pod"} == set(rule["resources"]["overrides"]), "per-pod series for a Pods metric"
    # The HPA text documents the same query.
    assert "nv_inference_queue_duration_us" in (K8S / "monitoring" / "horizontalpodautoscaler.yaml").read_text()


def adapter_query(rule: dict, group_by: str = "namespace, pod") -> str:
    """The rule's query as prometheus-adapter sends it for one pod of the HPA."""
    matchers = 'namespace="bertqa",pod="triton-0"'
    return rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by)


def test_autoscaler_query_is_valid_promql_over_triton_metrics():
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is a dev dependency")
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    expression = promql_parser.parse(adapter_query(rule))
    selectors = []
    promql_parser.walk(expression, lambda node: selectors.append(node)
                       if isinstance(node, promql_parser.VectorSelector) else None)
    assert {s.name for s in selectors} == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    assert {s.name for s in selectors} <= TRITON_METRICS
    # The query documented in the HPA manifest is the same expression without the adapter's templating.
    documented = [line[1:] for line in (K8S / "monitoring" / "horizontalpodautoscaler.yaml").read_text().splitlines()
                  if line.startswith("#   ")]
    (in_readme,) = re.findall(r"```promql\n(.*?)```", (K8S / "README.md").read_text(), re.DOTALL)
    plain = promql_parser.parse(re.sub(r"\{[^}]*\}", "", adapter_query(rule))).prettify()
    for text in (" ".join(documented), in_readme):
        assert promql_parser.parse(text).prettify() == plain, text
    with pytest.raises(ValueError):
        promql_parser.parse(adapter_query(rule).replace("[1m]", ""))  # rate() of an instant vector


# --- load test Jobs -----------------------------------------------------------------------------


def locust_job(rendered, name: str) -> dict:
    return find(rendered["loadtest"], "Job", name)


def test_locust_jobs_match_the_compose_loadtest_profile(rendered, compose):
    master = container(locust_job(rendered, "locust-master"), "locust")
    worker = container(locust_job(rendered, "locust-worker"), "locust")
    services = compose["services"]
    assert env_names(master) == set(services["locust-master"]["environment"])
    assert env_names(worker) == set(services["locust-worker"]["environment"])
    # Same target URL: the Service is named like the compose service and listens on the same port.
    assert literal_env(master)["LOCUST_HOST"] == services["locust-master"]["environment"]["LOCUST_HOST"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", literal_env(master)["LOCUST_HOST"]).groups()
    service = find(rendered["gpu"], "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert literal_env(master)["LOADTEST_HEADLESS"] == "true", "a Job has to end by itself"
    assert seconds(literal_env(master)["LOADTEST_RUN_TIME"]) < locust_job(rendered, "locust-master")["spec"]["activeDeadlineSeconds"]


def test_locust_workers_find_the_master(rendered):
    master_job, worker_job = locust_job(rendered, "locust-master"), locust_job(rendered, "locust-worker")
    master, worker = container(master_job, "locust"), container(worker_job, "locust")
    master_host = worker["args"][worker["args"].index("--master-host") + 1]
    service = find(rendered["loadtest"], "Service", master_host)
    assert service["spec"]["selector"].items() <= master_job["spec"]["template"]["metadata"]["labels"].items()
    assert not service["spec"]["selector"].items() <= worker_job["spec"]["template"]["metadata"]["labels"].items()
    # Locust's default --master-port, which neither side overrides.
    assert [p["port"] for p in service["spec"]["ports"]] == [named_ports(master)["master"]] == [5557]
    expected = int(literal_env(master)["LOCUST_EXPECT_WORKERS"])
    assert worker_job["spec"]["parallelism"] == worker_job["spec"]["completions"] == expected
    for job in (master_job, worker_job):
        # Service links would put LOCUST_MASTER_PORT=tcp://... into the pods: locust reads it as --master-port.
        assert pod_spec(job)["enableServiceLinks"] is False


def test_locust_entrypoint_given_the_job_environment(rendered, tmp_path):
    (tmp_path / "bin").mkdir()
    _fake_command(tmp_path / "bin", "locust")
    master = container(locust_job(rendered, "locust-master"), "locust")
    worker = container(locust_job(rendered, "locust-worker"), "locust")
    for spec in (master, worker):
        assert _run(LOCUST_ENTRYPOINT, tmp_path, literal_env(spec), tuple(spec["args"])).returncode == 0
    master_call, worker_call = [c[1:] for c in _calls(tmp_path / "calls.log")]
    locustfile = "/opt/bertqa/loadtest/locustfile.py"
    assert "cp -r /tmp/src/loadtest /opt/bertqa/loadtest" in (ROOT / "docker" / "locust.Dockerfile").read_text()
    for call in (master_call, worker_call):
        assert call[:2] == ["-f", locustfile]
        assert call[call.index("--model") + 1] == "bert_qa" and call[call.index("--protocol") + 1] == "http-json"
    assert "--master" in master_call and "--headless" in master_call
    assert master_call[master_call.index("--run-time") + 1] == literal_env(master)["LOADTEST_RUN_TIME"]
    assert "--worker" in worker_call and "--headless" not in worker_call


# --- README ---------------------------------------------------------------------------------------


def docs_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert f"\n{DOCS_HEADING}\n" in text, f"README.md lacks '{DOCS_HEADING}'"
    section = text[text.index(f"\n{DOCS_HEADING}\n") + 1:]
    following = re.search(r"^## (?!#)", section[len(DOCS_HEADING):], re.MULTILINE)
    return section[: len(DOCS_HEADING) + following.start()] if following else section


def test_readme_section_applies_each_kustomization_and_names_real_paths():
    section = docs_section()
    applied = set(re.findall(r"kubectl (?:apply|delete) -k (\S+)", section))
    assert {f"deploy/kubernetes/{KUSTOMIZATIONS[name]}" for name in (*OVERLAYS, "monitoring", "loadtest")} <= applied
    for path in re.findall(r"(deploy/kubernetes/[\w./-]+)", section):
        assert (ROOT / path.rstrip(".")).exists(), path
    for word in ("scale", "GPU", "HPA"):
        assert word in section
