//! The WebSocket opening handshake (RFC 6455 §4), sans-IO: a client's HTTP/1.1 upgrade
//! request parsed (`httparse`), checked, and answered.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Longest upgrade request taken (request line and headers): browsers send well under 2 KiB.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Headers read at most.
const MAX_HEADERS: usize = 32;
/// The GUID every accept key is derived with (§1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// An accepted upgrade request: what the answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request target, e.g. `/` or `/play`.
    pub path: String,
    /// `Sec-WebSocket-Key`, as sent.
    pub key: String,
    /// `Origin`, if sent (a browser always sends it).
    pub origin: Option<String>,
    /// Its length in the buffer: what follows is the client's first frames.
    pub len: usize,
}

/// Why a handshake was refused: answered with HTTP 400 (or 426 for another version), then
/// the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not HTTP/1.1 as `httparse` reads it.
    Malformed(String),
    /// Longer than [`MAX_REQUEST`] without ending.
    TooLong,
    /// Not a GET.
    Method(String),
    /// No `Upgrade: websocket` or no `Connection: Upgrade`.
    NotUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13.
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes in base64 (or, to a client, a
    /// `Sec-WebSocket-Accept` that does not match it).
    Key,
    /// To a client: the server answered with this status, not 101.
    Refused(u16),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed HTTP request: {e}"),
            Self::TooLong => write!(f, "request over {MAX_REQUEST} bytes"),
            Self::Method(m) => write!(f, "method {m}, not GET"),
            Self::NotUpgrade => write!(f, "not a WebSocket upgrade"),
            Self::Version => write!(f, "Sec-WebSocket-Version is not 13"),
            Self::Key => write!(f, "missing or malformed Sec-WebSocket-Key"),
            Self::Refused(code) => write!(f, "the server answered {code}, not 101"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Parses the upgrade request at the front of `buf`: `Ok(None)` while it is incomplete.
///
/// # Errors
/// A [`HandshakeError`]: answer with [`refusal`] and close.
pub fn parse(buf: &[u8]) -> Result<Option<Request>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST => {
            return Err(HandshakeError::TooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if len > MAX_REQUEST {
        return Err(HandshakeError::TooLong);
    }
    let method = req.method.unwrap_or_default();
    if method != "GET" {
        return Err(HandshakeError::Method(method.chars().take(16).collect()));
    }
    if req.version != Some(1) {
        return Err(HandshakeError::Malformed("not HTTP/1.1".into()));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    // Token lists, compared without case (`Connection: keep-alive, Upgrade` is common).
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(HandshakeError::NotUpgrade);
    }
    if header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = header("sec-websocket-key").ok_or(HandshakeError::Key)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| HandshakeError::Key)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::Key);
    }
    Ok(Some(Request {
        path: req.path.unwrap_or("/").to_owned(),
        key: key.to_owned(),
        origin: header("origin").map(str::to_owned),
        len,
    }))
}

/// `Sec-WebSocket-Accept` for `key`: base64 of the SHA-1 of the key and the GUID (§4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A `Sec-WebSocket-Key` from 16 random bytes.
pub fn encode_key(nonce: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce)
}

/// A client's upgrade request for `path` on `host`, with `key` from [`encode_key`].
pub fn request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Parses the server's answer to a request sent with `key`: `Ok(None)` while incomplete,
/// its length once it is a 101 with the right `Sec-WebSocket-Accept`.
///
/// # Errors
/// Anything else: the server refused or does not speak WebSocket.
pub fn parse_answer(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_REQUEST => {
            return Err(HandshakeError::TooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if res.code != Some(101) {
        return Err(HandshakeError::Refused(res.code.unwrap_or(0)));
    }
    let accept = res
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value);
    if accept != Some(accept_key(key).as_bytes()) {
        return Err(HandshakeError::Key);
    }
    Ok(Some(len))
}

/// The answer that opens the connection.
pub fn accept(req: &Request) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&req.key)
    )
    .into_bytes()
}

/// The answer to a refused handshake: 426 with the version this server speaks for a wrong
/// version, 400 otherwise, the reason in the body.
pub fn refusal(e: &HandshakeError) -> Vec<u8> {
    let body = format!("{e}\n");
    let (status, extra) = match e {
        HandshakeError::Version => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
        _ => ("400 Bad Request", ""),
    };
    format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_rfc_s_example_is_accepted_with_its_key() {
        let r = parse(RFC).unwrap().unwrap();
        assert_eq!(r.path, "/chat");
        assert_eq!(r.origin.as_deref(), Some("http://example.com"));
        assert_eq!(r.len, RFC.len());
        // RFC 6455 §1.3.
        assert_eq!(accept_key(&r.key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let answer = String::from_utf8(accept(&r)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 "));
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn a_partial_request_waits_and_bad_ones_get_a_reason() {
        assert_eq!(parse(&RFC[..RFC.len() - 3]), Ok(None));
        let swap = |from: &str, to: &str| {
            String::from_utf8(RFC.to_vec())
                .unwrap()
                .replace(from, to)
                .into_bytes()
        };
        assert!(matches!(
            parse(&swap("GET", "POST")),
            Err(HandshakeError::Method(_))
        ));
        assert_eq!(
            parse(&swap("Upgrade: websocket", "Upgrade: h2c")),
            Err(HandshakeError::NotUpgrade)
        );
        assert_eq!(
            parse(&swap("Version: 13", "Version: 8")),
            Err(HandshakeError::Version)
        );
        assert_eq!(
            parse(&swap("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            Err(HandshakeError::Key)
        );
        assert!(matches!(
            parse(b"\x16\x03\x01 hello"),
            Err(HandshakeError::Malformed(_))
        ));
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_REQUEST]].concat();
        assert_eq!(parse(&endless), Err(HandshakeError::TooLong));
        let r = String::from_utf8(refusal(&HandshakeError::Version)).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 ") && r.contains("Sec-WebSocket-Version: 13"));
        assert!(String::from_utf8(refusal(&HandshakeError::Key))
            .unwrap()
            .starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn tokens_are_matched_in_lists_and_without_case() {
        let r = String::from_utf8(RFC.to_vec())
            .unwrap()
            .replace("Connection: Upgrade", "connection: keep-alive, upgrade")
            .replace("Upgrade: websocket", "upgrade: WebSocket");
        assert!(parse(r.as_bytes()).unwrap().is_some());
    }
}
