#!/bin/sh
# Run by tbbackup.service (mkinitcpio sd-tbbackup): the rd.tbbackup= job, then
# power off (rd.tbbackup.poweroff, after success) or the emergency target with
# the result on screen (leaving that shell goes on booting).
tbbackup-boot run
rc=$?
if [ "$rc" -eq 0 ] && tbbackup-boot wants-poweroff; then
    exec tbbackup-boot poweroff
fi
msg="the job did not report a result"
run=${TBBACKUP_RUN_DIR:-/run/tbbackup}
[ -r "$run/message" ] && read -r msg < "$run/message"
# the unit's ConditionPathExists: never run the job a second time this boot
mkdir -p "$run"
: > "$run/done"
echo "tbbackup: $msg; starting the emergency shell (leave it to go on booting)"
exec systemctl --no-block isolate emergency.target
