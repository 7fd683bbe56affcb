#!/bin/sh
# dracut cmdline hook (sourced by dracut's init or dracut-cmdline.service).
# With rd.tbbackup= on the command line, queue the job to run once udev has
# settled (disks and ports exist), and hold the boot (no root mount) until
# the job has run. Without it, do nothing.
# shellcheck source=/dev/null
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if tbbackup-boot has-job; then
    # A recovery boot usually has no root=; without systemd, dracut's init
    # would stop right after this hook ("No or empty root= argument").
    if [ -z "$root" ] && [ -z "$DRACUT_SYSTEMD" ]; then
        root=tbbackup
        # shellcheck disable=SC2034 # read by dracut's init
        rootok=1
    fi
    mkdir -p /run/tbbackup
    : > /lib/dracut/need-initqueue
    /sbin/initqueue --settled --onetime --unique --name tbbackup /sbin/tbbackup-job
    /sbin/initqueue --finished --unique --name tbbackup tbbackup-boot finished
fi
