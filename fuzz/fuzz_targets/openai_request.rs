//! A chat-completions request as `serve` checks it before queueing. The body is in `fuzz/entries.rs`, shared with
//! `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| {
    entries::openai_request(data);
});
