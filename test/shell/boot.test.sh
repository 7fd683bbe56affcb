#!/bin/bash
# The boot-time runner (dracut/95tbbackup/tbbackup-boot.sh): command-line
# parsing, the tbbackup command it builds, waits with deadlines, results.
# Runs it under every POSIX shell found here (dash, busybox sh, bash --posix)
# with a fake tbbackup that records its arguments and environment.
# shellcheck source=./lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
BOOT=$REPO/dracut/95tbbackup/tbbackup-boot.sh

shells=()
command -v dash > /dev/null && shells+=(dash)
command -v busybox > /dev/null && shells+=("busybox sh")
shells+=("bash --posix")

# a fake tbbackup: records argv and a few variables, exits $FAKE_RC
FAKE=$TMP/fake-tbbackup
cat > "$FAKE" << 'FAKEEOF'
#!/bin/sh
{
    printf 'argv:'
    for a in "$@"; do printf ' [%s]' "$a"; done
    printf '\nTERM=%s NO_COLOR=%s TMPDIR=%s\n' "${TERM:-}" "${NO_COLOR:-}" "${TMPDIR:-}"
} > "$FAKE_LOG"
# a failing tbbackup writes its error line where the runner asks (TBBACKUP_ERROR_FILE)
if [ "${FAKE_RC:-0}" -ne 0 ] && [ -n "${TBBACKUP_ERROR_FILE:-}" ]; then
    echo "the receiver's disk is full (/srv); free space on the receiver" > "$TBBACKUP_ERROR_FILE"
fi
exit "${FAKE_RC:-0}"
FAKEEOF
chmod +x "$FAKE"
DISK=$TMP/disk
: > "$DISK"

for sh in "${shells[@]}"; do
    name=${sh%% *}
    boot() { # CMDLINE ARGS...: run the runner with this command line
        local cmdline=$1
        shift
        # shellcheck disable=SC2086 # $sh is a command and its options
        env TBBACKUP_CMDLINE="$cmdline" TBBACKUP_BIN="$FAKE" TBBACKUP_RUN_DIR="$TMP/run" \
            TBBACKUP_SYS="$TMP/sys" TBBACKUP_MODPROBE="${MODPROBE:-false}" TBBACKUP_POLL=1 \
            FAKE_LOG="$TMP/fake.log" FAKE_RC="${FAKE_RC:-0}" TERM=xterm TMPDIR= \
            $sh "$BOOT" "$@"
    }
    rm -rf "$TMP/sys" "$TMP/run" "$TMP/fake.log"

    # --- parse -----------------------------------------------------------
    out=$(boot "BOOT_IMAGE=/vmlinuz quiet rd.tbbackup=push:/dev/vda rd.tbbackup.stream=/dev/vport0p1 rd.tbbackup.poweroff" parse)
    assert_eq "$name: parse push" "mode=push
dev=/dev/vda
stream=/dev/vport0p1
backup=
name=
timeout=120
poweroff=yes
force=no
error=" "$out"
    out=$(boot "rd.tbbackup=restore:/dev/nvme0n1 rd.tbbackup.backup=h/nvme0n1/20260101T000000Z rd.tbbackup.timeout=30" parse)
    assert_contains "$name: parse restore mode" "$out" "mode=restore"
    assert_contains "$name: parse restore backup id" "$out" "backup=h/nvme0n1/20260101T000000Z"
    assert_contains "$name: parse timeout" "$out" "timeout=30"
    assert_contains "$name: no poweroff unless asked" "$out" "poweroff=no"
    out=$(boot "rd.tbbackup=push:/dev/sda rd.tbbackup=push:/dev/sdb" parse)
    assert_contains "$name: the last rd.tbbackup= wins (like getarg)" "$out" "dev=/dev/sdb"
    out=$(boot "rd.tbbackup=push:/dev/sda rd.tbbackup.poweroff=0" parse)
    assert_contains "$name: rd.tbbackup.poweroff=0 means no" "$out" "poweroff=no"
    out=$(boot "rd.tbbackup=push:/dev/sda rd.tbbackup.poweroff=yes" parse)
    assert_contains "$name: rd.tbbackup.poweroff=yes" "$out" "poweroff=yes"
    out=$(boot "rd.tbbackup.stream=/dev/x rd.tbbackupx=push:/dev/sda" parse)
    assert_eq "$name: no job without rd.tbbackup=" "job=none" "$out"
    out=$(boot 'rd.tbbackup=push:/dev/sda rd.tbbackup.name="bench-7" rd.tbbackup.force' parse)
    assert_contains "$name: one pair of quotes around a value is removed" "$out" "name=bench-7"
    assert_contains "$name: parse force" "$out" "force=yes"
    out=$(boot "rd.tbbackup=push:/dev/sda *" parse)
    assert_contains "$name: a glob on the command line is not expanded" "$out" "dev=/dev/sda"
    if boot "quiet rd.tbbackup.stream=/dev/x" has-job; then not_ok "$name: has-job without rd.tbbackup="; else ok "$name: has-job without rd.tbbackup="; fi
    if boot "quiet rd.tbbackup=push:/dev/x" has-job; then ok "$name: has-job with rd.tbbackup="; else not_ok "$name: has-job with rd.tbbackup="; fi
    if boot "rd.tbbackup=push:/dev/x rd.tbbackup.poweroff" wants-poweroff; then ok "$name: wants-poweroff"; else not_ok "$name: wants-poweroff"; fi
    if boot "rd.tbbackup=push:/dev/x" wants-poweroff; then not_ok "$name: wants-poweroff when not asked"; else ok "$name: wants-poweroff when not asked"; fi

    for bad in "rd.tbbackup=backup:/dev/sda|is not push:DEV or restore:DEV" \
        "rd.tbbackup=push|is not push:DEV or restore:DEV" \
        "rd.tbbackup=push:sda|must be an absolute path" \
        "rd.tbbackup=push:/dev/sda rd.tbbackup.timeout=soon|is not a number of seconds" \
        "rd.tbbackup=push:/dev/sda rd.tbbackup.backup=x|only applies to restore" \
        "rd.tbbackup=restore:/dev/sda rd.tbbackup.bakup=a/b/c|unknown option rd.tbbackup.bakup" \
        "rd.tbbackup=restore:/dev/sda rd.tbbackup.backup=|needs a backup ID" \
        "rd.tbbackup=push:/dev/sda rd.tbbackup.timeout=0|is not from 1 to 86400" \
        "rd.tbbackup=push:/dev/sda rd.tbbackup.timeout=99999999999999999999|is not from 1 to 86400"; do
        cmdline=${bad%%|*} want=${bad#*|}
        if out=$(boot "$cmdline" parse); then
            not_ok "$name: parse rejects '$cmdline'" "$out"
        else
            assert_match "$name: parse rejects '$cmdline'" "$out" "^error=.*$want"
        fi
    done

    # --- run -------------------------------------------------------------
    rm -f "$TMP/fake.log"
    boot "rd.tbbackup=push:$DISK rd.tbbackup.stream=$DISK rd.tbbackup.name=bench-7 rd.tbbackup.timeout=9" run > "$TMP/out" 2>&1
    rc=$?
    assert_eq "$name: run push exits 0" 0 "$rc"
    assert_contains "$name: run push command" "$(cat "$TMP/fake.log")" "argv: [push] [$DISK] [--stream] [$DISK] [--wait] [9] [--name] [bench-7]"
    assert_contains "$name: run without a serial console keeps TERM, sets NO_COLOR and TMPDIR" "$(cat "$TMP/fake.log")" "TERM=xterm NO_COLOR=1 TMPDIR=/tmp"
    assert_contains "$name: result file status" "$(cat "$TMP/run/result")" "status=ok"
    assert_match "$name: console result line" "$(cat "$TMP/out")" "^tbbackup-boot: result=ok mode=push dev=$DISK rc=0 seconds=[0-9]+$"

    rm -f "$TMP/fake.log"
    boot "rd.tbbackup=restore:$DISK rd.tbbackup.stream=unix:/x rd.tbbackup.backup=a/b/c" run > "$TMP/out" 2>&1
    assert_contains "$name: run restore command" "$(cat "$TMP/fake.log")" "argv: [restore] [$DISK] [--stream] [unix:/x] [--wait] [120] [--backup] [a/b/c] [--yes]"
    rm -f "$TMP/fake.log"
    boot "rd.tbbackup=restore:$DISK rd.tbbackup.stream=unix:/x rd.tbbackup.force" run > "$TMP/out" 2>&1
    assert_contains "$name: run restore with rd.tbbackup.force" "$(cat "$TMP/fake.log")" "argv: [restore] [$DISK] [--stream] [unix:/x] [--wait] [120] [--yes] [--force]"

    mkdir -p "$TMP/sys/class/tty/console"
    echo "tty0 ttyS0" > "$TMP/sys/class/tty/console/active"
    boot "rd.tbbackup=push:$DISK rd.tbbackup.stream=$DISK" run > /dev/null 2>&1
    assert_contains "$name: a serial console gets plain progress (TERM=dumb)" "$(cat "$TMP/fake.log")" "TERM=dumb NO_COLOR=1 TMPDIR=/tmp"
    rm -rf "$TMP/sys"

    rm -f "$TMP/fake.log"
    FAKE_RC=4 boot "rd.tbbackup=push:$DISK rd.tbbackup.stream=$DISK" run > "$TMP/out" 2>&1
    rc=$?
    assert_eq "$name: a failing tbbackup fails the run" 1 "$rc"
    assert_contains "$name: failure recorded" "$(cat "$TMP/run/result")" "rc=4"
    assert_match "$name: failure message" "$(cat "$TMP/run/message")" "^FAILED: push $DISK \\(exit 4 after"
    assert_match "$name: the banner gives tbbackup's own error line" "$(cat "$TMP/out")" "exit 4 after [0-9]+ s\\): the receiver's disk is full \\(/srv\\); free space on the receiver$"

    rm -f "$TMP/fake.log"
    boot "rd.tbbackup=push:$DISK" run > "$TMP/out" 2>&1
    rc=$?
    assert_eq "$name: no stream and no thunderbolt_stream driver: fails" 2 "$rc"
    assert_match "$name: ... and says what to do" "$(cat "$TMP/out")" "no rd.tbbackup.stream= and this kernel has no thunderbolt_stream driver"
    if [ -e "$TMP/fake.log" ]; then not_ok "$name: ... without running tbbackup"; else ok "$name: ... without running tbbackup"; fi

    rm -f "$TMP/fake.log"
    MODPROBE=true boot "rd.tbbackup=push:$DISK" run > "$TMP/out" 2>&1
    assert_contains "$name: with the driver and no stream: automatic setup (no --stream)" "$(cat "$TMP/fake.log")" "argv: [push] [$DISK] [--wait] [120]"

    rm -f "$TMP/fake.log"
    start=$SECONDS
    boot "rd.tbbackup=push:$TMP/no-such-disk rd.tbbackup.stream=$DISK rd.tbbackup.timeout=2" run > "$TMP/out" 2>&1
    rc=$?
    assert_eq "$name: a missing disk fails the run" 2 "$rc"
    if [ $((SECONDS - start)) -le 6 ]; then ok "$name: ... within its timeout"; else not_ok "$name: ... within its timeout" "took $((SECONDS - start)) s"; fi
    assert_match "$name: ... and names the disk" "$(cat "$TMP/out")" "$TMP/no-such-disk did not appear within 2 s"

    boot "rd.tbbackup=push:$DISK rd.tbbackup.stream=$TMP/no-port rd.tbbackup.timeout=1" run > "$TMP/out" 2>&1
    assert_match "$name: a missing stream device is reported" "$(cat "$TMP/out")" "stream device $TMP/no-port did not appear within 1 s"

    boot "rd.tbbackup=pull:$DISK" run > "$TMP/out" 2>&1
    rc=$?
    assert_eq "$name: an invalid rd.tbbackup= fails the run" 2 "$rc"
    assert_match "$name: ... with a result line" "$(cat "$TMP/out")" "^tbbackup-boot: result=failed mode=none"

    boot "quiet" run > "$TMP/out" 2>&1
    assert_eq "$name: run with no job exits 3" 3 "$?"

    rm -rf "$TMP/run"
    if boot "rd.tbbackup=push:$DISK" finished; then not_ok "$name: finished before done"; else ok "$name: finished before done"; fi
    mkdir -p "$TMP/run" && : > "$TMP/run/done"
    if boot "rd.tbbackup=push:$DISK" finished; then ok "$name: finished after done"; else not_ok "$name: finished after done"; fi
done

done_testing
