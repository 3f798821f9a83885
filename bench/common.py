"""What the benchmark runner and its report share: the servers, and figures from reports."""
import os
import platform
import statistics
import shlex
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
SERVER_CPU, LOAD_CPU = "0", "1"
# Servers pinned elsewhere than SERVER_CPU.
SERVER_CPUS = {"zerocast-2w": "0,1"}
TWO_WORKERS = "zerocast-2w"

# zerocast's broadcast server holds small output up to this latency budget so that a
# session's broadcasts share a write (`--write-delay`); echo replies are never held.
BROADCAST_DELAY_MS = 15


def zerocast(mode, backend, delay=True):
    argv = ["zerocast", mode, "--workers", "1", "--backend", backend]
    if mode == "broadcast" and delay:
        argv += ["--write-delay", str(BROADCAST_DELAY_MS)]
    return argv


SERVERS = {
    # "zerocast" is the epoll backend (the rows before io_uring existed); "zerocast-uring" the
    # io_uring backend, same binary, same settings otherwise; "zerocast-0ms" the epoll
    # broadcast without a write delay (what the budget buys).
    "zerocast": lambda mode: zerocast(mode, "epoll"),
    "zerocast-uring": lambda mode: zerocast(mode, "uring"),
    "zerocast-0ms": lambda mode: zerocast(mode, "epoll", delay=False),
    # The world on two workers (two shards), allowed on both CPUs; the generator keeps CPU 1.
    "zerocast-2w": lambda mode: ["zerocast", mode, "--workers", "2", "--backend", "epoll"],
    # Both transports on the listening port; its clients speak WebSocket (LOAD_EXTRA).
    "zerocast-ws": lambda mode: zerocast(mode, "epoll") + ["--ws", "same"],
    # The world with the datagram channel; its bots move and are sent moves by datagram.
    "zerocast-dgram": lambda mode: zerocast(mode, "epoll") + ["--datagrams", "127.0.0.1:0"],
    "tokio": lambda mode: ["peer-tokio", mode],
    "naive": lambda mode: ["peer-naive", mode],
    "limit": lambda mode: ["peer-limit", mode],
}
# What the generator adds for a server's clients.
LOAD_EXTRA = {"zerocast-ws": ["--ws"], "zerocast-dgram": ["--datagrams"]}
ECHO_SERVERS = ["zerocast", "tokio", "naive", "limit"]
BROADCAST_SERVERS = ["zerocast", "tokio", "naive"]
NODELAY = "zerocast-0ms"
# Cases that also run the io_uring backend (its own section compares it with epoll).
URING = "zerocast-uring"
# The world: zerocast's world server against the tokio and naive peers running the same game
# (zerocast_world::Core: same rules, cells, ticks and write budget), tokio with a lock around
# the world and a channel per player, naive with a copy and a write per packet.
WORLD_SERVERS = ["zerocast", "tokio", "naive"]
# Capacity: the most bots a server carries with p99 delivery latency under this.
CAPACITY_P99_US = 150_000
# A tighter bound read from the same steps (the capacity search stops at the first).
CAPACITY_TIGHT_P99_US = 100_000


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


