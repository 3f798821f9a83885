"""The world's moves by datagram beside TCP: the same zerocast world, its bots on the stream
only, or with the datagram channel (`world --datagrams`, `load world --datagrams`: moves both
ways by datagram, everything else on the stream), side by side in one run."""
from common import cpu_per_message_us, k, latency, med, metric, spread

DGRAM = "zerocast-dgram"


def run(b, quick, common, hz, runs):
    """World at 2,000 bots (200 in the smoke run) on TCP and with datagrams: (bots, results)."""
    n = 200 if quick else 2000
    print(f"datagrams: world, {n} bots at {hz} Hz, TCP and datagrams", flush=True)
    return n, b.case(["zerocast", DGRAM], "world", "world",
                     ["-c", str(n), "--hz", str(hz)] + common, runs)


def syscalls_per_frame(rep):
    """The server's reads and writes (recv/send calls, recvmmsg/sendmmsg calls) per frame it
    sent (stream frames plus `Moved` frames in datagrams), over its whole run."""
    f = rep.get("server_final") or {}
    calls = f.get("reads", 0) + f.get("writes", 0) + f.get("datagram_reads", 0) + \
        f.get("datagram_writes", 0)
    frames = f.get("frames_out", 0) + f.get("world_datagram_moves", 0)
    return calls / frames if frames else 0.0


def section(w, dg, hz):
    n, res = dg
    w("## The world's moves by datagram beside TCP")
    w("")
    w("The same world server with `--datagrams` (one UDP socket per worker); its bots open the "
      "channel after their welcome, then send their moves by datagram and are sent the others' "
      "moves by datagram (`recvmmsg` in, `sendmmsg` out, several `Moved` per datagram), "
      "everything else staying on the stream; every position a bot sees is resent by datagram "
      "each second (a keyframe, so that views converge through loss: it costs server CPU and is "
      "counted in no delivery). Deliveries are moves received by the bots; the last column is "
      "the server's receive and send calls per frame it sent, over its whole run.")
    w("")
    w("| transport | deliveries/s | p99 | server CPU per delivery | vs TCP | calls per frame |")
    w("|---|---|---|---|---|---|")
    cpu = {s: med(metric(res[s], cpu_per_message_us)) for s in ("zerocast", DGRAM)}
    for s, label in (("zerocast", "TCP"), (DGRAM, "datagrams")):
        t = metric(res[s], lambda r: r["throughput"])
        vs = "1.00×" if s == "zerocast" else (
            f"{cpu[DGRAM] / cpu['zerocast']:.2f}×" if cpu["zerocast"] else "-")
        w(f"| {label} ({n:,} bots × {hz} Hz) | {spread(t, k)} | {latency(res[s])} | "
          f"{spread(metric(res[s], cpu_per_message_us), lambda v: f'{v:.2f} µs')} | {vs} | "
          f"{med(metric(res[s], syscalls_per_frame)):.3f} |")
    w("")
    if cpu["zerocast"]:
        r = cpu[DGRAM] / cpu["zerocast"]
        w(f"Measured here: datagrams cost {r:.2f}× TCP's server CPU per delivery"
          + (" (cheaper)." if r < 1 else " (dearer)."))
        w("")
