"""Prints deploy/kubernetes as `podman kube play` (4.x) can run it, for scripts/kube_play_check.sh.

The manifests themselves stay what a cluster needs; what podman cannot take is rewritten here, and only
that:
  - the index StatefulSet becomes a Deployment of one pod (podman plays no StatefulSets) whose `data`
    volume claim becomes a PersistentVolumeClaim podman turns into a named volume;
  - the token is passed from the Secret as the IMGSIM_*_AUTH_TOKEN variable instead of a mounted file
    (podman 4.3 panics on secret volumes); the podman secret must hold {"token": "<base64>"};
  - probes are dropped (podman ignores readiness and cannot run gRPC ones; the script checks health);
  - each gRPC port is published on the host's loopback (Services are ignored) at the port given, each
    metrics port at its own number + 10 (podman would publish it on every interface otherwise);
  - one replica each, since every replica would ask for the same host port.
Services, the autoscaler, the disruption budget, the network policy and the Secret object are left out.

    python scripts/kube_for_podman.py --embedder-port 50061 --index-port 50062 > play.yaml
"""

import argparse
import sys
from pathlib import Path

import yaml

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def token_from_env(container: dict, prefix: str) -> None:
    env = [e for e in container.get("env", []) if e["name"] != f"{prefix}_AUTH_TOKEN_FILE"]
    env.append({"name": f"{prefix}_AUTH_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "imgsim-token", "key": "token"}}})
    container["env"] = env


def for_podman(workload: dict, host_port: int) -> list[dict]:
    spec = workload["spec"]
    pod = spec["template"]["spec"]
    secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    pod["volumes"] = [v for v in pod.get("volumes", []) if v["name"] not in secret_volumes]
    extra = []
    for claim in spec.pop("volumeClaimTemplates", []):
        name = f"{workload['metadata']['name']}-{claim['metadata']['name']}"
        extra.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                      "spec": claim["spec"]})
        pod["volumes"].append({"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": name}})
    for container in pod["containers"]:
        prefix = "IMGSIM_EMBEDDER" if container["name"] == "embedder" else "IMGSIM_INDEX"
        container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] not in secret_volumes]
        token_from_env(container, prefix)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            container.pop(probe, None)
        for port in container["ports"]:  # podman publishes every container port: on loopback only
            port["hostIP"] = "127.0.0.1"
            port["hostPort"] = host_port if port["name"] == "grpc" else port["containerPort"] + 10
    pod.pop("topologySpreadConstraints", None)
    workload["kind"] = "Deployment"
    for key in ("serviceName", "podManagementPolicy"):
        spec.pop(key, None)
    spec["replicas"] = 1
    return extra + [workload]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder-port", type=int, default=50061)
    parser.add_argument("--index-port", type=int, default=50062)
    args = parser.parse_args()
    documents = []
    for file_name, kind, port in (("embedder.yaml", "Deployment", args.embedder_port),
                                  ("index.yaml", "StatefulSet", args.index_port)):
        for document in yaml.safe_load_all((MANIFESTS / file_name).read_text()):
            if document and document["kind"] == kind:
                documents += for_podman(document, port)
    yaml.safe_dump_all(documents, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
