#!/bin/sh
# dracut initqueue job (queued by tbbackup-cmdline.sh): run the rd.tbbackup=
# job, then power off (rd.tbbackup.poweroff, after success) or open the
# emergency shell with the result on screen. Exiting that shell lets the boot
# go on (to the root file system when root= was given).
# shellcheck source=/dev/null
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# under systemd the initqueue's stdout goes to the journal only
if [ -n "$DRACUT_SYSTEMD" ] && [ -w /dev/console ]; then
    exec < /dev/console > /dev/console 2>&1
fi

tbbackup-boot run
rc=$?
if [ "$rc" -eq 0 ] && tbbackup-boot wants-poweroff; then
    tbbackup-boot poweroff
fi
msg="the job did not report a result"
run=${TBBACKUP_RUN_DIR:-/run/tbbackup}
[ -r "$run/message" ] && read -r msg < "$run/message"
mkdir -p "$run"
: > "$run/done"
emergency_shell -n tbbackup "tbbackup: $msg. Type 'exit' to go on booting."
