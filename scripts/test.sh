#!/usr/bin/env bash
# The project's test command: installs the test tools it needs (idempotent),
# then runs every test. The tests start and stop their own servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-env.sh)"
cargo test --locked "$@"
