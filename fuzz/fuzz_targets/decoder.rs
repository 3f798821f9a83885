//! The frame decoder on arbitrary bytes: `cargo fuzz run decoder` (nightly), or
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run decoder` on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zerocast::frame::fuzz_stream(data));
