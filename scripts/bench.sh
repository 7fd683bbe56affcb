#!/usr/bin/env bash
# Benchmark: prints figures, asserts nothing. Builds a realistic 1 GiB ext4
# image (~400 MB of real files from /usr: data, metadata, zeros, free space)
# and times, in the same run on the same machine:
#   zstd -1 -T0 -c img > out.zst   and   sha256sum img        (the yardsticks)
#   tbbackup push -> receive over unix: (both processes, all checksums)
#   tbbackup restore from a stored image, and over unix: from a receiver
#   tbbackup push --files of the image's tree vs tar -cf - DIR | zstd -1 -T0
# plus each process's peak RSS, the same on a 4 GiB image, and start-up time;
# and, against stock tools run in the same run (README "Performance"):
#   CPU cost: push + receive user+sys seconds vs zstd -1 -T1, zstd -dc and
#     openssl dgst -sha256 twice (each on one core)
#   zeros: the image followed by 3 GiB of holes, and a loop device over the
#     image followed by 1 GiB of written zeros, vs the image alone
#   the careful admin's pipe: tee >(sha256) | zstd -1 -T0 | tee out.zst |
#     zstd -dc | sha256, then sync out.zst
#   scaling: each end alone on 1 and 2 cores (taskset), push against
#     scripts/bench-sink.ts, receive fed by scripts/bench-replay.ts, with the
#     busiest threads (from /proc/PID/task/*/stat)
#   restore CPU vs zstd -dc + openssl dgst -sha256
#   used disk: an ext4 whose free space once held random data, and a GPT disk
#     (ext4, xfs, vfat, swap), default and --all-blocks, vs partclone | zstd
#   NBD: nbdcopy of a backup's export vs zstd -dc, and 10,000 random 4 KiB
#     reads through nbdsh
#   incremental: a full push, then the image with ~8 MiB of new files
#     (debugfs -w write) pushed again (incremental by default): time, bytes
#     sent, store growth (du), vs the full push and vs push --full of the
#     same; the pair once more through scripts/bench-relay.ts at 25 MB/s;
#     (as root) the pair into a store on btrfs and on XFS with reflink (loop
#     files): how much each file system grew;
#     and (as root) restore of the new backup onto a loop device over a copy
#     of the old image, delta vs --no-delta: time and bytes written (the
#     device's stat)
#   sessions: 128 MiB of random data pushed alone, then two such pushes at
#     once, each through its own scripts/bench-relay.ts held to 25 MB/s,
#     into one receiver (receive without --once)
# and ends with a table of every ratio against its budget.
#
# Knobs (environment):
#   BENCH_SIZE_MB=1024  size of the ext4 image (the files fill ~400/1024 of
#                       it, the used-disk ext4 is that size too); use 256
#                       while working on this script
#   BENCH_ROUNDS=3      interleaved rounds of the main lines, and of the
#                       incremental and sessions lines (medians printed)
#   BENCH_SKIP=a,b      sections to leave out: big (3 GiB of holes), loop,
#                       pipe, stock (the one-core CPU yardsticks), scaling,
#                       files, used, nbd, incr, sessions
#   BENCH_DIR=/tmp/tbbackup-bench  work directory (images are kept there and
#                       reused by the next run)
#   BENCH_BIN=dist/tbbackup  the executable to measure
# The loop-device, used-disk and delta-restore lines need root (loop devices,
# mounts). The full run (defaults) should take 7-12 minutes on a 2-core
# machine (estimated from BENCH_SIZE_MB=256 runs; the sessions lines take
# about 35 s at any size); run it on a quiet machine only.
set -euo pipefail
cd "$(dirname "$0")/.."
# the tools of every section (partclone and the rest are only used as root, by the used-disk lines)
for pair in mkfs.ext4:e2fsprogs zstd:zstd /usr/bin/time:time openssl:openssl taskset:util-linux bc:bc \
  partclone.ext4:partclone mkfs.xfs:xfsprogs mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk nbdcopy:libnbd-bin nbdsh:python3-libnbd; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pair##*:}" >/dev/null; }
done
[ -x dist/tbbackup ] || npm run -s build
BIN="${BENCH_BIN:-$PWD/dist/tbbackup}"
BUN="$PWD/node_modules/.bin/bun"
W="${BENCH_DIR:-/tmp/tbbackup-bench}"
SIZE_MB=${BENCH_SIZE_MB:-1024}
ROUNDS=${BENCH_ROUNDS:-3}
mkdir -p "$W"
export NO_COLOR=1
skip() { [[ ",${BENCH_SKIP:-}," == *",$1,"* ]]; }
if [ "$SIZE_MB" -eq 1024 ]; then LABEL="1 GiB"; BIG_LABEL="4 GiB"; else LABEL="$SIZE_MB MiB"; BIG_LABEL="$((SIZE_MB + 3072)) MiB"; fi
IMG="$W/img-${SIZE_MB}m"
SIZE=$((SIZE_MB * 1048576))

# Whatever this run sets up is taken down on the way out, failed or not.
LOOPS=()
MOUNTS=()
cleanup() {
  local p m l
  # this shell's own background jobs still running (a sink, a server), by pid
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT
LOOPDEV=""
loop() { # a loop device over $1 (losetup options after it), in LOOPDEV
  LOOPDEV=$(losetup -f --show "${@:2}" "$1") || return 1
  LOOPS+=("$LOOPDEV")
}
unloop() { losetup -d "$1" 2>/dev/null || true; }

if [ ! -f "$IMG" ] || [ ! -d "$W/tree-${SIZE_MB}m" ]; then
  echo "bench: building a $LABEL ext4 image with ~$((SIZE_MB * 400 / 1024)) MB of files from /usr ..."
  rm -rf "$W/tree-${SIZE_MB}m" && mkdir -p "$W/tree-${SIZE_MB}m"
  # real files, stopping at ~400 MB (per GiB of image)
  find /usr/lib /usr/share -type f -size -20M -printf '%s %p\n' 2>/dev/null | head -200000 |
    awk -v limit=$((SIZE_MB * 400 * 1024)) '{ total += $1; if (total > limit) exit; print substr($0, index($0, " ") + 1) }' > "$W/files.txt" || true
  tar -cf - -T "$W/files.txt" 2>/dev/null | tar -xf - -C "$W/tree-${SIZE_MB}m"
  rm -f "$IMG" && truncate -s "${SIZE_MB}M" "$IMG"
  mkfs.ext4 -q -F -d "$W/tree-${SIZE_MB}m" "$IMG" # the tree is kept for the files-mode lines
fi
TREE="$W/tree-${SIZE_MB}m"
cat "$IMG" > /dev/null # warm the page cache, as for every line below

t() { /usr/bin/time -f "%e %M %U %S" -o "$W/time.$1" "${@:2}"; }
# waits until the socket $1 exists; stops the bench with a line if its server ($2) died or 60 s went by
wait_sock() {
  local n=0
  until [ -S "$1" ]; do
    if ! kill -0 "$2" 2>/dev/null; then echo "bench: the server for $1 exited before it listened" >&2; exit 1; fi
    if [ $((n += 1)) -gt 3000 ]; then echo "bench: no socket $1 after 60 s" >&2; exit 1; fi
    sleep 0.02
  done
}
wall() { awk '{print $1}' "$W/time.$1"; }
rss() { awk '{printf "%.0f", $2/1024}' "$W/time.$1"; }
cpu() { awk '{printf "%.2f", $3 + $4}' "$W/time.$1"; } # user + system seconds
div() { echo "$1 / $2" | bc -l; }
add() { printf '%.2f' "$(echo "$*" | bc -l)"; } # add 1.2 + 3.4

push_receive() { # $1 = image (or --files DIR), $2 = tag, $3... = push options
  rm -rf "$W/store-$2" "$W/b.sock"
  t "recv-$2" "$BIN" receive --out "$W/store-$2" --stream "unix:$W/b.sock" --once 2>/dev/null &
  local r=$!
  wait_sock "$W/b.sock" "$r"
  local s e
  s=$(date +%s.%N)
  # shellcheck disable=SC2086 # "--files DIR" splits into two words
  t "push-$2" "$BIN" push $1 "${@:3}" --stream "unix:$W/b.sock" 2>/dev/null
  wait "$r"
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
restore_unix() { # restore the main backup from a receiver over unix:
  rm -f "$W/restored.img" "$W/r.sock"
  t "rrecv" "$BIN" receive --out "$W/store-1g" --stream "unix:$W/r.sock" --once --allow-restore 2>/dev/null &
  local r=$!
  wait_sock "$W/r.sock" "$r"
  local id
  id=$("$BIN" list --out "$W/store-1g" --json | sed -n 's/.*"id": "\(.*\)".*/\1/p' | head -1)
  t rnet "$BIN" restore "$W/restored.img" --stream "unix:$W/r.sock" --backup "$id" --yes --no-verify 2>/dev/null
  wait "$r" || true
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# The summary: one row per ratio, with its budget (and goal) and whether it is met.
SUMMARY=()
row() { # $1 = what, $2 = ratio (or n/a), $3 = budget, $4 = goal (optional)
  local met="n/a" v="$2"
  if [ "$v" != "n/a" ]; then
    v=$(printf '%.2f' "$v")
    if [ "$3" = "-" ]; then met="(no budget)"; elif [ "$(echo "$v <= $3" | bc -l)" -eq 1 ]; then met="met"; else met="NOT MET"; fi
    [ -n "${4:-}" ] && [ "$met" = "met" ] && [ "$(echo "$v <= $4" | bc -l)" -eq 1 ] && met="met (goal too)"
  fi
  local b="budget ${3}x${4:+, goal ${4}x}"
  [ "$3" = "-" ] && b="-"
  SUMMARY+=("$(printf '%-58s %7s%s  %-24s %s' "$1" "$v" "$([ "$v" = "n/a" ] || echo x)" "$b" "$met")")
}

# The image followed by 3 GiB of holes (zeros that cost nothing to read).
if ! skip big; then
  cp --sparse=always "$IMG" "$W/img-big" && truncate -s "$((SIZE_MB + 3072))M" "$W/img-big" && sync # a copy still being written back slows the push down 2x
fi

# Each line runs ROUNDS times, interleaved, so that this machine's noise (fresh
# memory and page-cache costs vary 2-4x between runs) falls on all of them alike;
# the medians are printed.
: > "$W/runs"
for _ in $(seq "$ROUNDS"); do
  # what the last round wrote (restored images, stores) is written back now,
  # not while the next lines are timed (each line below starts the same way)
  sync
  t zstd bash -c "zstd -1 -T0 -q -c '$IMG' > '$W/ref.zst'"
  echo "zstd $(wall zstd)" >> "$W/runs"
  t zstdd bash -c "zstd -dcq '$W/ref.zst' > '$W/ref.out'"
  echo "zstdd $(wall zstdd)" >> "$W/runs"
  rm -f "$W/ref.out"
  # the same decompression into a file zstd writes itself: sparse, like restore's
  t zstdo zstd -dqf "$W/ref.zst" -o "$W/ref.out"
  echo "zstdo $(wall zstdo)" >> "$W/runs"
  rm -f "$W/ref.out"
  if ! skip stock; then
    # the stock tools' CPU for the same work, one core each
    t zstd1 bash -c "zstd -1 -T1 -q -c '$IMG' > '$W/ref1.zst'"
    t zstdn bash -c "zstd -dcq '$W/ref.zst' > /dev/null"
    t sha1 openssl dgst -sha256 "$IMG" > /dev/null
    t sha2 openssl dgst -sha256 "$IMG" > /dev/null
    rm -f "$W/ref1.zst"
    { echo "c_zstd1 $(cpu zstd1)"; echo "c_zstdn $(cpu zstdn)"; echo "c_sha $(cpu sha1)"; echo "c_sha2 $(add "$(cpu sha1)" + "$(cpu sha2)")"; } >> "$W/runs"
  fi
  if ! skip pipe; then
    # the same guarantees by hand: both ends hash, the copy is decompressed and
    # made durable (sync of that file: a bare sync would also time whatever
    # else this shared machine has to write back; receive fsyncs only its own files)
    rm -f "$W/pipe.zst"
    # shellcheck disable=SC2016 # $1 and $2 are the inner shell's
    t pipe bash -c 'tee >(openssl dgst -sha256 > "$1.in") < "$2" | zstd -1 -T0 -q | tee "$1.zst" | zstd -dcq | openssl dgst -sha256 > "$1.out"; wait; sync "$1.zst"' _ "$W/pipe" "$IMG"
    echo "pipe $(wall pipe)" >> "$W/runs"
    rm -f "$W/pipe.zst"
  fi
  sync
  echo "pr $(push_receive "$IMG" 1g)" >> "$W/runs"
  echo "c_pr $(add "$(cpu push-1g)" + "$(cpu recv-1g)")" >> "$W/runs"
  if ! skip big; then
    echo "pr4 $(push_receive "$W/img-big" 4g)" >> "$W/runs"
    rm -rf "$W/store-4g"
  fi
  B=$(dirname "$(find "$W/store-1g" -name image.zst)")
  rm -f "$W/restored.img"
  t rfile "$BIN" restore "$W/restored.img" --from "$B" --yes --no-verify 2>/dev/null
  echo "rfile $(wall rfile)" >> "$W/runs"
  echo "c_rfile $(cpu rfile)" >> "$W/runs"
  restore_unix
  echo "rnet $(wall rnet)" >> "$W/runs"
  echo "c_rnet $(add "$(cpu rnet)" + "$(cpu rrecv)")" >> "$W/runs"
done
t sha bash -c "sha256sum '$IMG' > /dev/null"
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
echo "== $LABEL ext4 image ($(du -m --apparent-size "$IMG" | cut -f1) MiB, $(du -m "$IMG" | cut -f1) MiB allocated); median of $ROUNDS interleaved runs"
printf '%-44s %8s s   (runs: %s; %s CPU-s)\n' "zstd -1 -T0 -c img > out.zst" "$ZW" "$(all zstd)" "$(cpu zstd)"
printf '%-44s %8s s\n' "sha256sum img" "$(wall sha)"
printf '%-44s %8s s   (runs: %s; %s CPU-s)\n' "zstd -dc out.zst > out" "$ZD" "$(all zstdd)" "$(cpu zstdd)"
printf '%-44s %8s s   (runs: %s; %s CPU-s; sparse output, a steadier yardstick)\n' "zstd -d out.zst -o out" "$ZO" "$(all zstdo)" "$(cpu zstdo)"
if ! skip pipe; then
  PIPE=$(med pipe)
  printf '%-44s %8s s   (runs: %s; the same guarantees by hand: tee >(openssl dgst -sha256) < img | zstd -1 -T0 | tee out.zst | zstd -dc | openssl dgst -sha256; sync out.zst)\n' "the careful admin's pipe" "$PIPE" "$(all pipe)"
fi
printf '%-44s %8.2f s   ratio to zstd line: %.2fx (budget 1.5x, target 1.0x)   (runs: %s)\n' "tbbackup push -> receive (unix:)" "$PR" "$(div "$PR" "$ZW")" "$(all pr)"
if ! skip pipe; then
  printf '%-44s %8s     %.2fx (no budget set; about 0.5x when issue #15 was written)\n' "push -> receive vs the careful admin's pipe" "" "$(div "$PR" "$PIPE")"
  row "push -> receive time vs the careful admin's pipe" "$(div "$PR" "$PIPE")" -
else
  row "push -> receive time vs the careful admin's pipe" n/a -
fi
row "push -> receive time vs zstd -1 -T0" "$(div "$PR" "$ZW")" 1.5 1.0
printf '%-44s %8s CPU-s push, %s CPU-s receive\n' "CPU time" "$(cpu push-1g)" "$(cpu recv-1g)"
if ! skip stock; then
  CPR=$(med c_pr)
  STOCK=$(add "$(med c_zstd1)" + "$(med c_zstdn)" + "$(med c_sha2)")
  printf '%-44s %8s CPU-s   (runs: %s)\n' "  push + receive, user+sys" "$CPR" "$(all c_pr)"
  printf '%-44s %8s CPU-s   = zstd -1 -T1 %s + zstd -dc > /dev/null %s + openssl dgst -sha256 twice %s\n' "  stock tools for the same work, one core each" "$STOCK" "$(med c_zstd1)" "$(med c_zstdn)" "$(med c_sha2)"
  printf '%-44s %8.2fx  (budget 0.65x, goal 0.5x)\n' "CPU cost: push + receive vs the stock tools" "$(div "$CPR" "$STOCK")"
  row "CPU cost: push + receive vs stock tools (user+sys)" "$(div "$CPR" "$STOCK")" 0.65 0.5
else
  row "CPU cost: push + receive vs stock tools (user+sys)" n/a 0.65 0.5
fi
printf '%-44s %8s MiB push, %s MiB receive (budget 256)\n' "peak RSS" "$(rss push-1g)" "$(rss recv-1g)"
printf '%-44s %8s bytes stored (zstd CLI: %s)\n' "stored image.zst" "$(stat -c %s "$STORED")" "$(stat -c %s "$W/ref.zst")"
printf '%-44s %8s s   ratio to zstd -dc: %.2fx (budget 1.0x)   RSS %s MiB, %s CPU-s   (runs: %s)\n' "restore --from stored image into a new file" "$RF" "$(div "$RF" "$ZD")" "$(rss rfile)" "$(cpu rfile)" "$(all rfile)"
printf '%-44s %8s     %.2fx restore --from, %.2fx restore over unix:\n' "ratios to zstd -d -o out (sparse)" "" "$(div "$RF" "$ZO")" "$(div "$RN" "$ZO")"
printf '%-44s %8s s   ratio to zstd -dc: %.2fx (budget 1.5x)   RSS %s MiB restore, %s MiB receiver   (runs: %s)\n' "restore over unix: from a receiver" "$RN" "$(div "$RN" "$ZD")" "$(rss rnet)" "$(rss rrecv)" "$(all rnet)"
row "restore --from time vs zstd -d -o (sparse)" "$(div "$RF" "$ZO")" 1.0
row "restore over unix: time vs zstd -d -o (sparse)" "$(div "$RN" "$ZO")" 1.5
if ! skip stock; then
  RSTOCK=$(add "$(med c_zstdn)" + "$(med c_sha)")
  printf '%-44s %8s CPU-s   = zstd -dc > /dev/null %s + openssl dgst -sha256 %s\n' "  stock tools for a restore, one core each" "$RSTOCK" "$(med c_zstdn)" "$(med c_sha)"
  printf '%-44s %8s CPU-s   %.2fx the stock tools   (runs: %s)\n' "  restore --from, user+sys" "$(med c_rfile)" "$(div "$(med c_rfile)" "$RSTOCK")" "$(all c_rfile)"
  printf '%-44s %8s CPU-s   %.2fx the stock tools   (runs: %s)\n' "  restore over unix:, restore + receiver" "$(med c_rnet)" "$(div "$(med c_rnet)" "$RSTOCK")" "$(all c_rnet)"
  row "restore --from CPU vs zstd -dc + openssl (user+sys)" "$(div "$(med c_rfile)" "$RSTOCK")" -
  row "restore over unix: CPU (both ends) vs the same" "$(div "$(med c_rnet)" "$RSTOCK")" -
fi
cmp -s "$IMG" "$W/restored.img" && echo "restored image identical: yes" || echo "restored image identical: NO"
rm -f "$W/restored.img"
t rverify "$BIN" restore "$W/restored.img" --from "$B" --yes 2>/dev/null
printf '%-44s %8s s   (as users run it: the target is synced, dropped from the cache and read back)\n' "restore --from, with its read-back check" "$(wall rverify)"
rm -f "$W/restored.img"

echo
"$BUN" scripts/bench-floor.ts "$IMG" "$ZW" "$ZD"

if ! skip big; then
  echo
  echo "== $BIG_LABEL image (the $LABEL image followed by 3 GiB of zeros): memory must not grow"
  PR4=$(med pr4)
  printf '%-44s %8.2f s   peak RSS %s MiB push, %s MiB receive\n' "tbbackup push -> receive (unix:)" "$PR4" "$(rss push-4g)" "$(rss recv-4g)"
  printf '%-44s %8.2fx  (%.2f s vs %.2f s for the image alone; budget 1.15x; runs: %s)\n' "zeros cost nothing: + 3 GiB of holes" "$(div "$PR4" "$PR")" "$PR4" "$PR" "$(all pr4)"
  row "push -> receive, + 3 GiB of holes vs the image alone" "$(div "$PR4" "$PR")" 1.15
  rm -f "$W/img-big"
else
  row "push -> receive, + 3 GiB of holes vs the image alone" n/a 1.15
fi

if ! skip loop; then
  echo
  echo "== zeros written on a block device: a loop device over a non-sparse file, the $LABEL image then 1 GiB of zeros"
  cp --sparse=never "$IMG" "$W/img-zeros"
  dd if=/dev/zero of="$W/img-zeros" bs=1M count=1024 oflag=append conv=notrunc status=none
  sync
  if loop "$W/img-zeros" -r 2>/dev/null && LZ=$LOOPDEV && loop "$W/img-zeros" -r --sizelimit "$SIZE" 2>/dev/null && LI=$LOOPDEV; then
    cat "$LZ" > /dev/null
    cat "$LI" > /dev/null
    for _ in $(seq "$ROUNDS"); do
      echo "loopi $(push_receive "$LI" loop)" >> "$W/runs"
      echo "loopz $(push_receive "$LZ" loop)" >> "$W/runs"
    done
    rm -rf "$W/store-loop"
    unloop "$LZ"
    unloop "$LI"
    LPI=$(med loopi)
    LPZ=$(med loopz)
    printf '%-44s %8.2f s   (runs: %s)\n' "push -> receive of the loop device, image" "$LPI" "$(all loopi)"
    printf '%-44s %8.2f s   (runs: %s)\n' "  the same + 1 GiB of written zeros" "$LPZ" "$(all loopz)"
    printf '%-44s %8.2fx  (budget 1.15x, as for holes; real zeros must be read)\n' "zeros cost nothing: + 1 GiB of real zeros" "$(div "$LPZ" "$LPI")"
    row "push -> receive, loop device + 1 GiB of zeros vs without" "$(div "$LPZ" "$LPI")" 1.15
  else
    echo "n/a (no loop device here)"
    row "push -> receive, loop device + 1 GiB of zeros vs without" n/a 1.15
  fi
  rm -f "$W/img-zeros"
else
  row "push -> receive, loop device + 1 GiB of zeros vs without" n/a 1.15
fi

if ! skip scaling; then
  # Per-thread CPU of a running tbbackup, sampled from /proc every 0.1 s, with
  # each thread's time spent waiting for a CPU (schedstat's run-queue delay):
  # $1 = the pid of /usr/bin/time, whose child is tbbackup; $2 = output file
  # of lines "PID RUNQUEUE_NS <the thread's stat line>".
  sample_threads() {
    local kid="" t line rq
    : > "$2"
    while kill -0 "$1" 2>/dev/null; do
      [ -n "$kid" ] || read -r kid _ 2>/dev/null < "/proc/$1/task/$1/children" || true
      if [ -n "$kid" ]; then
        for t in /proc/"$kid"/task/*; do
          rq=0
          read -r _ rq _ 2>/dev/null < "$t/schedstat" || true
          read -r line 2>/dev/null < "$t/stat" && echo "$kid $rq $line" >> "$2"
        done
      fi
      sleep 0.1
    done
  }
  # The busiest threads, as a share of the wall time, the threads' summed wait
  # for a core (another process's, or each other's on one core), and what caps the run.
  threads() { # $1 = samples, $2 = wall seconds, $3 = cores, $4 = the process's CPU seconds
    awk '
      { tid = $3; r = index($0, ") "); comm = substr($0, index($0, "(") + 1, r - index($0, "(") - 1)
        split(substr($0, r + 2), f, " "); ticks = f[12] + f[13]
        if (tid == $1) comm = "main"
        if (ticks >= t[tid]) { t[tid] = ticks; n[tid] = comm }
        if ($2 > q[tid]) q[tid] = $2 }
      END { for (k in t) { print t[k], n[k]; rq += q[k] }
            print "RQ", rq }' "$1" | sort -k1,1nr | awk -v hz="$(getconf CLK_TCK)" -v wall="$2" -v cores="$3" -v cpu="$4" '
      $1 == "RQ" { rq = $2 / 1e9 / wall; next }
      { name = $2; for (i = 3; i <= NF; i++) name = name " " $i
        if (++k <= 4) { s = s sep sprintf("%s %.0f%%", name, 100 * $1 / hz / wall); sep = ", " }
        if (k == 1) { top = name; topshare = $1 / hz / wall } }
      END { total = cpu / wall
            cap = total >= 0.85 * cores ? "the cores (" sprintf("%.0f%%", 100 * total / cores) " of " cores ")" : topshare >= 0.85 ? "its " top " thread" : rq >= 0.25 ? "the load on the machine (its threads waited for a core)" : "neither (it waits for its disk or its peer)"
            printf "threads: %s; run-queue wait, all threads: %.0f%%; capped by %s", s, 100 * rq, cap }'
  }
  mbs() { printf '%.0f' "$(echo "$SIZE / 1000000 / $1" | bc -l)"; }

  echo
  echo "== scaling: each end alone against a peer that costs next to nothing ($LABEL image; MB/s = 10^6 bytes of disk per second; one run each)"
  # Record a push once: its bytes are what the replayer feeds each receive.
  rm -f "$W/s.sock" "$W/push.rec"
  "$BUN" scripts/bench-sink.ts "unix:$W/s.sock" --record "$W/push.rec" 2>/dev/null &
  sink=$!
  wait_sock "$W/s.sock" "$sink"
  "$BIN" push "$IMG" --stream "unix:$W/s.sock" 2>/dev/null
  wait "$sink"
  for cores in 1 2; do
    if [ "$cores" -eq 1 ]; then mine=0; peer=(taskset -c 1); else mine=0,1; peer=(); fi
    # push -> the acknowledging sink
    rm -f "$W/s.sock"
    "${peer[@]}" "$BUN" scripts/bench-sink.ts "unix:$W/s.sock" 2>/dev/null &
    sink=$!
    wait_sock "$W/s.sock" "$sink"
    taskset -c "$mine" /usr/bin/time -f "%e %M %U %S" -o "$W/time.spush" "$BIN" push "$IMG" --stream "unix:$W/s.sock" 2>/dev/null &
    p=$!
    sample_threads "$p" "$W/threads.push" &
    sampler=$!
    wait "$p"
    wait "$sampler"
    wait "$sink" || true
    printf '%-44s %6s MB/s   %s s, %s CPU-s; %s\n' "push alone on $cores core(s), to a sink" "$(mbs "$(wall spush)")" "$(wall spush)" "$(cpu spush)" "$(threads "$W/threads.push" "$(wall spush)" "$cores" "$(cpu spush)")"
    # a replayed push -> receive
    rm -rf "$W/store-scale" "$W/b.sock"
    taskset -c "$mine" /usr/bin/time -f "%e %M %U %S" -o "$W/time.srecv" "$BIN" receive --out "$W/store-scale" --stream "unix:$W/b.sock" --once 2>/dev/null &
    r=$!
    wait_sock "$W/b.sock" "$r"
    s=$(date +%s.%N)
    "${peer[@]}" "$BUN" scripts/bench-replay.ts "$W/push.rec" "unix:$W/b.sock" 2>/dev/null &
    replay=$!
    sample_threads "$r" "$W/threads.recv" &
    sampler=$!
    wait "$replay" || echo "bench: the replay into receive failed"
    e=$(date +%s.%N)
    wait "$r" || true
    wait "$sampler"
    rw=$(echo "$e - $s" | bc)
    printf '%-44s %6s MB/s   %.2f s, %s CPU-s; %s\n' "receive alone on $cores core(s), from a replay" "$(mbs "$rw")" "$rw" "$(cpu srecv)" "$(threads "$W/threads.recv" "$rw" "$cores" "$(cpu srecv)")"
  done
  rm -rf "$W/store-scale" "$W/push.rec" "$W"/threads.*
fi

if ! skip files; then
  echo
  echo "== files mode: the image's tree ($(du -sm --apparent-size "$TREE" | cut -f1) MiB in $(find "$TREE" | wc -l) entries)"
  tar -cf - -C "$TREE" . > /dev/null # warm the page cache for both lines
  t tarzstd bash -c "tar -cf - -C '$TREE' . | zstd -1 -T0 -q > '$W/ref-tree.tar.zst'"
  TZ=$(wall tarzstd)
  PRF=$(push_receive "--files $TREE" files)
  printf '%-44s %8s s\n' "tar -cf - DIR | zstd -1 -T0 > out" "$TZ"
  printf '%-44s %8.2f s   ratio to tar | zstd: %.2fx   peak RSS %s MiB push, %s MiB receive\n' "tbbackup push --files -> receive (unix:)" "$PRF" "$(div "$PRF" "$TZ")" "$(rss push-files)" "$(rss recv-files)"
  printf '%-44s %8s bytes stored (tar | zstd: %s)\n' "stored files.tar.zst" "$(stat -c %s "$(find "$W/store-files" -name files.tar.zst)")" "$(stat -c %s "$W/ref-tree.tar.zst")"
  rm -rf "$W/store-files" "$W/ref-tree.tar.zst"
fi

if ! skip incr; then
  # One disk in two states, pushed from one path ($W/incr.img: a file's
  # identity is its path), the states swapped in by rename so each keeps its
  # cached pages: the image, then the same with ~8 MiB of new files written
  # into it by debugfs (no mount needed).
  echo
  echo "== incremental: the $LABEL image, then the same with ~8 MiB of new files; median of $ROUNDS interleaved runs"
  rm -f "$W/incr.img" "$W/incr-old.img" "$W/incr-new.img"
  cp --sparse=always "$IMG" "$W/incr-old.img"
  cp --sparse=always "$IMG" "$W/incr-new.img"
  {
    echo "mkdir /bench-incr"
    echo "cd /bench-incr"
    find /usr/bin /usr/sbin -type f -size -4M -printf '%s %p\n' 2>/dev/null | sort -k2 |
      awk -v limit=$((8 * 1048576)) '!full { total += $1; if (total > limit) full = 1; else print "write " $2 " f" NR }'
  } > "$W/incr.debugfs"
  debugfs -w -f "$W/incr.debugfs" "$W/incr-new.img" > /dev/null 2>&1
  sync "$W/incr-new.img"
  jnum() { sed -n "s/^  \"$1\": \([0-9.]*\).*/\1/p" "$2" | head -1; } # a top-level number of push --json
  jstr() { sed -n "s/^  \"$1\": \"\(.*\)\".*/\1/p" "$2" | head -1; }
  INCR_VIA="unix:$W/i.sock" # the push's way to the receiver (or a relay to it)
  INCR_STORE="$W/store-incr"
  incr_push() { # $1 = tag, $2... = push options; prints seconds, leaves push --json in $W/incr-$1.json
    rm -f "$W/i.sock"
    "$BIN" receive --out "$INCR_STORE" --stream "unix:$W/i.sock" --once > /dev/null 2>&1 &
    local r=$! s e
    wait_sock "$W/i.sock" "$r"
    s=$(date +%s.%N)
    "$BIN" push "$W/incr.img" "${@:2}" --json --stream "$INCR_VIA" > "$W/incr-$1.json" 2>/dev/null || echo "bench: push ($1) failed" >&2
    wait "$r" || true
    e=$(date +%s.%N)
    echo "$e - $s" | bc
  }
  : > "$W/iruns"
  for _ in $(seq "$ROUNDS"); do
    rm -rf "$W/store-incr"
    mv "$W/incr-old.img" "$W/incr.img"
    echo "ifull $(incr_push full)" >> "$W/iruns"
    mv "$W/incr.img" "$W/incr-old.img"
    mv "$W/incr-new.img" "$W/incr.img"
    echo "iinc $(incr_push inc)" >> "$W/iruns"
    echo "ifullnew $(incr_push fullnew --full)" >> "$W/iruns"
    mv "$W/incr.img" "$W/incr-new.img"
  done
  imed() { awk -v k="$1" '$1 == k {print $2}' "$W/iruns" | median; }
  iall() { awk -v k="$1" '$1 == k {printf "%s%.2f", sep, $2; sep=" "}' "$W/iruns"; }
  IF=$(imed ifull)
  II=$(imed iinc)
  IFN=$(imed ifullnew)
  mib() { printf '%.1f' "$(echo "$1 / 1048576" | bc -l)"; }
  dub() { du -sk "$1" | awk '{print $1 * 1024}'; } # what a directory takes on disk, in bytes
  IB=$(jstr path "$W/incr-inc.json")
  printf '%-44s %8.2f s   sent %s MiB, the store grew by %s MiB (du)   (runs: %s)\n' "push -> receive, full (the first backup)" "$IF" "$(mib "$(jnum sentBytes "$W/incr-full.json")")" "$(mib "$(dub "$(jstr path "$W/incr-full.json")")")" "$(iall ifull)"
  if [ -n "$(jstr base "$W/incr-inc.json")" ]; then
    printf '%-44s %8.2f s   sent %s MiB, the store grew by %s MiB (du; newStoredBytes %s MiB); %s of %s chunks changed   (runs: %s)\n' "push -> receive again, incremental" "$II" "$(mib "$(jnum sentBytes "$W/incr-inc.json")")" "$(mib "$(dub "$IB")")" "$(mib "$(jnum newStoredBytes "$W/incr-inc.json")")" "$(jnum changedChunks "$W/incr-inc.json")" "$(jnum chunks "$W/incr-inc.json")" "$(iall iinc)"
  else
    printf '%-44s %8.2f s   NOT incremental: the receiver offered no base   (runs: %s)\n' "push -> receive again, incremental" "$II" "$(iall iinc)"
  fi
  printf '%-44s %8.2f s   sent %s MiB   (runs: %s)\n' "  the same with push --full" "$IFN" "$(mib "$(jnum sentBytes "$W/incr-fullnew.json")")" "$(iall ifullnew)"
  printf '%-44s %8.2fx  (budget 0.6x, goal 0.4x); %.2fx push --full of the same\n' "incremental vs the full push, time" "$(div "$II" "$IF")" "$(div "$II" "$IFN")"
  row "incremental push time vs the full push" "$(div "$II" "$IF")" 0.6 0.4
  row "incremental push time vs push --full of the same" "$(div "$II" "$IFN")" -

  # The same two pushes where the cable is the limit, as incremental pushes
  # are meant for: through scripts/bench-relay.ts held to 25 MB/s (one run).
  rm -rf "$W/store-incr-relay" "$W/ir.sock"
  INCR_STORE="$W/store-incr-relay"
  "$BUN" scripts/bench-relay.ts "unix:$W/ir.sock" "unix:$W/i.sock" 25 2>/dev/null &
  irelay=$!
  wait_sock "$W/ir.sock" "$irelay"
  INCR_VIA="unix:$W/ir.sock"
  mv "$W/incr-old.img" "$W/incr.img"
  IRF=$(incr_push rfull)
  mv "$W/incr.img" "$W/incr-old.img"
  mv "$W/incr-new.img" "$W/incr.img"
  IRI=$(incr_push rinc)
  mv "$W/incr.img" "$W/incr-new.img"
  kill "$irelay" 2>/dev/null || true
  wait "$irelay" 2>/dev/null || true
  printf '%-44s %8.2f s   full, sent %s MiB; then %.2f s incremental, sent %s MiB: %.2fx (one run)\n' "the same over a 25 MB/s relay" "$IRF" "$(mib "$(jnum sentBytes "$W/incr-rfull.json")")" "$IRI" "$(mib "$(jnum sentBytes "$W/incr-rinc.json")")" "$(div "$IRI" "$IRF")"
  row "incremental push time vs full, over a 25 MB/s relay" "$(div "$IRI" "$IRF")" -
  rm -rf "$W/store-incr-relay" "$W/ir.sock"

  # The same two pushes into a store on a file system that shares blocks
  # between files (btrfs, and XFS made with reflink=1, each on a loop file):
  # how much the file system grew with each (its used blocks, after sync),
  # against the du of the incremental backup (du counts shared blocks again).
  if [ "$(id -u)" -ne 0 ]; then
    echo "the store on btrfs / XFS (reflink): n/a (needs root: loop devices, mounts)"
  else
    fsused() { sync; stat -f -c '%b %f %S' "$1" | awk '{print ($1 - $2) * $3}'; }
    INCR_VIA="unix:$W/i.sock"
    for fs in btrfs xfs; do
      case $fs in btrfs) mk=(mkfs.btrfs -f -q) ;; xfs) mk=(mkfs.xfs -f -q -m reflink=1) ;; esac
      if ! command -v "${mk[0]}" >/dev/null 2>&1; then echo "the store on $fs (reflink): n/a (no ${mk[0]})"; continue; fi
      rm -f "$W/rl-$fs.fs" && truncate -s "$((SIZE_MB * 2 + 512))M" "$W/rl-$fs.fs"
      mkdir -p "$W/rl-$fs.mnt"
      LOOPDEV=""
      if loop "$W/rl-$fs.fs" 2>/dev/null && "${mk[@]}" "$LOOPDEV" >/dev/null 2>&1 && mount "$LOOPDEV" "$W/rl-$fs.mnt"; then
        MOUNTS+=("$W/rl-$fs.mnt")
        INCR_STORE="$W/rl-$fs.mnt/store"
        u0=$(fsused "$W/rl-$fs.mnt")
        mv "$W/incr-old.img" "$W/incr.img"
        incr_push "rl$fs-full" > /dev/null
        mv "$W/incr.img" "$W/incr-old.img"
        u1=$(fsused "$W/rl-$fs.mnt")
        mv "$W/incr-new.img" "$W/incr.img"
        incr_push "rl$fs-inc" > /dev/null
        mv "$W/incr.img" "$W/incr-new.img"
        u2=$(fsused "$W/rl-$fs.mnt")
        printf '%-44s the full push grew it by %s MiB, the incremental one by %s MiB (du of that backup: %s MiB)\n' "the store on $fs (reflink), used blocks" "$(mib $((u1 - u0)))" "$(mib $((u2 - u1)))" "$(mib "$(dub "$(jstr path "$W/incr-rl$fs-inc.json")")")"
        umount "$W/rl-$fs.mnt"
      else
        echo "the store on $fs (reflink): n/a (cannot make or mount it here)"
      fi
      [ -n "$LOOPDEV" ] && unloop "$LOOPDEV"
      rm -f "$W/rl-$fs.fs" "$W"/incr-rl*.json
      rmdir "$W/rl-$fs.mnt" 2>/dev/null || true
    done
    INCR_STORE="$W/store-incr"
  fi

  # Delta restore: the incremental backup onto a loop device over a copy of
  # the old image, against --no-delta onto another copy. Bytes written are
  # the device's own count (sectors written, field 7 of its stat).
  if [ "$(id -u)" -ne 0 ]; then
    echo "delta restore: n/a (needs root: loop devices)"
    row "delta restore time vs --no-delta (loop device)" n/a 0.6
  else
    written() { echo $(($(awk '{print $7}' "/sys/block/$(basename "$1")/stat") * 512)); }
    ok=1
    for _ in $(seq "$ROUNDS"); do
      cp --sparse=always "$W/incr-old.img" "$W/incr-t1.img"
      cp --sparse=always "$W/incr-old.img" "$W/incr-t2.img"
      sync "$W/incr-t1.img" "$W/incr-t2.img" # neither restore pays for the copies' writeback
      # Both copies read once, as every input of this bench is: the copies'
      # free space is holes, and the first read of a hole through a loop
      # device makes the loop driver allocate and zero a page-cache page for
      # every 4 KiB of it, on its own kernel thread (0.3-1.4 CPU-s for these
      # ~600 MiB on this machine, not counted in the restore's CPU, doubling
      # its time when the cores are busy). Only the delta restore reads the
      # target, and a disk's read does no such work: unread, the holes would
      # charge it for the loop driver.
      cat "$W/incr-t1.img" "$W/incr-t2.img" > /dev/null
      if loop "$W/incr-t1.img" 2>/dev/null && L1=$LOOPDEV && loop "$W/incr-t2.img" 2>/dev/null && L2=$LOOPDEV; then
        w=$(written "$L1")
        t rdelta "$BIN" restore "$L1" --from "$IB" --yes --force --no-verify 2>/dev/null || echo "bench: the delta restore failed"
        echo "rdelta $(wall rdelta) $(($(written "$L1") - w)) $(cpu rdelta)" >> "$W/iruns"
        w=$(written "$L2")
        t rnodelta "$BIN" restore "$L2" --from "$IB" --yes --force --no-verify --no-delta 2>/dev/null || echo "bench: the --no-delta restore failed"
        echo "rnodelta $(wall rnodelta) $(($(written "$L2") - w)) $(cpu rnodelta)" >> "$W/iruns"
        cmp -s "$L1" "$W/incr-new.img" || echo "bench: the delta-restored device differs from the new image"
        unloop "$L1"
        unloop "$L2"
      else
        ok=0
      fi
      rm -f "$W/incr-t1.img" "$W/incr-t2.img"
    done
    if [ "$ok" -eq 1 ]; then
      RD=$(imed rdelta)
      RND=$(imed rnodelta)
      RDB=$(awk '$1 == "rdelta" {print $3}' "$W/iruns" | median)
      RNDB=$(awk '$1 == "rnodelta" {print $3}' "$W/iruns" | median)
      RDC=$(awk '$1 == "rdelta" {print $4}' "$W/iruns" | median)
      RNDC=$(awk '$1 == "rnodelta" {print $4}' "$W/iruns" | median)
      echo "restore the incremental backup onto a loop device over a copy of the old image (--no-verify):"
      printf '%-44s %8.2f s   %s MiB written to the device, %s CPU-s   (runs: %s)\n' "  delta restore (the default)" "$RD" "$(mib "$RDB")" "$RDC" "$(iall rdelta)"
      printf '%-44s %8.2f s   %s MiB written (zeroed ranges count), %s CPU-s   (runs: %s)\n' "  restore --no-delta" "$RND" "$(mib "$RNDB")" "$RNDC" "$(iall rnodelta)"
      printf '%-44s %8.2fx  (budget 0.6x); %.2fx the bytes written\n' "delta restore vs --no-delta, time" "$(div "$RD" "$RND")" "$(div "$RDB" "$RNDB")"
      row "delta restore time vs --no-delta (loop device)" "$(div "$RD" "$RND")" 0.6
      row "delta restore bytes written vs --no-delta" "$(div "$RDB" "$RNDB")" -
      row "delta restore CPU vs --no-delta (user+sys)" "$(div "$RDC" "$RNDC")" -
    else
      echo "delta restore: n/a (no loop device here)"
      row "delta restore time vs --no-delta (loop device)" n/a 0.6
    fi
  fi

  rm -rf "$W/store-incr" "$W/incr-old.img" "$W/incr-new.img" "$W/incr.img" "$W"/incr-*.json "$W/incr.debugfs" "$W/iruns"
else
  row "incremental push time vs the full push" n/a 0.6 0.4
  row "delta restore time vs --no-delta (loop device)" n/a 0.6
fi

if ! skip sessions; then
  # Several sessions into one receiver (README "receive"): each push goes
  # through its own relay held to 25 MB/s (scripts/bench-relay.ts), a slow
  # cable each, so two at once should take about as long as one alone. The
  # data is random: compression would otherwise hide the throttle. --full, so
  # that no push is sent as changes against the one before.
  SESS_MB=128
  SESS_RATE=25
  echo
  echo "== sessions: pushes of $SESS_MB MiB of random data, each over its own relay held to $SESS_RATE MB/s, into one receiver; median of $ROUNDS interleaved runs"
  for x in a b; do
    [ -f "$W/rand-$x" ] || head -c "${SESS_MB}M" /dev/urandom > "$W/rand-$x"
    cat "$W/rand-$x" > /dev/null
  done
  rm -rf "$W/store-sess" "$W/sr.sock" "$W/sa.sock" "$W/sb.sock"
  "$BIN" receive --out "$W/store-sess" --stream "unix:$W/sr.sock" > /dev/null 2>&1 &
  sessrecv=$!
  "$BUN" scripts/bench-relay.ts "unix:$W/sa.sock" "unix:$W/sr.sock" "$SESS_RATE" 2>/dev/null &
  relaya=$!
  "$BUN" scripts/bench-relay.ts "unix:$W/sb.sock" "unix:$W/sr.sock" "$SESS_RATE" 2>/dev/null &
  relayb=$!
  while { [ ! -S "$W/sr.sock" ] || [ ! -S "$W/sa.sock" ] || [ ! -S "$W/sb.sock" ]; } && kill -0 "$sessrecv" "$relaya" "$relayb" 2>/dev/null; do sleep 0.02; done
  : > "$W/sruns"
  for _ in $(seq "$ROUNDS"); do
    t sess1 "$BIN" push "$W/rand-a" --full --stream "unix:$W/sa.sock" 2>/dev/null || echo "bench: the push alone failed"
    echo "one $(wall sess1)" >> "$W/sruns"
    s=$(date +%s.%N)
    t sessa "$BIN" push "$W/rand-a" --full --stream "unix:$W/sa.sock" 2>/dev/null &
    pa=$!
    t sessb "$BIN" push "$W/rand-b" --full --stream "unix:$W/sb.sock" 2>/dev/null &
    pb=$!
    wait "$pa" || echo "bench: a push of the two at once failed"
    wait "$pb" || echo "bench: a push of the two at once failed"
    e=$(date +%s.%N)
    echo "two $(printf '%.2f' "$(echo "$e - $s" | bc)") $(wall sessa) $(wall sessb)" >> "$W/sruns"
    # the finished backups, so the store does not grow round by round
    find "$W/store-sess" -mindepth 3 -maxdepth 3 -type d -exec rm -rf {} +
  done
  kill "$relaya" "$relayb" "$sessrecv" 2>/dev/null || true
  wait "$relaya" "$relayb" "$sessrecv" 2>/dev/null || true
  S1=$(awk '$1 == "one" {print $2}' "$W/sruns" | median)
  S2=$(awk '$1 == "two" {print $2}' "$W/sruns" | median)
  printf '%-44s %8.2f s   %.1f MB/s of data   (runs: %s)\n' "one push alone" "$S1" "$(echo "$SESS_MB * 1.048576 / $S1" | bc -l)" "$(awk '$1 == "one" {printf "%s%s", sep, $2; sep=" "}' "$W/sruns")"
  printf '%-44s %8.2f s   until both were done   (runs: %s; each push: %s)\n' "two pushes at once, each over its own relay" "$S2" "$(awk '$1 == "two" {printf "%s%s", sep, $2; sep=" "}' "$W/sruns")" "$(awk '$1 == "two" {printf "%s%s and %s", sep, $3, $4; sep=", "}' "$W/sruns")"
  printf '%-44s %8.2fx  (budget 1.3x)\n' "two at once vs one alone" "$(div "$S2" "$S1")"
  row "two pushes at once vs one alone (25 MB/s relays)" "$(div "$S2" "$S1")" 1.3
  rm -rf "$W/store-sess" "$W/sruns" "$W"/s[rab].sock
else
  row "two pushes at once vs one alone (25 MB/s relays)" n/a 1.3
fi

echo
S=$(date +%s%N); for _ in $(seq 20); do "$BIN" version >/dev/null; done; E=$(date +%s%N)
printf '%-44s %8.1f ms (mean of 20)\n' "tbbackup version start-up" "$(echo "($E - $S) / 20000000" | bc -l)"

if ! skip used && [ "$(id -u)" -ne 0 ]; then
  echo
  echo "== used disk: n/a (needs root: loop devices and mounts)"
  BENCH_SKIP="${BENCH_SKIP:-},used"
fi
if ! skip used; then
  # Disks whose free space held data: a backup should not carry what was deleted.
  # Built once and kept in $W, like the main image.
  fill_used() { # $1 = mounted directory, $2 = MB of random data to write and delete, $3 = MB of real files
    head -c "${2}M" /dev/urandom > "$1/deleted" 2>/dev/null || true
    sync
    rm -f "$1/deleted"
    (cd "$TREE" && find . -type f -printf '%s %p\n' | awk -v limit=$(($3 * 1048576)) '{ total += $1; if (total > limit) exit; print substr($0, index($0, " ") + 1) }' | tar -cf - -T - 2>/dev/null) | tar -xf - -C "$1" 2>/dev/null || true
    sync
  }
  UE="$W/used-ext4-${SIZE_MB}m"
  if [ ! -f "$UE" ]; then
    echo
    echo "bench: building a $LABEL ext4 that held $((SIZE_MB * 700 / 1024)) MB of random data (deleted) and holds ~$((SIZE_MB * 190 / 1024)) MB of files ..."
    rm -f "$UE.tmp" && truncate -s "${SIZE_MB}M" "$UE.tmp"
    mkfs.ext4 -q -F -E nodiscard "$UE.tmp"
    mkdir -p "$W/mnt"
    mount -o loop "$UE.tmp" "$W/mnt" && MOUNTS+=("$W/mnt")
    fill_used "$W/mnt" $((SIZE_MB * 700 / 1024)) $((SIZE_MB * 190 / 1024))
    umount "$W/mnt"
    mv "$UE.tmp" "$UE"
  fi
  # GPT: ext4 400 MiB, xfs 320 MiB (its smallest is 300), vfat 160 MiB, swap 64 MiB, on a disk that was random all over
  UG="$W/used-gpt"
  if [ ! -f "$UG" ]; then
    echo "bench: building a 1 GiB GPT disk (ext4, xfs, vfat, swap) whose free space holds old random data ..."
    head -c 1G /dev/urandom > "$UG.tmp"
    printf 'label: gpt\n,400M,L\n,320M,L\n,160M,U\n,64M,S\n' | sfdisk -q "$UG.tmp" >/dev/null
    loop "$UG.tmp" -P
    L=$LOOPDEV
    partx -a "$L" 2>/dev/null || true
    mkfs.ext4 -q -F -E nodiscard "${L}p1"
    mkfs.xfs -q -f -K "${L}p2"
    mkfs.vfat "${L}p3" >/dev/null
    mkswap "${L}p4" >/dev/null
    for p in 1 2; do
      mount "${L}p$p" "$W/mnt" && MOUNTS+=("$W/mnt")
      fill_used "$W/mnt" 0 $((p == 1 ? 100 : 60))
      umount "$W/mnt"
    done
    # vfat has no kernel module here: mtools writes it (30 MB of files)
    mkdir -p "$W/vfat-files"
    fill_used "$W/vfat-files" 0 30
    mcopy -s -D o -i "${L}p3" "$W/vfat-files"/* ::/ < /dev/null > /dev/null 2>&1 || true
    rm -rf "$W/vfat-files"
    unloop "$L"
    mv "$UG.tmp" "$UG"
  fi
  has_all_blocks=0
  grep -q -- --all-blocks <<< "$("$BIN" push --help)" && has_all_blocks=1
  used_disk() { # $1 = disk image, $2 = label, $3 = partclone reference seconds, $4 = its bytes, $5 = what it covers
    cat "$1" > /dev/null
    local pd sd pa sa
    pd=$(push_receive "$1" used)
    sd=$(stat -c %s "$(find "$W/store-used" -name image.zst)")
    rm -rf "$W/store-used"
    printf '%-44s %8.2f s   %12s bytes stored\n' "  tbbackup push -> receive (default)" "$pd" "$sd"
    if [ "$has_all_blocks" -eq 1 ]; then
      pa=$(push_receive "$1" used --all-blocks)
      sa=$(stat -c %s "$(find "$W/store-used" -name image.zst)")
      rm -rf "$W/store-used"
      printf '%-44s %8.2f s   %12s bytes stored\n' "  tbbackup push --all-blocks -> receive" "$pa" "$sa"
    else
      printf '%-44s %8s\n' "  tbbackup push --all-blocks -> receive" "n/a (not built yet)"
    fi
    printf '%-44s %8.2f s   %12s bytes stored   (%s)\n' "  partclone -c | zstd -1 -T0 > out" "$3" "$4" "$5"
    printf '%-44s %8.2fx bytes stored (budget 1.2x), %.2fx time (budget 1.5x)\n' "  default vs partclone | zstd" "$(div "$sd" "$4")" "$(div "$pd" "$3")"
    row "$2: stored bytes vs partclone | zstd" "$(div "$sd" "$4")" 1.2
    row "$2: push -> receive time vs partclone | zstd" "$(div "$pd" "$3")" 1.5
  }
  partclone_ref() { # $1 = fs (partclone.$1), $2 = device; appends "seconds bytes" to $W/pc
    local s e
    s=$(date +%s.%N)
    "partclone.$1" -q -c -s "$2" -o - -L /dev/null 2>/dev/null | zstd -1 -T0 -q > "$W/pc.zst"
    e=$(date +%s.%N)
    echo "$(echo "$e - $s" | bc) $(stat -c %s "$W/pc.zst")" >> "$W/pc"
    rm -f "$W/pc.zst"
  }
  pc_sum() { awk '{ t += $1; b += $2 } END { printf "%.2f %d\n", t, b }' "$W/pc"; }

  echo
  echo "== used disk: $LABEL ext4 that held $((SIZE_MB * 700 / 1024)) MB of random data (deleted), ~$((SIZE_MB * 190 / 1024)) MB of files; one run each"
  cat "$UE" > /dev/null
  : > "$W/pc"
  partclone_ref ext4 "$UE"
  read -r PCT PCB < <(pc_sum)
  used_disk "$UE" "used ext4" "$PCT" "$PCB" "partclone.ext4"

  echo
  echo "== used disk: 1 GiB GPT disk, ext4 + xfs + vfat + swap, free space once random; one run each"
  cat "$UG" > /dev/null
  : > "$W/pc"
  loop "$UG" -r -P
  L=$LOOPDEV
  partx -a "$L" 2>/dev/null || true
  partclone_ref ext4 "${L}p1"
  partclone_ref xfs "${L}p2"
  partclone_ref fat "${L}p3"
  unloop "$L"
  read -r PCT PCB < <(pc_sum)
  used_disk "$UG" "GPT disk" "$PCT" "$PCB" "per partition, summed; swap and the partition table not counted"
  rm -f "$W/pc"
else
  row "used ext4/GPT: stored bytes vs partclone | zstd" n/a 1.2
  row "used ext4/GPT: time vs partclone | zstd" n/a 1.5
fi

if ! skip nbd; then
  echo
  echo "== NBD: the $LABEL backup served by tbbackup nbd"
  if grep -qE '^ +nbd( |$)' <<< "$("$BIN" --help)"; then
    NB=$(dirname "$(find "$W/store-1g" -name image.zst)")
    rm -f "$W/n.sock"
    "$BIN" nbd "$NB" --listen "unix:$W/n.sock" > /dev/null 2>&1 &
    nbdpid=$!
    wait_sock "$W/n.sock" "$nbdpid"
    URI="nbd+unix:///?socket=$W/n.sock"
    : > "$W/nruns"
    for _ in $(seq "$ROUNDS"); do
      t zdn bash -c "zstd -dcq '$NB/image.zst' > /dev/null"
      echo "zdn $(wall zdn)" >> "$W/nruns"
      if t ncopy nbdcopy "$URI" null:; then echo "ncopy $(wall ncopy)" >> "$W/nruns"; else echo "bench: nbdcopy failed"; fi
    done
    NZ=$(awk '$1 == "zdn" {print $2}' "$W/nruns" | median)
    NC=$(awk '$1 == "ncopy" {print $2}' "$W/nruns" | median)
    printf '%-44s %8s s\n' "zstd -dc image.zst > /dev/null" "$NZ"
    if [ -n "$NC" ]; then
      printf '%-44s %8s s   %.2fx zstd -dc (budget 1.5x, goal 1.0x)\n' "nbdcopy of the whole export to null:" "$NC" "$(div "$NC" "$NZ")"
      row "nbdcopy of the export vs zstd -dc" "$(div "$NC" "$NZ")" 1.5 1.0
    else
      printf '%-44s %8s\n' "nbdcopy of the whole export to null:" "n/a (failed)"
      row "nbdcopy of the export vs zstd -dc" n/a 1.5 1.0
    fi
    # nbdsh is a Python program: Debian's python3 has its module, whatever python3 is first in PATH
    PATH="/usr/bin:$PATH" nbdsh -u "$URI" -c '
import random, time
random.seed(15)
blocks = h.get_size() // 4096
lat = []
for _ in range(10000):
    off = random.randrange(blocks) * 4096
    t = time.perf_counter()
    h.pread(4096, off)
    lat.append(time.perf_counter() - t)
lat.sort()
print("%-44s %8.3f ms median, %.3f ms p99" % ("10,000 random 4 KiB reads (nbdsh)", 1000 * lat[len(lat) // 2], 1000 * lat[int(len(lat) * 0.99)]))
' || echo "random reads: nbdsh failed (apt-get install python3-libnbd)"
    kill "$nbdpid" 2>/dev/null || true
    wait "$nbdpid" 2>/dev/null || true
    rm -f "$W/nruns"
  else
    echo "n/a (tbbackup nbd is not built yet)"
    row "nbdcopy of the export vs zstd -dc" n/a 1.5 1.0
  fi
fi
rm -rf "$W/store-1g" "$W/ref.zst"

echo
echo "== summary: every ratio against its budget (this run, this machine)"
printf '%s\n' "${SUMMARY[@]}"
