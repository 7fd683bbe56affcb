#!/usr/bin/env bash
# The VM test (npm run test:e2e): build an initramfs from the repo's dracut
# module, boot it in QEMU, push a virtio disk over a virtio-serial port to a
# `tbbackup receive` on this host, restore it onto a blank disk, compare bytes.
# Installs what it needs with apt-get (Debian). Ends with one line
# "e2e: N passed, N failed" and exits non-zero if any check failed.
#
# Environment: E2E_WORK=DIR (keep the work files there), E2E_ACCEL=kvm (use KVM;
# the default is TCG, KVM hung on the project's machines), E2E_VM_TIMEOUT
# (seconds per VM run, 240).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
export DEBIAN_FRONTEND=noninteractive NO_COLOR=1

passed=0
failed=0
pass() {
    passed=$((passed + 1))
    echo "ok   - $1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL - $1${2:+: $2}"
}
check() { # NAME COMMAND...: pass if the command succeeds
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
finish() {
    echo "e2e: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

WORK=${E2E_WORK:-}
if [ -z "$WORK" ]; then
    WORK=$(mktemp -d /tmp/tbbackup-e2e.XXXXXX)
    KEEP=no
else
    mkdir -p "$WORK"
    KEEP=yes
fi
RX_PID=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [ -n "$RX_PID" ] && kill "$RX_PID" 2> /dev/null
    if [ "$KEEP" = no ] && [ "$failed" -eq 0 ]; then
        rm -rf "$WORK"
    else
        echo "e2e: work files kept in $WORK"
    fi
}
trap cleanup EXIT
echo "e2e: work directory $WORK"
T_ALL=$(now)

# --- 1. what the test needs -------------------------------------------------
need=()
for pair in qemu-system-x86_64:qemu-system-x86 dracut:dracut lsinitrd:dracut-core mkfs.ext4:e2fsprogs \
    e2fsck:e2fsprogs socat:socat zstd:zstd shellcheck:shellcheck cpio:cpio; do
    command -v "${pair%%:*}" > /dev/null 2>&1 || need+=("${pair##*:}")
done
ls /boot/vmlinuz-* > /dev/null 2>&1 || need+=(linux-image-amd64)
if [ "${#need[@]}" -gt 0 ]; then
    echo "e2e: apt-get install ${need[*]}"
    t=$(now)
    if apt-get update -qq > "$WORK/apt.log" 2>&1 && apt-get install -y -qq "${need[@]}" >> "$WORK/apt.log" 2>&1; then
        pass "apt-get install ${need[*]} ($(since "$t") s)"
    else
        tail -20 "$WORK/apt.log"
        fail "apt-get install ${need[*]}" "see $WORK/apt.log"
        finish
    fi
fi

KVER=
for v in /lib/modules/*; do
    v=${v##*/}
    [ -f "/boot/vmlinuz-$v" ] && KVER=$v
done
if [ -z "$KVER" ]; then
    fail "a guest kernel" "no /boot/vmlinuz-* with matching /lib/modules"
    finish
fi
KERNEL=/boot/vmlinuz-$KVER

if [ ! -x dist/tbbackup ]; then
    echo "e2e: building dist/tbbackup"
    if ! { [ -x node_modules/.bin/bun ] || npm ci --no-audit --no-fund > "$WORK/npm.log" 2>&1; } ||
        ! node_modules/.bin/bun scripts/build.ts > "$WORK/build.log" 2>&1; then
        fail "build dist/tbbackup" "see $WORK/build.log"
        finish
    fi
fi
# a private copy: other work may rebuild dist/ while the test runs
TB=$WORK/tbbackup
cp dist/tbbackup "$TB"

ACCEL=tcg
CPU=max
if [ "${E2E_ACCEL:-}" = kvm ] && [ -w /dev/kvm ]; then
    ACCEL=kvm
    CPU=host
elif [ -e /dev/kvm ]; then
    echo "e2e: /dev/kvm exists but TCG is used (KVM hung on these machines; E2E_ACCEL=kvm to try it)"
fi
echo "e2e: kernel $KVER, accel $ACCEL"

# --- 2. shell quality ---------------------------------------------------------
shell_files=(dracut/95tbbackup/*.sh mkinitcpio/install/* mkinitcpio/hooks/* mkinitcpio/*.sh scripts/install.sh scripts/e2e-vm.sh test/shell/*.sh)
existing=()
for f in "${shell_files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
if out=$(shellcheck -x "${existing[@]}" 2>&1); then
    pass "shellcheck (${#existing[@]} files)"
else
    echo "$out" | head -40
    fail "shellcheck"
fi
posix=(dracut/95tbbackup/tbbackup-boot.sh dracut/95tbbackup/tbbackup.sh dracut/95tbbackup/tbbackup-cmdline.sh
    dracut/95tbbackup/tbbackup-job.sh)
[ -f mkinitcpio/hooks/tbbackup ] && posix+=(mkinitcpio/hooks/tbbackup)
[ -f mkinitcpio/tbbackup-systemd.sh ] && posix+=(mkinitcpio/tbbackup-systemd.sh)
check "boot-time scripts are POSIX sh (shellcheck -s sh)" shellcheck -s sh "${posix[@]}"

# --- 3. initramfs images -------------------------------------------------------
# dracut finds modules in $dracutbasedir/modules.d: an overlay of the system's
# dracut with the repo's module added, so nothing is installed on this host.
DBASE=$WORK/dracut
rm -rf "$DBASE"
mkdir -p "$DBASE/modules.d"
for f in /usr/lib/dracut/*; do [ "${f##*/}" = modules.d ] || ln -s "$f" "$DBASE/"; done
for m in /usr/lib/dracut/modules.d/*; do ln -s "$m" "$DBASE/modules.d/"; done
ln -s "$REPO/dracut/95tbbackup" "$DBASE/modules.d/95tbbackup"

build_image() { # OUT [dracut options...]; MODULES="..." (default "base tbbackup"; "" = dracut's default set + tbbackup)
    local out=$1 mods=(-m "${MODULES-base tbbackup}")
    shift
    [ -z "${MODULES-base tbbackup}" ] && mods=(--add tbbackup)
    dracutbasedir=$DBASE TBBACKUP_BIN=$TB dracut -q --no-hostonly --no-hostonly-cmdline "${mods[@]}" \
        --add-drivers "virtio_pci virtio_blk virtio_console" --compress "zstd -1 -T0" \
        --kver "$KVER" "$@" -f "$out" > "$out.log" 2>&1
}
t=$(now)
if build_image "$WORK/initrd-nostrip.img" --nostrip; then
    T_BUILD_NOSTRIP=$(since "$t")
    pass "dracut --nostrip image ($T_BUILD_NOSTRIP s, $(($(stat -c %s "$WORK/initrd-nostrip.img") / 1048576)) MiB)"
else
    cat "$WORK/initrd-nostrip.img.log"
    fail "dracut --nostrip image"
fi
t=$(now)
if build_image "$WORK/initrd-strip.img"; then
    T_BUILD_STRIP=$(since "$t")
    pass "dracut image with default stripping ($T_BUILD_STRIP s)"
else
    cat "$WORK/initrd-strip.img.log"
    fail "dracut image with default stripping"
fi

# the program inside the stripped image still runs as tbbackup (not plain bun)
if [ -f "$WORK/initrd-strip.img" ]; then
    listing=$(lsinitrd "$WORK/initrd-strip.img" 2> /dev/null | grep -a ' usr/lib/tbbackup/tbbackup$')
    mkdir -p "$WORK/extract"
    if lsinitrd -f usr/lib/tbbackup/tbbackup "$WORK/initrd-strip.img" > "$WORK/extract/tbbackup" 2> /dev/null &&
        chmod +x "$WORK/extract/tbbackup" && out=$("$WORK/extract/tbbackup" version 2>&1) && [[ $out == tbbackup* ]]; then
        pass "stripped image: the program survives (${listing%% *}; 'version' says: $out)"
    else
        fail "stripped image: the program survives" "listing '$listing', version said '${out:-}'"
    fi
    rm -rf "$WORK/extract"
fi

# --- 4. the disks ---------------------------------------------------------------
mkdir -p "$WORK/files/docs"
head -c 3000000 /dev/urandom > "$WORK/files/random.bin"
seq 1 200000 > "$WORK/files/docs/seq.txt"
echo "hello from the e2e test" > "$WORK/files/hello.txt"
head -c 1048576 /dev/zero > "$WORK/files/zeros.bin"
rm -f "$WORK/disk.raw" "$WORK/blank.raw"
truncate -s 64M "$WORK/disk.raw"
if ! mkfs.ext4 -q -F -L tbbackup-e2e -d "$WORK/files" "$WORK/disk.raw"; then
    fail "mkfs.ext4 -d"
    finish
fi
truncate -s 64M "$WORK/blank.raw"

# --- 5. VM runs -----------------------------------------------------------------
start_receiver() { # NAME [receive options...]
    local name=$1
    shift
    rm -f "$WORK/rx.sock"
    "$TB" receive --out "${RX_OUT:-$WORK/store}" --stream "unix:$WORK/rx.sock" --once "$@" > "$WORK/$name-rx.out" 2> "$WORK/$name-rx.log" &
    RX_PID=$!
    for _ in $(seq 1 100); do
        [ -S "$WORK/rx.sock" ] && return 0
        sleep 0.1
    done
    return 1
}
stop_receiver() { # wait up to 30 s for it to finish its one session; sets RX_RC
    for _ in $(seq 1 300); do
        kill -0 "$RX_PID" 2> /dev/null || break
        sleep 0.1
    done
    kill "$RX_PID" 2> /dev/null
    wait "$RX_PID"
    RX_RC=$?
    RX_PID=
}
run_vm() { # NAME INITRD DISK CMDLINE [serial port on rx.sock: yes|no]
    local name=$1 initrd=$2 disk=$3 cmdline=$4 port=${5:-yes} t rc
    local args=(-accel "$ACCEL" -cpu "$CPU" -m 1024 -smp "${VM_SMP:-2}" -nographic -no-reboot -kernel "$KERNEL" -initrd "$initrd"
        -append "console=ttyS0 panic=-1 rd.shell=0 quiet $cmdline"
        -drive "file=$disk,if=virtio,format=raw")
    [ "$port" = yes ] && args+=(-device virtio-serial -chardev "socket,id=c0,path=$WORK/rx.sock"
        -device "virtserialport,chardev=c0,name=tbbackup")
    t=$(now)
    timeout -k 5 "${E2E_VM_TIMEOUT:-240}" qemu-system-x86_64 "${args[@]}" < /dev/null > "$WORK/$name-console.log" 2>&1
    rc=$?
    VM_SECONDS=$(since "$t")
    VM_RC=$rc
    # what the guest reported (tbbackup-boot prints these lines)
    VM_RESULT=$(tr -d '\r' < "$WORK/$name-console.log" | grep -a '^tbbackup-boot: result=' | tail -1)
    VM_START=$(tr -d '\r' < "$WORK/$name-console.log" | grep -ao 'tbbackup-boot: running (uptime [0-9]*' | grep -o '[0-9]*$' | tail -1)
    VM_JOB=$(echo "$VM_RESULT" | grep -o 'seconds=[0-9]*' | cut -d= -f2)
    echo "e2e: $name VM: exit $rc after $VM_SECONDS s; guest: ${VM_RESULT:-no result line}"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "---- last lines of $name console ----"
        tr -d '\r' < "$WORK/$name-console.log" | tail -30
    fi
}
run_vm_bg() { # like run_vm, in the background with one vCPU; load_vm NAME reads the result
    (
        VM_SMP=1 run_vm "$@" > "$WORK/$1.summary"
        printf 'VM_RC=%q VM_RESULT=%q VM_SECONDS=%q\n' "$VM_RC" "$VM_RESULT" "$VM_SECONDS" > "$WORK/$1.vars"
    ) &
    pids+=($!)
}
load_vm() {
    cat "$WORK/$1.summary"
    VM_RC=255 VM_RESULT='' VM_SECONDS='?'
    # shellcheck source=/dev/null
    [ -f "$WORK/$1.vars" ] && . "$WORK/$1.vars"
}
check_vm_run() { # TAG JOB_CHECK POWEROFF_CHECK RECEIVER_CHECK: the three outcomes of one VM job
    if [[ $VM_RESULT == *result=ok* ]]; then pass "$2"; else
        show_console "$1"
        fail "$2" "${VM_RESULT:-no result line on the console}"
    fi
    check "$3" test "$VM_RC" -eq 0
    if [ "$RX_RC" -eq 0 ]; then pass "$4"; else
        tail -5 "$WORK/$1-rx.log"
        fail "$4" "exit $RX_RC"
    fi
}

show_console() {
    echo "---- $1 console (tbbackup lines) ----"
    tr -d '\r' < "$WORK/$1-console.log" | grep -a -E 'tbbackup|receiver|backup|restore|error|FAIL|sha256' | tail -30
}

rm -rf "$WORK/store"
mkdir -p "$WORK/store"

# push: the original disk, with the --nostrip image
T_PUSH_VM=
if [ -f "$WORK/initrd-nostrip.img" ] && start_receiver push; then
    run_vm push "$WORK/initrd-nostrip.img" "$WORK/disk.raw" \
        "rd.tbbackup=push:/dev/vda rd.tbbackup.stream=/dev/vport0p1 rd.tbbackup.poweroff"
    T_PUSH_VM=$VM_SECONDS T_PUSH_BOOT=$VM_START T_PUSH_JOB=$VM_JOB
    stop_receiver
    check_vm_run push "push: the initramfs job reported success" \
        "push: the VM powered itself off (rd.tbbackup.poweroff)" \
        "push: receiver stored the session and exited 0"
else
    fail "push: start the receiver and boot" "no image or no socket"
fi

image=$(find "$WORK/store" -name image.zst | head -1)
BACKUP_ID=
if [ -n "$image" ]; then
    # shellcheck disable=SC2016 # the inner shell expands them
    check "store: zstd -dc image.zst equals the original disk" bash -c 'zstd -dc "$1" | cmp - "$2"' _ "$image" "$WORK/disk.raw"
    check "store: tbbackup verify" "$TB" verify "$(dirname "$image")"
    BACKUP_ID=$("$TB" list --out "$WORK/store" --json 2> /dev/null | grep -o '"id": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
    if [ -n "$BACKUP_ID" ]; then pass "store: tbbackup list --json names the backup ($BACKUP_ID)"; else
        fail "store: tbbackup list --json names the backup"
    fi
else
    fail "store: a stored image.zst" "none under $WORK/store"
fi

# restore: onto a blank disk, with the default (stripped) image
T_RESTORE_VM=
# (commander answers `tbbackup restore --help` with the main help when there is
# no such command, so look at what it says)
if ! "$TB" restore --help 2>&1 | grep -q 'Usage: tbbackup restore'; then
    fail "restore: boot with rd.tbbackup=restore:/dev/vda" "this tbbackup build has no 'restore' command yet"
elif [ -z "$BACKUP_ID" ] || [ ! -f "$WORK/initrd-strip.img" ]; then
    fail "restore: boot with rd.tbbackup=restore:/dev/vda" "no backup id or no image"
elif start_receiver restore --allow-restore; then
    run_vm restore "$WORK/initrd-strip.img" "$WORK/blank.raw" \
        "rd.tbbackup=restore:/dev/vda rd.tbbackup.stream=/dev/vport0p1 rd.tbbackup.backup=$BACKUP_ID rd.tbbackup.poweroff"
    T_RESTORE_VM=$VM_SECONDS T_RESTORE_BOOT=$VM_START T_RESTORE_JOB=$VM_JOB
    stop_receiver
    check_vm_run restore "restore: the initramfs job (stripped image) reported success" \
        "restore: the VM powered itself off" \
        "restore: receiver served the backup and exited 0"
    check "restore: the restored disk equals the original byte for byte" cmp "$WORK/blank.raw" "$WORK/disk.raw"
    check "restore: e2fsck -fn on the restored disk is clean" e2fsck -fn "$WORK/blank.raw"
else
    fail "restore: start the receiver" "no socket"
fi

# dracut's default module set (systemd, udev, ...), as distributions build it:
# the job runs from dracut-initqueue.service and powers off through systemctl
if [ "${E2E_SYSTEMD:-1}" != 0 ]; then
    t=$(now)
    if MODULES='' build_image "$WORK/initrd-systemd.img"; then
        T_BUILD_SD=$(since "$t")
        pass "dracut image with the default modules (systemd) ($T_BUILD_SD s, $(($(stat -c %s "$WORK/initrd-systemd.img") / 1048576)) MiB)"
        mkdir -p "$WORK/store-systemd"
        if RX_OUT=$WORK/store-systemd start_receiver systemd; then
            run_vm systemd "$WORK/initrd-systemd.img" "$WORK/disk.raw" \
                "rd.tbbackup=push:/dev/vda rd.tbbackup.stream=/dev/vport0p1 rd.tbbackup.poweroff"
            T_SD_VM=$VM_SECONDS T_SD_BOOT=$VM_START T_SD_JOB=$VM_JOB
            stop_receiver
            if [[ $VM_RESULT == *result=ok* ]] && [ "$VM_RC" -eq 0 ] && [ "$RX_RC" -eq 0 ]; then
                pass "systemd image: push from dracut-initqueue, then power off"
            else
                show_console systemd
                fail "systemd image: push from dracut-initqueue, then power off" "${VM_RESULT:-no result line}, qemu $VM_RC, receiver $RX_RC"
            fi
            image=$(find "$WORK/store-systemd" -name image.zst | head -1)
            # shellcheck disable=SC2016 # the inner shell expands them
            check "systemd image: the stored image equals the original disk" bash -c '[ -n "$1" ] && zstd -dc "$1" | cmp - "$2"' _ "$image" "$WORK/disk.raw"
        else
            fail "systemd image: start the receiver"
        fi
    else
        cat "$WORK/initrd-systemd.img.log"
        fail "dracut image with the default modules (systemd)"
    fi
fi

# a failure never hangs the boot: a disk that does not exist, a short timeout;
# with both images, at the same time (one vCPU each)
pids=()
if [ -f "$WORK/initrd-strip.img" ]; then
    truncate -s 8M "$WORK/small-a.raw"
    run_vm_bg failure "$WORK/initrd-strip.img" "$WORK/small-a.raw" \
        "rd.tbbackup=push:/dev/vdz rd.tbbackup.stream=/dev/vport0p1 rd.tbbackup.timeout=5 rd.tbbackup.poweroff rd.emergency=poweroff" no
fi
if [ -f "$WORK/initrd-systemd.img" ]; then
    truncate -s 8M "$WORK/small-b.raw"
    run_vm_bg systemd-failure "$WORK/initrd-systemd.img" "$WORK/small-b.raw" \
        "rd.tbbackup=restore:/dev/vdz rd.tbbackup.stream=/dev/vport0p1 rd.tbbackup.timeout=5 rd.emergency=poweroff" no
fi
[ "${#pids[@]}" -gt 0 ] && wait "${pids[@]}"
if [ -f "$WORK/initrd-strip.img" ]; then
    load_vm failure
    T_FAIL_VM=$VM_SECONDS
    if [[ $VM_RESULT == *result=failed* ]] && grep -aq '/dev/vdz did not appear within 5 s' "$WORK/failure-console.log"; then
        pass "failure: a missing disk is reported clearly"
    else
        show_console failure
        fail "failure: a missing disk is reported clearly" "${VM_RESULT:-no result line}"
    fi
    if [ "$VM_RC" -ne 124 ] && [ "$VM_RC" -ne 137 ] && ! grep -aq 'Kernel panic' "$WORK/failure-console.log"; then
        pass "failure: the boot ends by itself (rd.shell=0 rd.emergency=poweroff here), no hang and no kernel panic"
    else
        show_console failure
        fail "failure: the boot ends by itself, without a kernel panic" "qemu $VM_RC"
    fi
fi
if [ -f "$WORK/initrd-systemd.img" ]; then
    load_vm systemd-failure
    T_SD_FAIL_VM=$VM_SECONDS
    if [[ $VM_RESULT == *result=failed* ]] && [ "$VM_RC" -ne 124 ] && [ "$VM_RC" -ne 137 ]; then
        pass "systemd image: a failed job reports and ends the boot (rd.emergency=poweroff)"
    else
        show_console systemd-failure
        fail "systemd image: a failed job reports and ends the boot" "${VM_RESULT:-no result line}, qemu $VM_RC"
    fi
fi

echo "e2e: timings (TCG=$([ "$ACCEL" = tcg ] && echo yes || echo no)): initramfs build ${T_BUILD_NOSTRIP:-?} s (--nostrip), ${T_BUILD_STRIP:-?} s (stripped);" \
    "push VM ${T_PUSH_VM:-?} s (boot to job ${T_PUSH_BOOT:-?} s, push ${T_PUSH_JOB:-?} s);" \
    "restore VM ${T_RESTORE_VM:-?} s (boot to job ${T_RESTORE_BOOT:-?} s, restore ${T_RESTORE_JOB:-?} s);" \
    "systemd image build ${T_BUILD_SD:-?} s, VM ${T_SD_VM:-?} s (boot to job ${T_SD_BOOT:-?} s, push ${T_SD_JOB:-?} s);" \
    "failure VMs (together) ${T_FAIL_VM:-?} s and ${T_SD_FAIL_VM:-?} s (systemd); total $(since "$T_ALL") s"
finish
