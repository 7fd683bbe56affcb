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
if type getargbool > /dev/null 2>&1 && ! getargbool 1 rd.shell; then
    # No shell wanted: dracut would run rd.emergency's halt/reboot/poweroff,
    # commands a small image lacks ("halt: command not found", then a kernel
    # panic that scrolls the result away). Do it here, the result on screen.
    echo "tbbackup: $msg." > /dev/console 2>&1
    case $(getarg rd.emergency) in
        poweroff) tbbackup-boot poweroff ;;
        reboot)
            sync
            echo b > /proc/sysrq-trigger
            ;;
    esac
    echo "tbbackup: rd.shell=0: the machine stays halted here with the result above; switch it off (rd.emergency=poweroff or reboot does that itself)." > /dev/console 2>&1
    while :; do sleep 3600; done
fi
emergency_shell -n tbbackup "tbbackup: $msg. Type 'exit' to go on booting."
