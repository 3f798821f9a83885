"""Cache-line padding measured: runs the criterion benchmark `crates/zerocast/benches/padding.rs`
(two threads pinned to CPUs 0 and 1 updating shared state, the engine's padded layout against
packed) and reads its estimates back."""
import json
import os
import subprocess

from common import ROOT

# What each batch of the benchmark does: updates per thread (`OPS` in padding.rs).
OPS = 100_000
CASES = [("striped", "the engine's `Striped` counter, each thread adding to its own slot"),
         ("flags", "two workers' wake flags side by side, each thread raising its own with a "
                   "swap, clearing it, and reading the other's now and then")]


def run(quick):
    """Runs the benchmark (short in the smoke run) and returns
    {case: {"padded": ns per update, "packed": ns per update}}."""
    print("padding: criterion benchmark on two pinned threads", flush=True)
    times = (["--warm-up-time", "0.3", "--measurement-time", "0.5", "--sample-size", "10"]
             if quick else ["--warm-up-time", "2", "--measurement-time", "5"])
    subprocess.run(["cargo", "bench", "-q", "-p", "zerocast", "--bench", "padding", "--",
                    "--noplot"] + times, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    out = {}
    for case, _ in CASES:
        out[case] = {}
        for layout in ("padded", "packed"):
            path = os.path.join(ROOT, "target", "criterion", case, layout, "new",
                                "estimates.json")
            with open(path) as f:
                est = json.load(f)
            out[case][layout] = est["median"]["point_estimate"] / OPS
            print(f"  {case} {layout}: {out[case][layout]:.2f} ns per update", flush=True)
    return out


def section(w, pad):
    w("## Padding: shared counters and flags on two cores")
    w("")
    w("Padding keeps state that two threads write at once on cache lines of its own "
      "(128-byte alignment: on x86 the adjacent-line prefetcher pairs 64-byte lines). "
      "`crates/zerocast/benches/padding.rs` (criterion) pins two threads to CPUs 0 and 1 and "
      "times one thread's updates while the other updates too, padded against packed. Median "
      "time per update:")
    w("")
    w("| shared state | padded | packed | packed ÷ padded |")
    w("|---|---|---|---|")
    for case, what in CASES:
        p, q = pad[case]["padded"], pad[case]["packed"]
        w(f"| {what} | {p:.2f} ns | {q:.2f} ns | {q / p:.1f}× |")
    w("")
    for case, what in CASES:
        r = pad[case]["packed"] / pad[case]["padded"]
        if r >= 1.3:
            verdict = (f"padding pays: packed, the line moves between the cores on every "
                       f"update ({r:.1f}× the time)")
        elif r > 1 / 1.1 and r < 1.1:
            verdict = f"padding makes no measurable difference ({r:.2f}×)"
        elif r < 1:
            verdict = f"packed is faster ({r:.2f}×)"
        else:
            verdict = f"padding gains a little ({r:.2f}×)"
        w(f"- {what[0].upper() + what[1:]}: {verdict}.")
    w("")
    w("The engine pads the slots of its `Striped` counters (128 bytes a slot, 2 KiB per "
      "16-slot counter); its workers' shared parts (the wake flag, the inbox) are each their "
      "own allocation and not padded.")
    w("")
