#!/usr/bin/env bash
# The Kubernetes manifests run by `podman kube play`, as far as podman can run them (see
# scripts/kube_for_podman.py for what is rewritten and why): the embedder Deployment and the index (its
# StatefulSet's pod) start from the images scripts/container_check.sh builds, the token reaches them from a
# secret, and the client container's demo runs against them (precision@5 >= 0.95); a call without the
# token is refused; everything is removed at the end. Exit code 0 when all held.
#     bash scripts/container_check.sh   # once, for the images (or build the targets yourself)
#     bash scripts/kube_play_check.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HOME/.config/containers/containers.conf}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
EMBEDDER_PORT=${IMGSIM_KUBE_EMBEDDER_PORT:-50061}
INDEX_PORT=${IMGSIM_KUBE_INDEX_PORT:-50062}
WORK=$(mktemp -d)
PLAY=$WORK/play.yaml
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
remove_all() {
  [ -f "$PLAY" ] && podman kube down "$PLAY" >/dev/null 2>&1 || true
  podman volume rm -f imgsim-index-data >/dev/null 2>&1 || true
  podman secret rm imgsim-token >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap remove_all EXIT

for image in imgsim-embedder imgsim-index imgsim-client; do
  podman image exists "$image" || fail "no image $image: run scripts/container_check.sh (or podman build --target) first"
done

step "the manifests, as podman can play them"
"$PYTHON" "$REPO/scripts/kube_for_podman.py" --embedder-port "$EMBEDDER_PORT" --index-port "$INDEX_PORT" > "$PLAY"
grep -E '^kind:' "$PLAY" | sort | uniq -c
podman secret rm imgsim-token >/dev/null 2>&1 || true
printf '{"token":"%s"}' "$(printf %s "$TOKEN" | base64 -w0)" | podman secret create imgsim-token - >/dev/null

step "podman kube play"
podman kube play "$PLAY" >/dev/null
podman ps --filter name=imgsim- --format '{{.Names}}  {{.Status}}  {{.Ports}}' | grep -v infra
for port in "$EMBEDDER_PORT" "$INDEX_PORT"; do
  for attempt in $(seq 1 90); do
    "$PYTHON" -m imgsim.healthcheck "127.0.0.1:$port" >/dev/null 2>&1 && break
    [ "$attempt" = 90 ] && { podman logs --tail 30 imgsim-embedder-pod-0-embedder imgsim-index-pod-0-index >&2 || true; fail "127.0.0.1:$port never reported SERVING"; }
    sleep 2
  done
  echo "127.0.0.1:$port SERVING"
done

step "the client container's demo against the played pods"
mkdir -p "$WORK/out" && chmod 777 "$WORK/out"
podman run --rm --network host -e IMGSIM_TOKEN="$TOKEN" -e HOME=/tmp -v "$WORK/out:/out" imgsim-client \
  demo --embedder "127.0.0.1:$EMBEDDER_PORT" --index "127.0.0.1:$INDEX_PORT" --out /out | tee "$WORK/demo.txt"
precision=$(sed -n 's/^Mean precision@5 .*: \([0-9.]*\)$/\1/p' "$WORK/demo.txt")
[ -n "$precision" ] || fail "the demo printed no precision"
"$PYTHON" -c "import sys; sys.exit(0 if float('$precision') >= 0.95 else 1)" || fail "precision@5 $precision < 0.95"

step "a call without the token"
if podman run --rm --network host imgsim-client count --collection imgsim-demo --index "127.0.0.1:$INDEX_PORT" \
    > "$WORK/refused.txt" 2>&1; then
  fail "the index answered a call without the token"
fi
tail -1 "$WORK/refused.txt"
grep -q UNAUTHENTICATED "$WORK/refused.txt" || fail "not refused as UNAUTHENTICATED"

step "podman kube down"
podman kube down "$PLAY" >/dev/null
echo "kube play check passed: precision@5 $precision"
