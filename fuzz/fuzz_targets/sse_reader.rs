//! A remote server's streamed reply as the client reads it: pieces, an end,
//! or a named error, never a panic.
#![no_main]

use engine::openai::{StreamItem, read_event_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut text = String::new();
    let _ = read_event_stream(std::io::Cursor::new(data), |item| {
        if let StreamItem::Text(t) = item {
            text.push_str(&t);
        }
        std::ops::ControlFlow::Continue(())
    });
    assert!(text.len() <= data.len());
});
