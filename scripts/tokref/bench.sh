#!/usr/bin/env bash
# Encoding throughput (MB/s of UTF-8 input) of Loom against Hugging Face
# tokenizers (the npm Node binding) and tiktoken (its Rust core as WASM), back
# to back on the same corpus with the same vocabularies: GPT-2 (r50k) and
# cl100k_base, both as tiktoken rank files and as tokenizer.json (converted by
# `loom tokenizer convert`). Loom and Hugging Face at 1 and 2 threads;
# tiktoken's WASM build has one. Every figure is the best of 3 passes, and the
# whole set runs ROUNDS times (default 3), alternating the implementations.
#
# Usage: scripts/tokref/bench.sh [CORPUS]   (needs `make build` and `scripts/setup.sh test`)
# Default corpus: the first 6 MB of the Go sources (sorted) and 2 MB of Python's docs
# (Debian python3.11-doc), one document per blank-line-separated 4 KB block.
# Output: one JSON line per measurement, on stdout and in $OUT/results.jsonl.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
loom="${LOOM:-$root/bin/loom}"
out="${OUT:-/tmp/loom-tokbench}"
rounds="${ROUNDS:-3}"
mkdir -p "$out"
node "$here/ref.cjs" export "$out/vocab"
corpus="${1:-$out/corpus.txt}"
if [ -z "${1:-}" ]; then
  set +o pipefail # head closes the pipes early
  {
    find "$(go env GOROOT)/src" -name '*.go' | sort | xargs cat | head -c 6000000
    if [ -d /usr/share/doc/python3.11/html/_sources ]; then
      find /usr/share/doc/python3.11/html/_sources -name '*.txt' | sort | xargs cat | head -c 2000000
    fi
  } > "$corpus"
  set -o pipefail
fi
for v in gpt2 cl100k_base; do
  "$loom" tokenizer convert "$out/vocab/$v.tiktoken" --out "$out/$v.json" >/dev/null
  node -e "const j=require('$out/vocab/$v.json'); require('fs').writeFileSync('$out/$v.specials.json', JSON.stringify(j.specials)); require('fs').writeFileSync('$out/$v.pattern', j.pattern)"
done
: > "$out/results.jsonl"
emit() { echo "$1" | tee -a "$out/results.jsonl"; }
for r in $(seq "$rounds"); do
  for v in gpt2 cl100k_base; do
    for t in 1 2; do
      emit "{\"round\":$r,\"vocab\":\"$v\",\"format\":\"tokenizer.json\",\"result\":$("$loom" tokenizer bench --tokenizer "$out/$v.json" "$corpus" --threads "$t")}"
      emit "{\"round\":$r,\"vocab\":\"$v\",\"format\":\"tiktoken\",\"result\":$("$loom" tokenizer bench --tokenizer "$out/vocab/$v.tiktoken" "$corpus" --threads "$t")}"
      emit "{\"round\":$r,\"vocab\":\"$v\",\"format\":\"tokenizer.json\",\"result\":$(RAYON_NUM_THREADS=$t node "$here/ref.cjs" bench "$out/$v.json" "$corpus" hf)}"
    done
    emit "{\"round\":$r,\"vocab\":\"$v\",\"format\":\"tiktoken\",\"result\":$(node "$here/ref.cjs" bench "$out/vocab/$v.tiktoken" "$corpus" tiktoken "$(cat "$out/$v.pattern")" "$out/$v.specials.json")}"
  done
done
