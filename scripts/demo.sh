#!/usr/bin/env bash
# A first run without an AWS account: starts the local AWS emulator (moto) and
# a CircleCI runner-API stand-in on 127.0.0.1, then runs the main job against
# them: init, queue a few jobs, scale --once, status, teardown. Stops both
# servers at the end.
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
python3 scripts/circleci-stand-in.py > "$work/cci.url" &
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
"$bin" init "${stack[@]}" --image "$image" --max-instances 5 \
  --lambda-binary "$target/cci-scaler-lambda"

step "cci-scaler init again: converges, changes nothing"
"$bin" init "${stack[@]}" --image "$image" --max-instances 5 \
  --lambda-binary "$target/cci-scaler-lambda"

step "three jobs queued in the stand-in; cci-scaler scale --once"
curl -fsS -X POST "$cci/_stand-in/queue" -d '{"unclaimed": 3, "running": 0}' >/dev/null
"$bin" scale --once --asg demo-runners --resource-class demo-org/linux-x64

step "cci-scaler status (the stack name is enough: it knows its resource class)"
"$bin" status --stack demo

step "cci-scaler teardown --yes"
"$bin" teardown --stack demo --yes

step "done: the emulator and the stand-in are stopped"
