/*
 * bcryptprimitives.dll for Wine 8.0: exports ProcessPrng only.
 *
 * Why: Rust >= 1.78 std on Windows imports ProcessPrng from
 * bcryptprimitives.dll (it seeds HashMap keys and backs getrandom). Wine 8.0
 * has no such export, so every Rust program built for x86_64-pc-windows-gnu
 * fails to load and exits silently with code 53 (rust-lang/rust#121337).
 * .ci/wine/setup.sh builds this file with mingw and drops the DLL into the
 * Wine prefix's system32, which is where both test and doctest binaries find
 * it. Never shipped; only for running Windows builds under Wine in CI.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -shared -s -o bcryptprimitives.dll \
 *          processprng.c -ladvapi32
 */
#include <windows.h>

/* RtlGenRandom is exported by advapi32 as SystemFunction036. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Same contract as Windows: fill len bytes with random data; always TRUE there. */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length: feed it in chunks. */
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
