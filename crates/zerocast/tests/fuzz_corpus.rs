//! Replays the checked-in decoder fuzz corpus (`fuzz/corpus/decoder`) through its harness, so
//! every input the fuzzer ever kept stays a regression test on stable Rust. (The router's
//! corpus is replayed by the world crate, which owns the packets it routes.)

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| harness(&data));
        assert!(result.is_ok(), "corpus input {} panics", path.display());
        n += 1;
    }
    assert!(n >= 8, "the {target} corpus is checked in ({n} inputs)");
}

#[test]
fn decoder_corpus_replays_clean() {
    replay("decoder", zerocast::frame::fuzz_stream);
}
