//! Choosing the event loop: explicit choices are honoured (or refused with a reason), `auto`
//! resolves to one of them, and either serves the same traffic.

mod util;

use std::io::{Read, Write};

use util::*;
use zerocast::{Backend, Engine};
use zerocast_servers::Echo;

fn echo_once(engine: &Engine, addr: std::net::SocketAddr) {
    let mut s = connect(addr);
    let f = frame(7, b"which loop?");
    s.write_all(&f).unwrap();
    let mut back = vec![0u8; f.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, f, "{:?}", engine.backend());
}

/// The backends of this OS, and those of the other.
fn backends() -> (Vec<Backend>, Vec<Backend>) {
    if cfg!(windows) {
        (
            vec![Backend::Iocp, Backend::Auto],
            vec![Backend::Epoll, Backend::Uring],
        )
    } else {
        (
            vec![Backend::Epoll, Backend::Uring, Backend::Auto],
            vec![Backend::Iocp],
        )
    }
}

#[test]
fn another_os_s_backend_is_refused_saying_so() {
    for choice in backends().1 {
        let e = match Engine::builder().workers(1).backend(choice).build(Echo) {
            Ok(_) => panic!("{choice:?} built on this OS"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains(choice.name()), "{e}");
    }
    assert_eq!(Backend::default(), backends().0[0]);
}

/// Windows serves no datagrams (the channel is built on Linux's recvmmsg/sendmmsg), and says
/// so rather than binding sockets nobody reads.
#[cfg(windows)]
#[test]
fn datagrams_are_refused_on_windows() {
    let engine = Engine::builder().workers(1).build(Echo).unwrap();
    let e = engine
        .listen_datagrams("127.0.0.1:0".parse().unwrap())
        .expect_err("no datagrams on Windows");
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
}

#[test]
fn explicit_backends_are_honoured_and_auto_picks_one() {
    for choice in backends().0 {
        let built = Engine::builder().workers(1).backend(choice).build(Echo);
        let engine = match (choice, built) {
            (_, Ok(e)) => e,
            (Backend::Uring, Err(e)) => {
                // A kernel without io_uring: refused, saying why.
                assert!(e.to_string().contains("io_uring"), "{e}");
                continue;
            }
            (_, Err(e)) => panic!("{choice:?}: {e}"),
        };
        match choice {
            Backend::Auto => assert_ne!(engine.backend(), Backend::Auto),
            c => assert_eq!(engine.backend(), c),
        }
        let addr = engine.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        echo_once(&engine, addr);
        engine.shutdown();
        assert_no_leaks(&engine);
    }
}

#[test]
fn backend_names_round_trip() {
    for b in [Backend::Epoll, Backend::Uring, Backend::Iocp, Backend::Auto] {
        assert_eq!(Backend::parse(b.name()), Some(b));
    }
    assert_eq!(Backend::parse("io_uring"), Some(Backend::Uring));
    assert_eq!(Backend::parse("kqueue"), None);
}
