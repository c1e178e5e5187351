#!/usr/bin/env bash
# The images and the compose stack, for real, on a machine with podman (set up by the shared
# ../shared/containers/podman-env.sh on our build machines; any podman or Docker host with podman-compose
# works the same). From a clean clone of this repository it:
#   1. builds every Dockerfile target (sizes and build times printed),
#   2. starts the stack, waits for health, runs the client container's demo (precision@5 >= 0.95),
#   3. scales the embedder to 3 and shows the calls reached more than one replica (per-replica metrics),
#   4. restarts the index and shows its data kept,
#   5. stops everything; exit code 0 when all held.
#     bash scripts/container_check.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SETUP=${IMGSIM_PODMAN_ENV:-$REPO/../shared/containers/podman-env.sh}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HOME/.config/containers/containers.conf}
MOUNTS=""
[ -f "$SETUP" ] && MOUNTS=$(bash "$SETUP" mounts)
# Where PyTorch's CPU index is unreachable and a local wheel stands in for it (our build machines).
TORCH_ARG=${IMGSIM_TORCH_CPU_INDEX-}
WORK=$(mktemp -d)
PROJECT=imgsimcheck
remove_all() {  # podman-compose's down leaves replicas made by --scale behind: remove by label
  podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f >/dev/null 2>&1 || true
  podman pod rm -f "pod_$PROJECT" >/dev/null 2>&1 || true
  podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  podman volume rm -f "${PROJECT}_index-data" "${PROJECT}_hf-cache" >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
}
trap 'remove_all; rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

step "clean clone"
git clone -q "$REPO" "$WORK/imgsim"
cd "$WORK/imgsim"
git log --oneline -1

step "build every target"
for target in index client embedder embedder-gpu; do
  started=$(date +%s)
  podman build -q $MOUNTS --build-arg "TORCH_CPU_INDEX=$TORCH_ARG" --target "$target" -t "imgsim-$target" . >/dev/null \
    || fail "podman build --target $target"
  size=$(podman image inspect "imgsim-$target" --format '{{.Size}}')
  printf '%-14s built in %4d s, %6d MB\n' "$target" $(( $(date +%s) - started )) $(( size / 1000000 ))
done

compose() { podman-compose -p $PROJECT "$@"; }
container() { podman ps --filter "label=io.podman.compose.project=$PROJECT" --filter "label=io.podman.compose.service=$1" --format '{{.Names}}'; }
healthy() {  # podman here cannot schedule health checks: run the image's own check until it passes
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    podman exec "$name" python -m imgsim.healthcheck "127.0.0.1:$port" >/dev/null 2>&1 && return 0
    sleep 2
  done
  podman logs --tail 30 "$name" >&2
  fail "$name never reported SERVING"
}
metric() {  # one replica's counter, read inside its container (replicas' metrics are not published)
  podman exec "$1" python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9101/metrics').read().decode())" \
    | awk -v m="$2" '$1 == m {print int($2)}'
}
client() { compose --profile tools run --rm -T client "$@"; }

step "compose up (images from step 1)"
mkdir -p demo-out && chmod 777 demo-out
compose up -d --no-build embedder index
healthy "$(container index)" 50052
healthy "$(container embedder)" 50051

step "the client container's demo"
client demo --out /out | tee "$WORK/demo.txt"
precision=$(sed -n 's/^Mean precision@5 .*: \([0-9.]*\)$/\1/p' "$WORK/demo.txt")
python3 -c "import sys; sys.exit(0 if float('$precision') >= 0.95 else 1)" || fail "precision@5 $precision < 0.95"
[ -s demo-out/results.png ] || fail "no demo-out/results.png on the host"
echo "precision@5 $precision; demo-out/results.png on the host: $(stat -c %s demo-out/results.png) bytes"

step "scale the embedder to 3"
compose up -d --no-build --scale embedder=3 embedder
replicas=$(container embedder)
for name in $replicas; do healthy "$name" 50051; done
declare -A before
for name in $replicas; do before[$name]=$(metric "$name" imgsim_embedder_images_total || echo 0); done
client demo --out /out --num-queries 200 >/dev/null
reached=0
for name in $replicas; do
  now=$(metric "$name" imgsim_embedder_images_total || echo 0)
  delta=$(( ${now:-0} - ${before[$name]:-0} ))
  echo "$name: $delta images"
  [ "$delta" -gt 0 ] && reached=$((reached + 1))
done
[ "$reached" -ge 2 ] || fail "the calls reached $reached replica(s), not several"

step "restart the index: its data stays"
held=$(client count --collection imgsim-demo | tail -1)
podman restart "$(container index)" >/dev/null
healthy "$(container index)" 50052
again=$(client count --collection imgsim-demo | tail -1)
echo "imgsim-demo held $held items before the restart, $again after"
[ "$held" = "$again" ] && [ "$held" -gt 0 ] || fail "the index lost data across a restart"

step "stop"
running="$(container index) $replicas"
for name in $running; do podman stop -t 30 "$name" >/dev/null; done
for name in $running; do
  code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
  echo "$name stopped with exit code $code"
  [ "$code" = 0 ] || fail "$name did not stop cleanly on SIGTERM"
done
remove_all
echo "container check passed"
