#!/usr/bin/env bash
# Benchmark: prints figures, asserts nothing. Builds a realistic 1 GiB ext4
# image (~400 MB of real files from /usr: data, metadata, zeros, free space)
# and times, in the same run on the same machine:
#   zstd -1 -T0 -c img > out.zst   and   sha256sum img        (the yardsticks)
#   tbbackup push -> receive over unix: (both processes, all checksums)
#   tbbackup restore from a stored image, and over unix: from a receiver
#   tbbackup push --files of the image's tree vs tar -cf - DIR | zstd -1 -T0
# plus each process's peak RSS, the same on a 4 GiB image, and start-up time.
set -euo pipefail
cd "$(dirname "$0")/.."
for pair in mkfs.ext4:e2fsprogs zstd:zstd /usr/bin/time:time; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pair##*:}" >/dev/null; }
done
[ -x dist/tbbackup ] || npm run -s build
BIN="$PWD/dist/tbbackup"
W="${BENCH_DIR:-/tmp/tbbackup-bench}"
mkdir -p "$W"
export NO_COLOR=1

if [ ! -f "$W/img1g" ] || [ ! -d "$W/tree" ]; then
  echo "bench: building a 1 GiB ext4 image with ~400 MB of files from /usr ..."
  rm -rf "$W/tree" && mkdir -p "$W/tree"
  # real files, stopping at ~400 MB
  find /usr/lib /usr/share -type f -size -20M 2>/dev/null | head -200000 | while read -r f; do
    echo "$f"
  done | awk -v limit=$((400*1024*1024)) '{ cmd="stat -c %s \"" $0 "\""; cmd | getline s; close(cmd); total+=s; if (total>limit) exit; print }' > "$W/files.txt" || true
  tar -cf - -T "$W/files.txt" 2>/dev/null | tar -xf - -C "$W/tree"
  truncate -s 1G "$W/img1g"
  mkfs.ext4 -q -F -d "$W/tree" "$W/img1g" # the tree is kept for the files-mode lines
fi
cat "$W/img1g" > /dev/null # warm the page cache, as for every line below

t() { /usr/bin/time -f "%e %M %U %S" -o "$W/time.$1" "${@:2}"; }
wall() { awk '{print $1}' "$W/time.$1"; }
rss() { awk '{printf "%.0f", $2/1024}' "$W/time.$1"; }
cpu() { awk '{printf "%.2f", $3 + $4}' "$W/time.$1"; } # user + system seconds

push_receive() { # $1 = image (or --files DIR), $2 = tag
  rm -rf "$W/store-$2" "$W/b.sock"
  t "recv-$2" "$BIN" receive --out "$W/store-$2" --stream "unix:$W/b.sock" --once 2>/dev/null &
  local r=$!
  while [ ! -S "$W/b.sock" ]; do sleep 0.02; done
  local s e
  s=$(date +%s.%N)
  # shellcheck disable=SC2086 # "--files DIR" splits into two words
  t "push-$2" "$BIN" push $1 --stream "unix:$W/b.sock" 2>/dev/null
  wait "$r"
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
restore_unix() { # restore the 1 GiB backup from a receiver over unix:
  rm -f "$W/restored.img" "$W/r.sock"
  t "rrecv" "$BIN" receive --out "$W/store-1g" --stream "unix:$W/r.sock" --once --allow-restore 2>/dev/null &
  local r=$!
  while [ ! -S "$W/r.sock" ]; do sleep 0.02; done
  local id
  id=$("$BIN" list --out "$W/store-1g" --json | sed -n 's/.*"id": "\(.*\)".*/\1/p' | head -1)
  t rnet "$BIN" restore "$W/restored.img" --stream "unix:$W/r.sock" --backup "$id" --yes --no-verify 2>/dev/null
  wait "$r" || true
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# Each line runs ROUNDS times, interleaved, so that this machine's noise (fresh
# memory and page-cache costs vary 2-4x between runs) falls on all of them alike;
# the medians are printed.
ROUNDS=${BENCH_ROUNDS:-3}
: > "$W/runs"
for _ in $(seq "$ROUNDS"); do
  t zstd bash -c "zstd -1 -T0 -q -c '$W/img1g' > '$W/ref.zst'"
  echo "zstd $(wall zstd)" >> "$W/runs"
  t zstdd bash -c "zstd -dcq '$W/ref.zst' > '$W/ref.out'"
  echo "zstdd $(wall zstdd)" >> "$W/runs"
  rm -f "$W/ref.out"
  # the same decompression into a file zstd writes itself: sparse, like restore's
  t zstdo zstd -dqf "$W/ref.zst" -o "$W/ref.out"
  echo "zstdo $(wall zstdo)" >> "$W/runs"
  rm -f "$W/ref.out"
  echo "pr $(push_receive "$W/img1g" 1g)" >> "$W/runs"
  B=$(dirname "$(find "$W/store-1g" -name image.zst)")
  rm -f "$W/restored.img"
  t rfile "$BIN" restore "$W/restored.img" --from "$B" --yes --no-verify 2>/dev/null
  echo "rfile $(wall rfile)" >> "$W/runs"
  restore_unix
  echo "rnet $(wall rnet)" >> "$W/runs"
done
t sha bash -c "sha256sum '$W/img1g' > /dev/null"
med() { awk -v k="$1" '$1 == k {print $2}' "$W/runs" | median; }
all() { awk -v k="$1" '$1 == k {printf "%s%s", sep, $2; sep=" "}' "$W/runs"; }
ZW=$(med zstd)
ZD=$(med zstdd)
ZO=$(med zstdo)
PR=$(med pr)
RF=$(med rfile)
RN=$(med rnet)
STORED=$(find "$W/store-1g" -name image.zst)

echo
echo "== 1 GiB ext4 image ($(du -m --apparent-size "$W/img1g" | cut -f1) MiB, $(du -m "$W/img1g" | cut -f1) MiB allocated); median of $ROUNDS interleaved runs"
printf '%-44s %8s s   (runs: %s; %s CPU-s)\n' "zstd -1 -T0 -c img > out.zst" "$ZW" "$(all zstd)" "$(cpu zstd)"
printf '%-44s %8s s\n' "sha256sum img" "$(wall sha)"
printf '%-44s %8s s   (runs: %s; %s CPU-s)\n' "zstd -dc out.zst > out" "$ZD" "$(all zstdd)" "$(cpu zstdd)"
printf '%-44s %8s s   (runs: %s; %s CPU-s; sparse output, a steadier yardstick)\n' "zstd -d out.zst -o out" "$ZO" "$(all zstdo)" "$(cpu zstdo)"
printf '%-44s %8.2f s   ratio to zstd line: %.2fx (budget 1.5x, target 1.0x)   (runs: %s)\n' "tbbackup push -> receive (unix:)" "$PR" "$(echo "$PR / $ZW" | bc -l)" "$(all pr)"
printf '%-44s %8s CPU-s push, %s CPU-s receive\n' "CPU time" "$(cpu push-1g)" "$(cpu recv-1g)"
printf '%-44s %8s MiB push, %s MiB receive (budget 256)\n' "peak RSS" "$(rss push-1g)" "$(rss recv-1g)"
printf '%-44s %8s bytes stored (zstd CLI: %s)\n' "stored image.zst" "$(stat -c %s "$STORED")" "$(stat -c %s "$W/ref.zst")"
printf '%-44s %8s s   ratio to zstd -dc: %.2fx (budget 1.0x)   RSS %s MiB, %s CPU-s   (runs: %s)\n' "restore --from stored image into a new file" "$RF" "$(echo "$RF / $ZD" | bc -l)" "$(rss rfile)" "$(cpu rfile)" "$(all rfile)"
printf '%-44s %8s     %.2fx restore --from, %.2fx restore over unix:\n' "ratios to zstd -d -o out (sparse)" "" "$(echo "$RF / $ZO" | bc -l)" "$(echo "$RN / $ZO" | bc -l)"
printf '%-44s %8s s   ratio to zstd -dc: %.2fx (budget 1.5x)   RSS %s MiB restore, %s MiB receiver   (runs: %s)\n' "restore over unix: from a receiver" "$RN" "$(echo "$RN / $ZD" | bc -l)" "$(rss rnet)" "$(rss rrecv)" "$(all rnet)"
cmp -s "$W/img1g" "$W/restored.img" && echo "restored image identical: yes" || echo "restored image identical: NO"
rm -f "$W/restored.img"
t rverify "$BIN" restore "$W/restored.img" --from "$B" --yes 2>/dev/null
printf '%-44s %8s s   (as users run it: the target is synced, dropped from the cache and read back)\n' "restore --from, with its read-back check" "$(wall rverify)"
rm -f "$W/restored.img"

echo
"$PWD/node_modules/.bin/bun" scripts/bench-floor.ts "$W/img1g" "$ZW" "$ZD"

echo
echo "== 4 GiB image (the 1 GiB image followed by 3 GiB of zeros): memory must not grow"
cp --sparse=always "$W/img1g" "$W/img4g" && truncate -s 4G "$W/img4g" && sync # a copy still being written back slows the push down 2x
PR4=$(push_receive "$W/img4g" 4g)
printf '%-44s %8.2f s   peak RSS %s MiB push, %s MiB receive\n' "tbbackup push -> receive (unix:)" "$PR4" "$(rss push-4g)" "$(rss recv-4g)"
rm -rf "$W/img4g" "$W/store-4g"

echo
echo "== files mode: the image's tree ($(du -sm --apparent-size "$W/tree" | cut -f1) MiB in $(find "$W/tree" | wc -l) entries)"
tar -cf - -C "$W" tree > /dev/null # warm the page cache for both lines
t tarzstd bash -c "tar -cf - -C '$W' tree | zstd -1 -T0 -q > '$W/ref-tree.tar.zst'"
TZ=$(wall tarzstd)
PRF=$(push_receive "--files $W/tree" files)
printf '%-44s %8s s\n' "tar -cf - DIR | zstd -1 -T0 > out" "$TZ"
printf '%-44s %8.2f s   ratio to tar | zstd: %.2fx   peak RSS %s MiB push, %s MiB receive\n' "tbbackup push --files -> receive (unix:)" "$PRF" "$(echo "$PRF / $TZ" | bc -l)" "$(rss push-files)" "$(rss recv-files)"
printf '%-44s %8s bytes stored (tar | zstd: %s)\n' "stored files.tar.zst" "$(stat -c %s "$(find "$W/store-files" -name files.tar.zst)")" "$(stat -c %s "$W/ref-tree.tar.zst")"
rm -rf "$W/store-files" "$W/ref-tree.tar.zst"

echo
S=$(date +%s%N); for _ in $(seq 20); do "$BIN" version >/dev/null; done; E=$(date +%s%N)
printf '%-44s %8.1f ms (mean of 20)\n' "tbbackup version start-up" "$(echo "($E - $S) / 20000000" | bc -l)"
rm -rf "$W/store-1g" "$W/ref.zst"
