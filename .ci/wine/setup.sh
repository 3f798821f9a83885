#!/usr/bin/env bash
# Prepares this (Debian 12) machine to build for x86_64-pc-windows-gnu and run the result under
# Wine, headless: the apt packages (wine, wine64, mingw-w64), the rustup target, a Wine prefix
# of ours and, in that prefix's system32, bcryptprimitives.dll built from processprng.c (without
# it every Rust >= 1.78 program exits silently with code 53 under Wine 8.0; see that file).
#
# Idempotent: each step runs only when its result is missing or stale; a second run takes well
# under a second. The prefix is $ZEROCAST_WINEPREFIX, default <repo>/target/wine-prefix.
# .ci/wine/run.sh (the cargo runner) calls this by itself when the prefix is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix="${ZEROCAST_WINEPREFIX:-$repo/target/wine-prefix}"
target=x86_64-pc-windows-gnu
mingw=x86_64-w64-mingw32-gcc

die() { echo "wine setup: error: $*" >&2; exit 1; }
say() { echo "wine setup: $*" >&2; }

# The 64-bit loader. Debian ships it as /usr/lib/wine/wine64 (package wine64) with /usr/bin/wine
# a shell wrapper that prefers a 32-bit loader and otherwise execs that one; other installs have
# wine64 or wine on PATH. Prints the path, or nothing.
find_wine() {
    local c
    for c in /usr/lib/wine/wine64 "$(command -v wine64 || true)" "$(command -v wine || true)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}

# 1. Packages.
missing=()
find_wine >/dev/null || missing+=(wine wine64)
command -v wineserver >/dev/null || [ -x /usr/lib/wine/wineserver ] || missing+=(wine wine64)
command -v "$mingw" >/dev/null || missing+=(gcc-mingw-w64-x86-64)
if [ ${#missing[@]} -gt 0 ]; then
    readarray -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing ${missing[*]}: run as root or install them"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the lists only when apt does not know the packages yet (fresh image).
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        say "apt-get update"
        "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
    fi
    say "apt-get install ${missing[*]} (about 1.3 GB)"
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
wine="$(find_wine)" || die "no wine loader found after install (looked for /usr/lib/wine/wine64, wine64, wine)"
command -v "$mingw" >/dev/null || die "$mingw not found after install"

# 2. The Rust target (for the toolchain this repo uses).
command -v rustup >/dev/null || die "rustup not found: the Windows target is added with rustup"
if ! (cd "$repo" && rustup target list --installed) | grep -qx "$target"; then
    say "rustup target add $target"
    (cd "$repo" && rustup target add "$target") || die "rustup target add $target failed"
fi

# 3. The prefix. Same environment as run.sh: no debug channels, no Mono/Gecko install prompts.
export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" WINEARCH=win64
export WINELOADER="$wine"
sys32="$prefix/drive_c/windows/system32"
if [ ! -f "$prefix/system.reg" ] || [ ! -d "$sys32" ]; then
    say "creating Wine prefix $prefix"
    mkdir -p "$prefix"
    "$wine" wineboot -i </dev/null >/dev/null 2>&1 || die "wineboot -i failed in $prefix"
    # wineboot returns before the wineserver has written the registry: wait for it to exit.
    # (bounded: a server left running for this prefix by someone else would never exit.)
    timeout 60 wineserver -w || true
    [ -f "$prefix/system.reg" ] && [ -d "$sys32" ] || die "wineboot did not create $prefix"
fi

# 4. bcryptprimitives.dll (ProcessPrng), rebuilt when missing or older than its source.
src="$here/processprng.c"
dll="$sys32/bcryptprimitives.dll"
if [ ! -f "$dll" ] || [ "$src" -nt "$dll" ]; then
    say "building bcryptprimitives.dll into $sys32"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$mingw" -O2 -Wall -shared -s -o "$tmp/bcryptprimitives.dll" "$src" -ladvapi32 \
        || die "building $src with $mingw failed"
    cp "$tmp/bcryptprimitives.dll" "$dll.tmp" && mv -f "$dll.tmp" "$dll" \
        || die "cannot install $dll"
fi
