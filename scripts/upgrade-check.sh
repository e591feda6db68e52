#!/usr/bin/env bash
# Build cci-scaler at an older revision (default: the last commit before
# runner pools) and run the upgrade test with it: a stack made by that
# release, then `init` of this tree on it, must change nothing.
#
#   scripts/upgrade-check.sh [REV]
#
# The old build goes to its own target folder (UPGRADE_TARGET_DIR, default
# under ~/.cache/cci-scaler): a cold debug build, several minutes the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-2c1d267}
target=${UPGRADE_TARGET_DIR:-$HOME/.cache/cci-scaler/upgrade-target}
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git worktree add --detach --force "$tree" "$rev" >/dev/null
echo "building cci-scaler at $(git rev-parse --short "$rev")"
(cd "$tree" && CARGO_TARGET_DIR=$target cargo build --locked --bin cci-scaler)
eval "$(scripts/test-env.sh)"
CCI_SCALER_UPGRADE_FROM=$target/debug/cci-scaler \
    cargo test --test e2e a_stack_without_pools_upgrades_with_no_change -- --nocapture
