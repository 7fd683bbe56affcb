#!/bin/bash
# The mkinitcpio install hooks (install/tbbackup, install/sd-tbbackup), as
# installed by scripts/install.sh, run in a harness that provides mkinitcpio's
# helpers (add_file, add_binary, add_module, add_runscript, add_symlink,
# add_dir, error, warning, ...) and records what each one was asked to add,
# the way mkinitcpio's own tests stub them. add_file really copies into
# BUILDROOT, so the strip steps can be replayed on the result.
# shellcheck source=./lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

# a small stand-in for the program (install.sh copies it; ldd can read it)
cp /bin/true "$TMP/tbbackup"
DEST=$TMP/dest
out=$(TBBACKUP_BIN=$TMP/tbbackup "$REPO/scripts/install.sh" "$DEST" 2>&1)
assert_eq "install.sh DESTDIR succeeds" 0 "$?"
for f in /usr/local/bin/tbbackup /usr/lib/dracut/modules.d/95tbbackup/module-setup.sh \
    /usr/lib/dracut/modules.d/95tbbackup/tbbackup-boot.sh /usr/lib/dracut/modules.d/95tbbackup/tbbackup-cmdline.sh \
    /usr/lib/dracut/modules.d/95tbbackup/tbbackup-job.sh /usr/lib/dracut/modules.d/95tbbackup/tbbackup.sh \
    /usr/lib/initcpio/install/tbbackup /usr/lib/initcpio/install/sd-tbbackup /usr/lib/initcpio/hooks/tbbackup \
    /usr/lib/tbbackup/tbbackup-boot.sh /usr/lib/tbbackup/tbbackup.sh /usr/lib/tbbackup/tbbackup-systemd.sh \
    /usr/lib/tbbackup/tbbackup.service; do
    if [ -f "$DEST$f" ]; then ok "install.sh put $f"; else not_ok "install.sh put $f" "$out"; fi
done
assert_eq "the program is executable" 755 "$(stat -c %a "$DEST/usr/local/bin/tbbackup")"
assert_eq "the dracut module is executable" 755 "$(stat -c %a "$DEST/usr/lib/dracut/modules.d/95tbbackup/module-setup.sh")"
if TBBACKUP_BIN=$TMP/missing "$REPO/scripts/install.sh" "$TMP/dest2" > "$TMP/out" 2>&1; then
    not_ok "install.sh without a program fails"
else
    assert_match "install.sh without a program fails and says how to build" "$(cat "$TMP/out")" "npm run build"
fi

# --- the harness -----------------------------------------------------------
LOG=$TMP/added
BUILDROOT=$TMP/root
_d_hooks=$DEST/usr/lib/initcpio/hooks
record() { printf '%s\n' "$*" >> "$LOG"; }
add_file() { # like mkinitcpio: SRC [DEST] [MODE]
    local src=$1 dest=${2:-$1} mode=${3:-}
    record "add_file $src $dest${mode:+ $mode}"
    [ -f "$src" ] || {
        error "file not found: '$src'"
        return 1
    }
    if [ -n "$mode" ]; then install -Dm"$mode" "$src" "$BUILDROOT$dest"; else install -D "$src" "$BUILDROOT$dest"; fi
}
add_binary() { record "add_binary $*"; }
add_module() { record "add_module $*"; }
add_dir() { record "add_dir $*"; }
add_symlink() { record "add_symlink $*"; }
add_systemd_unit() { record "add_systemd_unit $*"; }
add_full_dir() { record "add_full_dir $*"; }
add_runscript() { record "add_runscript ${BASH_SOURCE[1]##*/}"; }
error() { record "error $*"; }
warning() { record "warning $*"; }
msg() { :; }
plain() { :; }
quiet() { :; }

run_build() { # HOOK: source the install hook in a subshell and run build()
    rm -rf "$LOG" "$BUILDROOT"
    : > "$LOG"
    (
        # shellcheck source=/dev/null
        . "$DEST/usr/lib/initcpio/install/$1"
        build
    )
}
export TBBACKUP_BIN=$DEST/usr/local/bin/tbbackup TBBACKUP_LIBDIR=$DEST/usr/lib/tbbackup

# --- install/tbbackup --------------------------------------------------------
run_build tbbackup
assert_eq "tbbackup: build succeeds" 0 "$?"
added=$(cat "$LOG")
assert_contains "tbbackup: the program, read-only and not executable" "$added" "add_file $TBBACKUP_BIN /usr/lib/tbbackup/tbbackup 0444"
assert_contains "tbbackup: the wrapper as /usr/bin/tbbackup" "$added" "add_file $TBBACKUP_LIBDIR/tbbackup.sh /usr/bin/tbbackup 0755"
assert_contains "tbbackup: the boot runner" "$added" "add_file $TBBACKUP_LIBDIR/tbbackup-boot.sh /usr/bin/tbbackup-boot 0755"
assert_match "tbbackup: the program's libraries (ldd)" "$added" "^add_binary .*/libc\.so\.6$"
assert_match "tbbackup: libstdc++ for the zstd addon" "$added" "^add_binary .*/libstdc\+\+\.so\.6$"
assert_match "tbbackup: libgcc_s for the zstd addon" "$added" "^add_binary .*/libgcc_s\.so\.1$"
assert_contains "tbbackup: a writable /tmp" "$added" "add_dir /tmp 1777"
assert_contains "tbbackup: configfs (optional)" "$added" "add_module configfs?"
assert_contains "tbbackup: thunderbolt (optional)" "$added" "add_module thunderbolt?"
assert_contains "tbbackup: thunderbolt_stream (optional: absent before Linux 7.2)" "$added" "add_module thunderbolt_stream?"
assert_contains "tbbackup: the boot hook" "$added" "add_runscript tbbackup"
assert_not_contains "tbbackup: no errors" "$added" "error "

# both strip steps pass over the program: mkinitcpio's strip hook strips
# files with u+w, dracut strips files that are executable
found=$(cd "$BUILDROOT" && find . -type f -perm -u+w)
assert_not_contains "strip hook (find -perm -u+w) skips the program" "$found" "./usr/lib/tbbackup/tbbackup"
found=$(cd "$BUILDROOT" && find . -type f -executable)
assert_not_contains "dracut strip (find -executable) skips the program" "$found" "./usr/lib/tbbackup/tbbackup"
# shellcheck disable=SC2016
out=$(cd "$BUILDROOT" && sed 's|^bin=/usr/lib/tbbackup/tbbackup$|bin=${BIN}|' usr/bin/tbbackup > wrapper.sh &&
    BIN=$BUILDROOT/usr/lib/tbbackup/tbbackup TMPDIR='' sh wrapper.sh 2>&1; echo "rc=$?")
assert_eq "the wrapper restores the execute bit and runs the program" "rc=0" "$out"
assert_eq "... which is then executable" 555 "$(stat -c %a "$BUILDROOT/usr/lib/tbbackup/tbbackup")"

out=$( (
    # shellcheck source=/dev/null
    . "$DEST/usr/lib/initcpio/install/tbbackup"
    help
))
assert_match "tbbackup: help names the command line" "$out" "rd.tbbackup=push:DEV"

TBBACKUP_BIN=$TMP/missing PATH=/usr/bin:/bin run_build tbbackup
rc=$?
if [ "$rc" -ne 0 ] || [ -x /usr/local/bin/tbbackup ] || [ -x /usr/bin/tbbackup ]; then ok "tbbackup: build fails without the program"; else not_ok "tbbackup: build fails without the program"; fi
if [ ! -x /usr/local/bin/tbbackup ] && [ ! -x /usr/bin/tbbackup ]; then
    assert_match "tbbackup: ... with an error naming the fix" "$(cat "$LOG")" "^error tbbackup: program not found .*install.sh"
fi

TBBACKUP_LIBDIR=$TMP/nolib run_build tbbackup
assert_eq "tbbackup: build fails without the boot scripts" 1 "$?"
assert_match "tbbackup: ... with an error naming TBBACKUP_LIBDIR" "$(cat "$LOG")" "^error tbbackup: $TMP/nolib/tbbackup.sh not found"

# --- install/sd-tbbackup ------------------------------------------------------
run_build sd-tbbackup
assert_eq "sd-tbbackup: build succeeds" 0 "$?"
added=$(cat "$LOG")
assert_contains "sd-tbbackup: the program" "$added" "add_file $TBBACKUP_BIN /usr/lib/tbbackup/tbbackup 0444"
assert_contains "sd-tbbackup: the unit" "$added" "add_file $TBBACKUP_LIBDIR/tbbackup.service /usr/lib/systemd/system/tbbackup.service 0644"
assert_contains "sd-tbbackup: the unit's script" "$added" "add_file $TBBACKUP_LIBDIR/tbbackup-systemd.sh /usr/lib/tbbackup/tbbackup-systemd 0755"
assert_contains "sd-tbbackup: enabled in initrd.target" "$added" "add_symlink /usr/lib/systemd/system/initrd.target.wants/tbbackup.service ../tbbackup.service"
assert_not_contains "sd-tbbackup: no busybox run hook" "$added" "add_runscript"
assert_contains "sd-tbbackup: systemctl (power off, emergency target)" "$added" "add_binary systemctl"
assert_contains "sd-tbbackup: the emergency shell opens although the image locks root" "$(cat "$BUILDROOT/etc/systemd/system/emergency.service.d/tbbackup.conf" 2> /dev/null)" "Environment=SYSTEMD_SULOGIN_FORCE=1"
assert_contains "sd-tbbackup: the unit runs once a boot" "$(cat "$BUILDROOT/usr/lib/systemd/system/tbbackup.service")" "ConditionPathExists=!/run/tbbackup/done"
assert_match "sd-tbbackup: warns when no 'base' hook put a /bin/sh in" "$added" "^warning sd-tbbackup: no /bin/sh in the image"
rm -rf "$LOG" "$BUILDROOT"
mkdir -p "$BUILDROOT/usr/bin" && : > "$BUILDROOT/usr/bin/sh"
( # shellcheck source=/dev/null
    . "$DEST/usr/lib/initcpio/install/sd-tbbackup"
    build
)
assert_not_contains "sd-tbbackup: no warning after 'base'" "$(cat "$LOG")" "warning"
unit=$(cat "$DEST/usr/lib/tbbackup/tbbackup.service")
assert_contains "the unit runs only with rd.tbbackup" "$unit" "ConditionKernelCommandLine=rd.tbbackup"
assert_contains "the unit runs the installed script" "$unit" "ExecStart=/usr/lib/tbbackup/tbbackup-systemd"
assert_match "the unit runs before the root file system" "$unit" "^Before=.*sysroot\.mount"
assert_contains "the unit has no start timeout (the job bounds its own waits)" "$unit" "TimeoutStartSec=infinity"
assert_contains "the unit writes to the console" "$unit" "TTYPath=/dev/console"
if command -v systemd-analyze > /dev/null 2>&1; then
    mkdir -p "$TMP/unit"
    cp "$DEST/usr/lib/tbbackup/tbbackup.service" "$TMP/unit/"
    printf '#!/bin/sh\n' > "$TMP/unit/tbbackup-systemd" && chmod +x "$TMP/unit/tbbackup-systemd"
    sed -i "s|^ExecStart=.*|ExecStart=$TMP/unit/tbbackup-systemd|" "$TMP/unit/tbbackup.service"
    out=$(systemd-analyze verify "$TMP/unit/tbbackup.service" 2>&1 | grep -v -e 'Unit .* not found' -e 'is not a symlink' || true)
    assert_not_contains "systemd-analyze verify tbbackup.service" "$out" "tbbackup.service"
fi

done_testing
