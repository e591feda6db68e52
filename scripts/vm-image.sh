#!/usr/bin/env bash
# Builds (once) the Debian image the real-boot tests boot under QEMU, and prints
# the folder that holds it: rootfs.ext4, vmlinuz and initrd.img.
#
# A Debian bookworm root file system (mmdebstrap) with real systemd, the Debian
# cloud kernel and cloud-init set to the EC2 datasource, plus what the runner
# user data calls (curl with --aws-sigv4, iptables, sudo). It gets a stub
# `circleci-runner` (no runner package can be had offline) with a unit shaped
# like the package's: it checks its config, logs, and exits when told to, so
# the exit hook really runs under systemd. Cached outside the clone under a key
# of this script's text: a change here builds a new image.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "vm-image: error: $*" >&2
  exit 1
}
key=$(sha256sum scripts/vm-image.sh | cut -c1-12)
cache="${CCI_SCALER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cci-scaler}"
out="$cache/vm-image-$key"
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi
# One build at a time (parallel test runs wait for the first one's image).
mkdir -p "$cache"
exec 9>"$cache/vm-image.lock"
flock 9
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (scripts/test-env.sh installs it)"
PATH="$PATH:/usr/sbin:/sbin"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found (Debian: e2fsprogs)"
[ "$(id -u)" -eq 0 ] || die "building the VM image needs root (mmdebstrap's root mode)"

echo "vm-image: building the real-boot VM image into $out (a few minutes, once)" >&2
rm -rf "$out"
work=$(mktemp -d "$cache/vm-build.XXXXXX")
# Cleanup never follows a mount left inside the tree (an interrupted
# mmdebstrap can leave /proc, /sys or /dev/pts mounted there).
cleanup() {
  local rc=$? m
  set +e
  for m in $(grep -F " $work/" /proc/mounts | cut -d' ' -f2 | sort -r); do umount -l "$m"; done
  rm -rf --one-file-system "$work"
  exit "$rc"
}
trap cleanup EXIT
root="$work/root"

log="$work/mmdebstrap.log"
if ! mmdebstrap --variant=minbase --mode=root \
  --include=systemd-sysv,linux-image-cloud-amd64,initramfs-tools,cloud-init,iptables,curl,ca-certificates,sudo,netbase,iproute2,procps,apt-utils,openssl \
  --customize-hook='chroot "$1" useradd -m -s /bin/bash circleci' \
  bookworm "$root" http://deb.debian.org/debian >"$log" 2>&1; then
  tail -30 "$log" >&2
  die "mmdebstrap failed (output above; it needs Debian's package archive)"
fi

# cloud-init: EC2 only, nothing that reaches outside.
cat >"$root/etc/cloud/cloud.cfg.d/90-cci-scaler-test.cfg" <<'CFG'
datasource_list: [Ec2, None]
datasource:
  Ec2:
    strict_id: false
    metadata_urls: ["http://169.254.169.254"]
    max_wait: 30
    timeout: 5
cloud_init_modules: [bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts, users_groups]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts_per_once, scripts_per_boot, scripts_per_instance, scripts_user, final_message]
manage_etc_hosts: false
preserve_hostname: true
CFG
# The NIC by DHCP (QEMU's user network) with systemd-networkd, outside cloud-init.
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/20-wired.network" <<'NET'
[Match]
Name=en*

[Network]
DHCP=ipv4
NET
chroot "$root" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service >/dev/null 2>&1
echo 'network: {config: disabled}' >"$root/etc/cloud/cloud.cfg.d/91-no-network-config.cfg"
# The AWS endpoints the guest calls go to the host's TLS proxy (a guestfwd
# address); the test CA is written per boot.
cat >>"$root/etc/hosts" <<'HOSTS'
169.254.169.10 secretsmanager.us-east-1.amazonaws.com autoscaling.us-east-1.amazonaws.com ec2.us-east-1.amazonaws.com
HOSTS
echo cci-vm >"$root/etc/hostname"

# A throwaway CA, trusted by the guest: the host's TLS proxy for the AWS
# endpoints presents certificates it signs. Its key stays beside the image.
mkdir -p "$work/out"
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=cci-scaler test CA" \
  -keyout "$work/out/ca.key" -out "$work/out/ca.pem" >/dev/null 2>&1 || die "openssl could not make the test CA"
cp "$work/out/ca.pem" "$root/usr/local/share/ca-certificates/cci-scaler-test-ca.crt"
chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the image"

# apt reaches no archive: a local repository listing what is installed, so the
# user data's `apt-get update` and `apt-get install curl ca-certificates`
# (already the newest) work offline, as on an image that has them.
repo="$root/var/local/cci-scaler-repo"
mkdir -p "$repo"
# Each stanza as dpkg recorded it (apt tells versions apart by their control
# fields, so a bare name and version would look like a different version).
awk 'BEGIN { RS = ""; ORS = "\n\n" }
  {
    out = ""; skip = 0; pkg = ""
    n = split($0, lines, "\n")
    for (i = 1; i <= n; i++) {
      l = lines[i]
      if (l ~ /^[ \t]/) { if (!skip) out = out l "\n"; continue }
      skip = (l ~ /^(Status|Conffiles|Config-Version):/)
      if (l ~ /^Package: /) pkg = substr(l, 10)
      if (!skip) out = out l "\n"
    }
    printf "%sFilename: ./%s.deb\nSize: 1\n\n", out, pkg
  }' "$root/var/lib/dpkg/status" >"$repo/Packages"
(cd "$repo" && chroot "$root" sh -c 'cd /var/local/cci-scaler-repo && apt-ftparchive release . > Release') ||
  die "apt-ftparchive could not index the local repository"
rm -f "$root/etc/apt/sources.list"
rm -rf "$root/etc/apt/sources.list.d"/*
echo 'deb [trusted=yes] file:/var/local/cci-scaler-repo ./' >"$root/etc/apt/sources.list"

# No root password prompt on the console; no getty holding the serial port up.
chroot "$root" systemctl mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1 || true
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true

# The stub runner: the package's binary path and unit shape.
cat >"$root/usr/bin/circleci-runner" <<'STUB'
#!/bin/bash
# Test stand-in for CircleCI machine runner 3: checks its config, reports on
# the console what a test must see (the config's mode, the token's length,
# never the token; the metadata rule; whether the job user reaches instance
# metadata; how many times the user data ran), then idles until the test says
# the job is done (a test-only path of the metadata stand-in), or is stopped.
set -u
config=${3:-/etc/circleci-runner/circleci-runner-config.yaml}
log() { echo "circleci-runner(stub): $*" | tee -a /var/log/circleci-runner-stub.log /dev/console >/dev/null; }
if [ ! -r "$config" ]; then log "no config at $config"; exit 1; fi
mode=$(stat -c '%a %U' "$config")
token=$(sed -n 's/^  auth_token: //p' "$config")
name=$(sed -n 's/^  name: //p' "$config")
idle=$(sed -n 's/^  idle_timeout: //p' "$config")
jumps=$(iptables -w -S OUTPUT 2>/dev/null | grep -c CCI_SCALER_IMDS)
rules=$(iptables -w -S CCI_SCALER_IMDS 2>/dev/null | grep -c '^-A')
job=$(runuser -u circleci -- curl -s -m 3 -o /dev/null -w '%{http_code}' -X PUT \
  -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
boots=$(grep -c 'boot started' /var/log/cci-scaler-boot.log 2>/dev/null)
log "started: name=$name config=$mode token_len=${#token} idle_timeout=$idle imds_jumps=$jumps imds_rules=$rules job_user_imds=$job user_data_runs=$boots"
trap 'log "stopping (SIGTERM)"; exit 0' TERM
# flag NAME: whether the test set it (200) on the metadata stand-in.
flag() { [ "$(curl -s -m 3 -o /dev/null -w '%{http_code}' "http://169.254.169.254/cci-test/$1")" = 200 ]; }
until flag runner-exit; do
  # A clean reboot, once per boot, when the test asks for one.
  if flag reboot && [ ! -e /run/cci-test-rebooting ] && [ "$(cat /var/lib/cci-test-reboots 2>/dev/null || echo 0)" = 0 ]; then
    echo 1 >/var/lib/cci-test-reboots
    touch /run/cci-test-rebooting
    log "rebooting (asked by the test)"
    systemctl reboot
  fi
  sleep 2 &
  wait $!
done
log "job done: exiting"
STUB
chmod 0755 "$root/usr/bin/circleci-runner"
cat >"$root/lib/systemd/system/circleci-runner.service" <<'UNIT'
[Unit]
Description=CircleCI Runner (test stub)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/bin/circleci-runner machine --config /etc/circleci-runner/circleci-runner-config.yaml
Restart=always
User=circleci
KillMode=mixed

[Install]
WantedBy=multi-user.target
UNIT

# Test-only: a clean power-off when the test asks (the metadata stand-in's
# poweroff flag), as EC2 stops an instance (into a warm pool, say).
cat >"$root/usr/local/sbin/cci-test-agent" <<'AGENT'
#!/bin/bash
while sleep 2; do
  if [ "$(curl -s -m 3 -o /dev/null -w '%{http_code}' http://169.254.169.254/cci-test/poweroff)" = 200 ]; then
    echo "cci-test-agent: powering off (asked by the test)" >/dev/console
    systemctl poweroff
    exit 0
  fi
done
AGENT
chmod 0755 "$root/usr/local/sbin/cci-test-agent"
cat >"$root/etc/systemd/system/cci-test-agent.service" <<'UNIT'
[Unit]
Description=Test-only power-off on request
After=network-online.target

[Service]
ExecStart=/usr/local/sbin/cci-test-agent

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable cci-test-agent.service >/dev/null 2>&1 ||
  die "could not enable the test agent"

kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
cp "$kernel" "$work/out/vmlinuz"
cp "$initrd" "$work/out/initrd.img"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
if ! mkfs.ext4 -q -F -L root -d "$root" "$work/out/rootfs.ext4" 1536M >"$log" 2>&1; then
  cat "$log" >&2
  die "mkfs.ext4 could not pack the root file system"
fi
touch "$work/out/.complete"
mv "$work/out" "$out"
echo "$out"
