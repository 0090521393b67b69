//! Reading the model's completion: the `<think>…</think><answer>…</answer>` split
//! and the box list in the answer.
//!
//! [`split`] accepts everything the authors' parser accepts (`^<think>(.*?)</think>\s*<answer>(.*?)</answer>$`,
//! dot matching newlines; on failure the whole text is the answer) and more: a
//! missing closing tag, text before or after the tags, no tags at all. Every
//! departure from the strict format is reported as a [`Repair`].
//!
//! [`parse_boxes`] reads every innermost `[…]` group of four numbers (integers or
//! floats, any spacing), so `[[x1,y1,x2,y2],…]`, a flat `[x1,y1,x2,y2]`, JSON objects
//! with a `"bbox_2d"` list and a list cut off before its closing bracket all work.
//! [`to_source`] maps boxes from the resized frame the model saw back to source
//! pixels, orders corners, clips, and drops degenerate boxes.

use serde::{Deserialize, Serialize};

use crate::base::PixelBox;

/// Something the parser had to work around; reported with the result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Repair {
    /// No `<think>` block: the reasoning trace is empty.
    NoThink,
    /// `<think>` was opened but never closed.
    UnclosedThink,
    /// No `<answer>` tag: the answer was taken from the text after `</think>` (or all of it).
    NoAnswerTag,
    /// `<answer>` was opened but never closed.
    UnclosedAnswer,
    /// Text outside the tags was ignored.
    StrayText { text: String },
    /// A bracketed group that is not four numbers was skipped.
    SkippedEntry { text: String },
    /// The box list was cut off; its last group was read up to the end of the text.
    UnclosedBracket,
    /// x1 > x2 or y1 > y2: the corners were swapped.
    SwappedCorners { index: usize },
    /// The box reached outside the image and was clipped.
    Clipped { index: usize },
    /// The box had no area inside the image and was dropped.
    DroppedDegenerate { index: usize },
}

/// A completion split into reasoning and answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub think: String,
    pub answer: String,
    /// The GRPO format reward: the whole text matches
    /// `<think>.*?</think>\s*<answer>.*?</answer>$`.
    pub format_ok: bool,
    pub repairs: Vec<Repair>,
}

/// Python's `re` `$`: end of text, or before a final newline.
fn strip_final_newline(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

/// The authors' strict split, when it applies: (think, answer).
fn strict_split(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix("<think>")?;
    let end = strip_final_newline(body);
    let inner = end.strip_suffix("</answer>")?;
    // The first `</think>` followed by optional whitespace and `<answer>`.
    let mut from = 0;
    while let Some(i) = inner[from..].find("</think>") {
        let at = from + i;
        let rest = inner[at + "</think>".len()..].trim_start();
        if let Some(answer) = rest.strip_prefix("<answer>") {
            return Some((&inner[..at], answer));
        }
        from = at + 1;
    }
    None
}

/// Splits a completion into its reasoning trace and its answer.
///
/// ```
/// use engine::reasoner::parse::split;
/// let c = split("<think>Two runways.</think>\n<answer>[[1,2,3,4]]</answer>");
/// assert_eq!((c.think.as_str(), c.answer.as_str(), c.format_ok), ("Two runways.", "[[1,2,3,4]]", true));
/// let c = split("<think>cut off while think");
/// assert_eq!(c.think, "cut off while think");
/// assert!(!c.format_ok && !c.repairs.is_empty());
/// ```
pub fn split(text: &str) -> Completion {
    if let Some((think, answer)) = strict_split(text) {
        return Completion { think: think.into(), answer: answer.into(), format_ok: true, repairs: Vec::new() };
    }
    let mut repairs = Vec::new();
    let mut stray = String::new();
    let (think, after_think) = match text.find("<think>") {
        Some(open) => {
            stray.push_str(text[..open].trim());
            let body = &text[open + "<think>".len()..];
            match body.find("</think>") {
                Some(close) => (body[..close].to_owned(), &body[close + "</think>".len()..]),
                None => match body.find("<answer>") {
                    Some(a) => {
                        repairs.push(Repair::UnclosedThink);
                        (body[..a].to_owned(), &body[a..])
                    }
                    None => {
                        repairs.push(Repair::UnclosedThink);
                        (body.to_owned(), "")
                    }
                },
            }
        }
        None => {
            repairs.push(Repair::NoThink);
            (String::new(), text)
        }
    };
    let answer = match after_think.find("<answer>") {
        Some(open) => {
            stray.push_str(after_think[..open].trim());
            let body = &after_think[open + "<answer>".len()..];
            match body.rfind("</answer>") {
                Some(close) => {
                    stray.push_str(body[close + "</answer>".len()..].trim());
                    body[..close].to_owned()
                }
                None => {
                    repairs.push(Repair::UnclosedAnswer);
                    body.to_owned()
                }
            }
        }
        None => {
            repairs.push(Repair::NoAnswerTag);
            after_think.to_owned()
        }
    };
    if !stray.is_empty() {
        repairs.push(Repair::StrayText { text: stray });
    }
    Completion { think: think.trim().to_owned(), answer: answer.trim().to_owned(), format_ok: false, repairs }
}

/// Reads a number as Python's `literal_eval` would for ints and floats
/// (with `_` and exponents); `None` for anything else.
fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.contains(|c: char| c.is_alphabetic() && c != 'e' && c != 'E') {
        return None;
    }
    s.replace('_', "").parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Every box in an answer, in the frame the model saw (x1, y1, x2, y2 as written).
///
/// ```
/// use engine::reasoner::parse::parse_boxes;
/// assert_eq!(parse_boxes("[[10, 20, 30, 40], [1.5,2,3,4]]").0, vec![[10.0, 20.0, 30.0, 40.0], [1.5, 2.0, 3.0, 4.0]]);
/// assert_eq!(parse_boxes("[5,6,7,8]").0, vec![[5.0, 6.0, 7.0, 8.0]]);
/// assert!(parse_boxes("[]").0.is_empty());
/// ```
pub fn parse_boxes(answer: &str) -> (Vec<[f64; 4]>, Vec<Repair>) {
    let mut boxes = Vec::new();
    let mut repairs = Vec::new();
    let mut open: Option<usize> = None;
    let take = |group: &str, boxes: &mut Vec<[f64; 4]>, repairs: &mut Vec<Repair>| {
        if group.trim().is_empty() {
            return;
        }
        let nums: Vec<Option<f64>> = group.split(',').map(number).collect();
        match nums.as_slice() {
            [Some(a), Some(b), Some(c), Some(d)] => boxes.push([*a, *b, *c, *d]),
            _ => repairs.push(Repair::SkippedEntry { text: format!("[{}]", group.trim()) }),
        }
    };
    for (i, ch) in answer.char_indices() {
        match ch {
            '[' => open = Some(i + 1),
            ']' => {
                if let Some(start) = open.take() {
                    take(&answer[start..i], &mut boxes, &mut repairs);
                }
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        let tail = answer[start..].trim_end();
        let tail = tail.trim_end_matches(|c: char| c == ',' || c.is_whitespace());
        if !tail.is_empty() {
            repairs.push(Repair::UnclosedBracket);
            take(tail, &mut boxes, &mut repairs);
        }
    }
    (boxes, repairs)
}

/// Maps boxes from the resized frame (`resized` = (w′, h′)) to the source image
/// (`source` = (w, h)) by (w/w′, h/h′), orders corners, clips to the image, and
/// drops boxes narrower or shorter than one source pixel.
pub fn to_source(boxes: &[[f64; 4]], resized: (usize, usize), source: (usize, usize)) -> (Vec<PixelBox>, Vec<Repair>) {
    let sx = source.0 as f64 / resized.0.max(1) as f64;
    let sy = source.1 as f64 / resized.1.max(1) as f64;
    let (w, h) = (source.0 as f64, source.1 as f64);
    let mut out = Vec::new();
    let mut repairs = Vec::new();
    for (index, b) in boxes.iter().enumerate() {
        let (mut x1, mut y1, mut x2, mut y2) = (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy);
        if x1 > x2 || y1 > y2 {
            repairs.push(Repair::SwappedCorners { index });
            (x1, x2) = (x1.min(x2), x1.max(x2));
            (y1, y2) = (y1.min(y2), y1.max(y2));
        }
        let clipped = [x1.clamp(0.0, w), y1.clamp(0.0, h), x2.clamp(0.0, w), y2.clamp(0.0, h)];
        if clipped != [x1, y1, x2, y2] {
            repairs.push(Repair::Clipped { index });
        }
        let [x1, y1, x2, y2] = clipped;
        if x2 - x1 < 1.0 || y2 - y1 < 1.0 {
            repairs.push(Repair::DroppedDegenerate { index });
            continue;
        }
        out.push(PixelBox { x1, y1, x2, y2 });
    }
    (out, repairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_format_matches_the_authors_regex() {
        let c = split("<think>a</think>b</think> \n <answer>[[1,2,3,4]]</answer>\n");
        assert!(c.format_ok);
        assert_eq!((c.think.as_str(), c.answer.as_str()), ("a</think>b", "[[1,2,3,4]]"));
        // Trailing text after </answer> breaks the strict format (the regex anchors at the end).
        let c = split("<think>x</think><answer>[]</answer> thanks");
        assert!(!c.format_ok);
        assert_eq!(c.answer, "[]");
        assert!(matches!(&c.repairs[..], [Repair::StrayText { text }] if text == "thanks"));
    }

    #[test]
    fn missing_tags_are_repaired_and_reported() {
        let c = split("<think>runway is long<answer>[[1,2,3,4]]");
        assert_eq!((c.think.as_str(), c.answer.as_str()), ("runway is long", "[[1,2,3,4]]"));
        assert_eq!(c.repairs, [Repair::UnclosedThink, Repair::UnclosedAnswer]);
        let c = split("[[1,2,3,4]]");
        assert_eq!((c.think.as_str(), c.answer.as_str()), ("", "[[1,2,3,4]]"));
        assert_eq!(c.repairs, [Repair::NoThink, Repair::NoAnswerTag]);
        let c = split("<think>hmm</think> The answer is [[1,2,3,4]].");
        assert_eq!(c.answer, "The answer is [[1,2,3,4]].");
        assert_eq!(c.repairs, [Repair::NoAnswerTag]);
    }

    #[test]
    fn box_lists_in_many_shapes() {
        let (b, r) = parse_boxes(" [ [ 10 , 20,30 ,40 ] ,[50,60,70,80]] ");
        assert_eq!(b, [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 70.0, 80.0]]);
        assert!(r.is_empty());
        let (b, r) = parse_boxes("[[1,2,3],[4,5,6,7],[a,b,c,d]]");
        assert_eq!(b, [[4.0, 5.0, 6.0, 7.0]]);
        assert_eq!(r.len(), 2);
        let (b, r) = parse_boxes("```json\n[{\"bbox_2d\": [1, 2, 3, 4], \"label\": \"plane\"}]\n```");
        assert_eq!((b, r), (vec![[1.0, 2.0, 3.0, 4.0]], vec![]));
        let (b, r) = parse_boxes("[[1,2,3,4],[5,6,7,8");
        assert_eq!(b.len(), 2);
        assert_eq!(r, [Repair::UnclosedBracket]);
        let (b, _) = parse_boxes("[[1e2, -5, 3.25, 4_0]]");
        assert_eq!(b, [[100.0, -5.0, 3.25, 40.0]]);
        assert!(parse_boxes("no target here").0.is_empty());
    }

    #[test]
    fn boxes_map_to_source_pixels_and_are_cleaned() {
        // The model saw 196×196 for a 200×100 source.
        let (b, r) = to_source(&[[0.0, 0.0, 98.0, 196.0]], (196, 196), (200, 100));
        assert_eq!(b, [PixelBox { x1: 0.0, y1: 0.0, x2: 100.0, y2: 100.0 }]);
        assert!(r.is_empty());
        let (b, r) = to_source(
            &[[50.0, 60.0, 10.0, 20.0], [-5.0, 0.0, 300.0, 50.0], [5.0, 5.0, 5.2, 50.0]],
            (100, 100),
            (100, 100),
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b[0], PixelBox { x1: 10.0, y1: 20.0, x2: 50.0, y2: 60.0 });
        assert_eq!(b[1], PixelBox { x1: 0.0, y1: 0.0, x2: 100.0, y2: 50.0 });
        assert_eq!(
            r,
            [Repair::SwappedCorners { index: 0 }, Repair::Clipped { index: 1 }, Repair::DroppedDegenerate { index: 2 }]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_never_panics(text in "\\PC*") {
            let c = split(&text);
            let (boxes, _) = parse_boxes(&c.answer);
            let _ = to_source(&boxes, (28, 56), (100, 7));
        }

        #[test]
        fn parsing_never_panics_on_tag_soup(parts in proptest::collection::vec(
            prop_oneof![
                Just("<think>".to_string()), Just("</think>".to_string()), Just("<answer>".to_string()),
                Just("</answer>".to_string()), Just("[".to_string()), Just("]".to_string()), Just(",".to_string()),
                "-?[0-9]{1,4}(\\.[0-9]{1,2})?", "[ \\na-zé]{0,5}",
            ], 0..40)) {
            let text = parts.concat();
            let c = split(&text);
            let (boxes, _) = parse_boxes(&c.answer);
            let (mapped, _) = to_source(&boxes, (1, 1), (1, 1));
            prop_assert!(mapped.iter().all(|b| b.width() >= 1.0 && b.x1 >= 0.0 && b.x2 <= 1.0));
        }

        #[test]
        fn well_formed_answers_round_trip(
            think in "[a-zA-Z ,.\\n]{0,80}",
            boxes in proptest::collection::vec((0u32..2000, 0u32..2000, 0u32..2000, 0u32..2000), 0..6),
        ) {
            let list: Vec<String> = boxes.iter().map(|(a, b, c, d)| format!("[{a},{b},{c},{d}]")).collect();
            let text = format!("<think>{think}</think>\n<answer>[{}]</answer>", list.join(","));
            let c = split(&text);
            prop_assert!(c.format_ok);
            let (parsed, repairs) = parse_boxes(&c.answer);
            prop_assert!(repairs.is_empty());
            let want: Vec<[f64; 4]> = boxes.iter().map(|&(a, b, c, d)| [a.into(), b.into(), c.into(), d.into()]).collect();
            prop_assert_eq!(parsed, want);
        }
    }
}
