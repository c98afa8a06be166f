#!/usr/bin/env bash
# The cost of monitoring: tokens/s of a job (default examples/default.yaml)
# trained by `loom run` with the dashboard page open in headless Chromium
# and Prometheus scraping the coordinator every second, against the same
# run with neither (--http ""), in alternating rounds.
# Usage: scripts/bench-monitoring.sh [JOB.yaml] [ROUNDS]   (default 3 rounds)
# Needs: bin/loom and the job's data (make build out/gosrc.bin), chromium,
# prometheus (scripts/setup.sh test). Prints each run's mean tokens/s over
# its steps after the first 20, and the medians' ratio.
source "$(dirname "$0")/ab.sh"

run_plain() {
  "$loom" run "$job" --log-format json --sample-tokens 0 --overwrite --http "" >"$work/plain.json" 2>"$work/plain.err"
  mean_tps "$work/plain.json"
}

run_watched() {
  local port; port="$(free_port)"
  local addr="127.0.0.1:$port"
  go run ./deploy/grafana/gen "$work" >/dev/null
  python3 - "$work/prometheus.yml" "$addr" <<'PY'
import sys, re
p, addr = sys.argv[1], sys.argv[2]
s = open(p).read()
s = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", s)
s = re.sub(r"evaluation_interval: \S+", "evaluation_interval: 1s", s)
s = re.sub(r"targets:\n(\s+- .*\n)+", "targets:\n                - " + addr + "\n", s)
open(p, "w").write(s)
PY
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb.$port" \
    --web.listen-address="127.0.0.1:$(free_port)" >"$work/prom.log" 2>&1 &
  pids+=($!); local prom=$!
  "$loom" run "$job" --log-format json --sample-tokens 0 --overwrite --http "$addr" >"$work/watched.json" 2>"$work/watched.err" &
  local run=$!
  until grep -q "dashboard http://" "$work/watched.err" 2>/dev/null; do
    kill -0 "$run" 2>/dev/null || { cat "$work/watched.err" >&2; exit 1; }
    sleep 0.1
  done
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$work/chrome.$port" --remote-debugging-port=0 \
    "http://$addr/" >"$work/chrome.log" 2>&1 &
  pids+=($!); local chrome=$!
  wait "$run"
  kill "$chrome" "$prom" 2>/dev/null || true
  mean_tps "$work/watched.json"
}

grep -m1 "model name" /proc/cpuinfo
plain=(); watched=()
for r in $(seq "$rounds"); do
  p="$(run_plain)"; plain+=("$p")
  w="$(run_watched)"; watched+=("$w")
  printf 'round %d: neither %.0f tokens/s, page open + Prometheus 1s %.0f tokens/s\n' "$r" "$p" "$w"
done
ab_report "neither" "monitored" "${plain[*]}" "${watched[*]}"
