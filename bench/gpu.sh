#!/usr/bin/env bash
# bench/gpu.py on a lent GPU machine, in one short run (under 8 minutes on one H200). The device's image
# has torch (CUDA), transformers, torchvision, grpcio, protobuf and prometheus-client; what the client SDK
# needs beyond that (tqdm, pillow if missing) is installed from wheels carried along in ./wheels when
# present (`pip download tqdm -d wheels` on a machine with a registry). Extra arguments go to bench/gpu.py;
# `bash bench/gpu.sh --dry-run` runs it on the CPU anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ -d wheels ]; then
  "$PYTHON" -m pip install -q --no-index --find-links wheels tqdm pillow 2>/dev/null || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu.py "$@"
