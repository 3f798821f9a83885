//! A WebSocket server connection's transport (handshake done, then client bytes in arbitrary
//! receives: unmasking, compaction into the stream, partial frames kept): `cargo fuzz run
//! ws_transport` (nightly), or `RUSTC_BOOTSTRAP=1 cargo fuzz run ws_transport` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zerocast::fuzz_transport(data));
