#!/usr/bin/env python3
"""Soak: the broadcast server under connect/disconnect churn plus a steady broadcast, with the
server's RSS sampled every few seconds. RSS should be flat after warm-up.

Loopback only; stops by itself after --duration seconds. Not run in CI.

    cargo build --release -p zerocast-cli
    python3 bench/soak.py --duration 300

The server runs on Rust's default global allocator, the system's (glibc malloc on this
machine). glibc keeps per-thread arenas and may hold freed memory without returning it to the
kernel, so a step up in RSS during warm-up is not a leak; a steady climb after it is.
"""
import argparse
import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time


def frame(fid: int, payload: bytes) -> bytes:
    return struct.pack("<HH", 4 + len(payload), fid) + payload


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/zerocast")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (bounded)")
    ap.add_argument("--receivers", type=int, default=200)
    ap.add_argument("--rate", type=float, default=200.0, help="broadcasts per second")
    ap.add_argument("--churn", type=float, default=100.0, help="connect+close per second")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    args = ap.parse_args()

    server = subprocess.Popen(
        [args.binary, "broadcast", "--listen", "127.0.0.1:0", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline().strip()
    host, port = line.removeprefix("listening on ").rsplit(":", 1)
    addr = (host, int(port))
    stop = threading.Event()
    counts = {"received": 0, "churned": 0, "sent": 0}

    receivers = [socket.create_connection(addr) for _ in range(args.receivers)]
    sel = selectors.DefaultSelector()
    for s in receivers:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)

    def drain():
        # Receivers heartbeat every 5 s: the server closes sessions that send no frame within
        # first_frame_timeout (10 s) or idle_timeout (60 s), as a game server should.
        last_beat = 0.0
        while not stop.is_set():
            if time.monotonic() - last_beat > 5.0:
                last_beat = time.monotonic()
                for s in receivers:
                    try:
                        s.setblocking(True)
                        s.sendall(frame(3, b""))
                        s.setblocking(False)
                    except OSError:
                        pass
            for key, _ in sel.select(timeout=0.1):
                try:
                    counts["received"] += len(key.fileobj.recv(1 << 16))
                except BlockingIOError:
                    pass

    def send():
        s = socket.create_connection(addr)
        payload = b"x" * 200
        period = 1.0 / args.rate
        nxt = time.monotonic()
        while not stop.is_set():
            s.sendall(frame(1, payload))
            counts["sent"] += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
        s.close()

    def churn():
        period = 1.0 / args.churn
        nxt = time.monotonic()
        while not stop.is_set():
            try:
                c = socket.create_connection(addr)
                c.sendall(frame(2, b"hello"))
                c.close()
                counts["churned"] += 1
            except OSError:
                pass
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    threads = [threading.Thread(target=f, daemon=True) for f in (drain, send, churn)]
    for t in threads:
        t.start()
    start = time.monotonic()
    samples = []
    print(f"{'t (s)':>7} {'RSS (KiB)':>10} {'sent':>8} {'churned':>8} {'MB received':>12}")
    received_before = 0
    try:
        while time.monotonic() - start < args.duration and server.poll() is None:
            time.sleep(args.sample)
            t = time.monotonic() - start
            r = rss_kib(server.pid)
            samples.append((t, r))
            print(f"{t:7.1f} {r:10d} {counts['sent']:8d} {counts['churned']:8d} "
                  f"{counts['received'] / 1e6:12.1f}", flush=True)
            if counts["received"] == received_before:
                print("receivers got nothing in the last interval: they were disconnected")
                return 1
            received_before = counts["received"]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=2)
        for s in receivers:
            s.close()
        server.terminate()
        code = server.wait(timeout=15)
    if code != 0:
        print(f"server exited with {code}")
        return 1
    # Flat after warm-up: compare the second half's first and last samples.
    half = samples[len(samples) // 2:]
    if len(half) >= 2:
        growth = half[-1][1] - half[0][1]
        print(f"RSS after warm-up: {half[0][1]} -> {half[-1][1]} KiB ({growth:+d} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
