#!/usr/bin/env bash
# The cargo runner for x86_64-pc-windows-gnu (see .cargo/config.toml): runs the Windows program
# given as "$1" (the test binary, doctest or example cargo built) under Wine, headless, and
# returns its exit code, so a failing test fails cargo.
#
# Environment: ZEROCAST_WINEPREFIX (default <repo>/target/wine-prefix; created by setup.sh on
# first use), ZEROCAST_WINESERVER_LINGER (seconds the shared wineserver outlives its last client;
# default 60). One wineserver stays up between test binaries (a test binary then starts in
# ~0.1 s instead of ~0.8 s, and no ~2 s server shutdown follows each one); it exits by itself
# after the linger time, and `.ci/wine/stop.sh` stops it at once: call that at the end of a CI
# job so nothing is left running.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export WINEPREFIX="${ZEROCAST_WINEPREFIX:-$repo/target/wine-prefix}"
export WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64

[ $# -ge 1 ] || { echo "usage: $0 program.exe [args...]" >&2; exit 2; }

# Lazy setup, serialized: cargo may start several runners at once (doctests, parallel jobs).
dll="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
needs_setup() { [ ! -f "$WINEPREFIX/system.reg" ] || [ ! -f "$dll" ] || [ "$here/processprng.c" -nt "$dll" ]; }
if needs_setup; then
    mkdir -p "$(dirname "$WINEPREFIX")"
    (
        flock 9
        if needs_setup; then
            bash "$here/setup.sh" >&2 9>&-
        fi
    ) 9>"$WINEPREFIX.lock"
fi

# The 64-bit loader directly (Debian: /usr/lib/wine/wine64; /usr/bin/wine is a wrapper that
# would pick it too, after a shell and a 32-bit check).
wine=
for c in /usr/lib/wine/wine64 "$(command -v wine64 || true)" "$(command -v wine || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then wine="$c"; break; fi
done
[ -n "$wine" ] || { echo "run.sh: no wine found; run .ci/wine/setup.sh" >&2; exit 127; }
export WINELOADER="$wine"

# A persistent wineserver for this prefix, unless one is up (`wineserver -p` exits 2 then).
# When we start it, we also start Wine's own background processes (services.exe, explorer.exe,
# winedevice.exe, ..., launched by the first program a new server sees) with a no-op program
# whose stdio is /dev/null: they live as long as the server and inherit the first program's
# stderr, so if that were the test binary they would hold cargo's pipe open and
# `cargo test 2>&1 | tee log` would hang until the server exits. Serialized with the lock.
(
    flock 9
    # 9>&-: the daemons must not inherit the lock, or they would hold it until they exit.
    if wineserver -p"${ZEROCAST_WINESERVER_LINGER:-60}" </dev/null >/dev/null 2>&1 9>&-; then
        "$wine" cmd.exe /c exit </dev/null >/dev/null 2>&1 9>&- || true
    fi
) 9>"$WINEPREFIX.lock"

exec "$wine" "$@"
