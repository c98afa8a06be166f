#!/usr/bin/env bash
# Installs what Loom's build and tests need beyond Go, idempotently: Debian
# packages are installed only when missing. Usage: scripts/setup.sh [test|run|deploy]
set -euo pipefail
pkgs=(protobuf-compiler)
if [ "${1:-}" = run ]; then
  # English prose for `make run`'s default corpus.
  pkgs+=(python3.11-doc)
fi
if [ "${1:-}" = test ]; then
  # chromium: the dashboard's browser test; npm: the web bundle's check.
  pkgs+=(etcd-server prometheus chromium)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
fi
if [ "${1:-}" = deploy ]; then
  # The multi-host test: network namespaces, veth, tc (iproute2), sysctl
  # (procps), Debian's etcd; the image test: podman, and runc (crun cannot
  # set up cgroups in some sandboxes).
  pkgs=(iproute2 procps etcd-server podman runc)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
go mod download
# The dashboard's pinned npm packages (web/package-lock.json), for the test
# that the committed bundle is current.
web="$(cd "$(dirname "$0")/../web" && pwd)"
if [ "${1:-}" = test ] && [ ! -x "$web/node_modules/.bin/esbuild" ]; then
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
# The reference tokenizers (scripts/tokref/package-lock.json: Hugging Face
# tokenizers' Node binding, tiktoken, and the LLaMA-3 and GPT-2 vocabularies
# npm packages ship), for the tokenizer package's tests; reinstalled only
# when the lock file changes.
tokref="$(cd "$(dirname "$0")/tokref" && pwd)"
if [ "${1:-}" = test ] && ! cmp -s "$tokref/package-lock.json" "$tokref/node_modules/.loom-lock.json" 2>/dev/null; then
  (cd "$tokref" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.loom-lock.json)
fi
