"""Offline checks of the docker compose deployment: no Docker engine, no GPU, no network.

What a `docker compose up` on a GPU host would trip over is checked here instead: the compose
files validate (Debian's docker-compose 1.29.2), Dockerfiles parse and copy files that exist in the
build context, mounted paths exist, the Triton image is the release of the embedded server, the
entrypoints build the tritonserver / bertqa / locust command lines they should, the admin-API
lock-down works on a real tritonserver 2.51, the dashboard only queries metrics Triton exports,
and the README section matches the compose file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bertqa.server import free_ports

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency (pip install pyyaml)")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CPU_OVERRIDE = ROOT / "docker-compose.cpu.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCS_HEADING = "## Deploying with docker compose"
TRITON_ENTRYPOINT = ROOT / "docker" / "triton" / "entrypoint.sh"
EXPORT_ENTRYPOINT = ROOT / "docker" / "export" / "entrypoint.sh"
LOCUST_ENTRYPOINT = ROOT / "docker" / "locust" / "entrypoint.sh"
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCE = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDER = ROOT / "docker" / "grafana" / "provisioning" / "dashboards" / "bertqa.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "bertqa-triton.json"

# Metric families of Triton 2.51 (docs/user_guide/metrics.md of triton-inference-server/server).
# The non-GPU ones are also checked against a live embedded tritonserver below.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
    "nv_pinned_memory_pool_total_bytes",
    "nv_pinned_memory_pool_used_bytes",
}
# Exported only where DCGM sees a GPU, so they cannot be observed on this machine.
TRITON_GPU_METRICS = {
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}
# (NGC release, Triton version) pairs from NVIDIA's release notes / compatibility matrix, used to
# check the release <-> version rule below.
KNOWN_RELEASES = {"21.08": "2.13.0", "22.05": "2.22.0", "24.05": "2.46.0", "24.10": "2.51.0", "24.12": "2.53.0"}
# TensorRT inside the NGC Triton image of each release (PyPI spelling of tensorrt-cu12).
TENSORRT_OF_RELEASE = {"24.10": "10.5.0"}


# --- compose loading helpers ------------------------------------------------------------------


class _Reset:
    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


@dataclass
class _Override:
    value: object


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader plus Compose's `!reset` / `!override` merge tags."""


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
ComposeLoader.add_constructor("!override", lambda loader, node: _Override(_construct_any(loader, node)))


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def load_yaml(path: Path):
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def merge_compose(base, override, path: tuple = ()):
    """Compose's multi-file merge: mappings merge, sequences append, command/entrypoint/
    healthcheck.test replace, `!reset` removes, `!override` replaces."""
    if isinstance(override, _Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            elif key in base:
                merged[key] = merge_compose(base[key], value, path + (key,))
            else:
                merged[key] = merge_compose({}, value, path + (key,)) if isinstance(value, dict) else value
        return merged
    replaced = path[-1:] in (("command",), ("entrypoint",)) or path[-2:] == ("healthcheck", "test")
    if isinstance(base, list) and isinstance(override, list) and not replaced:
        return base + override
    return override


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose variable substitution (${VAR}, ${VAR:-default}, ${VAR-default}, $$) over a tree."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, default = match.group(1), match.group(2), match.group(3)
        if operator in (":-", ":?"):
            return env[name] if env.get(name) else (default if operator == ":-" else "")
        if operator in ("-", "?"):
            return env[name] if name in env else (default if operator == "-" else "")
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


def compose_variables(*paths: Path) -> set[str]:
    return {m.group(1) for p in paths for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", p.read_text())}


@pytest.fixture(scope="module")
def compose_raw() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def compose(compose_raw) -> dict:
    """docker-compose.yml with every variable at its default."""
    return interpolate(compose_raw)


@pytest.fixture(scope="module")
def compose_cpu() -> dict:
    return interpolate(merge_compose(load_yaml(COMPOSE), load_yaml(CPU_OVERRIDE)))


def profiles_of(compose: dict) -> dict[str, set[str]]:
    """{profile ('' = default): services}."""
    result: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for profile in service.get("profiles") or [""]:
            result.setdefault(profile, set()).add(name)
    return result


def gpu_reservations(service: dict) -> list[dict]:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if d.get("driver") == "nvidia" or "gpu" in (d.get("capabilities") or [])]


def parse_port(spec: str) -> tuple[str | None, int, int]:
    """'ip:host:container' / 'host:container' -> (ip, host port, container port)."""
    parts = str(spec).split(":")
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2])
    if len(parts) == 2:
        return None, int(parts[0]), int(parts[1])
    raise AssertionError(f"unsupported port spec {spec!r}")


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes") or []:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def host_path(source: str) -> Path:
    return (ROOT / source).resolve() if not source.startswith("/") else Path(source)


# --- docker-compose validation ------------------------------------------------------------------


def _docker_compose_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian package, 1.29.2) is not installed: apt-get install -y docker-compose")
    # Defaults only: no variable or COMPOSE_* setting of the calling shell may leak in.
    variables = compose_variables(COMPOSE, CPU_OVERRIDE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k not in variables}
    env["HOME"] = str(tmp_path)
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(path), "config", "-q"],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )


def test_compose_file_validates_with_docker_compose(tmp_path):
    result = _docker_compose_config(COMPOSE, tmp_path)
    assert result.returncode == 0, result.stderr


def test_cpu_override_merged_validates_with_docker_compose(tmp_path):
    # 1.29.2 cannot read `!reset` (Compose >= 2.24.4); validate the merge the override produces.
    merged = merge_compose(load_yaml(COMPOSE), load_yaml(CPU_OVERRIDE))
    path = tmp_path / "docker-compose.cpu-merged.yml"
    path.write_text(yaml.dump(merged, Dumper=_NoAliasDumper, sort_keys=False))
    result = _docker_compose_config(path, tmp_path)
    assert result.returncode == 0, result.stderr


def test_docker_compose_validation_rejects_a_broken_file(tmp_path):
    """The validator is not a no-op: a misspelt key in a copy of our file is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("shm_size:", "shm_sise:", 1))
    result = _docker_compose_config(broken, tmp_path)
    assert result.returncode != 0 and "shm_sise" in result.stderr


def test_merge_helper_follows_compose_rules():
    base = {"s": {"ports": ["1:1"], "command": ["a"], "deploy": {"r": {"devices": [{"driver": "nvidia"}]}}}}
    override = {"s": {"ports": ["2:2"], "command": ["b"], "deploy": {"r": {"devices": RESET}}}}
    assert merge_compose(base, override) == {"s": {"ports": ["1:1", "2:2"], "command": ["b"], "deploy": {"r": {}}}}


# --- services, profiles, GPU, ports -------------------------------------------------------------


def test_profiles_group_the_services(compose):
    assert profiles_of(compose) == {
        "": {"export", "triton"},
        "loadtest": {"locust-master", "locust-worker"},
        "monitoring": {"prometheus", "grafana"},
    }


def test_no_service_depends_on_a_service_it_cannot_see(compose):
    """A default-profile service depending on a profiled one makes the whole project invalid."""
    services = compose["services"]
    for name, service in services.items():
        own = set(service.get("profiles") or [])
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown {dependency}"
            theirs = set(services[dependency].get("profiles") or [])
            assert not theirs or theirs & own, f"{name} depends on {dependency}, hidden behind {theirs}"


def test_triton_waits_for_a_successful_export(compose):
    triton = compose["services"]["triton"]
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert compose["services"]["export"].get("restart", "no") == "no"
    assert compose["services"]["locust-master"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_triton_service_is_production_ready(compose):
    triton = compose["services"]["triton"]
    size = str(triton["shm_size"]).lower()
    factor = {"k": 2**10, "m": 2**20, "g": 2**30}.get(size[-1], 1)
    assert int(size.rstrip("kmgb")) * factor >= 2**30, "the Python backend needs a large /dev/shm"
    test = " ".join(map(str, triton["healthcheck"]["test"]))
    assert test == "CMD python3 -m bertqa.canary --url http://127.0.0.1:8000 --timeout 5", "the canary, not readiness alone"
    assert triton["restart"] in ("unless-stopped", "always")
    assert ("./model_repository", "/models") in [(s, t) for s, t in bind_mounts(triton)]
    assert any(v.endswith(":/models:ro") for v in triton["volumes"]), "Triton only reads the repository"


@pytest.mark.parametrize("name", ["export", "triton"])
def test_gpu_services_reserve_nvidia_gpus(compose, name):
    (device,) = gpu_reservations(compose["services"][name])
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_cpu_override_drops_every_gpu_reservation_and_nothing_else(compose, compose_cpu):
    assert {n for n, s in compose_cpu["services"].items() if gpu_reservations(s)} == set()
    for key in ("ports", "healthcheck", "volumes", "depends_on", "image", "shm_size"):
        assert compose_cpu["services"]["triton"][key] == compose["services"]["triton"][key], key
    assert compose_cpu["services"]["triton"]["environment"]["BERTQA_GPU"] == "0"


def test_triton_ports_are_configurable(compose_raw, compose):
    raw = compose_raw["services"]["triton"]["ports"]
    resolved = [parse_port(p) for p in compose["services"]["triton"]["ports"]]
    assert sorted(c for _, _, c in resolved) == [8000, 8001, 8002]
    for spec, (_, host, container) in zip(raw, resolved):
        assert host == container, "default host port = container port"
        match = re.fullmatch(r"\$\{[A-Z_]+_ADDRESS:-[\d.]+\}:\$\{TRITON_[A-Z]+_PORT:-(\d+)\}:(\d+)", spec)
        assert match and match.group(1) == match.group(2) == str(container), spec
    metrics_ip = next(ip for ip, _, c in resolved if c == 8002)
    assert metrics_ip == "127.0.0.1", "unauthenticated metrics are not published to the network by default"


def test_operator_uis_listen_on_loopback_by_default(compose):
    for name in ("locust-master", "prometheus", "grafana"):
        for spec in compose["services"][name]["ports"]:
            assert parse_port(spec)[0] == "127.0.0.1", (name, spec)


def test_images_are_pinned(compose):
    built = {s["image"] for s in compose["services"].values() if "build" in s}
    for name, service in compose["services"].items():
        image = service["image"]
        if image not in built:
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


# --- entrypoints ----------------------------------------------------------------------------------


def _write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_command(bindir: Path, name: str, exit_code: int = 0) -> Path:
    """A stand-in that appends its arguments (one per line, then a blank line) to $FAKE_LOG."""
    return _write_executable(
        bindir / name,
        f'#!/usr/bin/env bash\n{{ echo "{name}"; printf "%s\\n" "$@"; echo; }} >> "$FAKE_LOG"\nexit {exit_code}\n',
    )


def _calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [block.splitlines() for block in log.read_text().split("\n\n") if block.strip()]


_FAKE_SUPERVISOR = """#!/usr/bin/env bash
# Records its arguments like the other fakes, then runs the command after `--` (the real one serves
# the HTTP front and supervises it; tests of that start a real tritonserver).
{ echo "bertqa-supervisor"; printf "%s\\n" "$@"; echo; } >> "$FAKE_LOG"
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""


def _run(script: Path, tmp_path: Path, env: dict[str, str], args: tuple = ()) -> subprocess.CompletedProcess:
    bindir = tmp_path / "bin"
    if bindir.is_dir() and not (bindir / "bertqa-supervisor").exists():
        _write_executable(bindir / "bertqa-supervisor", _FAKE_SUPERVISOR)
    base = {
        # Fakes first, then this interpreter (python3 with bertqa importable), then the system.
        "PATH": f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "calls.log"),
    }
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env={**base, **env}, timeout=60)


def make_repository(root: Path, with_trt_engine: bool = True) -> Path:
    """The committed repository plus TensorRT and int8 variants (as `bertqa export` lays them out), model files faked."""
    from bertqa.export import repository as export_repo
    from bertqa.text import WindowingConfig
    from export_helpers import copy_repository_configs

    repository = copy_repository_configs(root / "model_repository")
    (repository / "bert_onnx" / "1" / "model.onnx").write_bytes(b"onnx")
    (repository / "qa_preprocess" / "1" / "tokenizer.json").write_text("{}")
    for fmt, platform, filename in (("tensorrt", "tensorrt_plan", "model.plan"), ("onnx-int8", "onnxruntime_onnx", None)):
        variant = export_repo.VARIANTS[fmt]
        model = variant.model_name
        (repository / model / "1").mkdir(parents=True)
        (repository / model / "config.pbtxt").write_text(
            f'name: "{model}"\nplatform: "{platform}"\nmax_batch_size: 64\n'
            'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
            'output [ { name: "start_logits" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        )
        if filename and with_trt_engine:
            (repository / model / "1" / filename).write_bytes(b"engine")
        export_repo.write_model_folder(
            repository / variant.preprocess_name,
            export_repo.preprocess_config(variant.preprocess_name, WindowingConfig(), model),
            {"model.py": export_repo.PREPROCESS_SOURCE, "tokenizer.json": "{}"})
        export_repo.write_model_folder(repository / variant.ensemble_name, export_repo.ensemble_config(variant))
    return repository


@pytest.fixture
def fake_tritonserver(tmp_path) -> Path:
    (tmp_path / "bin").mkdir()
    return _fake_command(tmp_path / "bin", "tritonserver")


def _supervisor_options(tmp_path: Path) -> list[str]:
    """The options the entrypoint gave bertqa-supervisor (before `--`)."""
    (call,) = [c for c in _calls(tmp_path / "calls.log") if c[0] == "bertqa-supervisor"]
    return call[1:call.index("--")]


def _tritonserver_args(tmp_path: Path) -> list[str]:
    (call,) = [c for c in _calls(tmp_path / "calls.log") if c[0] == "tritonserver"]
    return call[1:]


BASE_MODELS = ["qa_preprocess", "qa_postprocess", "bert_onnx", "bert_qa"]


def test_triton_entrypoint_on_cpu_skips_tensorrt_and_unexported_models(tmp_path, fake_tritonserver):
    repository = make_repository(tmp_path)
    result = _run(TRITON_ENTRYPOINT, tmp_path, {"TRITON_MODEL_REPOSITORY": str(repository), "BERTQA_GPU": "0"})
    assert result.returncode == 0, result.stderr
    args = _tritonserver_args(tmp_path)
    loaded = [a.split("=", 1)[1] for a in args if a.startswith("--load-model=")]
    assert sorted(loaded) == sorted(BASE_MODELS)
    assert "skipping bert_trt: TensorRT engine needs a GPU" in result.stderr
    assert "skipping bert_qa_trt" in result.stderr and "skipping bert_onnx_int8: missing" in result.stderr
    assert "--allow-gpu-metrics=false" in args
    calls = _calls(tmp_path / "calls.log")
    assert [c[0] for c in calls] == ["bertqa-supervisor", "tritonserver"], "tritonserver runs under the supervisor"
    assert calls[0][calls[0].index("--") + 1:] == ["tritonserver", *args]
    for flag in ("--model-control-mode=explicit", "--strict-readiness=true", "--exit-on-error=true",
                 f"--model-repository={repository}", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in args


def test_triton_entrypoint_with_gpu_loads_the_tensorrt_variant(tmp_path, fake_tritonserver):
    repository = make_repository(tmp_path)
    result = _run(TRITON_ENTRYPOINT, tmp_path, {"TRITON_MODEL_REPOSITORY": str(repository), "BERTQA_GPU": "1"})
    assert result.returncode == 0, result.stderr
    loaded = {a.split("=", 1)[1] for a in _tritonserver_args(tmp_path) if a.startswith("--load-model=")}
    assert loaded == set(BASE_MODELS) | {"bert_trt", "qa_preprocess_trt", "bert_qa_trt"}
    assert "--allow-gpu-metrics=false" not in _tritonserver_args(tmp_path)


def test_triton_entrypoint_locks_admin_apis(tmp_path, fake_tritonserver):
    repository = make_repository(tmp_path)
    env = {"TRITON_MODEL_REPOSITORY": str(repository), "BERTQA_GPU": "0"}
    _run(TRITON_ENTRYPOINT, tmp_path, env)
    _run(TRITON_ENTRYPOINT, tmp_path, {**env, "TRITON_ADMIN_KEY": "s3cret-0123456789"})
    _run(TRITON_ENTRYPOINT, tmp_path, env)
    for unusable in ("short", "has,comma-0123456789", "has:colon=0123456789"):
        result = _run(TRITON_ENTRYPOINT, tmp_path, {**env, "TRITON_ADMIN_KEY": unusable})
        assert result.returncode == 2 and "TRITON_ADMIN_KEY must be" in result.stderr
    keys = []
    for call in [c for c in _calls(tmp_path / "calls.log") if c[0] == "tritonserver"]:
        http = [a for a in call if a.startswith("--http-restricted-api=")]
        grpc = [a for a in call if a.startswith("--grpc-restricted-protocol=")]
        assert len(http) == len(grpc) == 1
        apis, _, key = http[0].split("=", 1)[1].partition(":admin-key=")
        assert {"model-repository", "shared-memory"} <= set(apis.split(","))
        assert grpc[0].split("=", 1)[1] == f"{apis}:admin-key={key}"
        assert not {"inference", "health", "metadata"} & set(apis.split(","))
        keys.append(key)
    assert keys[1] == "s3cret-0123456789"
    assert len(keys[0]) >= 32 and keys[0] != keys[2], "without a configured key each start gets a random one"


def test_triton_entrypoint_honours_and_validates_a_model_subset(tmp_path, fake_tritonserver):
    repository = make_repository(tmp_path)
    env = {"TRITON_MODEL_REPOSITORY": str(repository), "BERTQA_GPU": "1", "TRITON_LOAD_MODELS": "bert_qa_trt"}
    assert _run(TRITON_ENTRYPOINT, tmp_path, env).returncode == 0
    # The ensemble, its steps, and the BERT model its pre-processing runs by BLS (Triton would not load that one).
    assert [a for a in _tritonserver_args(tmp_path) if a.startswith("--load-model")] == [
        f"--load-model={m}" for m in ("bert_qa_trt", "qa_preprocess_trt", "qa_postprocess", "bert_trt")]
    (tmp_path / "calls.log").unlink()
    result = _run(TRITON_ENTRYPOINT, tmp_path, {**env, "BERTQA_GPU": "0"})
    assert result.returncode != 0 and "bert_qa_trt" in result.stderr
    assert _calls(tmp_path / "calls.log") == [], "tritonserver must not start"


def test_triton_entrypoint_refuses_an_empty_repository(tmp_path, fake_tritonserver):
    repository = tmp_path / "empty"
    repository.mkdir()
    result = _run(TRITON_ENTRYPOINT, tmp_path, {"TRITON_MODEL_REPOSITORY": str(repository), "BERTQA_GPU": "0"})
    assert result.returncode != 0 and "no loadable model" in result.stderr
    assert _calls(tmp_path / "calls.log") == []


def test_gpu_detection_without_nvidia_smi(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("select_models", ROOT / "docker" / "triton" / "select_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert module.gpu_available("auto") is False
    assert module.gpu_available("1") is True and module.gpu_available("off") is False
    _write_executable(tmp_path / "nvidia-smi", "#!/bin/sh\necho 'GPU 0: H100'\n")
    assert module.gpu_available("auto") is True


@pytest.fixture
def export_env(tmp_path) -> dict[str, str]:
    """The export entrypoint beside a fake check_tensorrt.py, with fake bertqa and python3 on PATH."""
    (tmp_path / "bin").mkdir()
    _fake_command(tmp_path / "bin", "bertqa")
    _fake_command(tmp_path / "bin", "python3")  # python3 -m bertqa.export.openvino (the CPU default)
    shutil.copy(EXPORT_ENTRYPOINT, tmp_path / "entrypoint.sh")
    _write_executable(tmp_path / "check_tensorrt.py", "import sys\nprint('checked')\nsys.exit(0)\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "repo").mkdir()
    return {"MODEL_REPOSITORY": str(tmp_path / "repo"), "CHECKPOINT_DIR": str(tmp_path / "ckpt")}


def test_export_without_checkpoint_installs_the_demo(tmp_path, export_env):
    result = _run(tmp_path / "entrypoint.sh", tmp_path, export_env)
    assert result.returncode == 0, result.stderr
    assert _calls(tmp_path / "calls.log") == [["bertqa", "install-demo", "--repository", export_env["MODEL_REPOSITORY"]]]


def _exported_formats(tmp_path: Path) -> list[str]:
    return [c[c.index("--format") + 1] for c in _calls(tmp_path / "calls.log") if c[:2] == ["bertqa", "export"]]


def test_export_of_a_checkpoint_on_a_cpu_host(tmp_path, export_env):
    env = {**export_env, "CHECKPOINT": "/data/ckpt"}
    result = _run(tmp_path / "entrypoint.sh", tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert _exported_formats(tmp_path) == ["onnx", "onnx-int8"]
    onnx, int8 = _calls(tmp_path / "calls.log")
    assert onnx[onnx.index("--checkpoint") + 1] == export_env["CHECKPOINT_DIR"] and "--eval-file" not in onnx
    # No test fixture path: the exporter's INT8 evaluation default is the dev slice in the installed package.
    assert "--eval-file" not in int8
    assert "BERTQA_EVAL_FILE" not in (ROOT / "docker" / "export.Dockerfile").read_text()
    assert not is_dockerignored("bertqa/data/squad-v1.1-dev-slice.json", dockerignore_patterns()), "the image needs it"


def test_export_of_a_checkpoint_on_a_gpu_host_builds_an_engine(tmp_path, export_env):
    _write_executable(tmp_path / "bin" / "nvidia-smi", "#!/bin/sh\nexit 0\n")
    result = _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CHECKPOINT": "/data/ckpt"})
    assert result.returncode == 0, result.stderr
    assert _exported_formats(tmp_path) == ["onnx", "tensorrt"]


def test_export_refuses_what_it_cannot_do(tmp_path, export_env):
    no_gpu_trt = _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CHECKPOINT": "x", "EXPORT_FORMATS": "tensorrt"})
    assert no_gpu_trt.returncode == 2 and "no GPU" in no_gpu_trt.stderr
    (tmp_path / "ckpt" / "config.json").unlink()
    empty = _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CHECKPOINT": "/not/on/host"})
    assert empty.returncode == 2 and "empty or missing" in empty.stderr
    assert _exported_formats(tmp_path) == []


def test_export_if_missing_keeps_existing_files(tmp_path, export_env):
    model = Path(export_env["MODEL_REPOSITORY"]) / "bert_onnx" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    env = {**export_env, "CHECKPOINT": "x", "EXPORT_MODE": "if-missing", "EXPORT_FORMATS": "onnx,onnx-int8"}
    assert _run(tmp_path / "entrypoint.sh", tmp_path, env).returncode == 0
    assert _exported_formats(tmp_path) == ["onnx-int8"]


def test_export_of_openvino_variants(tmp_path, export_env):
    env = {**export_env, "CHECKPOINT": "x", "EXPORT_FORMATS": "openvino-int8,openvino"}
    assert _run(tmp_path / "entrypoint.sh", tmp_path, env).returncode == 0
    calls = [c for c in _calls(tmp_path / "calls.log") if c[:2] == ["bertqa", "export"]]
    assert [(c[c.index("--format") + 1], c[c.index("--precision") + 1]) for c in calls] == [
        ("openvino", "int8"), ("openvino", "fp32")]


def _onnx_exported(export_env: dict[str, str]) -> None:
    """What `bertqa install-demo` / `bertqa export --format onnx` leave behind (the fakes write nothing)."""
    model = Path(export_env["MODEL_REPOSITORY"]) / "bert_onnx" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"onnx")


def _openvino_conversions(tmp_path: Path) -> list[list[str]]:
    return [c[1:] for c in _calls(tmp_path / "calls.log") if c[0] == "python3"]


@pytest.mark.parametrize("checkpoint", ["", "/data/ckpt"])
def test_export_on_a_cpu_host_adds_the_cpu_default(tmp_path, export_env, checkpoint):
    """Like `make serve`: the CPU default chosen by measurement, converted from the FP32 ONNX model."""
    _onnx_exported(export_env)
    result = _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CHECKPOINT": checkpoint})
    assert result.returncode == 0, result.stderr
    precision = _makefile_default("CPU_DEFAULT_PRECISION")
    assert _openvino_conversions(tmp_path) == [["-m", "bertqa.export.openvino", "--repository",
                                                export_env["MODEL_REPOSITORY"], "--precision", precision, "--if-missing"]]
    assert _calls(tmp_path / "calls.log")[-1][0] == "python3", "converted after the ONNX model is in place"


def test_export_cpu_default_can_be_changed_or_turned_off(tmp_path, export_env):
    _onnx_exported(export_env)
    assert _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CPU_DEFAULT_PRECISION": ""}).returncode == 0
    assert _openvino_conversions(tmp_path) == []
    assert _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CPU_DEFAULT_PRECISION": "bf16"}).returncode == 0
    assert _openvino_conversions(tmp_path)[0][-2:] == ["bf16", "--if-missing"]
    bad = _run(tmp_path / "entrypoint.sh", tmp_path, {**export_env, "CPU_DEFAULT_PRECISION": "fp16"})
    assert bad.returncode == 2 and "CPU_DEFAULT_PRECISION" in bad.stderr


def test_export_cpu_default_skipped_on_a_gpu_host_or_without_onnx(tmp_path, export_env):
    assert _run(tmp_path / "entrypoint.sh", tmp_path, export_env).returncode == 0  # nothing to convert from
    _onnx_exported(export_env)
    _write_executable(tmp_path / "bin" / "nvidia-smi", "#!/bin/sh\nexit 0\n")
    assert _run(tmp_path / "entrypoint.sh", tmp_path, export_env).returncode == 0
    assert _openvino_conversions(tmp_path) == []


def _makefile_default(variable: str) -> str:
    (value,) = re.findall(rf"^{variable} \?= *(\S*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return value


def test_cpu_default_is_the_measured_one_everywhere(compose_raw):
    """make serve, the export entrypoint (compose, Kubernetes) and docs/BENCHMARKS.md name one CPU default."""
    precision = _makefile_default("CPU_DEFAULT_PRECISION")
    entrypoint = EXPORT_ENTRYPOINT.read_text()
    assert f'cpu_default="${{CPU_DEFAULT_PRECISION-{precision}}}"' in entrypoint
    assert compose_raw["services"]["export"]["environment"]["CPU_DEFAULT_PRECISION"] == \
        f"${{CPU_DEFAULT_PRECISION-{precision}}}"
    committed = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    measured = re.search(r"\*\*CPU default by measurement: OpenVINO (\w+)\*\*", committed)
    # auto: what it resolves to on the CPU the committed report measured (its OpenVINO capabilities row).
    from benchmarks.report import documented_cpu_capabilities
    from bertqa.export.openvino import resolve_precision

    assert measured and measured.group(1).lower() == resolve_precision(precision, documented_cpu_capabilities(committed))


def test_check_tensorrt_compares_pip_and_library_versions(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("check_tensorrt", ROOT / "docker" / "export" / "check_tensorrt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    library = tmp_path / "libnvinfer.so.10.5.0"
    library.write_bytes(b"")
    monkeypatch.setattr(module, "LIBRARY_GLOBS", (str(tmp_path / "libnvinfer.so.*.*.*"),))
    monkeypatch.setattr(module, "pip_version", lambda: "10.5.0")
    assert module.main([]) == 0
    monkeypatch.setattr(module, "pip_version", lambda: "10.6.0")
    assert module.main([]) == 1
    library.unlink()
    assert module.main([]) == 0 and module.main(["--strict"]) == 1


def test_locust_entrypoint_passes_only_set_options(tmp_path):
    (tmp_path / "bin").mkdir()
    _fake_command(tmp_path / "bin", "locust")
    env = {"LOADTEST_MODEL": "bert_qa_trt", "LOADTEST_PROTOCOL": "http-binary", "LOADTEST_DATA": "",
           "LOADTEST_HEADLESS": "true", "LOADTEST_RUN_TIME": "5m"}
    assert _run(LOCUST_ENTRYPOINT, tmp_path, env, ("--master",)).returncode == 0
    assert _run(LOCUST_ENTRYPOINT, tmp_path, env, ("--worker", "--master-host", "locust-master")).returncode == 0
    master, worker = _calls(tmp_path / "calls.log")
    assert master[1:3] == ["-f", "/opt/bertqa/loadtest/locustfile.py"]
    assert "--data" not in master and master[master.index("--model") + 1] == "bert_qa_trt"
    assert {"--headless", "--run-time", "--master"} <= set(master)
    assert "--headless" not in worker and worker[-3:] == ["--worker", "--master-host", "locust-master"]


@pytest.mark.parametrize("script", [TRITON_ENTRYPOINT, EXPORT_ENTRYPOINT, LOCUST_ENTRYPOINT])
def test_entrypoint_scripts_are_executable_bash(script):
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


# --- Dockerfiles and build contexts ---------------------------------------------------------------

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[str]:
    if not path.exists():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def is_dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a matched directory excludes its contents."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = os.path.normpath(raw[1:] if negated else raw).lstrip("/")
        if any(_glob_regex(pattern).match(c) for c in candidates):
            ignored = not negated
    return ignored


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
    if pending:
        raise ValueError("Dockerfile ends inside a line continuation")
    return instructions


def check_dockerfile(text: str, context: Path, ignore: list[str]) -> list[str]:
    """Problems a `docker build` would hit before running anything; empty list = fine."""
    problems = []
    try:
        instructions = parse_dockerfile(text)
    except ValueError as err:
        return [str(err)]
    if not instructions:
        return ["empty Dockerfile"]
    leading = [i.keyword for i in instructions]
    first_non_arg = next((k for k in leading if k != "ARG"), None)
    if first_non_arg != "FROM":
        problems.append(f"the first instruction after ARGs must be FROM, not {first_non_arg}")
    stages, copied, has_path_dir = set(), {}, set()
    for ins in instructions:
        if ins.keyword not in INSTRUCTIONS:
            problems.append(f"line {ins.line}: unknown instruction {ins.keyword}")
            continue
        if ins.keyword == "FROM":
            words = ins.arguments.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
            elif len(words) != 1:
                problems.append(f"line {ins.line}: malformed FROM")
        if ins.keyword in ("COPY", "ADD"):
            words = ins.arguments.split()
            flags = [w for w in words if w.startswith("--")]
            operands = [w for w in words if not w.startswith("--")]
            if len(operands) < 2:
                problems.append(f"line {ins.line}: {ins.keyword} needs a source and a destination")
                continue
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if from_stage is not None:
                if from_stage not in stages:
                    problems.append(f"line {ins.line}: COPY --from={from_stage} names no earlier stage")
            else:
                for source in operands[:-1]:
                    if not (context / source).exists():
                        problems.append(f"line {ins.line}: {source} does not exist in the build context")
                    elif source not in (".", "./") and is_dockerignored(os.path.normpath(source), ignore):
                        problems.append(f"line {ins.line}: {source} is excluded by .dockerignore")
            copied[Path(operands[-1]).name] = str(Path(operands[-1]).parent)
        if ins.keyword == "ENV":
            for match in re.finditer(r"PATH=(\S+)", ins.arguments):
                has_path_dir.update(match.group(1).split(":"))
        if ins.keyword in ("CMD", "ENTRYPOINT"):
            if ins.arguments.startswith("["):
                try:
                    command = json.loads(ins.arguments)
                except json.JSONDecodeError:
                    problems.append(f"line {ins.line}: {ins.keyword} is not valid JSON")
                    continue
                executable = command[0] if command else ""
                # A script this Dockerfile installs must be reachable through PATH by that name.
                if "/" not in executable and executable in copied and copied[executable] not in has_path_dir:
                    problems.append(f"line {ins.line}: {executable} is copied to {copied[executable]}, not on PATH")
    return problems


def built_services(compose: dict) -> dict[str, tuple[Path, Path]]:
    result = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            result[name] = (context, dockerfile)
    return result


def test_every_build_context_and_dockerfile_exists(compose):
    services = built_services(compose)
    assert set(services) == {"export", "triton", "locust-master"}
    for name, (context, dockerfile) in services.items():
        assert context.is_dir(), name
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
    # locust-worker reuses the master's image instead of building it a second time.
    assert compose["services"]["locust-worker"]["image"] == compose["services"]["locust-master"]["image"]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_parses_and_copies_existing_files(dockerfile):
    assert check_dockerfile(dockerfile.read_text(), ROOT, dockerignore_patterns()) == []


def test_dockerfile_check_catches_mistakes(tmp_path):
    (tmp_path / "present.txt").write_text("x")
    ignore = ["secret*"]
    (tmp_path / "secret.env").write_text("x")
    bad = (
        "RUN echo too early\nFROM base AS one\nRUNN typo\nCOPY missing.txt /x\nCOPY secret.env /y\n"
        "COPY --from=nowhere /a /b\nCOPY present.txt /opt/tool/run-me\nCMD [\"run-me\"]\nCMD [broken\n"
    )
    problems = "\n".join(check_dockerfile(bad, tmp_path, ignore))
    for expected in ("must be FROM", "unknown instruction RUNN", "missing.txt does not exist",
                     "secret.env is excluded", "names no earlier stage", "not on PATH", "not valid JSON"):
        assert expected in problems
    assert check_dockerfile("ARG X=1\nFROM base\nCOPY present.txt \\\n  /x\n", tmp_path, ignore) == []


def test_dockerignore_keeps_what_images_need_and_drops_the_rest():
    patterns = dockerignore_patterns()
    for needed in ("pyproject.toml", "bertqa/text.py", "export/onnx.py", "client/qa_client.py",
                   "demo_model/onnx/model.onnx", "demo_model/tokenizer.json", "loadtest/locustfile.py",
                   "docker/triton/entrypoint.sh", "docker/export/check_tensorrt.py"):
        assert not is_dockerignored(needed, patterns), needed
    for dropped in (".git/config", ".venv/bin/python", "model_repository/bert_onnx/1/model.onnx", ".env",
                    "bertqa/__pycache__/text.cpython-311.pyc", "tests/test_compose.py"):
        assert is_dockerignored(dropped, patterns), dropped


def test_mounted_paths_and_named_files_exist(compose):
    for env in ({}, {"CHECKPOINT": ""}):
        services = interpolate(load_yaml(COMPOSE), env)["services"]
        for name, service in services.items():
            for source, _ in bind_mounts(service):
                assert host_path(source).exists(), f"{name}: {source}"
    grafana = compose["services"]["grafana"]
    mounts = {target: host_path(source) for source, target in bind_mounts(grafana)}

    def on_host(container_path: str) -> Path:
        target = max((t for t in mounts if container_path.startswith(t + "/") or container_path == t), key=len)
        return mounts[target] / Path(container_path).relative_to(target)

    assert on_host(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == DASHBOARD
    provider = yaml.safe_load(GRAFANA_PROVIDER.read_text())["providers"][0]
    assert on_host(provider["options"]["path"]) == DASHBOARD.parent
    assert on_host("/etc/grafana/provisioning/datasources/prometheus.yml") == GRAFANA_DATASOURCE
    prometheus = compose["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert dict((t, host_path(s)) for s, t in bind_mounts(prometheus))[config_flag.split("=", 1)[1]] == PROMETHEUS_CONFIG


def test_export_mounts_the_checkpoint_when_set(compose_raw):
    export = interpolate(compose_raw, {"CHECKPOINT": "/data/ckpt"})["services"]["export"]
    assert ("/data/ckpt", "/checkpoint") in bind_mounts(export)
    assert export["environment"]["CHECKPOINT"] == "/data/ckpt"
    default = interpolate(compose_raw)["services"]["export"]
    assert default["environment"]["CHECKPOINT"] == "", "empty CHECKPOINT selects the demo model"


# --- Triton release ----------------------------------------------------------------------------


def release_of(version: str) -> str:
    """NGC release (YY.MM) of a Triton 2.x version; monthly releases since 21.01 = 2.6.0."""
    minor = int(version.split(".")[1])
    months = minor + 7  # 2.6 -> 2021-01
    return f"{20 + (months - 1) // 12}.{(months - 1) % 12 + 1:02d}"


def test_release_rule_matches_nvidia_release_notes():
    for release, version in KNOWN_RELEASES.items():
        assert release_of(version) == release


def dockerfile_arg_default(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"{dockerfile.name}: no ARG {name}=default"
    return match.group(1)


def test_triton_and_export_images_share_one_pinned_base(compose):
    services = built_services(compose)
    images = {
        dockerfile_arg_default(services["triton"][1], "TRITON_IMAGE"),
        dockerfile_arg_default(services["export"][1], "TRITON_IMAGE"),
        compose["services"]["triton"]["build"]["args"]["TRITON_IMAGE"],
        compose["services"]["export"]["build"]["args"]["TRITON_IMAGE"],
    }
    assert len(images) == 1
    (image,) = images
    match = re.fullmatch(r"nvcr\.io/nvidia/tritonserver:(\d\d\.\d\d)-py3", image)
    assert match, image
    release = match.group(1)
    tensorrt = {
        dockerfile_arg_default(services["export"][1], "TENSORRT_VERSION"),
        compose["services"]["export"]["build"]["args"]["TENSORRT_VERSION"],
    }
    assert tensorrt == {TENSORRT_OF_RELEASE[release]}, "the engine builder must use the server's TensorRT"


# --- a live embedded tritonserver 2.51 with the entrypoint's flags ------------------------------

PROBE_MODEL = '''
import os, site
if os.environ.get("BERTQA_SITE_PACKAGES"):
    site.addsitedir(os.environ["BERTQA_SITE_PACKAGES"])
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''




def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@dataclass
class LiveTriton:
    http: str
    metrics: str
    admin_key: str


@pytest.fixture(scope="module")
def live_triton(tmp_path_factory):
    """The embedded tritonserver (nvidia-pytriton) started with the flags our entrypoint builds."""
    try:
        from bertqa.server import ServerError, TritonInstall

        install = TritonInstall.locate()
    except (ImportError, ServerError) as err:
        pytest.skip(f"no embedded tritonserver: {err}")
    import numpy

    work = tmp_path_factory.mktemp("live")
    repository = work / "repo"
    (repository / "probe" / "1").mkdir(parents=True)
    (repository / "probe" / "config.pbtxt").write_text(
        'name: "probe"\nbackend: "python"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    (repository / "probe" / "1" / "model.py").write_text(PROBE_MODEL)
    backends = work / "backends"
    shutil.copytree(install.python_backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(install.stub, backends / "python" / "triton_python_backend_stub")

    (work / "bin").mkdir()
    _fake_command(work / "bin", "tritonserver")
    admin_key = "live-admin-key-0123456789"
    result = _run(TRITON_ENTRYPOINT, work, {"TRITON_MODEL_REPOSITORY": str(repository), "BERTQA_GPU": "0",
                                             "TRITON_ADMIN_KEY": admin_key})
    assert result.returncode == 0, result.stderr
    http, grpc, metrics, internal = free_ports(4)
    ports = {"--http-port": http, "--grpc-port": grpc, "--metrics-port": metrics}
    loopback = {"--metrics-address": "127.0.0.1"}
    args = [f"{a.split('=')[0]}={ports[a.split('=')[0]]}" if a.split("=")[0] in ports else
            f"{a.split('=')[0]}={loopback[a.split('=')[0]]}" if a.split("=")[0] in loopback else a
            for a in _tritonserver_args(work)]
    args += [f"--backend-directory={backends}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1"]
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": f"{install.libraries}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        "BERTQA_SITE_PACKAGES": str(Path(numpy.__file__).resolve().parents[1]),
        "TRITON_ADMIN_KEY": admin_key,
    }
    # The real supervisor (what the image's entrypoint execs), with the options the entrypoint gave it.
    supervisor = [sys.executable, "-m", "bertqa.supervisor", *_supervisor_options(work),
                  f"--triton-http-port={internal}", "--", str(install.binary), *args]
    log = work / "tritonserver.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(supervisor, stdout=sink, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 90
        while _http_ready(base) is False:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"embedded tritonserver did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield LiveTriton(http=base, metrics=f"http://127.0.0.1:{metrics}/metrics", admin_key=admin_key)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _http_ready(base: str) -> bool:
    try:
        return _http("GET", f"{base}/v2/health/ready")[0] == 200
    except OSError:
        return False


def test_triton_image_is_the_release_of_the_embedded_server(live_triton, compose):
    status, body = _http("GET", f"{live_triton.http}/v2")
    assert status == 200
    version = json.loads(body)["version"]
    image = compose["services"]["triton"]["build"]["args"]["TRITON_IMAGE"]
    assert image == f"nvcr.io/nvidia/tritonserver:{release_of(version)}-py3", f"embedded Triton is {version}"


def test_admin_apis_need_the_key_on_a_real_server(live_triton):
    url = f"{live_triton.http}/v2/repository/index"
    assert _http("POST", url, b"{}")[0] == 403
    assert _http("POST", url, b"{}", {"admin-key": "wrong"})[0] == 403
    assert _http("POST", url, b"{}", {"admin-key": live_triton.admin_key})[0] == 200
    assert _http("GET", f"{live_triton.http}/v2/logging")[0] == 403
    # Clients keep inference, metadata and statistics.
    infer = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.5]}]}).encode()
    assert _http("POST", f"{live_triton.http}/v2/models/probe/infer", infer)[0] == 200
    assert _http("GET", f"{live_triton.http}/v2/models/probe")[0] == 200
    assert _http("GET", f"{live_triton.http}/v2/models/probe/stats")[0] == 200


def test_known_metrics_are_what_triton_exports(live_triton):
    infer = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]}).encode()
    assert _http("POST", f"{live_triton.http}/v2/models/probe/infer", infer)[0] == 200
    _, text = _http("GET", live_triton.metrics)
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    assert TRITON_METRICS <= exported, TRITON_METRICS - exported
    assert 'nv_inference_request_success{model="probe",version="1"}' in text


# --- Prometheus and Grafana ---------------------------------------------------------------------


def test_prometheus_scrapes_the_triton_service(compose):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "triton")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["triton:8002"]
    host, port = targets[0].split(":")
    assert host in compose["services"]
    assert int(port) in [parse_port(p)[2] for p in compose["services"][host]["ports"]]
    assert "--metrics-port=8002" in TRITON_ENTRYPOINT.read_text()
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_datasource_points_at_prometheus(compose):
    provisioning = yaml.safe_load(GRAFANA_DATASOURCE.read_text())
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in compose["services"] and port == "9090"
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_uses_the_provisioned_datasource(dashboard):
    uid = yaml.safe_load(GRAFANA_DATASOURCE.read_text())["datasources"][0]["uid"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_panels_do_not_overlap(dashboard):
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_dashboard_queries_only_metrics_triton_exports(dashboard):
    used = {m for expr in dashboard_exprs(dashboard) for m in re.findall(r"\bnv_[a-z0-9_]+", expr)}
    assert used <= TRITON_METRICS | TRITON_GPU_METRICS, used - TRITON_METRICS - TRITON_GPU_METRICS
    for expected in ("nv_inference_request_success", "nv_inference_queue_duration_us",
                     "nv_inference_compute_infer_duration_us", "nv_gpu_utilization"):
        assert expected in used


def test_dashboard_queries_are_per_model_and_well_formed(dashboard):
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for expr in dashboard_exprs(dashboard):
        for opening, closing in ("()", "[]", "{}"):
            assert expr.count(opening) == expr.count(closing), expr
        for variable in re.findall(r"\$(\w+)", expr):
            assert variable.startswith("__") or variable in variables, expr
        if "nv_inference_" in expr:
            assert "by (model)" in expr and 'model=~"$model"' in expr, expr
        for counter in re.findall(r"\b(nv_inference_(?!pending)[a-z_]+)", expr):
            assert f"rate({counter}" in expr, f"{counter} is a counter: use rate() in {expr}"


# --- README section -----------------------------------------------------------------------------


def docs_section() -> tuple[Path, str]:
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert f"\n{DOCS_HEADING}\n" in text, f"{readme} lacks '{DOCS_HEADING}'"
    section = text[text.index(DOCS_HEADING):]
    following = re.search(r"^## (?!#)", section[len(DOCS_HEADING):], re.MULTILINE)
    return readme, section[: len(DOCS_HEADING) + following.start()] if following else section


def test_docs_ports_match_the_compose_file(compose):
    _, section = docs_section()
    published = set()
    for service in compose["services"].values():
        for spec in service.get("ports") or []:
            _, host, container = parse_port(spec)
            published |= {host, container}
    mentioned = {int(p) for p in re.findall(r"(?<![\w.])(?::|\| )(\d{4})\b", section)}
    assert mentioned - published == set(), "ports in the docs that compose does not publish"
    assert published - mentioned == set(), "published ports the docs do not mention"


def test_docs_profiles_and_services_match_the_compose_file(compose):
    _, section = docs_section()
    profiles = set(profiles_of(compose)) - {""}
    assert set(re.findall(r"--profile (\w+)", section)) == profiles
    services = set(compose["services"])
    named = set(re.findall(r"--scale ([\w-]+)=", section))
    named |= set(re.findall(r"docker compose (?:[-\w ]+ )?(?:logs(?: -f)?|restart|run --rm) ([\w-]+)", section))
    named |= {s for s in re.findall(r"`([\w-]+)`", section) if s in services or s.startswith(("locust", "triton-"))}
    assert named and named <= services, named - services


def test_docs_settings_table_matches_the_compose_variables():
    _, section = docs_section()
    table = section[section.index("### Settings"):]
    documented = {v for row in table.splitlines() if row.startswith("| `")
                  for v in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    in_compose = compose_variables(COMPOSE, CPU_OVERRIDE)
    scripts = "".join(p.read_text() for p in (ROOT / "docker").rglob("*") if p.suffix in (".sh", ".py"))
    assert in_compose - documented == set(), "compose variables missing from the settings table"
    assert {v for v in documented - in_compose if v not in scripts} == set(), "documented but never read"


def test_docs_name_existing_files_and_the_pinned_image(compose):
    _, section = docs_section()
    for token in re.findall(r"`([^`\s]+)`", section):
        if re.fullmatch(r"\.?/?[\w.-]+(/[\w.-]+)*/?", token) and ("/" in token or token.endswith((".yml", ".yaml"))):
            if not token.startswith("/") and not token.startswith("nvcr.io"):
                assert (ROOT / token).exists(), f"docs name {token}, which does not exist"
    assert compose["services"]["triton"]["build"]["args"]["TRITON_IMAGE"] in section


def test_locust_services_read_fetched_squad_where_the_image_looks_for_it(compose):
    """`bertqa data squad` writes ./data/squad/; the locust image's BERTQA_DATA_DIR is where compose mounts
    ./data, so without LOCUST_DATA the locustfile sends SQuAD v1.1 dev pairs like `bertqa bench`."""
    dockerfile = parse_dockerfile((ROOT / "docker" / "locust.Dockerfile").read_text())
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(i.arguments for i in dockerfile if i.keyword == "ENV")))
    data_dir = env["BERTQA_DATA_DIR"]
    for name in ("locust-master", "locust-worker"):
        service = compose["services"][name]
        assert ("./data", data_dir) in bind_mounts(service), name
        assert f"./data:{data_dir}:ro" in service["volumes"], f"{name}: the load test only reads the data"
        assert service["environment"]["LOADTEST_DATA"] == "", "LOCUST_DATA, when set, still overrides the default"
    assert is_dockerignored("data/squad/train-v1.1.json", dockerignore_patterns()), "fetched files stay out of images"
    assert not is_dockerignored("bertqa/data/squad-v1.1-dev-slice.json", dockerignore_patterns())
