#!/bin/sh
# /usr/bin/tbbackup inside an initramfs. The real program is stored read-only
# and without its execute bit (/usr/lib/tbbackup/tbbackup) so that the image
# builders' strip steps skip it (dracut strips `find -executable`, mkinitcpio's
# strip hook `find -perm -u+w`): stripping a Bun executable removes its
# embedded program. This wrapper restores the bit and runs it.
bin=/usr/lib/tbbackup/tbbackup
if [ ! -x "$bin" ] && ! chmod 0555 "$bin" 2> /dev/null; then
    echo "tbbackup: cannot make $bin executable; is the initramfs root read-only?" >&2
    exit 126
fi
# the embedded zstd addon is unpacked into TMPDIR and loaded from there
if [ -z "${TMPDIR:-}" ]; then
    TMPDIR=/tmp
    export TMPDIR
fi
[ -d "$TMPDIR" ] || mkdir -p "$TMPDIR"
exec "$bin" "$@"
