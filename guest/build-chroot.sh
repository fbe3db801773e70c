#!/usr/bin/env bash
# Builds the Debian trixie chroot the real-driver tests boot their guest from.
#
# Run by guest/harness.ts (as root) when the cache stamp is missing or stale;
# not meant to be run by hand, but it can be:
#   CH=.cache/guest/trixie MIRROR=http://<mirror>/debian \
#     SECURITY_MIRROR=http://<mirror>/debian-security guest/build-chroot.sh
# CH must not exist or be empty. The mirror comes from the host's apt sources
# (the harness reads them); nothing here names a host.
#
# The chroot gets qemu-system-x86 from trixie-backports (QEMU >= 10.1 has the
# vfio-user client device), the trixie kernel, busybox-static and kmod. Every
# mount made here is undone on every exit path.
set -euo pipefail

: "${CH:?CH (the chroot directory) must be set}"
: "${MIRROR:?MIRROR (a Debian mirror, .../debian) must be set}"
: "${SECURITY_MIRROR:?SECURITY_MIRROR (.../debian-security) must be set}"
SUITE=trixie

mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -R "${mounted[$i]}" 2>/dev/null || umount -R -l "${mounted[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf 'build-chroot: %s\n' "$*"; }

step "debootstrap --variant=minbase $SUITE from $MIRROR"
mkdir -p "$CH"
debootstrap --variant=minbase "$SUITE" "$CH" "$MIRROR" >"$CH.debootstrap.log" 2>&1 || {
  tail -n 30 "$CH.debootstrap.log" >&2
  exit 1
}
rm -f "$CH.debootstrap.log"

cat >"$CH/etc/apt/sources.list" <<EOT
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
deb $MIRROR $SUITE-backports main
EOT

mount -t proc proc "$CH/proc"
mounted+=("$CH/proc")
mount -t sysfs sysfs "$CH/sys"
mounted+=("$CH/sys")
mount --rbind /dev "$CH/dev"
mount --make-rslave "$CH/dev"
mounted+=("$CH/dev")
cp /etc/resolv.conf "$CH/etc/resolv.conf"

# INITRD=No: the kernel's postinst skips update-initramfs (the guest boots from
# the harness's own initramfs, built by mkinitramfs.sh).
apt_in() { chroot "$CH" env DEBIAN_FRONTEND=noninteractive LC_ALL=C INITRD=No apt-get -q -y "$@"; }

step "apt-get update"
apt_in update >/dev/null
step "install qemu-system-x86 (trixie-backports)"
apt_in -t "$SUITE-backports" install --no-install-recommends qemu-system-x86 >/dev/null
step "install linux-image-amd64 busybox-static kmod"
apt_in install --no-install-recommends linux-image-amd64 busybox-static kmod >/dev/null
apt_in clean >/dev/null

step "installed: $(chroot "$CH" dpkg-query -W -f '${Package} ${Version}, ' qemu-system-x86 linux-image-amd64 busybox-static kmod)"
