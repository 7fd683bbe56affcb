#!/bin/sh
# Install tbbackup with its initramfs integration:
#   the program          -> $PREFIX/bin/tbbackup          (PREFIX=/usr/local)
#   the dracut module    -> /usr/lib/dracut/modules.d/95tbbackup
#   the mkinitcpio hooks -> /usr/lib/initcpio/{install,hooks}
#   the boot scripts     -> /usr/lib/tbbackup (used by the mkinitcpio hooks)
#   with --systemd, for the machine that keeps backups:
#     the receiver service -> /usr/lib/systemd/system/tbbackup-receive.service
#     the udev rule        -> /usr/lib/udev/rules.d/70-tbbackup.rules
# Usage: scripts/install.sh [--systemd] [DESTDIR]     (DESTDIR: a staging root, for packages)
# Environment: PREFIX, TBBACKUP_BIN (the program to install; default dist/tbbackup,
# built with `npm run build`).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
systemd=no
if [ "${1:-}" = --systemd ]; then
    systemd=yes
    shift
fi
case ${1:-} in
    -*) echo "install.sh: unknown option $1 (usage: scripts/install.sh [--systemd] [DESTDIR])" >&2; exit 2 ;;
esac
destdir=${1:-${DESTDIR:-}}
destdir=${destdir%/}
prefix=${PREFIX:-/usr/local}
bin=${TBBACKUP_BIN:-$here/dist/tbbackup}

if [ ! -f "$bin" ]; then
    echo "install.sh: $bin not found; build it first with 'npm run build'" >&2
    exit 1
fi

# $1 source, $2 destination (under DESTDIR), $3 mode
put() {
    mkdir -p "$destdir$(dirname "$2")"
    cp "$1" "$destdir$2.tmp.$$"
    chmod "$3" "$destdir$2.tmp.$$"
    mv -f "$destdir$2.tmp.$$" "$destdir$2"
    echo "  $2"
}

echo "install.sh: installing into ${destdir:-/}"
put "$bin" "$prefix/bin/tbbackup" 0755

dm=/usr/lib/dracut/modules.d/95tbbackup
put "$here/dracut/95tbbackup/module-setup.sh" "$dm/module-setup.sh" 0755
for f in tbbackup.sh tbbackup-boot.sh tbbackup-cmdline.sh tbbackup-job.sh; do
    put "$here/dracut/95tbbackup/$f" "$dm/$f" 0755
done

put "$here/mkinitcpio/install/tbbackup" /usr/lib/initcpio/install/tbbackup 0644
put "$here/mkinitcpio/install/sd-tbbackup" /usr/lib/initcpio/install/sd-tbbackup 0644
put "$here/mkinitcpio/hooks/tbbackup" /usr/lib/initcpio/hooks/tbbackup 0644

lib=/usr/lib/tbbackup
put "$here/dracut/95tbbackup/tbbackup.sh" "$lib/tbbackup.sh" 0755
put "$here/dracut/95tbbackup/tbbackup-boot.sh" "$lib/tbbackup-boot.sh" 0755
put "$here/mkinitcpio/tbbackup-systemd.sh" "$lib/tbbackup-systemd.sh" 0755
put "$here/mkinitcpio/tbbackup.service" "$lib/tbbackup.service" 0644

if [ "$systemd" = yes ]; then
    unit=/usr/lib/systemd/system/tbbackup-receive.service
    mkdir -p "$destdir$(dirname "$unit")"
    # the unit names the program where PREFIX put it
    sed "s|/usr/local/bin/tbbackup|$prefix/bin/tbbackup|g" "$here/systemd/tbbackup-receive.service" > "$destdir$unit.tmp.$$"
    chmod 0644 "$destdir$unit.tmp.$$"
    mv -f "$destdir$unit.tmp.$$" "$destdir$unit"
    echo "  $unit"
    put "$here/systemd/70-tbbackup.rules" /usr/lib/udev/rules.d/70-tbbackup.rules 0644
fi

cat << MSG
install.sh: done. Next:
  dracut:     dracut --add tbbackup -f /boot/initramfs-recovery.img \$(uname -r)
  mkinitcpio: add 'tbbackup' (or 'sd-tbbackup' with the systemd hook) to HOOKS
              after 'block' in /etc/mkinitcpio.conf, then mkinitcpio -P
MSG
if [ "$prefix" != /usr/local ] && [ "$prefix" != /usr ]; then
    echo "  (the initramfs builders look in /usr/local/bin and /usr/bin; with PREFIX=$prefix set TBBACKUP_BIN=$prefix/bin/tbbackup when building)"
fi
if [ "$systemd" = yes ]; then
    cat << MSG
  the receiver: systemctl daemon-reload && udevadm control --reload
                systemctl enable --now tbbackup-receive   (backups in /var/lib/tbbackup;
                'systemctl edit tbbackup-receive' to add --allow-restore)
MSG
fi
