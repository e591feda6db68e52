#!/usr/bin/env bash
# Benchmarks: cold `scale --once` and Lambda cold start against the local
# stand-ins, then release binary sizes and the zipped Lambda size.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-env.sh)"
cargo bench --bench scale
cargo bench --bench simulate
cargo build --release --bins
dir="${CARGO_TARGET_DIR:-target}/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$dir/cci-scaler-lambda" "$work/bootstrap"
(cd "$work" && python3 -m zipfile -c lambda.zip bootstrap)
size() { stat -c %s "$1" | awk '{printf "%.1f MB (%d bytes)", $1/1e6, $1}'; }
echo "release cci-scaler:        $(size "$dir/cci-scaler")"
echo "release cci-scaler-lambda: $(size "$dir/cci-scaler-lambda")"
echo "lambda zip (bootstrap):    $(size "$work/lambda.zip")"
echo "glibc needed by bootstrap: $(objdump -T "$work/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)"
