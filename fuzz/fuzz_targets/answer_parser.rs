//! The model's reply → think / answer / boxes → boxes in source pixels. The body is in `fuzz/entries.rs`, shared with
//! `tests/fuzz_regressions.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../entries.rs"]
mod entries;

fuzz_target!(|data: &[u8]| {
    entries::answer_parser(data);
});
