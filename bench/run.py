#!/usr/bin/env python3
"""Benchmark runner: zerocast against the tokio, naive and limit peers, side by side in one run.

Each server is pinned to CPU 0 and the load generator (`zerocast load`) to CPU 1 with taskset.
Every case runs --runs times, the order of the servers rotating each time, and the report
gives medians with min-max and ratios. Everything in the generated document comes from this
run; nothing is typed in by hand.

    python3 bench/run.py                 # full run, writes docs/BENCHMARKS.md and the chart
    python3 bench/run.py --quick         # smoke run (seconds per case), writes under target/

Loopback only; every load stops by itself (--duration), and servers are stopped with SIGTERM.
"""
import argparse
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
SERVER_CPU, LOAD_CPU = "0", "1"

SERVERS = {
    # "zerocast" is the epoll backend (the rows before io_uring existed); "zerocast-uring" the
    # io_uring backend, same binary, same settings otherwise.
    "zerocast": lambda mode: ["zerocast", mode, "--workers", "1", "--backend", "epoll"],
    "zerocast-uring": lambda mode: ["zerocast", mode, "--workers", "1", "--backend", "uring"],
    "tokio": lambda mode: ["peer-tokio", mode],
    "naive": lambda mode: ["peer-naive", mode],
    "limit": lambda mode: ["peer-limit", mode],
}
ECHO_SERVERS = ["zerocast", "tokio", "naive", "limit"]
BROADCAST_SERVERS = ["zerocast", "tokio", "naive"]
# Cases that also run the io_uring backend (its own section compares it with epoll).
URING = "zerocast-uring"
# The world: zerocast's world server against the naive peer running the same game logic
# (zerocast::world::Core) with a copy per recipient, a write per packet and no tick.
WORLD_SERVERS = ["zerocast", "naive"]


class Bench:
    def __init__(self, args):
        self.args = args
        self.port = 7300
        self.commands = []  # every load command, for the reproduce section
        self.log_path = os.path.join(ROOT, "target",
                                     "bench-log-quick.jsonl" if args.quick else "bench-log.jsonl")
        self.log = open(self.log_path, "w")

    def next_port(self):
        # A fresh port per run: no run sees connections left over from the previous one.
        self.port += 1
        if self.port > 7999:
            self.port = 7301
        return self.port

    def start_server(self, name, mode):
        port = self.next_port()
        argv = SERVERS[name](mode)
        cmd = ["taskset", "-c", SERVER_CPU, os.path.join(REL, argv[0])] + argv[1:] + [
            "--listen", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line.startswith("listening on"):
            proc.kill()
            raise RuntimeError(f"{name} did not start: {line!r} {proc.stderr.read()}")
        return proc, port, cmd

    def stop_server(self, proc):
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        final = {}
        for line in err.splitlines():
            if line.startswith("final "):
                for kv in line[len("final "):].split():
                    k, _, v = kv.partition("=")
                    final[k] = float(v)
        return final

    def load(self, name, mode, scenario, extra):
        proc, port, server_cmd = self.start_server(name, mode)
        try:
            cmd = ["taskset", "-c", LOAD_CPU, os.path.join(REL, "zerocast"), "load", scenario,
                   "--target", f"127.0.0.1:{port}", "--json", "--server-pid", str(proc.pid)] + extra
            shown = " ".join(["taskset -c", LOAD_CPU, "target/release/zerocast load", scenario,
                              "--target 127.0.0.1:PORT"] + extra)
            if shown not in self.commands:
                self.commands.append(shown)
            limit = 120 + float(extra[extra.index("--duration") + 1]) * 2
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            # The generator exits 1 when a run has problems (nothing measured, connections
            # lost, a mismatched server) but still prints its report: the checks below decide
            # what a problem means here. No report at all is a failure.
            try:
                report = json.loads(out.stdout)
            except ValueError:
                raise RuntimeError(f"load failed against {name}: {out.stderr[-2000:]}")
        finally:
            final = self.stop_server(proc)
        report["server_final"] = final
        report["server_name"] = name
        problems = []
        if report["connected"] != report["connections"]:
            problems.append(f"{report['connected']} of {report['connections']} connected "
                            f"({report.get('connect_error')})")
        if report["corrupt"]:
            problems.append(f"{report['corrupt']} corrupt replies")
        if report["received"] == 0:
            problems.append("nothing received")
        if (report.get("world") or {}).get("out_of_range"):
            problems.append(f"{report['world']['out_of_range']} moves delivered out of range")
        if problems:
            msg = f"{name} {scenario} {' '.join(extra)}: " + "; ".join(problems)
            if self.args.quick:
                # The smoke run is a test: a broken server or generator fails it.
                raise RuntimeError(msg)
            print("  WARNING " + msg, flush=True)
        self.log.write(json.dumps({"server": name, "scenario": scenario, "extra": extra,
                                   "report": report}) + "\n")
        self.log.flush()
        return report

    def case(self, servers, mode, scenario, extra, runs):
        """Runs one case on every server, `runs` times, rotating the order."""
        results = {s: [] for s in servers}
        for r in range(runs):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for s in order:
                rep = self.load(s, mode, scenario, extra)
                results[s].append(rep)
                print(f"  {scenario} {' '.join(extra)} [{s}] run {r + 1}: "
                      f"{rep['throughput']:.0f}/s p99 {rep['latency']['p99_us']:.0f} us "
                      f"server cpu {server_util(rep):.0%} generator busy "
                      f"{rep['generator_busy']:.0%}", flush=True)
        return results


def server_util(rep):
    return (rep.get("server") or {}).get("cpu_util", 0.0)


def med(values):
    return statistics.median(values) if values else 0.0


def spread(values, fmt):
    """median (min-max)"""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(med(values))} ({fmt(min(values))}–{fmt(max(values))})"


def k(v):
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def us(v):
    if v >= 1e4:
        return f"{v / 1e3:.1f} ms"
    return f"{v:.0f} µs"


def pct(v):
    return f"{v * 100:.0f}%"


def ratio(a, b):
    return f"{a / b:.2f}×" if b else "-"


def latency(reps, q="p99_us"):
    """A latency percentile over the runs that have samples ("none" when no message sent in
    the window was answered before the drain ended: an overloaded server)."""
    vals = [r["latency"][q] for r in reps if r["latency"]["count"] > 0]
    if not vals:
        return "none answered"
    cell = spread(vals, us)
    missing = len(reps) - len(vals)
    return cell + (f" ({missing} run(s) none answered)" if missing else "")


def metric(reps, f):
    return [f(r) for r in reps]


def cpu_per_message_us(rep):
    s = rep.get("server") or {}
    n = rep["received"]
    return s.get("cpu_s", 0.0) * 1e6 / n if n else 0.0


def steal_ticks():
    with open("/proc/stat") as f:
        fields = f.readline().split()
    total = sum(int(x) for x in fields[1:])
    return int(fields[8]), total


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("grep MemTotal /proc/meminfo | awk '{printf \"%.0f GiB\", $2/1048576}'")
    return {
        "cpu": f"{model}, {os.cpu_count()} CPUs",
        "memory": mem,
        "kernel": platform.release(),
        "rustc": sh("rustc -V"),
        "commit": sh(f"git -C {shlex.quote(ROOT)} rev-parse --short HEAD"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "fd_limit": sh("ulimit -n"),
    }


def svg_chart(groups, path, title):
    """A grouped bar chart: groups = [(label, {server: value})], values on a linear axis."""
    colors = {"zerocast": "#1f77b4", "zerocast-uring": "#9467bd", "tokio": "#ff7f0e",
              "naive": "#7f7f7f", "limit": "#2ca02c"}
    servers = [s for s in ["zerocast", "zerocast-uring", "tokio", "naive", "limit"]
               if any(s in g[1] for g in groups)]
    width, height, left, top, bottom = max(900, 105 * len(groups)), 380, 70, 40, 70
    plot_w, plot_h = width - left - 20, height - top - bottom
    vmax = max(v for _, vals in groups for v in vals.values()) or 1
    gw = plot_w / len(groups)
    bw = gw * 0.8 / len(servers)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    for i in range(5):
        v = vmax * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{k(v)}</text>')
    for gi, (label, vals) in enumerate(groups):
        x0 = left + gi * gw + gw * 0.1
        for si, s in enumerate(servers):
            if s not in vals:
                continue
            h = plot_h * vals[s] / vmax
            x = x0 + si * bw
            out.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
                       f'height="{h:.1f}" fill="{colors[s]}"><title>{s}: {vals[s]:.0f}</title></rect>')
        out.append(f'<text x="{x0 + gw * 0.4:.1f}" y="{top + plot_h + 18}" '
                   f'text-anchor="middle">{label}</text>')
    for si, s in enumerate(servers):
        x = left + si * 110
        out.append(f'<rect x="{x}" y="{height - 28}" width="12" height="12" fill="{colors[s]}"/>')
        out.append(f'<text x="{x + 16}" y="{height - 18}">{s}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: short, one run per case")
    ap.add_argument("--runs", type=int, help="runs per case (default 3, quick 1)")
    ap.add_argument("--duration", type=float, help="measurement window per run in seconds")
    ap.add_argument("--out", help="markdown output (default docs/BENCHMARKS.md; quick: target/)")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    duration = args.duration or (1.0 if quick else 5.0)
    warmup = 0.5 if quick else 1.0
    out = args.out or os.path.join(ROOT, "target" if quick else "docs",
                                   "BENCHMARKS-quick.md" if quick else "BENCHMARKS.md")
    chart = os.path.splitext(out)[0] + ".svg"
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "zerocast-cli",
                        "-p", "zerocast-peers"], cwd=ROOT, check=True)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPUs (server on cpu0, generator on cpu1)")
    b = Bench(args)
    common = ["--warmup", str(warmup), "--duration", str(duration)]
    steal0 = steal_ticks()
    t0 = time.time()

    conns = [100] if quick else [100, 1000, 10000]
    sizes = [64] if quick else [64, 512]
    echo = {}
    for size in sizes:
        for n in conns:
            print(f"echo {size} B, {n} connections", flush=True)
            echo[(size, n)] = b.case(ECHO_SERVERS + [URING], "echo", "echo",
                                     ["-c", str(n), "--size", str(size)] + common, runs)

    clients = [100] if quick else [100, 500, 1000]
    hz = 10
    bcast = {}
    for n in clients:
        print(f"broadcast, {n} clients at {hz} Hz", flush=True)
        bcast[n] = b.case(BROADCAST_SERVERS + [URING], "broadcast", "broadcast",
                          ["-c", str(n), "--hz", str(hz)] + common, runs)

    bots = [200] if quick else [500, 1000, 2000]
    world = {}
    for n in bots:
        print(f"world, {n} bots at {hz} Hz", flush=True)
        world[n] = b.case(WORLD_SERVERS, "world", "world",
                          ["-c", str(n), "--hz", str(hz)] + common, runs)

    # Latency at a fixed rate: half of tokio's closed-loop maximum (64 B, 1,000 connections or
    # the largest count run), open loop, latency from each message's scheduled time.
    ref_n = 1000 if 1000 in conns else conns[-1]
    tokio_max = med(metric(echo[(64, ref_n)]["tokio"], lambda r: r["throughput"]))
    rate = max(1000, int(tokio_max * 0.5))
    print(f"fixed rate {rate}/s, {ref_n} connections", flush=True)
    fixed = b.case(ECHO_SERVERS, "echo", "echo",
                   ["-c", str(ref_n), "--rate", str(rate)] + common, runs)

    idle_n = 1000 if quick else 19000
    print(f"idle, {idle_n} connections", flush=True)
    idle = b.case(ECHO_SERVERS + [URING], "echo", "idle",
                  ["-c", str(idle_n), "--warmup", "1", "--duration", "1" if quick else "3"], 1)

    steal1 = steal_ticks()
    steal = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    elapsed = time.time() - t0

    # --- the document -------------------------------------------------------------------
    m = machine()
    L = []
    w = L.append
    w("# Benchmarks")
    w("")
    w("Generated by `python3 bench/run.py" + (" --quick" if quick else "") +
      f"` on {m['date']} (commit {m['commit']}); the whole run took {elapsed / 60:.0f} min. "
      "Every figure below comes from that run: edit the runner, not this file.")
    w("")
    w("## Machine")
    w("")
    w(f"- CPU: {m['cpu']}; memory {m['memory']}; Linux {m['kernel']}; {m['rustc']}")
    w(f"- Descriptor limit per process: {m['fd_limit']}")
    w(f"- CPU steal during the run (time the hypervisor gave our CPUs to others): {pct(steal)}. "
      "This VM is shared: millisecond-scale latency tails appear even with nothing running, "
      "so compare servers within a table, not against other machines.")
    w(f"- Servers pinned to CPU {SERVER_CPU}, the load generator to CPU {LOAD_CPU} (`taskset`). "
      "zerocast runs one worker; tokio's multi-thread runtime sizes itself to the one CPU it "
      "may use; naive and limit are single-threaded.")
    w(f"- {runs} run(s) per case, servers in rotating order; cells are median (min–max). "
      f"Measurement window {duration:g} s after a {warmup:g} s warm-up.")
    w("")
    w("## Servers")
    w("")
    w("| server | what it is |")
    w("|---|---|")
    w("| zerocast | `zerocast echo` / `zerocast broadcast`, one worker, epoll backend |")
    w("| zerocast-uring | the same on the io_uring backend (`--backend uring`) |")
    w("| tokio | `peer-tokio`: task per connection, tokio-util length-delimited codec, "
      "feed/flush batching; broadcast through a bounded channel of `Bytes` per client |")
    w("| naive | `peer-naive`: every packet copied into a fresh allocation per recipient, "
      "one send call per packet (mio, one thread) |")
    w("| limit | `peer-limit`: the smallest edge-triggered epoll byte echo (one thread): the "
      "echo ceiling |")
    w("")

    w("## Echo (closed loop, one message in flight per connection)")
    w("")
    w("Replies per second; the last columns compare zerocast's median with tokio's and naive's.")
    w("")
    w("| size | connections | zerocast | tokio | naive | limit | vs tokio | vs naive |")
    w("|---|---|---|---|---|---|---|---|")
    for (size, n), res in echo.items():
        t = {s: metric(res[s], lambda r: r["throughput"]) for s in ECHO_SERVERS}
        w(f"| {size} B | {n:,} | " + " | ".join(spread(t[s], k) for s in ECHO_SERVERS) +
          f" | {ratio(med(t['zerocast']), med(t['tokio']))} | "
          f"{ratio(med(t['zerocast']), med(t['naive']))} |")
    w("")
    w("Server CPU per reply (the server's CPU time inside the window over the replies): the "
      "server's own cost, whatever limits the rate.")
    w("")
    w("| size | connections | zerocast | tokio | naive | limit |")
    w("|---|---|---|---|---|---|")
    for (size, n), res in echo.items():
        w(f"| {size} B | {n:,} | " + " | ".join(
            spread(metric(res[s], cpu_per_message_us), lambda v: f"{v:.2f} µs")
            for s in ECHO_SERVERS) + " |")
    w("")
    w("p99 latency of the same runs (closed loop: each connection waits for its reply, so "
      "latency here is mostly queueing behind the other connections):")
    w("")
    w("| size | connections | zerocast | tokio | naive | limit |")
    w("|---|---|---|---|---|---|")
    for (size, n), res in echo.items():
        w(f"| {size} B | {n:,} | " + " | ".join(latency(res[s]) for s in ECHO_SERVERS) + " |")
    w("")

    w(f"## Broadcast ({hz} Hz per client)")
    w("")
    w("Every client sends 64-byte frames at the rate; the server relays each to every client. "
      "Offered deliveries/s = clients² × rate. Cells: deliveries per second received inside "
      "the window; then p99 delivery latency (from the timestamp in each frame).")
    w("")
    w("| clients | offered/s | zerocast | tokio | naive | vs tokio | vs naive |")
    w("|---|---|---|---|---|---|---|")
    for n, res in bcast.items():
        t = {s: metric(res[s], lambda r: r["throughput"]) for s in BROADCAST_SERVERS}
        offered = n * n * hz
        cells = [f"{spread(t[s], k)}, {med(t[s]) / offered:.0%}" for s in BROADCAST_SERVERS]
        w(f"| {n:,} | {k(offered)} | " + " | ".join(cells) +
          f" | {ratio(med(t['zerocast']), med(t['tokio']))} | "
          f"{ratio(med(t['zerocast']), med(t['naive']))} |")
    w("")
    w("(The percentage is the median's share of the offered deliveries.)")
    w("")
    w("| clients | zerocast p99 | tokio p99 | naive p99 | disconnects (zerocast / tokio / naive) "
      "| server RSS peak (zerocast / tokio / naive) |")
    w("|---|---|---|---|---|---|")
    for n, res in bcast.items():
        cells = [latency(res[s]) for s in BROADCAST_SERVERS]
        disc = " / ".join(str(int(med(metric(res[s], lambda r: r["disconnects"])))) for s in BROADCAST_SERVERS)
        rss = " / ".join(f"{med(metric(res[s], lambda r: (r.get('server') or {}).get('rss_peak', 0))) / 1048576:.0f} MiB"
                         for s in BROADCAST_SERVERS)
        w(f"| {n:,} | " + " | ".join(cells) + f" | {disc} | {rss} |")
    w("")
    w("Where a server cannot keep up, latency is the age of the backlog. tokio's peer drops "
      "clients whose channel fills (the disconnects column). zerocast writes out what a turn "
      "has queued once it passes 8 MiB, so the backlog waits in the kernel's socket buffers, "
      "where TCP slows the senders, instead of in server memory; it closes a client as a slow "
      "consumer only when that client's own queue stays above 1 MiB for 5 s. The naive server "
      "queues without bound.")
    w("")

    w(f"## World ({hz} moves/s per bot)")
    w("")
    w("`zerocast world` (one worker, epoll, the default 50 ms tick) against `peer-naive world`, which "
      "runs the same game (`zerocast::world::Core`: same rules, same 100-unit area-of-interest "
      "cells in a 4,000-unit world, same packets) but sends every event the moment it happens, "
      "a copy per recipient and a write per packet. The tokio peer does not serve the world. "
      "Bots (`zerocast load world`) join, random-walk at half the speed limit and chat now and "
      "then; a move's delivery latency runs from its scheduled send to its arrival at another "
      "bot, and every delivery is checked against the area of interest (out of range: must "
      "be 0).")
    w("")
    w("| bots | zerocast deliveries/s | naive deliveries/s | zerocast p50 / p99 | naive p50 / p99 "
      "| server CPU per delivery (zerocast / naive) | messages per write (zerocast) |")
    w("|---|---|---|---|---|---|---|")
    for n, res in world.items():
        t = {s: metric(res[s], lambda r: r["throughput"]) for s in WORLD_SERVERS}
        lat = {s: f"{latency(res[s], 'p50_us')} / {latency(res[s])}" for s in WORLD_SERVERS}
        cpu = " / ".join(spread(metric(res[s], cpu_per_message_us), lambda v: f"{v:.2f} µs")
                         for s in WORLD_SERVERS)
        f = [r["server_final"] for r in res["zerocast"] if r.get("server_final")]
        mpw = spread([x.get("msgs_per_write", 0) for x in f], lambda v: f"{v:.1f}")
        w(f"| {n:,} | {spread(t['zerocast'], k)} | {spread(t['naive'], k)} | {lat['zerocast']} | "
          f"{lat['naive']} | {cpu} | {mpw} |")
    w("")
    w("| bots | server | out of range | untimed | rejected | disconnects | server CPU |")
    w("|---|---|---|---|---|---|---|")
    for n, res in world.items():
        for s in WORLD_SERVERS:
            wf = lambda key: spread(metric(res[s], lambda r: (r.get("world") or {}).get(key, 0)),
                                    lambda v: f"{v:,.0f}")
            w(f"| {n:,} | {s} | {wf('out_of_range')} | {wf('untimed')} | {wf('rejected')} | "
              f"{spread(metric(res[s], lambda r: r['disconnects']), lambda v: f'{v:.0f}')} | "
              f"{spread(metric(res[s], server_util), pct)} |")
    w("")
    w("How to read it: zerocast holds every event until the world tick, so its latency is "
      "about half a tick on average and up to a tick and the time to write everyone's batch; "
      "the naive server sends at once, so while it keeps up its latency is lower. What the "
      "tick buys is the write count: one gathered write per player per tick instead of one "
      "per packet, which is what lets the same core carry more players. Where the naive "
      "server falls behind, its latency is the age of its backlog, its deliveries per second "
      "fall short of what the bots' moves offer, and the world rules start refusing moves "
      "that arrive bunched after a stall (*rejected*). *Untimed* deliveries are moves whose "
      "send time the generator no longer remembers (older than 256 moves of their sender): "
      "counted in deliveries/s, missing from the latency.")
    w("")

    w(f"## Latency at a fixed rate ({rate:,} messages/s = half of tokio's closed-loop maximum)")
    w("")
    w(f"Open loop, 64 B, {ref_n:,} connections; latency counted from each message's scheduled "
      "send time, so a stall delays every message scheduled during it (no coordinated "
      "omission).")
    w("")
    w("| server | p50 | p90 | p99 | p99.9 | max | server CPU |")
    w("|---|---|---|---|---|---|---|")
    for s in ECHO_SERVERS:
        reps = fixed[s]
        cells = [latency(reps, q) for q in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]]
        w(f"| {s} | " + " | ".join(cells) + f" | {spread(metric(reps, server_util), pct)} |")
    w("")

    fb = med(metric(fixed["zerocast"], lambda r: r["generator_busy"]))
    fu = med(metric(fixed["zerocast"], server_util))
    flag = med(metric(fixed["zerocast"], lambda r: r["scheduler_lag"]["p99_us"]))
    if fb >= fu:
        w(f"At this rate the generator was as busy as the servers ({pct(fb)} against zerocast's "
          f"{pct(fu)}): it pays for waking the server on every message, which on loopback is "
          f"charged to the sender. Its own send lag (p99 {us(flag)}) is inside every latency "
          "above, the same for every server: the p50 column compares the servers; the tails "
          "are mostly this machine's and the generator's.")
        w("")
    w(f"## Memory: {idle_n:,} idle connections")
    w("")
    w("Each connection sends one frame on connect and then stays quiet; server resident memory "
      "(/proc) at the peak minus before the first connection, divided by the connections. "
      "Kernel socket memory is not included (about 3.9 KB per idle socket here, the same for "
      "every server).")
    w("")
    w("| server | connected | RSS per connection | generator processes |")
    w("|---|---|---|---|")
    for s in ECHO_SERVERS:
        r = idle[s][0]
        srv = r.get("server") or {}
        per = (srv.get("rss_peak", 0) - srv.get("rss_start", 0)) / max(1, r["connected"])
        w(f"| {s} | {r['connected']:,} | {per:,.0f} B | {r['processes']} |")
    w("")

    w("## io_uring against epoll")
    w("")
    w("The same zerocast server on each backend (`--backend epoll` / `--backend uring`), same "
      "runs as above (the uring server took its turn in the rotation). Ratios are io_uring over "
      "epoll: above 1.00× io_uring is ahead (for CPU and memory, below 1.00× is better).")
    w("")
    w("| case | epoll | io_uring | io_uring / epoll | server CPU per message (epoll / io_uring) |")
    w("|---|---|---|---|---|")
    losses = []
    def uring_row(label, res, fmt):
        a = metric(res["zerocast"], lambda r: r["throughput"])
        u = metric(res[URING], lambda r: r["throughput"])
        r = med(u) / med(a) if med(a) else 0
        cpu = " / ".join(spread(metric(res[s], cpu_per_message_us), lambda v: f"{v:.2f} µs")
                         for s in ["zerocast", URING])
        w(f"| {label} | {spread(a, fmt)} | {spread(u, fmt)} | {r:.2f}× | {cpu} |")
        if r < 0.97:
            losses.append(label)
    for (size, n), res in echo.items():
        uring_row(f"echo {size} B, {n:,} conns: replies/s", res, k)
    for n, res in bcast.items():
        uring_row(f"broadcast {n:,} clients: deliveries/s", res, k)
    w("")
    w("| case | epoll p99 | io_uring p99 |")
    w("|---|---|---|")
    for (size, n), res in echo.items():
        w(f"| echo {size} B, {n:,} conns | {latency(res['zerocast'])} | {latency(res[URING])} |")
    for n, res in bcast.items():
        w(f"| broadcast {n:,} clients | {latency(res['zerocast'])} | {latency(res[URING])} |")
    w("")
    def idle_bytes(s):
        r = idle[s][0]
        srv = r.get("server") or {}
        return (srv.get("rss_peak", 0) - srv.get("rss_start", 0)) / max(1, r["connected"]), r["connected"]
    (ie, ce), (iu, cu) = idle_bytes("zerocast"), idle_bytes(URING)
    w(f"Memory per idle connection at {idle_n:,} connections (server RSS growth over the "
      f"connections): epoll {ie:,.0f} B ({ce:,} connected), io_uring {iu:,.0f} B "
      f"({cu:,} connected). Neither holds receive memory for an idle connection: epoll reads "
      "into a per-worker chunk, io_uring's kernel picks a provided buffer only when data "
      "arrives. What io_uring adds per connection is its slot's send state (a boxed `msghdr` "
      "and iovec list, which must stay put while a send is in flight); its 16 MiB of provided "
      "buffers per worker are counted before the first connection.")
    w("")
    rss = lambda reps: med(metric(reps, lambda r: (r.get("server") or {}).get("rss_peak", 0))) / 1048576
    echo_losses = [l for l in losses if l.startswith("echo")]
    bcast_losses = [l for l in losses if l.startswith("broadcast")]
    if echo_losses:
        w("Where io_uring loses on echo (" + ", ".join(echo_losses) + "): on this 2-core VM the "
          "work per message is dominated by the TCP stack, which both backends pay the same; "
          "io_uring saves the readiness round trip but adds bookkeeping per completion (a "
          "completion-queue entry per receive and per send, re-arming, and a provided buffer "
          "held until every view of its frames drops, so an echo's receive buffer returns to "
          "the ring only after the reply's send completes). With one message in flight per "
          "connection there is nothing to batch. At 10,000 connections the 4,096 provided "
          "buffers per worker are fewer than the echoes in flight, so receives wait for "
          "buffers (`recv_buffer_waits`) and the latency tail grows.")
        w("")
    if bcast_losses:
        cells = ", ".join(f"{n:,} clients: epoll {rss(res['zerocast']):.0f} MiB, io_uring "
                          f"{rss(res[URING]):.0f} MiB" for n, res in bcast.items())
        w("Where io_uring loses on broadcast (" + ", ".join(bcast_losses) + "): both backends "
          "write a turn's output the same way (once it passes the 8 MiB budget, everything is "
          "written before more is read), so the difference is per-operation bookkeeping: a "
          "completion to handle for every receive and every send, a send re-armed per round "
          "trip instead of a write loop, and a provided buffer per receive that returns to the "
          "ring only when the frames' views drop. Server memory at the peak (" + cells + "; "
          "io_uring's includes the provided buffers it touched) shows what each held.")
        w("")
    if not losses:
        w("io_uring was not behind epoll by more than 3 % in any case here.")
        w("")

    # The original design's claim: zerocast against naive for the same work.
    e = echo[(64, ref_n)]
    bn = 500 if 500 in bcast else clients[-1]
    bb = bcast[bn]
    w("## The zero-copy claim: zerocast against naive")
    w("")
    w("Same work, same generator. CPU per message is the server's CPU seconds inside the "
      "window (from /proc/PID/stat) divided by the messages it answered or delivered.")
    w("")
    w("| measure | zerocast | naive | zerocast is |")
    w("|---|---|---|---|")

    def row(label, f, fmt, better_low=False):
        a, c = med(f("zerocast")), med(f("naive"))
        r = (c / a if better_low else a / c) if a and c else 0
        verdict = f"{r:.2f}× better" if r >= 1 else f"{1 / r:.2f}× worse" if r else "-"
        w(f"| {label} | {fmt(a)} | {fmt(c)} | {verdict} |")

    row(f"echo 64 B, {ref_n:,} conns: replies/s", lambda s: metric(e[s], lambda r: r["throughput"]), k)
    row(f"echo 64 B, {ref_n:,} conns: server CPU per reply",
        lambda s: metric(e[s], cpu_per_message_us), lambda v: f"{v:.2f} µs", True)
    row(f"broadcast {bn:,} clients: deliveries/s", lambda s: metric(bb[s], lambda r: r["throughput"]), k)
    row(f"broadcast {bn:,} clients: server CPU per delivery",
        lambda s: metric(bb[s], cpu_per_message_us), lambda v: f"{v:.3f} µs", True)
    row(f"fixed rate {rate:,}/s: p99 latency",
        lambda s: [r["latency"]["p99_us"] for r in fixed[s] if r["latency"]["count"]], us, True)

    def idle_per(s):
        r = idle[s][0]
        srv = r.get("server") or {}
        return [(srv.get("rss_peak", 0) - srv.get("rss_start", 0)) / max(1, r["connected"])]
    row("idle memory per connection", idle_per, lambda v: f"{v:,.0f} B", True)
    w("")

    w("## zerocast's own counters")
    w("")
    w("Printed by the server on exit (`final ...` on stderr): messages per vectored write show "
      "how well sends coalesce; live send buffers must be back to 0.")
    w("")
    w("| case | messages per write | live send buffers at exit |")
    w("|---|---|---|")
    for label, reps in [(f"echo 64 B, {ref_n:,} conns", e["zerocast"]),
                        (f"broadcast {bn:,} clients", bb["zerocast"]),
                        (f"fixed rate {rate:,}/s", fixed["zerocast"])]:
        f = [r["server_final"] for r in reps if r.get("server_final")]
        w(f"| {label} | {spread([x.get('msgs_per_write', 0) for x in f], lambda v: f'{v:.2f}')} | "
          f"{spread([x.get('live_send_buffers', 0) for x in f], lambda v: f'{v:.0f}')} |")
    w("")

    w("## Is the load generator the bottleneck?")
    w("")
    w("The generator busy-polls its core; *busy* is the share of the window its worker spent "
      "handling events (the rest was polling for them), so `1 - busy` is its headroom. For "
      "open-loop runs the send lag (scheduled to actual send time) shows whether it kept to "
      "its schedule.")
    w("")
    w("| case | server | server CPU | generator busy | send lag p99 |")
    w("|---|---|---|---|---|")
    rows = [(f"echo 64 B, {n:,} conns", echo[(64, n)], ["limit", "zerocast"]) for n in conns]
    rows += [(f"fixed rate {rate:,}/s", fixed, ["limit", "zerocast"])]
    rows += [(f"broadcast {n:,} clients", bcast[n], ["zerocast"]) for n in clients]
    rows += [(f"world {n:,} bots", world[n], ["zerocast"]) for n in bots]
    for label, res, servers in rows:
        for s in servers:
            reps = res[s]
            lag = (spread(metric(reps, lambda r: r["scheduler_lag"]["p99_us"]), us)
                   if reps[0].get("tick_us") else "-")
            w(f"| {label} | {s} | {spread(metric(reps, server_util), pct)} | "
              f"{spread(metric(reps, lambda r: r['generator_busy']), pct)} | {lag} |")
    w("")
    busy = lambda reps: med(metric(reps, lambda r: r["generator_busy"]))
    util = lambda reps: med(metric(reps, server_util))
    headroom = [label for label, res, servers in rows if "echo 64 B" not in label
                and all(busy(res[s]) < util(res[s]) for s in servers)]
    no_headroom = [label for label, res, servers in rows if "echo 64 B" not in label
                   and label not in headroom]
    bound = [n for n in conns if busy(echo[(64, n)]["limit"]) >= util(echo[(64, n)]["limit"])]
    if headroom:
        w("Where the generator does less per message than the server, it has headroom: "
          + ", ".join(headroom) + " (generator busy below the server's CPU).")
        w("")
    if no_headroom:
        w("Where it does as much as the server or more (" + ", ".join(no_headroom) + "), it does "
          "not: there it also pays, on loopback, for waking the server on every message. Those "
          "rows compare servers under the same generator; their absolute tails include it.")
        w("")
    w("Closed-loop echo is different: per reply the generator does the same kernel work as the "
      "server (one receive, one send), so on two cores both run near full and the rate "
      "measures the pair; the limit row is the ceiling of this setup and is the same for "
      "every server. "
      + (("At " + ", ".join(f"{n:,}" for n in bound) + " connections the generator was at least "
          "as busy as the limit server: those rates are a floor shared by every server, and "
          "the server-CPU-per-reply table is the fairer comparison there. ")
         if bound else "In every echo case the limit server's core was busier than the generator. "))
    w("")
    w("## Chart")
    w("")
    w(f"![throughput]({os.path.basename(chart)})")
    w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("cargo build --release -p zerocast-cli -p zerocast-peers")
    w("python3 bench/run.py" + (" --quick" if quick else ""))
    w("```")
    w("")
    w("One case by hand: start a server pinned to CPU 0, then the generator on CPU 1, e.g.")
    w("")
    w("```sh")
    w("taskset -c 0 target/release/zerocast echo --workers 1 --listen 127.0.0.1:7300 &")
    w("taskset -c 1 target/release/zerocast load echo --target 127.0.0.1:7300 -c 1000 "
      "--size 64 --server-pid $!")
    w("```")
    w("")
    w("The generator commands this run used (PORT differs per run; `--json --server-pid` added):")
    w("")
    w("```sh")
    for c in b.commands:
        w(c)
    w("```")
    w("")
    w(f"Raw per-run reports: `target/{os.path.basename(b.log_path)}`.")

    groups = []
    for (size, n), res in echo.items():
        if size == 64:
            groups.append((f"echo 64 B, {k(n)} conns",
                           {s: med(metric(res[s], lambda r: r["throughput"]))
                            for s in ECHO_SERVERS + [URING]}))
    for n, res in bcast.items():
        groups.append((f"bcast {n} (÷10)",
                       {s: med(metric(res[s], lambda r: r["throughput"])) / 10
                        for s in BROADCAST_SERVERS + [URING]}))
    for n, res in world.items():
        groups.append((f"world {n} (÷10)",
                       {s: med(metric(res[s], lambda r: r["throughput"])) / 10 for s in WORLD_SERVERS}))
    svg_chart(groups, chart, "Messages per second (median; broadcast and world deliveries ÷ 10)")
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"wrote {out} and {chart}")


if __name__ == "__main__":
    main()
