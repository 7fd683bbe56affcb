#!/usr/bin/env bash
# Installs what the tests need on a Debian machine (run by `npm test` and by
# .ci/run): each command the tests call, with the package that brings it.
# Without root, or without apt-get, it says what is missing and goes on; the
# tests that need a missing tool then say so when they are skipped.
set -uo pipefail
pairs=(
  python3:python3 mkfs.ext4:e2fsprogs socat:socat zstd:zstd b3sum:b3sum shellcheck:shellcheck
  fusermount3:fuse3 losetup:mount sfdisk:fdisk script:bsdutils /usr/bin/time:time
  partclone.ext4:partclone mkfs.xfs:xfsprogs mkfs.vfat:dosfstools mcopy:mtools
  mkfs.ntfs:ntfs-3g mkfs.btrfs:btrfs-progs nbdinfo:libnbd-bin nbdfuse:libnbd-bin nbdsh:python3-libnbd qemu-img:qemu-utils qemu-io:qemu-utils
  cryptsetup:cryptsetup-bin pvcreate:lvm2
  strace:strace setpriv:util-linux systemd-analyze:systemd ss:iproute2
)
need=()
for pair in "${pairs[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: missing ${need[*]} (install them as root: apt-get install ${need[*]}); tests that need them are skipped" >&2
  exit 0
fi
echo "test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }; then
  echo "test-deps: apt-get install ${need[*]} failed; tests that need them are skipped" >&2
fi
exit 0
