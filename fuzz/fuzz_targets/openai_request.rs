//! A chat-completions request body and Authorization header as `serve` checks
//! them before queueing: a typed 4xx or a request within the limits.
#![no_main]

use engine::server::request::{RequestLimits, bearer_token, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits { max_image_pixels: 1 << 20, max_tokens: 512 };
    match parse(data, "system", &limits) {
        Ok(r) => {
            let (w, h) = r.image_size;
            assert!(u64::from(w) * u64::from(h) <= limits.max_image_pixels);
            assert!(r.max_tokens.is_none_or(|n| (1..=512).contains(&n)));
            assert!(r.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
        }
        Err(e) => assert!(matches!(e.status, 400 | 413 | 422), "{e}"),
    }
    let _ = bearer_token(&String::from_utf8_lossy(data));
});
