"""docker-compose.yml, checked without a Docker engine: its structure, and that its commands start the services."""

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from client.local_services import free_port
from conftest import ROOT
from imgsim.healthcheck import is_serving

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stage(name: str) -> str:
    """The Dockerfile text of one build stage."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name} in the Dockerfile"
    return match.group(1)


def test_each_service_builds_its_own_target_with_only_its_own_extra():
    services = COMPOSE["services"]
    assert services["embedder"]["build"]["target"] == "embedder"
    assert services["index"]["build"]["target"] == "index"
    assert '".[embedder]"' in stage("embedder")
    assert '".[index]"' in stage("index") and "torch" not in stage("index")
    assert "torch" not in stage("client") and '".[client,datasets]"' in stage("client")


def test_the_index_keeps_its_data_in_a_named_volume():
    index = COMPOSE["services"]["index"]
    assert "index-data:/data" in index["volumes"] and "index-data" in COMPOSE["volumes"]
    command = index["command"]
    assert command[command.index("--data-dir") + 1] == "/data"


def test_health_checks_probe_each_service_and_give_the_model_time_to_load():
    for name, port in (("embedder", "50051"), ("index", "50052")):
        check = COMPOSE["services"][name]["healthcheck"]
        assert check["test"] == ["CMD", "python", "-m", "imgsim.healthcheck", f"127.0.0.1:{port}"]
    assert int(COMPOSE["services"]["embedder"]["healthcheck"]["start_period"].rstrip("s")) >= 120


def test_the_embedder_can_scale_and_clients_reach_it_by_name():
    embedder = COMPOSE["services"]["embedder"]
    # Published with no fixed host port: each replica made by --scale gets its own, host apps can reach it.
    host, port, container = embedder["ports"][0].rsplit(":", 2)
    assert container == "50051" and port == ""
    assert COMPOSE["services"]["client"]["environment"]["IMGSIM_EMBEDDER_ADDRESS"] == "embedder:50051"
    from client.channels import RETRY_SERVICE_CONFIG, channel_target
    assert channel_target("embedder:50051") == "dns:///embedder:50051"
    assert "round_robin" in RETRY_SERVICE_CONFIG


def test_published_ports_bind_localhost_unless_told_otherwise():
    for name, service in COMPOSE["services"].items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("${IMGSIM_BIND:-127.0.0.1}:"), (name, mapping)


def test_every_image_runs_as_a_non_root_user_and_the_gpu_profile_reserves_a_gpu():
    for target in ("embedder", "embedder-gpu", "index", "client"):
        assert "\nUSER imgsim" in "\n" + stage(target), target
    gpu = COMPOSE["services"]["embedder-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "embedder-gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "embedder" in gpu["networks"]["default"]["aliases"]
    assert "torch==2.13.0+cpu" in stage("embedder") and '"torch==2.13.0"' in stage("embedder-gpu")
    for name in ("embedder", "embedder-gpu"):  # one Hugging Face cache for every replica
        assert "hf-cache:/cache/huggingface" in COMPOSE["services"][name]["volumes"]
    assert "./demo-out:/out" in COMPOSE["services"]["client"]["volumes"]


def help_text(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout


def test_every_variable_the_compose_files_set_is_one_the_programs_read():
    secure = yaml.safe_load((ROOT / "docker-compose.secure.yml").read_text())
    helps = {"embedder": help_text([sys.executable, "-m", "embedder_service", "--help"]),
             "index": help_text([sys.executable, "-m", "index_service", "--help"]),
             "client": "".join(help_text([sys.executable, "-m", "client.cli", c, "--help"]) for c in ("demo", "stats")),
             "health": help_text([sys.executable, "-m", "imgsim.healthcheck", "--help"])}
    helps["embedder-gpu"] = helps["embedder"]
    for compose in (COMPOSE, secure):
        for name, service in compose["services"].items():
            for variable in service.get("environment", {}):
                if variable.startswith("IMGSIM_HEALTHCHECK_"):
                    assert f"[env {variable}]" in helps["health"], variable
                elif variable.startswith("IMGSIM_"):  # --help writes "[env NAME; default ...]", wrapped at spaces
                    assert f"[env{variable};" in "".join(helps[name].split()), (name, variable)
    for name, service in secure["services"].items():
        for secret in service.get("secrets", []):
            assert secret in secure["secrets"]


def test_grace_periods_cover_drain_and_grace():
    for name in ("embedder", "embedder-gpu", "index"):
        service = COMPOSE["services"][name]
        prefix = f"IMGSIM_{name.split('-')[0].upper()}"
        drain_and_grace = float(service["environment"][f"{prefix}_DRAIN_S"]) + float(
            service["environment"][f"{prefix}_GRACE_S"])
        assert int(service["stop_grace_period"].rstrip("s")) > drain_and_grace


@pytest.mark.parametrize("name", ["index", "embedder"])
def test_the_command_compose_names_starts_the_service(name, tmp_path):
    service = COMPOSE["services"][name]
    port, metrics_port = free_port(), free_port()
    command = [str(Path(sys.executable).parent / service["command"][0])]
    for arg in service["command"][1:]:
        command.append({"0.0.0.0": "127.0.0.1", "50051": str(port), "50052": str(port), "/data": str(tmp_path)}.get(
            arg, arg))
    environment = {k: str(v) for k, v in service["environment"].items()}
    environment[f"IMGSIM_{name.upper()}_METRICS_PORT"] = str(metrics_port)
    process = subprocess.Popen(command, cwd=ROOT, env={"PATH": "/usr/bin:/bin", **environment},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not is_serving(f"127.0.0.1:{port}"):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        probe = subprocess.run([sys.executable, *COMPOSE["services"][name]["healthcheck"]["test"][2:-1],
                                f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0 and "SERVING" in probe.stdout
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "imgsim_requests_total" in metrics or "imgsim_requests" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
