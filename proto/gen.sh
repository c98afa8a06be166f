#!/usr/bin/env bash
# Regenerates the Go code for every .proto under proto/loom/v1.
# Usage: proto/gen.sh [OUTDIR]   (default: the repository root, i.e. in place)
# Needs protoc on PATH; the Go plugins come from go.mod's tool entries.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root}"
cd "$root"
gen_go="$(go tool -n protoc-gen-go)"
gen_grpc="$(go tool -n protoc-gen-go-grpc)"
mkdir -p "$out"
shopt -s nullglob
protos=(proto/loom/v1/*.proto)
if [ ${#protos[@]} -eq 0 ]; then
  echo "gen.sh: no .proto files under proto/loom/v1" >&2
  exit 1
fi
protoc -I proto \
  --plugin=protoc-gen-go="$gen_go" \
  --plugin=protoc-gen-go-grpc="$gen_grpc" \
  --go_out="$out" --go_opt=module=github.com/loomtrain/loom \
  --go-grpc_out="$out" --go-grpc_opt=module=github.com/loomtrain/loom \
  "${protos[@]#proto/}"
