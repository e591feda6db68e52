#!/usr/bin/env bash
# The README's table of headroom = "auto" against a fixed count of spares in
# working hours (0 to 4), per workload: p95 wait and cost, seed 1, a
# runner-ready image, 4 weeks of history. Builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin cci-scaler
bin="${CARGO_TARGET_DIR:-target}/release/cci-scaler"
row() { # WORKLOAD MAX HEADROOM -> "p95, cost"
  "$bin" simulate --output json --workload "$1" --max-instances "$2" --image baked --headroom "$3" |
    python3 -c '
import json, sys
o = json.load(sys.stdin)["reports"][0]
p, c = o["waits"]["p95_s"], o["cost"]
print(f"{p // 60}m{p % 60:02d}s" if p >= 60 else f"{p}s", f"{c:.2f}", sep=", ")'
}
echo "| workload | auto | 0 | 1 | 2 | 3 | 4 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for w in working-day time-zones fan-out small-team; do
  max=20
  [ "$w" = fan-out ] && max=50
  line="| $w | $(row "$w" "$max" auto)"
  for n in 0 1 2 3 4; do line="$line | $(row "$w" "$max" "$n")"; done
  echo "$line |"
done
