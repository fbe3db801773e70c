#!/bin/sh
# Builds the test guest's initramfs. Runs INSIDE the chroot (the host has no
# cpio): chroot "$CH" /bin/sh /emudev/src/mkinitramfs.sh KVER OUT [MODULE...]
#
# /emudev/src holds what the harness staged: init.sh, lib.sh, scenarios/*.sh.
# The initramfs gets the static busybox, /dev/console and /dev/null, the
# scenario scripts, and each MODULE with everything it depends on (resolved
# with modinfo against KVER, decompressed, depmod-ed so busybox modprobe
# finds them).
set -eu
KVER=$1
OUT=$2
shift 2
SRC=/emudev/src

T=$(mktemp -d /tmp/emudev-initramfs.XXXXXX)
trap 'rm -rf "$T"' EXIT INT TERM

mkdir -p "$T/bin" "$T/dev" "$T/proc" "$T/sys" "$T/tmp" "$T/run" "$T/lib" "$T/scenarios"
cp /bin/busybox "$T/bin/busybox"
mknod "$T/dev/console" c 5 1
mknod "$T/dev/null" c 1 3
cp "$SRC/init.sh" "$T/init"
chmod 755 "$T/init"
cp "$SRC/lib.sh" "$T/lib/emudev.sh"
cp "$SRC"/scenarios/*.sh "$T/scenarios/"

seen=" "
add_module() {
  case "$seen" in *" $1 "*) return 0 ;; esac
  seen="$seen$1 "
  file=$(modinfo -k "$KVER" -F filename "$1") || { echo "mkinitramfs: no module $1 in $KVER" >&2; exit 1; }
  case "$file" in
    (builtin) return 0 ;;
  esac
  rel=${file#/lib/modules/$KVER/}
  dst="$T/lib/modules/$KVER/${rel%.xz}"
  dst=${dst%.zst}
  mkdir -p "$(dirname "$dst")"
  case "$file" in
    *.ko.xz) busybox xzcat "$file" >"$dst" ;;
    *.ko.zst) zstd -q -dc "$file" >"$dst" ;;
    *.ko) cp "$file" "$dst" ;;
    *) echo "mkinitramfs: unexpected module file $file" >&2; exit 1 ;;
  esac
  for dep in $(modinfo -k "$KVER" -F depends "$1" | tr ',' ' '); do
    add_module "$dep"
  done
}
for m in "$@"; do add_module "$m"; done
if [ $# -gt 0 ]; then
  for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ ! -f "/lib/modules/$KVER/$f" ] || cp "/lib/modules/$KVER/$f" "$T/lib/modules/$KVER/$f"
  done
  depmod -b "$T" "$KVER"
fi

(cd "$T" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$OUT.tmp")
mv "$OUT.tmp" "$OUT"
echo "mkinitramfs: $OUT ($(wc -c <"$OUT") bytes; modules:${seen% })"
