# Shared by scripts/bench-monitoring.sh and scripts/bench-tls.sh (sourced,
# not run): the A/B harness that trains a job one way and another in
# alternating rounds. Sets root, job, rounds, loom, work and pids (from the
# sourcing script's arguments: [JOB.yaml] [ROUNDS]), removes what it
# started on exit, and provides mean_tps, free_port and ab_report.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
job="${1:-$root/examples/default.yaml}"
rounds="${2:-3}"
loom="$root/bin/loom"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$root"

mean_tps() { # mean tokens_per_sec of the JSON step lines after step 20
  python3 -c 'import json,sys
v=[json.loads(l)["tokens_per_sec"] for l in open(sys.argv[1]) if l.startswith("{") and "tokens_per_sec" in l]
v=v[20:] or v
print(sum(v)/len(v))' "$1"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ab_report NAME_A NAME_B "A values" "B values": the medians and B's ratio to A.
ab_report() {
  python3 - "$@" <<'PY'
import statistics, sys
na, nb = sys.argv[1], sys.argv[2]
a = statistics.median(float(x) for x in sys.argv[3].split())
b = statistics.median(float(x) for x in sys.argv[4].split())
print(f"median: {na} {a:.0f} tok/s, {nb} {b:.0f} tok/s: {nb}/{na} {b/a:.3f} ({100*(b-a)/a:+.2f}%)")
PY
}
