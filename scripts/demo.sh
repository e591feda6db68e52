#!/usr/bin/env bash
# A first run without an AWS account: starts the local AWS emulator (moto) and
# a CircleCI runner-API stand-in on 127.0.0.1, then shows the whole life of a
# fleet against them: init; jobs queued; scale --once every few seconds, as
# the Lambda would poll; the stand-in registers a runner for each instance
# launched, the jobs run and finish, the instances leave with decrement and
# the group returns to 0; status --watch on the way; teardown; and last a
# simulated day (table and chart). Stops both servers at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing the emulator (once) and building cci-scaler"
eval "$(scripts/test-env.sh --python-only)"
echo "The first build compiles about 300 crates (the AWS SDK among them): several"
echo "minutes, about 9 on 2 cores. Later runs take seconds. Cargo shows its progress."
# Cargo draws its progress bar on a terminal and prints one line per crate
# otherwise, so a first build never looks hung.
cargo build --bins
target="${CARGO_TARGET_DIR:-target}/debug"
bin="$target/cci-scaler"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step "starting the AWS emulator and the CircleCI stand-in on 127.0.0.1"
"$CCI_SCALER_MOTO_SERVER" -H 127.0.0.1 -p 0 2> "$work/moto.log" &
pids+=($!)
for _ in $(seq 100); do
  port=$(grep -o 'Running on http://127.0.0.1:[0-9]*' "$work/moto.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "${port:-}" ] || { echo "moto did not start:"; cat "$work/moto.log"; exit 1; }
moto="http://127.0.0.1:$port"
until curl -fsS "$moto/moto-api/" >/dev/null 2>&1; do sleep 0.1; done
curl -fsS -X POST "$moto/moto-api/config" -d '{"lambda":{"use_docker":false}}' >/dev/null
# The virtualenv's Python has boto3, for the stand-in's runners.
"$(dirname "$CCI_SCALER_MOTO_SERVER")/python" scripts/circleci-stand-in.py \
  --fleet "$moto" --job-seconds 6 > "$work/cci.url" &
pids+=($!)
until [ -s "$work/cci.url" ]; do sleep 0.1; done
cci=$(head -1 "$work/cci.url")
echo "AWS emulator:      $moto"
echo "CircleCI stand-in: $cci"

export AWS_ENDPOINT_URL="$moto" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export CIRCLECI_RUNNER_API_URL="$cci" CIRCLECI_TOKEN="demo-personal-token"
stack=(--stack demo --resource-class demo-org/linux-x64)
image=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64

step "cci-scaler init (the emulator has no Ubuntu parameter: an Amazon Linux one stands in)"
"$bin" init "${stack[@]}" --image "$image" --max-instances 5 --no-bake \
  --lambda-binary "$target/cci-scaler-lambda"

step "cci-scaler init again: converges, changes nothing"
"$bin" init "${stack[@]}" --image "$image" --max-instances 5 --no-bake \
  --lambda-binary "$target/cci-scaler-lambda"

state() { curl -fsS "$cci/_stand-in/state"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

step "three jobs queued; cci-scaler scale --once every 3 s, as the Lambda polls"
curl -fsS -X POST "$cci/_stand-in/queue" -d '{"unclaimed": 3, "running": 0}' >/dev/null
drained=""
for round in $(seq 1 20); do
  "$bin" scale --once --stack demo --resource-class demo-org/linux-x64
  if [ "$round" -eq 2 ]; then
    step "cci-scaler status --watch for a few seconds (Ctrl-C stops it)"
    timeout -s INT 5 "$bin" status --stack demo --watch --interval 2s || true
    step "polling on"
  fi
  s=$(state)
  if [ "$(field unclaimed <<<"$s")" = 0 ] && [ "$(field running <<<"$s")" = 0 ] &&
    [ "$(field desired <<<"$s")" = 0 ] && [ "$(field runners <<<"$s")" = "[]" ]; then
    echo "every job ran; every instance left; the group is back to 0"
    drained=yes
    break
  fi
  sleep 3
done

[ -n "$drained" ] || { echo "demo: the fleet did not drain: $(state)" >&2; exit 1; }

step "cci-scaler status (the stack name is enough: it knows its resource class)"
"$bin" status --stack demo

step "cci-scaler teardown --yes"
"$bin" teardown --stack demo --yes

chart="${CARGO_TARGET_DIR:-target}/demo-day.svg"
step "a simulated working day at 5 instances: cci-scaler against the tutorial"
"$bin" simulate --max-instances 5 --chart "$chart"

step "done: the emulator and the stand-in are stopped (the chart: $chart)"
