#!/usr/bin/env bash
# Stops the wineserver (and with it every Wine process) of the zerocast Wine prefix, so that
# nothing started by .ci/wine/run.sh is left running. Safe when none is running.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export WINEPREFIX="${ZEROCAST_WINEPREFIX:-$repo/target/wine-prefix}"
[ -d "$WINEPREFIX" ] || exit 0
command -v wineserver >/dev/null || exit 0
wineserver -k 2>/dev/null || true
# -k sends the kill; wait (bounded) until the server is really gone.
timeout 10 wineserver -w 2>/dev/null || true
