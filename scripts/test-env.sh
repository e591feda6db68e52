#!/usr/bin/env bash
# Installs what the tests need (idempotent: a second run installs nothing) and
# prints the environment to use them:   eval "$(scripts/test-env.sh)"
#
# - shellcheck, bubblewrap and iptables (Debian packages), for the user-data
#   tests (the metadata-firewall test runs as root, or through password-less
#   sudo, in a network namespace of its own): with
#   apt-get, as root or through password-less sudo; otherwise it says what to
#   install and stops.
# - qemu-system-x86, mmdebstrap and socat (Debian packages), for the real-boot
#   tests; then the VM image they boot (scripts/vm-image.sh: built once, cached
#   outside the clone). QEMU comes from bookworm-backports when the machine's
#   qemu-utils does (the two releases' packages conflict); the backports
#   archive is added to apt's sources for that.
# - a virtualenv outside the clone with the Python tools pinned in
#   scripts/test-requirements.txt: the moto AWS emulator and the parliament IAM
#   linter, and resvg (the chart's PNG). The tests start and stop their own
#   servers.
# One line on stderr per install; nothing on stderr when all is in place.
# `--python-only` skips the Debian packages (the demo needs only the emulator).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-env: $*" >&2; }
die() {
  echo "test-env: error: $*" >&2
  exit 1
}

# Installs shellcheck, bubblewrap and iptables from Debian packages.
debian_packages() {
  missing=()
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
  PATH="$PATH:/usr/sbin:/sbin" command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
  # A font for the chart's PNG rendering.
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
  if [ ${#missing[@]} -gt 0 ]; then
    what="${missing[*]}"
    what="${what// / and }"
    if ! command -v apt-get >/dev/null 2>&1; then
      die "$what not found and there is no apt-get here: install $what with your package manager, then re-run"
    fi
    if [ "$(id -u)" -eq 0 ]; then
      as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      as_root=(sudo -n)
    else
      die "$what not found, and installing needs root (no password-less sudo): run 'sudo apt-get install -y ${missing[*]}', then re-run"
    fi
    say "installing $what (Debian packages, for the user-data and real-boot tests)"
    log=$(mktemp)
    release=()
    if dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q 'bpo12'; then
      # QEMU must come from where qemu-utils came from.
      sources=/etc/apt/sources.list.d/cci-scaler-test-backports.sources
      if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
          "${as_root[@]}" tee "$sources" >/dev/null
      fi
      release=(-t bookworm-backports)
    fi
    if ! { "${as_root[@]}" apt-get update -qq &&
      "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${release[@]}" "${missing[@]}"; } >"$log" 2>&1; then
      tail -20 "$log" >&2
      rm -f "$log"
      die "apt-get could not install ${missing[*]} (output above): install them by hand, then re-run"
    fi
    rm -f "$log"
  fi
  if ! bwrap --ro-bind / / --dev /dev --proc /proc true 2>/dev/null; then
    die "bwrap is installed but cannot create a sandbox here (unprivileged user namespaces off?): the user-data tests need it"
  fi
  if [ "$(id -u)" -ne 0 ] && ! { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
    die "the metadata-firewall test needs root or password-less sudo (its sandbox sets firewall rules and switches users): run the tests as root, or allow sudo"
  fi
}

# --- Debian packages -------------------------------------------------------
if [ "${1:-}" != "--python-only" ]; then
  debian_packages
fi

# --- the real-boot VM image ---------------------------------------------------
vm_image=""
if [ "${1:-}" != "--python-only" ]; then
  # Built as root (mmdebstrap's root mode), cached where this user's cache is.
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
  vm_image=$("${as_root[@]}" env CCI_SCALER_CACHE="${CCI_SCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cci-scaler}" \
    scripts/vm-image.sh) || die "the real-boot VM image could not be built (output above)"
fi

# --- Python tools in a virtualenv --------------------------------------------
requirements=scripts/test-requirements.txt
key=$(sha256sum "$requirements" | cut -c1-12)
cache="${CCI_SCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cci-scaler}"
venv="$cache/test-tools-$key"
if [ ! -f "$venv/.complete" ]; then
  command -v python3 >/dev/null 2>&1 ||
    die "python3 not found: install Python 3.9 or later (Debian: python3 python3-venv), then re-run"
  say "installing the moto AWS emulator and the parliament IAM linter into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" >/dev/null 2>&1 ||
    die "python3 cannot create a virtualenv: install the venv module (Debian: python3-venv), then re-run"
  log=$(mktemp)
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "$requirements" >"$log" 2>&1; then
    tail -20 "$log" >&2
    rm -f "$log"
    rm -rf "$venv"
    die "pip could not install $requirements (output above; it needs the Python package index)"
  fi
  rm -f "$log"
  touch "$venv/.complete"
fi

echo "export CCI_SCALER_MOTO_SERVER='$venv/bin/moto_server'"
echo "export CCI_SCALER_PARLIAMENT='$venv/bin/parliament'"
echo "export CCI_SCALER_PYTHON='$venv/bin/python'"
if [ -n "$vm_image" ]; then echo "export CCI_SCALER_VM_IMAGE='$vm_image'"; fi
