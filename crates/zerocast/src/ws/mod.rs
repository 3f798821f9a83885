//! WebSocket (RFC 6455), sans-IO: the opening handshake and the frames, for browser clients
//! and the tools that speak WebSocket.
//!
//! The engine's protocol frames travel as the payload of binary WebSocket messages: a client
//! frame is unmasked in place in the receive buffer ([`frame::Decoder`]), and a server write is
//! one binary frame whose header ([`frame::header`], 2 to 10 bytes, server frames are not
//! masked) goes before the bytes the write would have sent anyway, so a broadcast is still
//! encoded once.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade request parsed (`httparse`), checked (method,
//!   `Upgrade`, `Connection`, version 13, a 16-byte key) and answered (101 with the accept key,
//!   or 400/426 with the reason);
//! - [`frame`]: client frames decoded (masking required, reserved bits, control frames of at
//!   most 125 bytes and never fragmented, continuations in order, a message size limit checked
//!   from the header, close codes and reasons checked), each error naming its close code;
//!   server frames encoded.
//!
//! The engine serves WebSocket with these ([`Engine::listen_websocket`](crate::Engine::listen_websocket),
//! [`Transport`](crate::Transport)); the connection's state (handshake, in-place unmasking,
//! framing of writes that the kernel may take in part) is the crate's `conn::ws`.

pub mod frame;
pub mod handshake;
