#!/usr/bin/env bash
# The cost of mutual TLS on a training job: tokens/s of a job (default
# examples/default.yaml, dp 2) trained by a coordinator and two workers on
# loopback over the tcp transport (shared memory would bypass TLS), with
# every connection plaintext against every connection mutual TLS (`loom
# certs init`), in alternating rounds.
# Usage: scripts/bench-tls.sh [JOB.yaml] [ROUNDS]   (default 3 rounds)
# Needs: bin/loom and the job's data (make build out/gosrc-bpe.bin
# out/pydoc-bpe.bin). Prints each run's mean tokens/s over its steps after
# the first 20, and the medians' ratio.
source "$(dirname "$0")/ab.sh"
"$loom" certs init "$work/pki" >/dev/null

# run MODE: one job on a fresh coordinator and two workers; MODE is plain
# or tls. Prints the mean tokens/s.
run() {
  local mode=$1 c w s
  c=(); w=(); s=()
  if [ "$mode" = tls ]; then
    c=(--tls-dir "$work/pki/coordinator"); w=(--tls-dir "$work/pki/worker"); s=(--tls-dir "$work/pki/admin")
  fi
  local addr="127.0.0.1:$(free_port)" threads=$(( $(nproc) / 2 ))
  [ "$threads" -ge 1 ] || threads=1
  "$loom" coordinator --listen "$addr" "${c[@]}" >"$work/$mode.coord" 2>&1 &
  pids+=($!); local cp=$!
  for i in 1 2; do
    "$loom" worker --coordinator "$addr" --transport tcp --threads "$threads" --dial-timeout 30s "${w[@]}" >"$work/$mode.w$i" 2>&1 &
    pids+=($!)
  done
  "$loom" submit "$job" --coordinator "$addr" --overwrite --log-format json --pending-timeout 60s "${s[@]}" >"$work/$mode.json" 2>"$work/$mode.err" \
    || { cat "$work/$mode.err" "$work/$mode.coord" >&2; exit 1; }
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
  grep -q "mutual TLS" "$work/$mode.w1" && [ "$mode" = plain ] && { echo "plaintext run used TLS" >&2; exit 1; }
  mean_tps "$work/$mode.json"
}

plain=(); tls=()
for r in $(seq "$rounds"); do
  p=$(run plain); t=$(run tls)
  plain+=("$p"); tls+=("$t")
  printf 'round %d: plaintext %.0f tok/s, mutual TLS %.0f tok/s\n' "$r" "$p" "$t"
done
ab_report "plaintext" "mutual TLS" "${plain[*]}" "${tls[*]}"
