#!/usr/bin/env bash
# Install everything HyperSDK needs on Debian 12; safe to run again (it skips what is there).
# With --bench, also the peers that `make bench` compares against (restic, borg): `make test`
# does not need them.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-utils            # qemu-img, qemu-nbd
  qemu-system-common    # qemu-storage-daemon
  qemu-system-x86       # a real VM process for one test
  libnbd-bin            # nbdinfo, nbdcopy: reference NBD clients
  nbdkit                # NBD servers with error injection for tests
  golang-go             # builds the vSphere lab (vcsim)
  golang-github-vmware-govmomi-dev
  python3-venv
  nodejs npm            # the TypeScript SDK
  zstd
  # libvirt: the daemons the libvirt tests start themselves (no systemd needed), virsh,
  # and the headers libvirt-python (pyproject) builds against. Not libvirt-daemon-system:
  # it would pull in systemd as init.
  libvirt-daemon              # libvirtd, virtlogd, virtlockd
  libvirt-daemon-driver-qemu  # the QEMU driver
  libvirt-clients             # virsh
  libvirt-dev pkg-config gcc python3-dev
  redis-server          # fleets: the broker of hypervisord --broker and hyperworker (tests start their own)
  chromium chromium-driver  # the dashboard's browser tests (tests/ui), headless
)
if [[ "${1:-}" == --bench ]]; then
  APT_PACKAGES+=(restic borgbackup virtnbdbackup)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
# node/npm may come from elsewhere than Debian's packages; only install them when absent.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for pkg in "${missing[@]}"; do
    [[ "$pkg" == nodejs || "$pkg" == npm ]] || filtered+=("$pkg")
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU's user under qemu:///system (libvirt-daemon-system would create it).
if ! getent passwd libvirt-qemu >/dev/null; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
    --shell /usr/sbin/nologin libvirt-qemu
fi

# /dev/kvm for QEMU's user, as Debian's udev rule sets it (group kvm, mode 0660). A
# container's /dev/kvm is often root's alone: libvirt domains then run under TCG and
# libvirt probes QEMU anew on every call (tens of seconds each).
if [[ -c /dev/kvm && $(id -u) -eq 0 ]]; then
  getent group kvm >/dev/null || groupadd --system kvm
  id -nG libvirt-qemu | grep -qw kvm || usermod -aG kvm libvirt-qemu
  if [[ $(stat -c %G /dev/kvm) == root ]]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [[ ! -f "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The TypeScript SDK's dev tools (typescript, @types/node), exactly as locked.
ts=sdk/typescript
if [[ ! -d $ts/node_modules || $ts/package-lock.json -nt $ts/node_modules ]]; then
  (cd $ts && npm ci --silent --no-audit --no-fund)
  touch $ts/node_modules
fi
# The dashboard (src/hypersdk/daemon/ui/app.ts + the SDK) bundled into one app.js that
# hypervisord serves at /ui/; rebuilt when a source is newer than the bundle.
ui=src/hypersdk/daemon/ui
if [[ ! -f $ui/app.js ]] || [[ -n $(find $ui/app.ts $ts/src -newer $ui/app.js -print -quit) ]]; then
  (cd $ts && npm run --silent build:ui)
fi
echo "setup: ready"
