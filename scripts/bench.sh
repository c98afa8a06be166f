#!/usr/bin/env bash
# `make bench`: installs the anchors' Debian packages if missing, then runs
# scripts/bench.py (Loom beside OpenBLAS, PyTorch, Gloo and OpenMPI, back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
for p in libopenblas-dev python3-torch openmpi-bin libopenmpi-dev; do
  if ! dpkg -s "$p" >/dev/null 2>&1; then
    echo "bench: installing $p" >&2
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$p" >/dev/null
  fi
done
exec /usr/bin/python3 scripts/bench.py "$@"
