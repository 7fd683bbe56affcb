#!/usr/bin/env bash
# The whole job on one machine, no Thunderbolt hardware: build the binary,
# make a small ext4 disk image, receive + push over a unix socket, verify,
# check with plain zstd, restore it, and say where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in mkfs.ext4:e2fsprogs zstd:zstd b3sum:b3sum; do command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}"); done
if [ "${#need[@]}" -gt 0 ]; then
  echo "demo: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x dist/tbbackup ] || npm run -s build
BIN="$PWD/dist/tbbackup"
DEMO="${DEMO_DIR:-$(mktemp -d /tmp/tbbackup-demo.XXXXXX)}"
mkdir -p "$DEMO/tree"
cp -r src docs README.md "$DEMO/tree/" 2>/dev/null || true
head -c 4M /dev/urandom > "$DEMO/tree/random.bin"
truncate -s 64M "$DEMO/disk.img"
mkfs.ext4 -q -F -d "$DEMO/tree" "$DEMO/disk.img"
SOCK="$DEMO/tb.sock"
echo "== receiver: tbbackup receive --out $DEMO/backups --stream unix:$SOCK --once"
"$BIN" receive --out "$DEMO/backups" --stream "unix:$SOCK" --once 2> "$DEMO/receive.log" &
RECV=$!
echo "== push: tbbackup push $DEMO/disk.img --stream unix:$SOCK --name demo"
"$BIN" push "$DEMO/disk.img" --stream "unix:$SOCK" --name demo
wait "$RECV"
echo "== list"
"$BIN" list --out "$DEMO/backups"
BACKUP=$(dirname "$(find "$DEMO/backups" -name image.zst | head -1)")
echo "== verify $BACKUP"
"$BIN" verify "$BACKUP"
echo "== plain zstd -dc | sha256sum (no tbbackup needed) vs the disk"
zstd -dcq "$BACKUP/image.zst" | sha256sum
sha256sum "$DEMO/disk.img"
echo "== the integrity root by stock tools (split + b3sum + sha256sum), vs the manifest's"
STOCK_ROOT=$(zstd -dcq "$BACKUP/image.zst" | split -b 1M --filter='b3sum --no-names' | sha256sum | cut -c1-64)
echo "$STOCK_ROOT  (stock tools)"
grep '"root"' "$BACKUP/manifest.json"
grep -q "\"root\": \"$STOCK_ROOT\"" "$BACKUP/manifest.json" || { echo "demo: the manifest's root is not what stock tools compute" >&2; exit 1; }
echo "== restore into a new file: tbbackup restore $DEMO/restored.img --from $BACKUP --yes"
"$BIN" restore "$DEMO/restored.img" --from "$BACKUP" --yes
cmp "$DEMO/disk.img" "$DEMO/restored.img" && echo "restored image is identical to the original"
echo
echo "demo done: the backup is in $BACKUP (receiver log: $DEMO/receive.log)"
