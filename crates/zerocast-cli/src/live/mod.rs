//! `zerocast world --http ADDR`: the live view, a page served by the world server itself.
//!
//! | path | answer |
//! |---|---|
//! | `/`, `/index.html` | the page ([`INDEX`]) |
//! | `/app.js` | its script ([`APP`]): the map, and a player over WebSocket |
//! | `/state.json` | the world's settings, every player's position, the live figures ([`state`]) |
//! | `/metrics` | the Prometheus exposition, as `--metrics` serves it |
//!
//! The files are embedded in the binary: no build step, no CDN, nothing to install beside it.
//! Like `--metrics`, the HTTP side is a small blocking responder (one request per
//! connection, answered and closed), here with a thread per connection, at most
//! [`MAX_CONNECTIONS`] at once: a browser opens idle connections ahead of its requests, and
//! one of those must not hold up the next poll for its whole read timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zerocast::Engine;
use zerocast_world::World;

use crate::metrics_http::{self, Extra};

pub mod state;

/// The page.
pub const INDEX: &str = include_str!("index.html");
/// The page's script.
pub const APP: &str = include_str!("app.js");

/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest request header read.
const MAX_REQUEST: usize = 8192;

/// What the live view reads.
pub struct Live {
    pub engine: Arc<Engine>,
    pub world: Arc<World>,
    /// The WebSocket listener's bound address (`--ws`), for the page's player.
    pub ws: Option<SocketAddr>,
    /// The world's figures for `/metrics`.
    pub extra: Option<Extra>,
}

/// Binds `addr` and serves the live view until the process exits. Returns the bound address.
pub fn serve(addr: SocketAddr, live: Live) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let live = Arc::new(Served {
        live,
        rates: Mutex::new(state::Rates::default()),
        open: AtomicUsize::new(0),
    });
    std::thread::Builder::new()
        .name("zerocast-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // Relaxed: a count that bounds threads, ordering nothing else.
                if live.open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    live.open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let spawned = std::thread::Builder::new()
                    .name("zerocast-http-conn".into())
                    .spawn({
                        let live = live.clone();
                        move || {
                            if let Err(e) = answer(stream, &live) {
                                tracing::debug!(error = %e, "http request failed");
                            }
                            live.open.fetch_sub(1, Ordering::Relaxed);
                        }
                    });
                if let Err(e) = spawned {
                    live.open.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot start an http thread");
                }
            }
        })?;
    Ok(bound)
}

struct Served {
    live: Live,
    /// The figures computed between polls of `/state.json`.
    rates: Mutex<state::Rates>,
    /// Connections being answered.
    open: AtomicUsize,
}

/// A request, as far as the live view cares.
struct Request {
    method: String,
    /// The path without its query.
    path: String,
    /// The `Host` header's host name (no port), if any.
    host: Option<String>,
}

/// Reads one request header: `Ok(None)` when the client closed before sending one.
fn read_request(mut stream: &TcpStream) -> std::io::Result<Result<Option<Request>, &'static str>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Ok(None)
            } else {
                Err("the request header ends early")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path.unwrap_or("/");
                let path = target.split(['?', '#']).next().unwrap_or("/");
                let host = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("host"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(host_name);
                return Ok(Ok(Some(Request {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    host,
                })));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
            Ok(httparse::Status::Partial) => return Ok(Err("the request header is too long")),
            Err(_) => return Ok(Err("a malformed request")),
        }
    }
}

/// The host name of a `Host` header value: `example.org:8080` → `example.org`,
/// `[::1]:8080` → `[::1]`.
fn host_name(value: &str) -> String {
    let value = value.trim();
    if let Some(end) = value.find(']') {
        return value[..=end].to_owned();
    }
    value.split(':').next().unwrap_or(value).to_owned()
}

fn answer(stream: TcpStream, served: &Served) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let request = match read_request(&stream)? {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(why) => return respond(&stream, "400 Bad Request", "text/plain", why.as_bytes()),
    };
    if request.method != "GET" {
        return respond(
            &stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET is served here",
        );
    }
    let live = &served.live;
    match request.path.as_str() {
        "/" | "/index.html" => respond(&stream, "200 OK", "text/html", INDEX.as_bytes()),
        "/app.js" => respond(&stream, "200 OK", "text/javascript", APP.as_bytes()),
        "/state.json" => {
            let body = state::render(live, &served.rates, request.host.as_deref());
            respond(&stream, "200 OK", "application/json", body.as_bytes())
        }
        "/metrics" => {
            let body = metrics_http::render(&live.engine, live.extra.as_ref());
            respond(
                &stream,
                "200 OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
        }
        _ => respond(&stream, "404 Not Found", "text/plain", b"not found"),
    }
}

fn respond(
    mut stream: &TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("example.org:8080"), "example.org");
        assert_eq!(host_name("example.org"), "example.org");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name(" 10.0.0.2:80 "), "10.0.0.2");
    }

    #[test]
    fn the_page_loads_its_script_and_the_script_speaks_the_world_protocol() {
        assert!(INDEX.contains("<script src=\"app.js\">"));
        assert!(INDEX.contains("id=\"status\""));
        use zerocast::packet::{FixedPacket, VarPacket};
        use zerocast_world::packets::{
            Entered, Goodbye, Join, Left, Move, Moved, Ping, Rejected, Welcome,
        };
        // The packet ids the script speaks are the server's.
        let ids = [
            Join::ID,
            Move::ID,
            Ping::ID,
            Welcome::ID,
            Moved::ID,
            Entered::ID,
            Left::ID,
            Rejected::ID,
            <Goodbye as VarPacket>::ID,
        ];
        for id in ids {
            let literal = format!("0x{id:04x}");
            assert!(APP.contains(&literal), "app.js knows packet {literal}");
        }
    }
}
