"""deploy/kubernetes: valid against a current Kubernetes schema (offline), and naming only flags, variables and
ports the programs really have."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate")

FOLDER = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.34.0"
DOCUMENTS = [(path.name, doc) for path in sorted(FOLDER.glob("*.yaml")) if path.name != "kustomization.yaml"
             for doc in yaml.safe_load_all(path.read_text()) if doc]
PROGRAMS = {"imgsim-embedder": "embedder_service", "imgsim-index": "index_service"}


def help_of(program: str) -> str:
    done = subprocess.run([sys.executable, "-m", PROGRAMS[program], "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    return done.stdout


def names_variable(help_text: str, variable: str) -> bool:
    """--help writes each fallback as "[env NAME; default ...]" (wrapped anywhere there is a space)."""
    return f"[env{variable};" in re.sub(r"\s+", "", help_text)


def names_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"\[{re.escape(flag)}[ \]]", help_text) is not None


def containers():
    for name, doc in DOCUMENTS:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield doc, pod, container


@pytest.mark.parametrize("name, doc", DOCUMENTS, ids=[f"{n}:{d['kind']}" for n, d in DOCUMENTS])
def test_each_manifest_is_valid_for_a_current_kubernetes(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted({name for name, _ in DOCUMENTS})


def test_every_flag_variable_port_and_probe_exists_in_the_programs():
    for doc, pod, container in containers():
        program, *args = container["args"]
        text = help_of(program)
        flags = [a for a in args if a.startswith("--")]
        assert all(names_flag(text, flag) for flag in flags), (program, flags)
        env = {e["name"]: e["value"] for e in container["env"]}
        for variable in env:
            assert not variable.startswith("IMGSIM_") or names_variable(text, variable), (program, variable)
        port = int(args[args.index("--port") + 1])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == port
        metrics = next(int(v) for k, v in env.items() if k.endswith("_METRICS_PORT"))
        assert ports["metrics"] == metrics
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port  # the native probe asks grpc.health.v1
        drain = float(next(v for k, v in env.items() if k.endswith("_DRAIN_S")))
        grace = float(next(v for k, v in env.items() if k.endswith("_GRACE_S")))
        assert pod["terminationGracePeriodSeconds"] >= drain + grace
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_services_are_headless_so_the_sdk_sees_every_pod_and_each_shard_has_a_stable_name():
    services = {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == "Service"}
    assert all(service["spec"]["clusterIP"] == "None" for service in services.values())
    index = next(doc for _, doc in DOCUMENTS if doc["kind"] == "StatefulSet")
    assert index["spec"]["serviceName"] in services and index["spec"]["volumeClaimTemplates"]
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Secret"} <= kinds


def test_the_podman_play_form_keeps_the_workloads_and_rewrites_only_what_podman_cannot_take():
    """scripts/kube_play_check.sh plays this form with podman; here it is checked without podman."""
    done = subprocess.run([sys.executable, "scripts/kube_for_podman.py", "--embedder-port", "50061",
                           "--index-port", "50062"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    played = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert sorted(doc["kind"] for doc in played) == ["Deployment", "Deployment", "PersistentVolumeClaim"]
    for doc in played:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    originals = {c["name"]: c for _, _, c in containers()}
    for doc in (d for d in played if d["kind"] == "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        [container] = pod["containers"]
        original = originals[container["name"]]
        assert container["image"] == original["image"] and container["args"] == original["args"]
        assert not any("secret" in volume for volume in pod.get("volumes", []))
        prefix = "IMGSIM_EMBEDDER" if container["name"] == "embedder" else "IMGSIM_INDEX"
        env = {e["name"]: e for e in container["env"]}
        assert env[f"{prefix}_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "imgsim-token", "key": "token"}
        assert f"{prefix}_AUTH_TOKEN_FILE" not in env
        assert all(port["hostIP"] == "127.0.0.1" for port in container["ports"])
        kept = {e["name"] for e in original["env"]} - {f"{prefix}_AUTH_TOKEN_FILE"}
        assert kept <= set(env)
    index = next(d for d in played if d["metadata"]["name"] == "imgsim-index")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "imgsim-index-data"}} in index["volumes"]
