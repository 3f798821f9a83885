//! The frame decoder on arbitrary bytes: `cargo +nightly fuzz run decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zerocast::frame::fuzz_stream(data));
