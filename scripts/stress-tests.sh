#!/usr/bin/env bash
# The whole suite N times in a row (default 20) with two CPU burners running,
# then failures per test: is the suite a signal or a coin?
#   scripts/stress-tests.sh [N] [BURNERS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
burners="${2:-2}"
eval "$(scripts/test-env.sh)"
cargo test --locked --no-run >/dev/null 2>&1 || cargo test --locked --no-run

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq "$burners"); do
  (while :; do :; done) &
  pids+=($!)
done

start=$(date +%s)
for i in $(seq "$runs"); do
  t0=$(date +%s)
  if cargo test --locked --no-fail-fast >"$work/run-$i.log" 2>&1; then status=ok; else status=FAILED; fi
  grep -E '^test .* \.\.\. FAILED$' "$work/run-$i.log" | awk '{ print $2 }' >>"$work/failures" || true
  passed=$(grep -cE '^test .* \.\.\. ok$' "$work/run-$i.log" || true)
  echo "run $i/$runs: $status, $passed tests passed, $(($(date +%s) - t0)) s"
done
echo "$runs runs with $burners CPU burners in $(($(date +%s) - start)) s"
if [ -s "$work/failures" ]; then
  echo "failures per test:"
  sort "$work/failures" | uniq -c | sort -rn
  exit 1
fi
echo "failures per test: none"
