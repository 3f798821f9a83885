//! Replays the checked-in fuzz corpus (`fuzz/corpus/decoder`) through the decoder harness, so
//! every input the fuzzer ever kept stays a regression test on stable Rust.

use std::path::Path;

#[test]
fn decoder_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decoder");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| zerocast::frame::fuzz_stream(&data));
        assert!(result.is_ok(), "corpus input {} panics", path.display());
        n += 1;
    }
    assert!(n >= 8, "the corpus is checked in ({n} inputs)");
}
