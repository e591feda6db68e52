#!/usr/bin/env bash
# Benchmarks: cold `scale --once` and Lambda cold start against the local
# stand-ins, for the release binaries (no LTO, what `cargo install` builds) and
# the dist ones (thin LTO); the 10,000-job simulation; binary and zip sizes.
# BENCH_DIST_DIR=DIR uses dist binaries built elsewhere (a cold dist build is
# the longest build there is).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-env.sh --python-only)"
target="${CARGO_TARGET_DIR:-target}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

dist="${BENCH_DIST_DIR:-$target/dist}"
cargo build --release --bins
[ -n "${BENCH_DIST_DIR:-}" ] || cargo build --profile dist --bins
echo "== release profile (no LTO)"
CCI_SCALER_BENCH_BIN_DIR="$target/release" cargo bench --bench scale
echo "== dist profile (thin LTO)"
CCI_SCALER_BENCH_BIN_DIR="$dist" cargo bench --bench scale
cargo bench --bench simulate

size() { stat -c %s "$1" | awk '{printf "%.1f MB (%d bytes)", $1/1e6, $1}'; }
for profile in release dist; do
  dir="$target/$profile"
  [ "$profile" = dist ] && dir="$dist"
  cp "$dir/cci-scaler-lambda" "$work/bootstrap"
  (cd "$work" && rm -f lambda.zip && python3 -m zipfile -c lambda.zip bootstrap)
  echo "$profile cci-scaler:        $(size "$dir/cci-scaler")"
  echo "$profile cci-scaler-lambda: $(size "$dir/cci-scaler-lambda")"
  echo "$profile lambda zip:        $(size "$work/lambda.zip")"
  echo "$profile glibc needed:      $(objdump -T "$work/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)"
done
