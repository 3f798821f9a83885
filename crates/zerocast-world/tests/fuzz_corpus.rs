//! Replays the checked-in router fuzz corpus (`fuzz/corpus/router`) through its harness: every
//! input the fuzzer ever kept stays a regression test on stable Rust.

/// The engine's end-to-end helpers, shared rather than copied.
#[path = "../../zerocast/tests/util/mod.rs"]
mod util;

#[test]
fn router_corpus_replays_clean() {
    util::replay_corpus("router", zerocast_world::fuzz_router);
}
