//! `--metrics ADDR`: the engine's counters over HTTP in the Prometheus text format.
//!
//! A minimal HTTP/1.1 responder on its own thread: one request per connection, `GET /metrics`
//! answered, anything else 404, a 2-second read timeout so a silent client cannot hold it.
//! Hand-rolled because the exporters built for Prometheus bring an async HTTP stack into a
//! server that needs none for a scrape every few seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use zerocast::Engine;

/// What `/metrics` answers: the engine's counters, then whatever `extra` adds (the world's
/// gauges).
pub type Extra = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and serves `/metrics` for `engine` until the process exits. Returns the bound
/// address.
pub fn serve(
    addr: SocketAddr,
    engine: Arc<Engine>,
    extra: Option<Extra>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("zerocast-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &engine, extra.as_ref()) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(bound)
}

fn answer(stream: TcpStream, engine: &Engine, extra: Option<&Extra>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.by_ref().take(8192).read_line(&mut request)?;
    // Read the rest of the header so the client is not reset before it reads the answer.
    let mut line = String::new();
    while reader.by_ref().take(8192).read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut out = &stream;
    let mut parts = request.split_whitespace();
    if let (Some("GET"), Some("/metrics")) = (parts.next(), parts.next()) {
        let mut body = engine.metrics().to_prometheus();
        if let Some(extra) = extra {
            body.push_str(&extra());
        }
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }
}
