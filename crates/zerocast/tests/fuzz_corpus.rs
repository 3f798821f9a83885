//! Replays the checked-in fuzz corpora of the frame decoder (`fuzz/corpus/decoder`), the
//! WebSocket frame decoder (`fuzz/corpus/ws_frame`) and the WebSocket server transport
//! (`fuzz/corpus/ws_transport`) through their harnesses, so every input
//! the fuzzer ever kept stays a regression test on stable Rust. (The router's corpus is
//! replayed by the world crate, which owns the packets it routes.)

mod util;

#[test]
fn decoder_corpus_replays_clean() {
    util::replay_corpus("decoder", zerocast::frame::fuzz_stream);
}

#[test]
fn websocket_frame_corpus_replays_clean() {
    util::replay_corpus("ws_frame", zerocast::ws::frame::fuzz_stream);
}

#[test]
fn websocket_transport_corpus_replays_clean() {
    util::replay_corpus("ws_transport", zerocast::fuzz_transport);
}
