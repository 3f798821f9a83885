//! Replays the checked-in decoder fuzz corpus (`fuzz/corpus/decoder`) through its harness, so
//! every input the fuzzer ever kept stays a regression test on stable Rust. (The router's
//! corpus is replayed by the world crate, which owns the packets it routes.)

mod util;

#[test]
fn decoder_corpus_replays_clean() {
    util::replay_corpus("decoder", zerocast::frame::fuzz_stream);
}
