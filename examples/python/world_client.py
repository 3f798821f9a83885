#!/usr/bin/env python3
"""A client of the zerocast world protocol, written from docs/PROTOCOL.md alone, with Python's
standard library only.

    python3 examples/python/world_client.py --target 127.0.0.1:7000            # walk and chat
    python3 examples/python/world_client.py --target 127.0.0.1:7000 --selftest # the test's check
    python3 examples/python/world_client.py --target 127.0.0.1:7000 --ws 127.0.0.1:7001 --interop

A frame is a 4-byte header, {size: u16 LE counting the whole frame, id: u16 LE}, then the
payload; every field is little-endian. The client joins, walks within the speed limit, says
something nearby and globally, pings, and prints what it receives. `--selftest` (run by the
engine's test suite against a real server) joins two players next to each other and checks the
protocol's promises: the welcome comes first, each sees the other enter and move, nobody gets
its own moves back, the speaker hears its own chat, a ping is answered with its nonce, and a
malformed packet gets a Goodbye before the server closes the connection.

`--ws HOST:PORT` plays over WebSocket instead (the server's `--ws` listener), with the
`websockets` package from PyPI: each binary message carries whole frames of the same protocol.
`--interop` joins one player over WebSocket and one over raw TCP next to a third that walks,
and checks that both are sent exactly the same packets about it, and that the WebSocket
player's moves and chat reach the raw-TCP one.
"""
import argparse
import math
import socket
import struct
import sys
import time

# Client to server.
JOIN, MOVE, ATTACK, CHAT, PING = 0x0101, 0x0102, 0x0103, 0x0104, 0x0105
# Server to client.
WELCOME, MOVED, ENTERED, LEFT, ATTACKED, CHAT_FROM, REJECTED, PONG, GOODBYE = range(0x0201, 0x020A)
NAMES = {WELCOME: "Welcome", MOVED: "Moved", ENTERED: "Entered", LEFT: "Left",
         ATTACKED: "Attacked", CHAT_FROM: "ChatFrom", REJECTED: "Rejected", PONG: "Pong",
         GOODBYE: "Goodbye"}
PROTOCOL_VERSION = 1
NEARBY, GLOBAL = 0, 1


def frame(packet_id, payload=b""):
    return struct.pack("<HH", 4 + len(payload), packet_id) + payload


def decode(packet_id, p):
    """The payload of a server packet as a dict (sizes as in docs/PROTOCOL.md)."""
    if packet_id == WELCOME:
        pid, x, y, z, size, cell, speed, tick = struct.unpack("<Q6fH", p)
        return dict(id=pid, x=x, y=y, z=z, world_size=size, cell_size=cell, max_speed=speed,
                    tick_ms=tick)
    if packet_id == MOVED:
        pid, x, y, z, v = struct.unpack("<Q4f", p)
        return dict(id=pid, x=x, y=y, z=z, velocity=v)
    if packet_id == ENTERED:
        pid, x, y, z = struct.unpack("<Q3f", p)
        return dict(id=pid, x=x, y=y, z=z)
    if packet_id == LEFT:
        return dict(id=struct.unpack("<Q", p)[0])
    if packet_id == ATTACKED:
        a, t = struct.unpack("<QQ", p)
        return dict(attacker=a, target=t)
    if packet_id == CHAT_FROM:
        sender, channel = struct.unpack("<QB", p[:9])
        return dict(id=sender, channel=channel, text=p[9:].decode("utf-8"))
    if packet_id == REJECTED:
        packet, reason, x, y, z = struct.unpack("<HB3f", p)
        return dict(packet=packet, reason=reason, x=x, y=y, z=z)
    if packet_id == PONG:
        return dict(nonce=struct.unpack("<I", p)[0])
    if packet_id == GOODBYE:
        return dict(reason=p[0], text=p[1:].decode("utf-8"))
    raise ValueError(f"unknown packet {packet_id:#06x}")


class Player:
    def __init__(self, target, timeout=10.0):
        self.buf = b""
        self.connect(target, timeout)
        self.send(JOIN, struct.pack("<H", PROTOCOL_VERSION))
        packet_id, w = self.recv()
        if packet_id != WELCOME:
            raise AssertionError(f"the first packet is {NAMES.get(packet_id)}, not Welcome")
        self.welcome = w
        self.id = w["id"]
        self.pos = [w["x"], w["y"], w["z"]]

    def send(self, packet_id, payload=b""):
        self.write(frame(packet_id, payload))

    def write(self, data):
        self.sock.sendall(data)

    def read(self):
        """More bytes of the stream; b"" at its end."""
        return self.sock.recv(65536)

    def connect(self, target, timeout):
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def move(self, x, y, z=0.0):
        speed = self.welcome["max_speed"] / 2
        self.send(MOVE, struct.pack("<4f", x, y, z, speed))
        self.pos = [x, y, z]

    def say(self, channel, text):
        self.send(CHAT, bytes([channel]) + text.encode("utf-8"))

    def ping(self, nonce):
        self.send(PING, struct.pack("<I", nonce))

    def recv(self):
        """The next packet as (id, fields); None at the end of the stream."""
        while True:
            if len(self.buf) >= 4:
                size, packet_id = struct.unpack("<HH", self.buf[:4])
                if size < 4:
                    raise AssertionError(f"frame size {size} below the header")
                if len(self.buf) >= size:
                    p, self.buf = self.buf[4:size], self.buf[size:]
                    return packet_id, decode(packet_id, p)
            data = self.read()
            if not data:
                return None
            self.buf += data

    def until(self, stop):
        """Packets up to the first that `stop(id, fields)` accepts; all of them, that one last."""
        seen = []
        while True:
            got = self.recv()
            if got is None:
                raise AssertionError(f"connection closed before the expected packet: {seen}")
            seen.append(got)
            if stop(*got):
                return seen


class WsPlayer(Player):
    """A player over WebSocket: the same protocol in binary messages (a message may hold
    several frames, so the stream is cut as on TCP)."""

    def connect(self, target, timeout):
        from websockets.sync.client import connect

        # Entered by hand: the connection lives as long as the player.
        self.ws = connect(f"ws://{target}/", open_timeout=timeout, compression=None).__enter__()
        self.timeout = timeout

    def write(self, data):
        self.ws.send(data)

    def read(self):
        from websockets.exceptions import ConnectionClosed

        try:
            msg = self.ws.recv(timeout=self.timeout)
        except ConnectionClosed:
            return b""
        if not isinstance(msg, bytes):
            raise AssertionError(f"a text message from the server: {msg!r}")
        return msg


def walk_to(players, spot):
    """Walks each player to `spot` within the speed limit."""
    for p in players:
        step = p.welcome["max_speed"] / 10  # per move, at 10 moves a second
        while math.dist(p.pos[:2], spot) > 1.0:
            dx, dy = spot[0] - p.pos[0], spot[1] - p.pos[1]
            d = math.hypot(dx, dy)
            k = min(1.0, step / d)
            p.move(p.pos[0] + dx * k, p.pos[1] + dy * k)
            time.sleep(0.1)


def interop(target, ws_target):
    tcp, web, walker = Player(target), WsPlayer(ws_target), Player(target)
    mid = (tcp.welcome["world_size"] / 2, tcp.welcome["world_size"] / 2)
    walk_to((tcp, web, walker), mid)
    # Everyone in place: from this mark on, both watchers must be sent the same packets
    # about the walker.
    walker.say(GLOBAL, "mark")
    for p in (tcp, web):
        p.until(lambda i, f: i == CHAT_FROM and f["text"] == "mark")
    for k in range(12):
        walker.move(mid[0] + 0.25 * (k % 4), mid[1] + 0.25 * (k // 4))
        time.sleep(0.1)
    walker.say(NEARBY, "done")
    seen = []
    for p in (tcp, web):
        got = p.until(lambda i, f: i == CHAT_FROM and f["text"] == "done")
        seen.append([(i, f) for i, f in got if f.get("id") == walker.id])
    assert seen[0] == seen[1], f"raw TCP saw {seen[0]}\nWebSocket saw {seen[1]}"
    moves = [f for i, f in seen[0] if i == MOVED]
    assert moves and abs(moves[-1]["x"] - (mid[0] + 0.75)) < 1e-3, moves
    # The WebSocket player's moves and chat reach the raw-TCP one, and a ping is answered.
    web.move(mid[0] - 0.5, mid[1])
    web.say(NEARBY, "from the browser side")
    got = tcp.until(lambda i, f: i == CHAT_FROM and f["text"] == "from the browser side")
    assert any(i == MOVED and f["id"] == web.id for i, f in got), got
    web.ping(0xBEEF)
    assert web.until(lambda i, f: i == PONG)[-1][1]["nonce"] == 0xBEEF
    print(f"interop passed: {len(seen[0])} identical packets on both transports")


def selftest(target):
    a, b = Player(target), Player(target)
    assert a.id != b.id, "the server assigns distinct ids"
    size, cell = a.welcome["world_size"], a.welcome["cell_size"]
    # Walk both towards the middle, within the speed limit, until they stand in one cell.
    mid = (size / 2, size / 2)
    walk_to((a, b), mid)
    a.move(mid[0] + 0.5, mid[1])
    a.say(GLOBAL, "here")
    # B sees A come into range and its last move; A's own moves never come back to it.
    got = b.until(lambda i, f: i == CHAT_FROM and f["text"] == "here")
    assert any(i == ENTERED and f["id"] == a.id for i, f in got), got
    moves = [f for i, f in got if i == MOVED and f["id"] == a.id]
    assert moves and abs(moves[-1]["x"] - (mid[0] + 0.5)) < 1e-3, moves
    got = a.until(lambda i, f: i == CHAT_FROM and f["text"] == "here")
    assert not any(i == MOVED and f["id"] == a.id for i, f in got), "own moves are not echoed"
    # Nearby chat reaches the speaker too; a ping is answered with its nonce.
    a.say(NEARBY, "hello neighbour")
    for p in (a, b):
        got = p.until(lambda i, f: i == CHAT_FROM and f["text"] == "hello neighbour")
        assert got[-1][1]["id"] == a.id and got[-1][1]["channel"] == NEARBY
    b.ping(0xC0FFEE)
    got = b.until(lambda i, f: i == PONG)
    assert got[-1][1]["nonce"] == 0xC0FFEE
    # A packet the protocol does not have: a Goodbye saying why, then the close.
    b.send(0x7777)
    got = b.until(lambda i, f: i == GOODBYE)
    assert got[-1][1]["reason"] == 2, got[-1]  # a bad packet
    assert b.recv() is None, "the server closed the connection after its Goodbye"
    # A sees B leave.
    a.until(lambda i, f: i == LEFT and f["id"] == b.id)
    print(f"selftest passed: players {a.id} and {b.id}")


def walk(target, seconds, ws=False):
    p = WsPlayer(target) if ws else Player(target)
    print(f"joined as {p.id}: {p.welcome}")
    end = time.monotonic() + seconds
    if ws:
        p.timeout = 0.1
    else:
        p.sock.settimeout(0.1)
    heading, n = 0.0, 0
    while time.monotonic() < end:
        heading += 0.3
        step = p.welcome["max_speed"] / 20
        size = p.welcome["world_size"]
        x = min(max(p.pos[0] + step * math.cos(heading), 0.0), size)
        y = min(max(p.pos[1] + step * math.sin(heading), 0.0), size)
        p.move(x, y)
        n += 1
        if n % 20 == 0:
            p.say(NEARBY, f"player {p.id} at {x:.0f},{y:.0f}")
            p.ping(n)
        try:
            while True:
                got = p.recv()
                if got is None:
                    return
                print(f"{NAMES.get(got[0], hex(got[0]))} {got[1]}")
        except (socket.timeout, TimeoutError):
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="the world server, HOST:PORT")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to walk")
    ap.add_argument("--selftest", action="store_true", help="check the protocol's promises")
    ap.add_argument("--ws", help="the server's WebSocket listener, HOST:PORT")
    ap.add_argument("--interop", action="store_true",
                    help="check WebSocket and raw TCP players are sent the same (needs --ws)")
    args = ap.parse_args()
    if args.interop:
        if not args.ws:
            ap.error("--interop needs --ws")
        interop(args.target, args.ws)
    elif args.selftest:
        selftest(args.target)
    else:
        walk(args.ws or args.target, args.seconds, ws=bool(args.ws))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"selftest failed: {e}", file=sys.stderr)
        sys.exit(1)
