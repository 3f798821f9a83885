#![no_main]
//! Frames cut from arbitrary bytes, dispatched through the world packet router: never a
//! panic, and every packet that decodes re-encodes to its own bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| zerocast_world::fuzz_router(data));
