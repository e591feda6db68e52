#!/usr/bin/env bash
# Cold-build figures; slow on purpose: every step starts from an empty target
# folder (registry downloads are fetched first and not timed).
#   debug    `cargo build --bins`, then `cargo test --no-run`: what the second
#            step compiles again (only test-only crates and ours, when the
#            features of shared crates are aligned)
#   install  `cargo install --path .` (the release profile), binary sizes
#   dist     `cargo build --profile dist --bins` (LTO, for the Lambda artifact),
#            binary sizes
# Usage: scripts/measure-build.sh [debug] [install] [dist]   (default: all three)
# Prints wall and CPU (user + system) seconds per step. CPU seconds compare
# across runs even on a busy machine; wall seconds only on a quiet one.
# MEASURE_TARGET_DIR=DIR (an empty or missing folder) builds there and keeps
# the result, for `CARGO_TARGET_DIR=DIR scripts/bench.sh` to reuse.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(debug install dist)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo fetch --locked >/dev/null 2>&1

# timed LABEL COMMAND...: runs it, prints one line of figures.
timed() {
  local label=$1
  shift
  if ! /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >"$work/log" 2>&1; then
    tail -20 "$work/log" >&2
    echo "measure-build: '$label' failed" >&2
    exit 1
  fi
  read -r wall user sys <"$work/time"
  awk -v l="$label" -v w="$wall" -v u="$user" -v s="$sys" -v n="$(grep -c ' Compiling ' "$work/log")" \
    'BEGIN { printf "%-44s %5.0f s wall %6.0f s CPU %4d crates compiled\n", l, w, u + s, n }'
}
size() { stat -c %s "$1" | awk -v n="$2" '{ printf "  %-30s %6.1f MB\n", n, $1 / 1e6 }'; }
zipped() {
  cp "$1" "$work/bootstrap"
  (cd "$work" && rm -f l.zip && python3 -m zipfile -c l.zip bootstrap)
  size "$work/l.zip" "lambda zip (bootstrap)"
}

keep="${MEASURE_TARGET_DIR:-}"
if [ -n "$keep" ] && [ -n "$(ls -A "$keep" 2>/dev/null)" ]; then
  echo "measure-build: $keep is not empty; a cold build needs an empty folder" >&2
  exit 2
fi
for step in "${steps[@]}"; do
  export CARGO_TARGET_DIR="${keep:-$work/target-$step}"
  case "$step" in
  debug)
    timed "cold cargo build --bins" cargo build --locked --bins
    timed "then cargo test --no-run" cargo test --locked --no-run
    echo "  compiled again for the tests: $(grep ' Compiling ' "$work/log" | awk '{ print $2 }' | sort | tr '\n' ' ')"
    ;;
  install)
    timed "cold cargo install --path ." cargo install --locked --path . --root "$work/root" --no-track
    size "$work/root/bin/cci-scaler" cci-scaler
    size "$work/root/bin/cci-scaler-lambda" cci-scaler-lambda
    zipped "$work/root/bin/cci-scaler-lambda"
    ;;
  dist)
    timed "cold cargo build --profile dist --bins" cargo build --locked --profile dist --bins
    size "$CARGO_TARGET_DIR/dist/cci-scaler" cci-scaler
    size "$CARGO_TARGET_DIR/dist/cci-scaler-lambda" cci-scaler-lambda
    zipped "$CARGO_TARGET_DIR/dist/cci-scaler-lambda"
    ;;
  *)
    echo "measure-build: unknown step '$step' (debug, install, dist)" >&2
    exit 2
    ;;
  esac
  [ -n "$keep" ] || rm -rf "$CARGO_TARGET_DIR"
done
