#!/bin/bash
# The boot-time glue around tbbackup-boot: mkinitcpio's run_hook
# (mkinitcpio/hooks/tbbackup), dracut's initqueue job
# (dracut/95tbbackup/tbbackup-job.sh) and the systemd unit's script
# (mkinitcpio/tbbackup-systemd.sh). A fake tbbackup-boot in PATH plays the
# job's outcome; the framework's shell/poweroff entry points are stubs that
# record that they were called. Runs under dash (or bash --posix).
# shellcheck source=./lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

SH=dash
command -v dash > /dev/null || SH="bash --posix"
mkdir -p "$TMP/bin" "$TMP/run"
cat > "$TMP/bin/tbbackup-boot" << 'FAKEEOF'
#!/bin/sh
# fake: FAKE_JOB=yes|no, FAKE_RC=exit status of run, FAKE_POWEROFF=yes|no
echo "tbbackup-boot $*" >> "$CALLS"
case $1 in
    has-job) [ "${FAKE_JOB:-yes}" = yes ] ;;
    run) echo "push /dev/x: the outcome $FAKE_RC" > "$TBBACKUP_RUN_DIR/message"; exit "${FAKE_RC:-0}" ;;
    wants-poweroff) [ "${FAKE_POWEROFF:-no}" = yes ] ;;
    poweroff) exit 0 ;;
esac
FAKEEOF
cat > "$TMP/bin/systemctl" << 'FAKEEOF'
#!/bin/sh
echo "systemctl $*" >> "$CALLS"
FAKEEOF
chmod +x "$TMP/bin/tbbackup-boot" "$TMP/bin/systemctl"
export CALLS=$TMP/calls TBBACKUP_RUN_DIR=$TMP/run PATH=$TMP/bin:$PATH

mkinitcpio_hook() { # runs run_hook from the mkinitcpio hook; prints the calls made
    rm -f "$CALLS" "$TMP/run/message"
    # shellcheck disable=SC2086,SC2016 # $SH is a command line; the inner shell expands
    $SH -c '. "$1"; launch_interactive_shell() { echo "SHELL" >> "$CALLS"; }; run_hook; echo "run_hook returned $?" >> "$CALLS"' \
        _ "$REPO/mkinitcpio/hooks/tbbackup" > "$TMP/out" 2>&1
    cat "$CALLS"
}
dracut_job() { # runs the dracut initqueue job with dracut-lib stubs
    rm -f "$CALLS" "$TMP/run/message" "$TMP/run/done"
    # shellcheck disable=SC2086,SC2016 # $SH is a command line; the inner shell expands
    # RD_SHELL=0 RD_EMERGENCY=poweroff stand for rd.shell=0 rd.emergency=poweroff
    # shellcheck disable=SC2086 # $SH is a command line
    timeout "${JOB_TIMEOUT:-60}" $SH -c 'getarg() { [ "$1" = rd.emergency ] && echo "${RD_EMERGENCY:-}"; :; }; getargbool() { [ "${RD_SHELL:-1}" = 1 ]; }; emergency_shell() { echo "SHELL $*" >> "$CALLS"; }; . "$1"' \
        _ "$REPO/dracut/95tbbackup/tbbackup-job.sh" > "$TMP/out" 2>&1
    cat "$CALLS"
}
systemd_glue() {
    rm -f "$CALLS" "$TMP/run/message" "$TMP/run/done"
    $SH "$REPO/mkinitcpio/tbbackup-systemd.sh" > "$TMP/out" 2>&1
    cat "$CALLS"
}

# --- mkinitcpio run_hook ---------------------------------------------------------
calls=$(FAKE_JOB=no mkinitcpio_hook)
assert_eq "mkinitcpio: no rd.tbbackup=: nothing runs" "tbbackup-boot has-job
run_hook returned 0" "$calls"
calls=$(FAKE_RC=0 FAKE_POWEROFF=yes mkinitcpio_hook)
assert_contains "mkinitcpio: success + rd.tbbackup.poweroff: powers off" "$calls" "tbbackup-boot poweroff"
calls=$(FAKE_RC=0 FAKE_POWEROFF=no mkinitcpio_hook)
assert_not_contains "mkinitcpio: success without poweroff: no power off" "$calls" "tbbackup-boot poweroff"
assert_contains "mkinitcpio: ... a shell instead" "$calls" "SHELL"
assert_match "mkinitcpio: ... with the result on screen" "$(cat "$TMP/out")" "^:: tbbackup: push /dev/x: the outcome 0$"
calls=$(FAKE_RC=1 FAKE_POWEROFF=yes mkinitcpio_hook)
assert_not_contains "mkinitcpio: failure + poweroff: no power off (the failure stays on screen)" "$calls" "tbbackup-boot poweroff"
assert_contains "mkinitcpio: failure: a shell" "$calls" "SHELL"
assert_contains "mkinitcpio: leaving the shell goes on booting" "$calls" "run_hook returned 0"

# --- dracut initqueue job ----------------------------------------------------------
calls=$(FAKE_RC=0 FAKE_POWEROFF=yes dracut_job)
assert_contains "dracut: success + poweroff: powers off" "$calls" "tbbackup-boot poweroff"
calls=$(FAKE_RC=3 FAKE_POWEROFF=yes dracut_job)
assert_not_contains "dracut: failure + poweroff: no power off" "$calls" "tbbackup-boot poweroff"
assert_contains "dracut: failure: emergency shell with the result" "$calls" "SHELL -n tbbackup tbbackup: push /dev/x: the outcome 3. Type 'exit' to go on booting."
if [ -e "$TMP/run/done" ]; then ok "dracut: the job marks itself done (the initqueue may finish)"; else not_ok "dracut: the job marks itself done"; fi
# rd.shell=0: no shell, and no dracut emergency action that a small image cannot
# run (a kernel panic); rd.emergency=poweroff powers off (the fake returns, and
# the job then stays halted: the timeout ends it)
calls=$(FAKE_RC=3 FAKE_POWEROFF=no RD_SHELL=0 RD_EMERGENCY=poweroff JOB_TIMEOUT=3 dracut_job)
assert_contains "dracut: failure with rd.shell=0 rd.emergency=poweroff: powers off" "$calls" "tbbackup-boot poweroff"
assert_not_contains "dracut: ... without a shell" "$calls" "SHELL"

# --- systemd unit script --------------------------------------------------------------
calls=$(FAKE_RC=0 FAKE_POWEROFF=yes systemd_glue)
assert_contains "systemd: success + poweroff: powers off" "$calls" "tbbackup-boot poweroff"
assert_not_contains "systemd: ... and nothing else" "$calls" "systemctl"
calls=$(FAKE_RC=2 FAKE_POWEROFF=yes systemd_glue)
assert_contains "systemd: failure: the emergency target" "$calls" "systemctl --no-block isolate emergency.target"
assert_match "systemd: ... with the result on screen" "$(cat "$TMP/out")" "^tbbackup: push /dev/x: the outcome 2; starting the emergency shell"
if [ -e "$TMP/run/done" ]; then ok "systemd: marks the job done (the unit will not run it again this boot)"; else not_ok "systemd: marks the job done"; fi

done_testing
