//! The WebSocket frame decoder on arbitrary bytes: `cargo fuzz run ws_frame` (nightly), or
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run ws_frame` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zerocast::ws::frame::fuzz_stream(data));
