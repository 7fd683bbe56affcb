#!/bin/bash
# Tiny assertions for the shell tests (bash). Each test file sources this,
# calls the assertions, and ends with `done_testing`: one "ok"/"not ok" line
# per assertion, exit status 1 if any failed.
# shellcheck disable=SC2034 # REPO and TMP are used by the files that source this
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tbbackup-shell.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
_n=0
_failed=0

ok() { # NAME: record a pass
    _n=$((_n + 1))
    echo "ok $_n - $1"
}
not_ok() { # NAME DETAIL
    _n=$((_n + 1))
    _failed=$((_failed + 1))
    echo "not ok $_n - $1"
    [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/#   /'
    return 0
}
assert_eq() { # NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected: $2
actual:   $3"; fi
}
assert_contains() { # NAME HAYSTACK NEEDLE (a whole line)
    if printf '%s\n' "$2" | grep -qxF -- "$3"; then ok "$1"; else not_ok "$1" "no line '$3' in:
$2"; fi
}
assert_not_contains() { # NAME HAYSTACK NEEDLE (a substring)
    if printf '%s\n' "$2" | grep -qF -- "$3"; then not_ok "$1" "unexpected '$3' in:
$2"; else ok "$1"; fi
}
assert_match() { # NAME HAYSTACK REGEX (grep -E, any line)
    if printf '%s\n' "$2" | grep -qE -- "$3"; then ok "$1"; else not_ok "$1" "no match for /$3/ in:
$2"; fi
}
done_testing() {
    echo "1..$_n"
    [ "$_failed" -eq 0 ]
}
