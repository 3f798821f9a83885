// The live view of a zerocast world (served by `zerocast world --http ADDR`).
//
// The map polls /state.json (the world's settings, every player's position, the figures) and
// draws every player as a dot over the area-of-interest grid, with the selected player's
// neighbourhood (the 3x3 cells it sees) shaded. "play" joins the world as a player over
// WebSocket, speaking the world protocol of docs/PROTOCOL.md in binary messages: each
// message carries one or more whole frames, a frame being a 4-byte header (size of the whole
// frame, then packet id, both u16 little-endian) and its payload. The arrow keys move; the
// players this player hears of (Entered, Moved) are drawn in their own colour.
//
// `?play` in the URL presses "play" once the page knows the server's WebSocket address;
// `?ws=URL` plays over another WebSocket address than the one /state.json names.
// The #status element's data-* attributes count what the player received, for tests.

"use strict";

const HEADER = 4;
const PROTOCOL_VERSION = 1;
const PACKET = {
  JOIN: 0x0101,
  MOVE: 0x0102,
  PING: 0x0105,
  WELCOME: 0x0201,
  MOVED: 0x0202,
  ENTERED: 0x0203,
  LEFT: 0x0204,
  ATTACKED: 0x0205,
  CHAT_FROM: 0x0206,
  REJECTED: 0x0207,
  PONG: 0x0208,
  GOODBYE: 0x0209,
};
const POLL_MS = 500;
const MOVE_MS = 100; // 10 moves a second: the server allows 30.
const PING_MS = 20000; // the server closes a session silent for 60 s.
const COLOURS = { grid: "#e2e2e2", near: "#fff3bf", dot: "#3b6fd4", seen: "#f08c00", me: "#d62828" };

const canvas = document.getElementById("map");
const ctx = canvas.getContext("2d");
const figuresEl = document.getElementById("figures");
const statusEl = document.getElementById("status");
const selectionEl = document.getElementById("selection");
const playButton = document.getElementById("play");

const params = new URLSearchParams(location.search);
let state = null; // the last /state.json
let polls = 0;
let selected = null; // the selected player's id (a string)
const keys = new Set();
const me = {
  ws: null,
  id: null, // a string: ids are u64
  x: 0,
  y: 0,
  maxSpeed: 0,
  worldSize: 0,
  view: new Map(), // id -> {x, y}: the players this player was told about
  counts: { moves: 0, entered: 0, left: 0, rejected: 0, frames: 0 },
  ended: null, // why the session ended
};

// ---- the wire --------------------------------------------------------------------------

// One frame: the header, then `size - 4` payload bytes written by `fill(view, offset)`.
function frame(id, payloadLength, fill) {
  const buf = new ArrayBuffer(HEADER + payloadLength);
  const v = new DataView(buf);
  v.setUint16(0, HEADER + payloadLength, true);
  v.setUint16(2, id, true);
  if (fill) fill(v, HEADER);
  return buf;
}

const joinFrame = () => frame(PACKET.JOIN, 2, (v, at) => v.setUint16(at, PROTOCOL_VERSION, true));

function moveFrame(x, y, z, velocity) {
  return frame(PACKET.MOVE, 16, (v, at) => {
    [x, y, z, velocity].forEach((f, i) => v.setFloat32(at + 4 * i, f, true));
  });
}

const pingFrame = (nonce) => frame(PACKET.PING, 4, (v, at) => v.setUint32(at, nonce, true));

// Cuts one binary message into its frames: every frame must be whole.
function eachFrame(buf, handle) {
  const v = new DataView(buf);
  let at = 0;
  while (at < buf.byteLength) {
    if (buf.byteLength - at < HEADER) throw new Error("a message ends inside a frame header");
    const size = v.getUint16(at, true);
    const id = v.getUint16(at + 2, true);
    if (size < HEADER || at + size > buf.byteLength) {
      throw new Error(`a frame of ${size} bytes at offset ${at} of a ${buf.byteLength}-byte message`);
    }
    handle(id, new DataView(buf, at + HEADER, size - HEADER));
    at += size;
  }
}

function need(p, bytes, name) {
  if (p.byteLength < bytes) throw new Error(`${name}: ${p.byteLength} bytes, expected ${bytes}`);
}

const idAt = (p, at) => p.getBigUint64(at, true).toString();

function onPacket(id, p) {
  me.counts.frames++;
  switch (id) {
    case PACKET.WELCOME:
      need(p, 34, "Welcome");
      me.id = idAt(p, 0);
      me.x = p.getFloat32(8, true);
      me.y = p.getFloat32(12, true);
      me.worldSize = p.getFloat32(20, true);
      me.maxSpeed = p.getFloat32(28, true);
      selected = me.id;
      break;
    case PACKET.MOVED:
      need(p, 24, "Moved");
      me.view.set(idAt(p, 0), { x: p.getFloat32(8, true), y: p.getFloat32(12, true) });
      me.counts.moves++;
      break;
    case PACKET.ENTERED:
      need(p, 20, "Entered");
      me.view.set(idAt(p, 0), { x: p.getFloat32(8, true), y: p.getFloat32(12, true) });
      me.counts.entered++;
      break;
    case PACKET.LEFT:
      need(p, 8, "Left");
      me.view.delete(idAt(p, 0));
      me.counts.left++;
      break;
    case PACKET.REJECTED:
      // The server keeps another position: snap back to it.
      need(p, 15, "Rejected");
      me.x = p.getFloat32(3, true);
      me.y = p.getFloat32(7, true);
      me.counts.rejected++;
      break;
    case PACKET.GOODBYE: {
      need(p, 1, "Goodbye");
      const text = new TextDecoder().decode(new Uint8Array(p.buffer, p.byteOffset + 1, p.byteLength - 1));
      me.ended = `the server said goodbye (reason ${p.getUint8(0)}: ${text})`;
      break;
    }
    case PACKET.ATTACKED:
    case PACKET.CHAT_FROM:
    case PACKET.PONG:
      break;
    default:
      throw new Error(`unknown packet id 0x${id.toString(16).padStart(4, "0")}`);
  }
}

function play() {
  if (!state || !state.ws || me.ws) return;
  playButton.disabled = true;
  const ws = new WebSocket(state.ws);
  ws.binaryType = "arraybuffer";
  me.ws = ws;
  ws.onopen = () => ws.send(joinFrame());
  ws.onmessage = (e) => {
    if (!(e.data instanceof ArrayBuffer)) {
      me.ended = "the server sent a text message";
      ws.close(1003);
      return;
    }
    try {
      eachFrame(e.data, onPacket);
    } catch (err) {
      me.ended = `protocol error: ${err.message}`;
      ws.close(1002);
    }
    redraw();
  };
  ws.onclose = (e) => {
    if (!me.ended) me.ended = `the connection closed (code ${e.code})`;
    me.ws = null;
    me.id = null;
    me.view.clear();
    playButton.disabled = false;
    redraw();
  };
}

// Steps toward the arrow keys held, a little under the speed limit.
function step() {
  if (!me.ws || me.ws.readyState !== WebSocket.OPEN || me.id === null) return;
  let dx = (keys.has("ArrowRight") ? 1 : 0) - (keys.has("ArrowLeft") ? 1 : 0);
  let dy = (keys.has("ArrowDown") ? 1 : 0) - (keys.has("ArrowUp") ? 1 : 0);
  if (dx === 0 && dy === 0) return;
  const speed = me.maxSpeed * 0.9;
  const len = Math.hypot(dx, dy);
  const d = (speed * MOVE_MS) / 1000 / len;
  const clamp = (v) => Math.min(me.worldSize, Math.max(0, v));
  me.x = clamp(me.x + dx * d);
  me.y = clamp(me.y + dy * d);
  me.ws.send(moveFrame(me.x, me.y, 0, speed));
  redraw();
}

let nonce = 0;
function keepAlive() {
  if (me.ws && me.ws.readyState === WebSocket.OPEN) me.ws.send(pingFrame(++nonce));
}

// ---- the page --------------------------------------------------------------------------

async function poll() {
  try {
    const r = await fetch("state.json", { cache: "no-store" });
    if (!r.ok) throw new Error(`state.json: HTTP ${r.status}`);
    state = await r.json();
    state.ws = params.get("ws") ?? state.ws;
    polls++;
    playButton.disabled = !state.ws || me.ws !== null;
    playButton.title = state.ws ? "" : "the server has no WebSocket listener (start it with --ws ADDR)";
    if (state.ws && params.has("play") && polls === 1) play();
    showFigures();
    draw();
  } catch (err) {
    figuresEl.textContent = `cannot read the world's state: ${err.message}`;
  }
  setTimeout(poll, POLL_MS);
}

const fmt = (v, digits = 0) =>
  v === null || v === undefined ? "-" : v.toLocaleString("en", { maximumFractionDigits: digits });

function showFigures() {
  const f = state.figures;
  figuresEl.dataset.polls = polls;
  figuresEl.dataset.players = state.players.length;
  figuresEl.textContent =
    `players ${fmt(f.players)} · deliveries/s ${fmt(f.deliveries_per_sec)} · moves/s ${fmt(f.moves_per_sec)}` +
    ` · tick p99 ${f.tick_p99_ms === null ? "-" : `≤ ${fmt(f.tick_p99_ms, 3)} ms`}` +
    ` · msgs/write ${fmt(f.messages_per_write, 1)}` +
    (f.delivery_stride > 1 ? ` · over capacity: every ${f.delivery_stride} ticks` : "");
}

// Where player `id` is: the played player where it moved, the others as last polled.
function position(id) {
  if (id === null) return null;
  if (id === me.id) return { x: me.x, y: me.y };
  const p = state && state.players.find((q) => q.id === id);
  return p ? { x: p.x, y: p.y } : null;
}

function cellOf(p) {
  const c = state.world.cell_size;
  return [Math.floor(p.x / c), Math.floor(p.y / c)];
}

function draw() {
  if (!state) return;
  const w = state.world;
  const scale = canvas.width / w.size;
  // Nobody selected (or the selected player left): the played player, else the first listed.
  if (position(selected) === null) selected = me.id ?? (state.players.length ? state.players[0].id : null);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  // The selected player's neighbourhood.
  const sel = selected === null ? null : position(selected);
  if (sel) {
    const [cx, cy] = cellOf(sel);
    const v = w.view_cells;
    const side = (2 * v + 1) * w.cell_size * scale;
    ctx.fillStyle = COLOURS.near;
    ctx.fillRect((cx - v) * w.cell_size * scale, (cy - v) * w.cell_size * scale, side, side);
  }
  // The area-of-interest grid, when its cells are big enough to see.
  if (w.cell_size * scale >= 4) {
    ctx.strokeStyle = COLOURS.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 0; c <= w.size; c += w.cell_size) {
      const at = Math.round(c * scale) + 0.5;
      ctx.moveTo(at, 0);
      ctx.lineTo(at, canvas.height);
      ctx.moveTo(0, at);
      ctx.lineTo(canvas.width, at);
    }
    ctx.stroke();
  }
  const dot = (p, r, colour) => {
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.arc(p.x * scale, p.y * scale, r, 0, 2 * Math.PI);
    ctx.fill();
  };
  for (const p of state.players) if (p.id !== me.id) dot(p, 3, COLOURS.dot);
  // What the played player was told, where it was told.
  for (const p of me.view.values()) dot(p, 4, COLOURS.seen);
  if (me.id !== null) dot(me, 6, COLOURS.me);
  if (sel) {
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(sel.x * scale, sel.y * scale, 9, 0, 2 * Math.PI);
    ctx.stroke();
  }
  showSelection(sel);
  showStatus();
}

let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    draw();
  });
}

function showSelection(sel) {
  if (!sel) {
    selectionEl.textContent = "click a player to see its neighbourhood";
    return;
  }
  const [cx, cy] = cellOf(sel);
  const v = state.world.view_cells;
  const near = state.players.filter((p) => {
    const [px, py] = cellOf(p);
    return p.id !== selected && Math.abs(px - cx) <= v && Math.abs(py - cy) <= v;
  }).length;
  const who = selected === me.id ? "you" : `player ${selected}`;
  selectionEl.textContent =
    `selected: ${who} at (${sel.x.toFixed(1)}, ${sel.y.toFixed(1)}), cell (${cx}, ${cy}): ` +
    `${near} other players in its ${2 * v + 1}×${2 * v + 1} cells`;
}

function showStatus() {
  const c = me.counts;
  const d = statusEl.dataset;
  d.joined = me.id !== null ? "1" : "0";
  d.id = me.id ?? "";
  d.moves = c.moves;
  d.entered = c.entered;
  d.left = c.left;
  d.rejected = c.rejected;
  d.frames = c.frames;
  d.view = me.view.size;
  d.ended = me.ended ?? "";
  if (me.id !== null) {
    statusEl.textContent =
      `playing as ${me.id} at (${me.x.toFixed(1)}, ${me.y.toFixed(1)}): sees ${me.view.size} players; ` +
      `received ${c.moves} moves, ${c.entered} entered, ${c.left} left, ${c.rejected} refusals`;
  } else if (me.ws) {
    statusEl.textContent = "joining…";
  } else {
    statusEl.textContent = me.ended ?? (state && state.ws ? "not playing" : "no WebSocket listener: play is off");
  }
}

function fit() {
  const side = Math.max(240, Math.min(1200, window.innerWidth - 26, window.innerHeight - 170));
  canvas.width = canvas.height = side;
  draw();
}

canvas.addEventListener("click", (e) => {
  if (!state) return;
  const r = canvas.getBoundingClientRect();
  const scale = canvas.width / state.world.size;
  const x = (e.clientX - r.left) / scale;
  const y = (e.clientY - r.top) / scale;
  let best = null;
  let bestD = 10 / scale; // within 10 pixels
  const candidates = state.players.map((p) => (p.id === me.id ? { id: p.id, x: me.x, y: me.y } : p));
  if (me.id !== null && !candidates.some((p) => p.id === me.id)) candidates.push({ id: me.id, x: me.x, y: me.y });
  for (const p of candidates) {
    const d = Math.hypot(p.x - x, p.y - y);
    if (d < bestD) [best, bestD] = [p.id, d];
  }
  selected = best ?? (me.id !== null ? me.id : null);
  draw();
});

window.addEventListener("keydown", (e) => {
  if (e.key.startsWith("Arrow")) {
    keys.add(e.key);
    e.preventDefault();
  }
});
window.addEventListener("keyup", (e) => keys.delete(e.key));
window.addEventListener("blur", () => keys.clear());
window.addEventListener("resize", fit);
playButton.addEventListener("click", play);

setInterval(step, MOVE_MS);
setInterval(keepAlive, PING_MS);
fit();
poll();
