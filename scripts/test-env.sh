#!/usr/bin/env bash
# Installs what the end-to-end tests need (idempotent) and prints the environment
# to use them:   eval "$(scripts/test-env.sh)"
#
# - the moto AWS emulator (server mode) in a virtualenv outside the clone, so
#   that repeated runs reuse it; the tests start and stop their own servers.
set -euo pipefail

MOTO_VERSION="5.2.5"
BOTO3_VERSION="1.44.8"
cache="${CCI_SCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cci-scaler}"
venv="$cache/moto-$MOTO_VERSION"

if [ ! -f "$venv/.complete" ]; then
  echo "test-env: installing moto $MOTO_VERSION into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "moto[server]==$MOTO_VERSION" "boto3==$BOTO3_VERSION" >&2
  touch "$venv/.complete"
fi

echo "export CCI_SCALER_MOTO_SERVER='$venv/bin/moto_server'"
