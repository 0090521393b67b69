//! The model's reply → think / answer / boxes → boxes in source pixels: any
//! text, never a panic, and boxes that stay inside the source image.
#![no_main]

use engine::reasoner::parse::{parse_boxes, split, to_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let resized = (usize::from(data[0]) * 8 + 1, usize::from(data[1]) * 8 + 1);
    let source = (usize::from(data[2]) * 40 + 1, usize::from(data[3]) * 40 + 1);
    let text = String::from_utf8_lossy(&data[4..]);
    let completion = split(&text);
    let (boxes, _) = parse_boxes(&completion.answer);
    let (pixel, _) = to_source(&boxes, resized, source);
    for b in &pixel {
        assert!(b.x1.is_finite() && b.y1.is_finite() && b.x2.is_finite() && b.y2.is_finite(), "{b:?}");
        assert!(
            b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= source.0 as f64 && b.y2 <= source.1 as f64,
            "{b:?} in {source:?}"
        );
    }
});
