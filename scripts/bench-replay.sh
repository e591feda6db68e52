#!/usr/bin/env bash
# Benchmark: a month of a stand-in organisation's history (two self-hosted
# classes, 10,000 job runs each, working-day shaped) replayed through every
# pool of a two-pool stack file, both policies. Prints the wall time and the
# time per 10,000 jobs; then times --recommend over the same month. Builds
# the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin cci-scaler
bin="${CARGO_TARGET_DIR:-target}/release/cci-scaler"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/month.csv" <<'PY'
import random, sys
random.seed(1)
weights = [1, 1, 1, 1, 1, 2, 4, 12, 45, 70, 60, 45, 25, 35, 65, 75, 55, 35, 15, 8, 5, 3, 2, 2]
rows = ["arrival_s,duration_s,resource_class"]
for rc in ["acme/linux", "acme/arm"]:
    for _ in range(10_000):
        day = random.randrange(30)
        hour = random.choices(range(24), weights=weights)[0]
        t = day * 86400 + hour * 3600 + random.randrange(3600)
        rows.append(f"{t},{max(1, int(random.lognormvariate(5.9, 0.8)))},{rc}")
open(sys.argv[1], "w").write("\n".join(rows) + "\n")
PY
printf 'stack = "bench"\n[defaults]\nmax_instances = 20\n[[pool]]\nresource_class = "acme/linux"\n[[pool]]\nresource_class = "acme/arm"\n' >"$work/stack.toml"
start=$(date +%s.%N)
"$bin" simulate --config "$work/stack.toml" --jobs "$work/month.csv" >/dev/null
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'20000 jobs over 30 days, 2 pools, both policies: {s:.2f} s ({s/2:.2f} s per 10,000 jobs)')" "$start" "$end"
start=$(date +%s.%N)
"$bin" simulate --config "$work/stack.toml" --jobs "$work/month.csv" --recommend --target-p95 60s --output json >"$work/rec.json" || true
end=$(date +%s.%N)
python3 -c "import json,sys; v=json.load(open(sys.argv[3])); s=float(sys.argv[2])-float(sys.argv[1]); print(f'--recommend --target-p95 60s over the same month: {v[\"settings_replayed\"]} settings in {s:.1f} s')" "$start" "$end" "$work/rec.json"
