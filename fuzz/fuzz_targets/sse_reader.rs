//! A remote server's streamed reply as the client reads it. The body is in `fuzz/entries.rs`, shared with
//! `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| {
    entries::sse_reader(data);
});
