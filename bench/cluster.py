"""The scale-out cases of the benchmark runner: one world over several `zerocast world`
processes joined by a real `nats-server` (started here on a loopback port, stopped after).

- split: the same players and load on 1 process (no bus) and on 2 processes joined by the bus,
  every server process and nats-server on CPU 0, the generator on CPU 1: what crossing the bus
  costs in latency and CPU.
- wide: the most players on this machine in one world, over several server processes (none above
  20,000 descriptors) and the generator's processes, nothing pinned: both CPUs are shared by
  everything.

The density is the default world's (2,000 players on 4,000 x 4,000 units): the world's side
grows with the square root of the players. Players move `hz` times a second.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import threading
import time

from common import LOAD_CPU, REL, SERVER_CPU

DEFAULT_PLAYERS, DEFAULT_SIZE = 2000, 4000.0


def world_size(players):
    return round(DEFAULT_SIZE * math.sqrt(players / DEFAULT_PLAYERS))


def cpu_s(pid):
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def thread_cpu_s(pid, name):
    """CPU seconds of the threads of `pid` named `name` (the bus threads)."""
    total = 0.0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Peak(threading.Thread):
    """Samples the summed RSS of some processes every half second; keeps the peak."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.peak, self.done = pids, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.5):
            self.peak = max(self.peak, sum(rss_kib(p) for p in self.pids))


def final_counters(err):
    final = {}
    for line in err.splitlines():
        if line.startswith("final "):
            for kv in line[len("final "):].split():
                key, _, v = kv.partition("=")
                try:
                    final[key] = float(v)
                except ValueError:
                    pass
    return final


def require_nats():
    """The scale-out cases need a real nats-server on PATH; the runner asks before its first case
    so that a machine without one is told at once, not after half an hour of other cases."""
    if shutil.which("nats-server") is None:
        raise RuntimeError("the scale-out cases need nats-server on PATH "
                           "(Debian: apt install nats-server; .ci/run installs it)")


def run_case(bench, label, players, processes, hz, warmup, duration, pin, bus=True,
             chat_every=0, writes=None, tick_ms=None):
    """One run: `processes` world processes (with a bus if `bus`), `players` bots spread over
    them. Returns the generator's report with the servers' figures added. The runner has
    checked for nats-server before its first case (`require_nats`)."""
    taskset = (lambda cpu: ["taskset", "-c", cpu]) if pin else (lambda cpu: [])
    size = world_size(players)
    nats = None
    procs = []
    try:
        extra = []
        if bus:
            port = bench.next_port()
            nats = subprocess.Popen(taskset(SERVER_CPU) + ["nats-server", "-a", "127.0.0.1",
                                                           "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            extra = ["--nats", f"nats://127.0.0.1:{port}", "--world-name", f"bench{port}"]
            time.sleep(0.5)
        targets = []
        for _ in range(processes):
            port = bench.next_port()
            cmd = taskset(SERVER_CPU) + [os.path.join(REL, "zerocast"), "world", "--workers", "1",
                                         "--backend", "epoll", "--world-size", str(size),
                                         "--listen", f"127.0.0.1:{port}"] + extra + (
                                             ["--max-writes-per-sec", str(writes)] if writes else []) + (
                                             ["--tick-ms", str(tick_ms)] if tick_ms else [])
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            if not line.startswith("listening on"):
                p.kill()
                raise RuntimeError(f"world process did not start: {line!r} {p.stderr.read()}")
            procs.append(p)
            targets.append(f"127.0.0.1:{port}")
        # Let every process hear from the others before the players come.
        time.sleep(2.5 if bus and processes > 1 else 0.2)
        pids = [p.pid for p in procs] + ([nats.pid] if nats else [])
        cpu0 = [cpu_s(pid) for pid in pids]
        bus0 = sum(thread_cpu_s(p.pid, "zerocast-bus") for p in procs)
        peak = Peak(pids)
        peak.start()
        cmd = taskset(LOAD_CPU) + [os.path.join(REL, "zerocast"), "load", "world", "--target",
                                   ",".join(targets), "-c", str(players), "--hz", str(hz),
                                   "--warmup", str(warmup), "--duration", str(duration), "--chat-every",
                                   str(chat_every), "--json"]
        shown = " ".join((["taskset -c", LOAD_CPU] if pin else []) + [
            "target/release/zerocast load world --target", ",".join(["127.0.0.1:PORT"] * processes),
            "-c", str(players), "--hz", str(hz), "--warmup", str(warmup), "--duration",
            str(duration)])
        if shown not in bench.commands:
            bench.commands.append(shown)
        t0 = time.time()
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=300 + players / 1000 + duration * 2)
        elapsed = time.time() - t0
        peak.done.set()
        peak.join()
        cpu1 = [cpu_s(pid) for pid in pids]
        bus1 = sum(thread_cpu_s(p.pid, "zerocast-bus") for p in procs)
        try:
            rep = json.loads(out.stdout)
        except ValueError:
            raise RuntimeError(f"load failed ({label}): {out.stderr[-2000:]}")
    finally:
        finals = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                _, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            finals.append(final_counters(err))
        if nats:
            nats.terminate()
            nats.wait(timeout=30)
    n = len(procs)
    server_cpu = sum(b - a for a, b in zip(cpu0[:n], cpu1[:n]))
    nats_cpu = sum(b - a for a, b in zip(cpu0[n:], cpu1[n:]))
    deliveries = sum(f.get("world_deliveries", 0) for f in finals)
    rep["cluster"] = dict(
        label=label, processes=processes, bus=bus, players=players, hz=hz, world_size=size,
        pinned=pin, elapsed_s=elapsed, server_cpu_s=server_cpu, nats_cpu_s=nats_cpu,
        bus_cpu_s=bus1 - bus0, writes=writes, tick_ms=tick_ms or 50,
        server_writes=sum(f.get("writes", 0) for f in finals),
        deliveries=deliveries, peak_rss_kib=peak.peak,
        published=sum(f.get("world_bus_published", 0) for f in finals),
        bus_dropped=sum(f.get("world_bus_dropped", 0) + f.get("world_bus_unsent", 0)
                        for f in finals),
        )
    bench.log.write(json.dumps({"server": "cluster", "scenario": label, "report": rep}) + "\n")
    bench.log.flush()
    problems = []
    if rep["connected"] != rep["connections"]:
        problems.append(f"{rep['connected']} of {rep['connections']} connected")
    if rep["received"] == 0:
        problems.append("nothing received")
    if (rep.get("world") or {}).get("out_of_range"):
        problems.append(f"{rep['world']['out_of_range']} moves delivered out of range")
    if problems:
        msg = f"cluster {label}: " + "; ".join(problems)
        if bench.args.quick:
            raise RuntimeError(msg)
        print("  WARNING " + msg, flush=True)
    c = rep["cluster"]
    print(f"  {label}: {rep['throughput']:.0f}/s p99 {rep['latency']['p99_us']:.0f} us "
          f"server cpu {c['server_cpu_s']:.1f} s nats {c['nats_cpu_s']:.1f} s "
          f"rss {c['peak_rss_kib'] / 1024:.0f} MiB", flush=True)
    return rep


# The world's default write budget, one core's.
SPLIT_WRITES = 60_000
# Each of the wide case's processes may write this often: six processes and the generator share
# two cores, so each gets a fraction of the one-core default (60,000).
WIDE_WRITES = 15_000
WIDE_PROCESSES = 6


def run(bench, quick, warmup, duration):
    """The scale-out cases: {"split": [one process, two], "wide": report, "hz": ...}."""
    split_n = 200 if quick else 10000
    hz = 2.0 if quick else 0.2
    print(f"scale-out: {split_n} players on 1 process and on 2", flush=True)
    split = [run_case(bench, f"{split_n} on 1 process", split_n, 1, hz, warmup, duration, True,
                      bus=False),
             # The two processes share one core: each gets half of its write budget, so that
             # together they may write what the single process may.
             run_case(bench, f"{split_n} on 2 processes", split_n, 2, hz, warmup, duration, True,
                      writes=SPLIT_WRITES // 2)]
    wide_n, wide_p = (400, 2) if quick else (100_000, WIDE_PROCESSES)
    print(f"scale-out: {wide_n} players on {wide_p} processes", flush=True)
    wide = run_case(bench, f"{wide_n} on {wide_p} processes", wide_n, wide_p, hz,
                    warmup * (1 if quick else 5), duration * 2, False,
                    writes=None if quick else WIDE_WRITES)
    return {"split": split, "wide": wide, "hz": hz}
