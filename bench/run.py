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
import signal
import subprocess
import sys
import time

import cluster
import datagrams
import padding
import report
import websocket
from common import (BROADCAST_DELAY_MS, BROADCAST_SERVERS, CAPACITY_P99_US, ECHO_SERVERS,
                    LOAD_CPU, LOAD_EXTRA, NODELAY, REL, ROOT, SERVER_CPU, SERVER_CPUS, SERVERS, TWO_WORKERS, URING,
                    WORLD_SERVERS, med,
                    metric, server_util, steal_ticks)

def median_run(reps):
    """The run with the median p99 (a run that delivered nothing counts as the worst)."""
    def p99(rep):
        lat = rep["latency"]
        return lat["p99_us"] if lat["count"] else float("inf")
    return sorted(reps, key=p99)[len(reps) // 2]


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
        cpus = SERVER_CPUS.get(name, SERVER_CPU)
        cmd = ["taskset", "-c", cpus, os.path.join(REL, argv[0])] + argv[1:] + [
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
        extra = extra + LOAD_EXTRA.get(name, [])
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
    cluster.require_nats()
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
        extra = [NODELAY] if n == (100 if quick else 500) else []
        bcast[n] = b.case(BROADCAST_SERVERS + [URING] + extra, "broadcast", "broadcast",
                          ["-c", str(n), "--hz", str(hz)] + common, runs)

    bots = [200] if quick else [500, 1000, 2000, 5000]
    world = {}
    for n in bots:
        print(f"world, {n} bots at {hz} Hz", flush=True)
        world[n] = b.case(WORLD_SERVERS, "world", "world",
                          ["-c", str(n), "--hz", str(hz)] + common, runs)

    # Capacity: for each server, bots in steps until p99 passes the bound. Each step runs
    # `runs` times and counts its median run (by p99): one run's tail is this VM's noise as
    # much as the server's.
    steps = [200, 400] if quick else [1000, 2000, 3000, 3500, 4000, 4500, 5000, 5500, 6000, 7000]
    capacity = {}
    for s in WORLD_SERVERS + [TWO_WORKERS]:
        capacity[s] = []
        for n in steps:
            print(f"capacity {s}: {n} bots", flush=True)
            reps = b.case([s], "world", "world", ["-c", str(n), "--hz", str(hz)] + common,
                          runs)[s]
            rep = median_run(reps)
            capacity[s].append((n, rep))
            if rep["latency"]["count"] == 0 or rep["latency"]["p99_us"] >= CAPACITY_P99_US:
                break

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

    ws = websocket.run(b, quick, common, hz, runs)
    dg = datagrams.run(b, quick, common, hz, runs)

    scale_out = cluster.run(b, quick, warmup, duration)

    pad = padding.run(quick)

    steal1 = steal_ticks()
    steal = (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    elapsed = time.time() - t0

    results = dict(quick=quick, runs=runs, duration=duration, warmup=warmup, elapsed=elapsed,
                   steal=steal, echo=echo, bcast=bcast, world=world, fixed=fixed, idle=idle,
                   idle_n=idle_n, rate=rate, ref_n=ref_n, conns=conns, clients=clients,
                   bots=bots, hz=hz, commands=b.commands, log_path=b.log_path, chart=chart,
                   capacity=capacity, delay_ms=BROADCAST_DELAY_MS, cluster=scale_out,
                   padding=pad, websocket=ws, datagrams=dg)
    L = report.write(results)
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"wrote {out} and {chart}")


if __name__ == "__main__":
    main()
