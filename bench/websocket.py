"""WebSocket beside raw TCP: the same zerocast server serving both transports on one port
(`--ws same`), the generator's clients connecting over WebSocket (`zerocast load --ws`, every
write one masked binary message) or over raw TCP, side by side in one run."""
from common import latency, med, metric, cpu_per_message_us, k, spread

# The server entry in common.SERVERS that serves both, and what its clients speak.
WS = "zerocast-ws"
# The bound the transport is held to: CPU per delivery within this of raw TCP's.
TOLERANCE = 0.15


def run(b, quick, common, hz, runs):
    """Broadcast and world, each on raw TCP and on WebSocket; returns
    {"broadcast": (clients, results), "world": (bots, results)}."""
    out = {}
    for scenario, n in (("broadcast", 100 if quick else 500), ("world", 200 if quick else 2000)):
        print(f"websocket: {scenario}, {n} clients at {hz} Hz, raw TCP and WebSocket", flush=True)
        out[scenario] = (n, b.case(["zerocast", WS], scenario, scenario,
                                   ["-c", str(n), "--hz", str(hz)] + common, runs))
    return out


def section(w, ws, hz):
    w("## WebSocket beside raw TCP")
    w("")
    w("The same server serves both transports on one port (`--ws same`: a connection whose "
      "first bytes are `GET ` is a WebSocket upgrade). The clients are the same generator's, "
      "connected over raw TCP or over WebSocket (`zerocast load --ws`: every write one masked "
      "binary message). A server write to a WebSocket client is one binary frame around exactly "
      "the bytes a raw-TCP client's write would carry: one 2–10 byte header per write, not per "
      "message, and a broadcast is still encoded once. The clients' messages are unmasked in "
      "place in the receive buffer.")
    w("")
    w("| case | transport | deliveries/s | p99 | server CPU per delivery | vs raw TCP |")
    w("|---|---|---|---|---|---|")
    verdicts = []
    for scenario, (n, res) in ws.items():
        cpu = {s: med(metric(res[s], cpu_per_message_us)) for s in ("zerocast", WS)}
        for s, label in (("zerocast", "raw TCP"), (WS, "WebSocket")):
            t = metric(res[s], lambda r: r["throughput"])
            vs = "1.00×" if s == "zerocast" else (
                f"{cpu[WS] / cpu['zerocast']:.2f}×" if cpu["zerocast"] else "-")
            w(f"| {scenario} {n:,} × {hz} Hz | {label} | {spread(t, k)} | {latency(res[s])} | "
              f"{spread(metric(res[s], cpu_per_message_us), lambda v: f'{v:.3f} µs')} | {vs} |")
        if cpu["zerocast"]:
            r = cpu[WS] / cpu["zerocast"]
            verdicts.append(f"{scenario}: {r:.2f}× raw TCP's CPU per delivery, "
                            + (f"within {TOLERANCE:.0%}" if r <= 1 + TOLERANCE
                               else f"**over the {TOLERANCE:.0%} bound**"))
    w("")
    if verdicts:
        w("Measured here: " + "; ".join(verdicts) + ".")
        w("")
