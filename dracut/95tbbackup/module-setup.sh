#!/bin/bash
# shellcheck disable=SC2154 # dracutsysrootdir, initdir, moddir: set by dracut
# dracut module "tbbackup": disk imaging over USB4/Thunderbolt from the
# initramfs. Build time only: what goes into the image. The boot-time side is
# tbbackup-cmdline.sh (cmdline hook), tbbackup-job.sh (initqueue job) and
# tbbackup-boot.sh (the job itself), all POSIX sh.
#
#   dracut --add tbbackup -f /boot/initramfs-recovery.img
#
# The program is looked for in $TBBACKUP_BIN, /usr/local/bin, /usr/bin, PATH.

tbbackup_bin() {
    local b
    for b in "${TBBACKUP_BIN:-}" "$dracutsysrootdir/usr/local/bin/tbbackup" "$dracutsysrootdir/usr/bin/tbbackup" \
        "$(command -v tbbackup 2> /dev/null)"; do
        if [[ -n $b && -f $b ]]; then
            echo "$b"
            return 0
        fi
    done
    return 1
}

# called by dracut
check() {
    if ! tbbackup_bin > /dev/null; then
        derror "tbbackup: program not found (run scripts/install.sh, or set TBBACKUP_BIN=/path/to/tbbackup)"
        return 1
    fi
    # only when asked for (--add tbbackup, add_dracutmodules+=" tbbackup ")
    return 255
}

# called by dracut
depends() {
    return 0
}

# called by dracut: the Thunderbolt stream driver when this kernel has it
# (thunderbolt_stream is Linux 7.2+; absent is fine with rd.tbbackup.stream=)
installkernel() {
    hostonly='' instmods configfs thunderbolt thunderbolt_stream
}

# called by dracut
install() {
    local bin
    bin=$(tbbackup_bin) || return 1

    # The program and the shared libraries ldd sees (libc, libm, ...), stored
    # read-only and not executable: dracut strips every executable file
    # (strip -g), and a stripped Bun executable loses its embedded program.
    # /usr/bin/tbbackup (tbbackup.sh) restores the bit at run time.
    inst_simple "$bin" /usr/lib/tbbackup/tbbackup || return 1
    chmod 0444 "${initdir}/usr/lib/tbbackup/tbbackup"
    # dracut-install does not resolve this program's libraries itself (seen
    # with dracut 059): install what ldd lists, and the usual set regardless.
    local lib
    while read -r lib; do
        inst_library "$lib"
    done < <(ldd "$bin" 2> /dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p')
    inst_libdir_file "libc.so.6" "libm.so.6" "libpthread.so.0" "libdl.so.2"
    # The embedded zstd and BLAKE3 addons are unpacked into TMPDIR at run time
    # and need these, which ldd on the program does not show.
    inst_libdir_file "libstdc++.so.6*" "libgcc_s.so.1*" "librt.so.1"
    mkdir -p "${initdir}/tmp"

    inst_script "$moddir/tbbackup.sh" /usr/bin/tbbackup
    inst_script "$moddir/tbbackup-boot.sh" /sbin/tbbackup-boot
    inst_script "$moddir/tbbackup-job.sh" /sbin/tbbackup-job
    inst_hook cmdline 95 "$moddir/tbbackup-cmdline.sh"
    inst_multiple -o sync mount modprobe sleep mkdir chmod blockdev lsblk
}
