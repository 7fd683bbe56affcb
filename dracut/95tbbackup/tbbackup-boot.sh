#!/bin/sh
# tbbackup-boot: run the job named on the kernel command line, from an
# initramfs (dracut, mkinitcpio with busybox or with systemd). POSIX sh: it
# runs under dash, busybox ash and bash. The framework glue (dracut job,
# mkinitcpio hook, systemd unit) calls it and then powers off or opens a shell.
#
#   rd.tbbackup=push:DEV | restore:DEV   the job (DEV: an absolute path, e.g. /dev/nvme0n1)
#   rd.tbbackup.stream=SPEC              --stream for tbbackup (default: automatic Thunderbolt)
#   rd.tbbackup.poweroff                 power off after a successful job
#   rd.tbbackup.backup=ID                restore this backup (default: the newest matching one)
#   rd.tbbackup.name=LABEL               push: a label stored with the backup
#   rd.tbbackup.timeout=SECONDS          wait this long for DEV, the stream device and the peer (120; 1-86400)
#   rd.tbbackup.force                    restore: overwrite DEV even if it holds data and is not the
#                                        disk the backup was made from (tbbackup restore --force)
# Values cannot contain spaces; one pair of double quotes around a value is removed.
# An unknown rd.tbbackup.* option is an error, never silently ignored.
#
# Usage: tbbackup-boot has-job | parse | run | wants-poweroff | finished | poweroff
#   has-job         exit 0 if rd.tbbackup= is on the command line
#   parse           print the parsed settings (KEY=value lines); exit 1 if invalid
#   run             do the job; print a result banner; exit 0 only on success;
#                   exit 3 when no rd.tbbackup= is given (nothing to do)
#   wants-poweroff  exit 0 if rd.tbbackup.poweroff is set
#   finished        exit 0 once the job has run and the glue marked it done
#   poweroff        sync and power the machine off (never returns on success)
#
# Environment (for tests and unusual images): TBBACKUP_CMDLINE (instead of
# /proc/cmdline), TBBACKUP_BIN (default: tbbackup in PATH), TBBACKUP_RUN_DIR
# (/run/tbbackup), TBBACKUP_SYS (/sys), TBBACKUP_MODPROBE (modprobe),
# TBBACKUP_POLL (seconds between device checks, 1).

set -f

TBB_RUN_DIR=${TBBACKUP_RUN_DIR:-/run/tbbackup}
TBB_SYS=${TBBACKUP_SYS:-/sys}

tbb_say() {
    printf 'tbbackup-boot: %s\n' "$*" >&2
}

tbb_cmdline() {
    if [ -n "${TBBACKUP_CMDLINE+x}" ]; then
        printf '%s\n' "$TBBACKUP_CMDLINE"
    elif [ -r /proc/cmdline ]; then
        # read, not cat: a minimal dracut image has no cat
        IFS= read -r _tbb_line < /proc/cmdline || :
        printf '%s\n' "$_tbb_line"
    fi
}

# tbb_arg KEY: print the value of the last KEY=value on the command line.
# A bare KEY prints nothing and succeeds; an absent KEY fails.
tbb_arg() {
    _tbb_found=1
    _tbb_val=''
    for _tbb_w in $(tbb_cmdline); do
        case $_tbb_w in
            "$1") _tbb_found=0 _tbb_val='' ;;
            "$1"=*) _tbb_found=0 _tbb_val=${_tbb_w#*=} ;;
        esac
    done
    [ "$_tbb_found" -eq 0 ] || return 1
    case $_tbb_val in
        \"*\") _tbb_val=${_tbb_val#\"} _tbb_val=${_tbb_val%\"} ;;
    esac
    printf '%s' "$_tbb_val"
}

# tbb_bool KEY: true for a bare KEY or KEY=1/yes/true/on
tbb_bool() {
    _tbb_b=$(tbb_arg "$1") || return 1
    case $_tbb_b in
        "" | 1 | y | yes | true | on) return 0 ;;
        *) return 1 ;;
    esac
}

# tbb_parse: set TBB_MODE TBB_DEV TBB_STREAM TBB_BACKUP TBB_NAME TBB_TIMEOUT
# TBB_POWEROFF TBB_FORCE; TBB_ERROR holds a message when the command line is invalid.
# Returns 1 when there is no rd.tbbackup= at all.
tbb_parse() {
    TBB_MODE='' TBB_DEV='' TBB_STREAM='' TBB_BACKUP='' TBB_NAME='' TBB_ERROR=''
    TBB_TIMEOUT=120 TBB_POWEROFF=no TBB_FORCE=no
    _tbb_job=$(tbb_arg rd.tbbackup) || return 1
    TBB_STREAM=$(tbb_arg rd.tbbackup.stream) || TBB_STREAM=
    TBB_BACKUP=$(tbb_arg rd.tbbackup.backup) || TBB_BACKUP=
    TBB_NAME=$(tbb_arg rd.tbbackup.name) || TBB_NAME=
    tbb_bool rd.tbbackup.poweroff && TBB_POWEROFF=yes
    tbb_bool rd.tbbackup.force && TBB_FORCE=yes
    # a misspelt option (rd.tbbackup.bakup=ID) would otherwise restore another backup
    for _tbb_w in $(tbb_cmdline); do
        case ${_tbb_w%%=*} in
            rd.tbbackup | rd.tbbackup.stream | rd.tbbackup.backup | rd.tbbackup.name | rd.tbbackup.poweroff | rd.tbbackup.timeout | rd.tbbackup.force) ;;
            rd.tbbackup.*) TBB_ERROR="unknown option ${_tbb_w%%=*} (known: rd.tbbackup.stream, .backup, .name, .poweroff, .timeout, .force)" ;;
        esac
    done
    if tbb_arg rd.tbbackup.backup > /dev/null && [ -z "$TBB_BACKUP" ]; then
        TBB_ERROR=${TBB_ERROR:-"rd.tbbackup.backup= needs a backup ID (tbbackup list on the receiver shows them)"}
    fi
    if _tbb_t=$(tbb_arg rd.tbbackup.timeout); then
        case $_tbb_t in
            "" | *[!0-9]*) TBB_ERROR="rd.tbbackup.timeout=$_tbb_t is not a number of seconds" ;;
            ??????*) TBB_ERROR="rd.tbbackup.timeout=$_tbb_t is not from 1 to 86400 seconds" ;;
            *)
                if [ "$_tbb_t" -lt 1 ] || [ "$_tbb_t" -gt 86400 ]; then
                    TBB_ERROR="rd.tbbackup.timeout=$_tbb_t is not from 1 to 86400 seconds"
                else
                    TBB_TIMEOUT=$_tbb_t
                fi
                ;;
        esac
    fi
    case $_tbb_job in
        push:* | restore:*)
            TBB_MODE=${_tbb_job%%:*}
            TBB_DEV=${_tbb_job#*:}
            ;;
        *)
            TBB_ERROR="rd.tbbackup=$_tbb_job is not push:DEV or restore:DEV (for example rd.tbbackup=push:/dev/nvme0n1)"
            ;;
    esac
    if [ -z "$TBB_ERROR" ]; then
        case $TBB_DEV in
            /?*) ;;
            *) TBB_ERROR="rd.tbbackup=$_tbb_job: the device must be an absolute path such as /dev/sda" ;;
        esac
    fi
    if [ -z "$TBB_ERROR" ] && [ -n "$TBB_BACKUP" ] && [ "$TBB_MODE" != restore ]; then
        TBB_ERROR="rd.tbbackup.backup= only applies to restore:DEV"
    fi
    return 0
}

tbb_uptime() {
    IFS=. read -r _tbb_up _ < /proc/uptime 2> /dev/null || _tbb_up=0
    printf '%s' "$_tbb_up"
}

# tbb_wait_for PATH WHAT: wait up to TBB_TIMEOUT seconds for PATH to exist
tbb_wait_for() {
    [ -e "$1" ] && return 0
    tbb_say "waiting up to ${TBB_TIMEOUT} s for $2 $1"
    _tbb_waited=0
    while [ ! -e "$1" ]; do
        if [ "$_tbb_waited" -ge "$TBB_TIMEOUT" ]; then
            return 1
        fi
        sleep "${TBBACKUP_POLL:-1}"
        _tbb_waited=$((_tbb_waited + ${TBBACKUP_POLL:-1}))
        case $_tbb_waited in
            *0) tbb_say "still waiting for $1 (${_tbb_waited} s)" ;;
        esac
    done
    return 0
}

tbb_is_mounted() {
    while read -r _ _tbb_mp _; do
        [ "$_tbb_mp" = "$1" ] && return 0
    done < /proc/mounts
    return 1
}

# Load the Thunderbolt stream driver when the kernel has it; absent is normal
# (older kernels, VMs) as long as rd.tbbackup.stream names another transport.
tbb_load_drivers() {
    _tbb_modprobe=${TBBACKUP_MODPROBE:-modprobe}
    $_tbb_modprobe -q configfs 2> /dev/null || :
    $_tbb_modprobe -q thunderbolt 2> /dev/null || :
    TBB_HAVE_STREAM=no
    if $_tbb_modprobe -q thunderbolt_stream 2> /dev/null || [ -d "$TBB_SYS/module/thunderbolt_stream" ]; then
        TBB_HAVE_STREAM=yes
    fi
    if [ "$TBB_HAVE_STREAM" = yes ] && [ -d "$TBB_SYS/kernel/config" ] && ! tbb_is_mounted "$TBB_SYS/kernel/config"; then
        mount -t configfs configfs "$TBB_SYS/kernel/config" 2> /dev/null \
            || tbb_say "warning: could not mount configfs on $TBB_SYS/kernel/config"
    fi
}

# Serial consoles get plain progress lines instead of a spinner.
tbb_console_env() {
    NO_COLOR=1
    export NO_COLOR
    _tbb_active=
    if [ -r "$TBB_SYS/class/tty/console/active" ]; then
        read -r _tbb_active < "$TBB_SYS/class/tty/console/active" || :
    fi
    case ${_tbb_active##* } in
        ttyS* | ttyAMA* | ttyUSB* | hvc* | ttysclp*)
            TERM=dumb
            export TERM
            ;;
    esac
    if [ -z "${TMPDIR:-}" ]; then
        TMPDIR=/tmp
        export TMPDIR
    fi
    mkdir -p "$TMPDIR" 2> /dev/null || :
}

tbb_result() { # STATUS RC MESSAGE
    mkdir -p "$TBB_RUN_DIR" 2> /dev/null || :
    {
        printf 'status=%s\n' "$1"
        printf 'rc=%s\n' "$2"
        printf 'mode=%s\n' "$TBB_MODE"
        printf 'dev=%s\n' "$TBB_DEV"
        printf 'seconds=%s\n' "${TBB_SECONDS:-0}"
        printf 'message=%s\n' "$3"
    } > "$TBB_RUN_DIR/result" 2> /dev/null || :
    printf '%s\n' "$3" > "$TBB_RUN_DIR/message" 2> /dev/null || :
    {
        echo
        echo "================================================================"
        printf ' tbbackup: %s\n' "$3"
        echo "================================================================"
        # one machine-readable line (the VM test looks for it on the console)
        printf 'tbbackup-boot: result=%s mode=%s dev=%s rc=%s seconds=%s\n' "$1" "${TBB_MODE:-none}" "${TBB_DEV:-none}" "$2" "${TBB_SECONDS:-0}"
    } >&2
}

tbb_run() {
    tbb_parse || {
        tbb_say "no rd.tbbackup= on the kernel command line; nothing to do"
        return 3
    }
    TBB_SECONDS=0
    if [ -n "$TBB_ERROR" ]; then
        tbb_result failed 2 "FAILED: $TBB_ERROR"
        return 2
    fi
    tbb_console_env
    bin=${TBBACKUP_BIN:-tbbackup}
    if ! command -v "$bin" > /dev/null 2>&1; then
        tbb_result failed 127 "FAILED: $bin is not in this initramfs; rebuild it with the tbbackup dracut module or mkinitcpio hook"
        return 127
    fi
    tbb_load_drivers
    if [ -z "$TBB_STREAM" ] && [ "$TBB_HAVE_STREAM" != yes ]; then
        tbb_result failed 2 "FAILED: no rd.tbbackup.stream= and this kernel has no thunderbolt_stream driver; give rd.tbbackup.stream=/dev/... or use a kernel with CONFIG_USB4_STREAM"
        return 2
    fi
    if ! tbb_wait_for "$TBB_DEV" "disk"; then
        tbb_result failed 2 "FAILED: $TBB_DEV did not appear within $TBB_TIMEOUT s; check rd.tbbackup= (the disks present are listed in /sys/class/block) and that the disk's driver is in the initramfs"
        return 2
    fi
    case $TBB_STREAM in
        /*)
            if ! tbb_wait_for "$TBB_STREAM" "stream device"; then
                tbb_result failed 2 "FAILED: stream device $TBB_STREAM did not appear within $TBB_TIMEOUT s; check rd.tbbackup.stream= and that its driver is in the initramfs"
                return 2
            fi
            ;;
    esac

    set -- "$TBB_MODE" "$TBB_DEV"
    [ -n "$TBB_STREAM" ] && set -- "$@" --stream "$TBB_STREAM"
    set -- "$@" --wait "$TBB_TIMEOUT"
    case $TBB_MODE in
        push)
            [ -n "$TBB_NAME" ] && set -- "$@" --name "$TBB_NAME"
            ;;
        restore)
            [ -n "$TBB_BACKUP" ] && set -- "$@" --backup "$TBB_BACKUP"
            set -- "$@" --yes
            [ "$TBB_FORCE" = yes ] && set -- "$@" --force
            ;;
    esac
    _tbb_t0=$(tbb_uptime)
    tbb_say "running (uptime ${_tbb_t0} s): $bin $*"
    # tbbackup writes its one error line there too, for the banner below
    mkdir -p "$TBB_RUN_DIR" 2> /dev/null || :
    rm -f "$TBB_RUN_DIR/error"
    TBBACKUP_ERROR_FILE=$TBB_RUN_DIR/error "$bin" "$@"
    _tbb_rc=$?
    sync
    TBB_SECONDS=$(($(tbb_uptime) - _tbb_t0))
    if [ "$_tbb_rc" -eq 0 ]; then
        tbb_result ok 0 "$TBB_MODE $TBB_DEV: done in $TBB_SECONDS s"
        return 0
    fi
    # the cause, in the banner: dracut's own messages push tbbackup's line off a 25-line console
    _tbb_why="the cause is printed above"
    [ -s "$TBB_RUN_DIR/error" ] && IFS= read -r _tbb_why < "$TBB_RUN_DIR/error"
    tbb_result failed "$_tbb_rc" "FAILED: $TBB_MODE $TBB_DEV (exit $_tbb_rc after $TBB_SECONDS s): $_tbb_why"
    return 1
}

tbb_poweroff() {
    tbb_say "powering off"
    sync
    if [ -d /run/systemd/system ] && command -v systemctl > /dev/null 2>&1; then
        systemctl --no-block poweroff 2> /dev/null && sleep 30
    fi
    # no init to ask (or it did not act): the kernel powers off directly
    echo o > /proc/sysrq-trigger 2> /dev/null
    sleep 30
    tbb_say "power off failed; switch the machine off"
    return 1
}

case ${1:-} in
    parse)
        tbb_parse || {
            echo "job=none"
            exit 0
        }
        printf 'mode=%s\ndev=%s\nstream=%s\nbackup=%s\nname=%s\ntimeout=%s\npoweroff=%s\nforce=%s\nerror=%s\n' \
            "$TBB_MODE" "$TBB_DEV" "$TBB_STREAM" "$TBB_BACKUP" "$TBB_NAME" "$TBB_TIMEOUT" "$TBB_POWEROFF" "$TBB_FORCE" "$TBB_ERROR"
        [ -z "$TBB_ERROR" ]
        ;;
    has-job) tbb_arg rd.tbbackup > /dev/null ;;
    run) tbb_run ;;
    finished) [ -e "$TBB_RUN_DIR/done" ] ;;
    wants-poweroff) tbb_bool rd.tbbackup.poweroff ;;
    poweroff) tbb_poweroff ;;
    *)
        echo "usage: tbbackup-boot has-job | parse | run | wants-poweroff | finished | poweroff" >&2
        exit 64
        ;;
esac
