//! Concept segmentation with SAM 3: a short noun phrase ("ship", "storage
//! tank") and optional exemplar boxes (positive: "like this", negative: "not
//! like this") → every instance in the image, each with a mask and a score.
//! Where the reasoner lists the objects it names, this finds all of a kind;
//! `pipeline` combines the two (the reasoner's boxes as exemplars, its concept
//! as the text).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{ImageKey, Mask, Method};
use crate::base::{PixelBox, RgbImage};
use crate::error::{EngineError, Result};
use crate::models::sam3::processor::{self, ConceptTokenizer};
use crate::models::sam3::{Checkpoint, Exemplars, Sam3Image, VisionOutput, select};

/// An exemplar box in image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    pub bbox: PixelBox,
    /// false: an instance of what is *not* wanted.
    pub positive: bool,
}

/// What to find: the concept's words and, optionally, examples of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConceptPrompt {
    /// A noun phrase; empty with exemplars: find what looks like them (the
    /// model then reads the word "visual", as transformers' processor does).
    pub text: String,
    pub exemplars: Vec<Exemplar>,
}

impl ConceptPrompt {
    /// The text the model reads.
    pub fn model_text(&self) -> &str {
        if self.text.trim().is_empty() { "visual" } else { self.text.trim() }
    }
}

/// How instances are kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindOptions {
    /// Minimum score σ(logit)·σ(presence) (Meta's predictor keeps ≥ 0.5).
    pub threshold: f32,
    /// Boxes overlapping a better one by more than this IoU are duplicates (1: keep all).
    pub nms_iou: f64,
}

impl Default for FindOptions {
    fn default() -> Self {
        Self { threshold: 0.5, nms_iou: 0.6 }
    }
}

/// One instance of the concept, on the image's pixel grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub bbox: PixelBox,
    pub score: f32,
    pub mask: Mask,
}

/// A SAM 3 image model ready to find concepts, keeping the last image's encoding.
pub struct ConceptSegmenter {
    model: Sam3Image,
    tokenizer: ConceptTokenizer,
    device: Device,
    dir: PathBuf,
    name: String,
    size: usize,
    /// The last image encoded: its key (or content hash) and encoding.
    encoded: Option<(u64, VisionOutput)>,
}

impl std::fmt::Debug for ConceptSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConceptSegmenter").field("dir", &self.dir).field("name", &self.name).finish_non_exhaustive()
    }
}

impl ConceptSegmenter {
    /// Loads a SAM 3 checkpoint directory: `tokenizer.json` beside transformers'
    /// (`config.json` + safetensors) or Meta's (`sam3.pt`) weights.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let checkpoint = Checkpoint::open(dir)?;
        let tokenizer = ConceptTokenizer::load(dir, checkpoint.config.text_config.max_position_embeddings)?;
        let vit = &checkpoint.config.vision_config.backbone_config;
        let name = if (vit.hidden_size, vit.num_hidden_layers) == (1024, 32) {
            "sam3".to_owned()
        } else {
            format!("sam3 (ViT {}×{})", vit.hidden_size, vit.num_hidden_layers)
        };
        Ok(Self {
            model: Sam3Image::load(&checkpoint, device)?,
            tokenizer,
            device: device.clone(),
            dir: dir.to_owned(),
            name,
            size: vit.image_size,
            encoded: None,
        })
    }

    pub fn method(&self) -> Method {
        Method::Sam3(self.name.clone())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's image side (1008 for the released model).
    pub fn image_size(&self) -> usize {
        self.size
    }

    /// Encodes `image` unless it is the one encoded last (same key, or same
    /// pixels without a key); returns whether it was encoded.
    pub fn set_image(&mut self, key: Option<ImageKey>, image: &RgbImage) -> Result<bool> {
        let mut h = std::hash::DefaultHasher::new();
        match key {
            Some(k) => (k, image.width, image.height).hash(&mut h),
            None => (image.width, image.height, &image.data).hash(&mut h),
        }
        let id = h.finish();
        if self.encoded.as_ref().is_some_and(|(e, _)| *e == id) {
            return Ok(false);
        }
        self.encoded = None;
        let pixels = processor::pixel_values(image, self.size);
        let pixels = Tensor::from_vec(pixels, (1, 3, self.size, self.size), &self.device)?;
        self.encoded = Some((id, self.model.vision.forward(&pixels)?));
        Ok(true)
    }

    /// Every instance of `prompt` on `image` (pixels of the image), best first.
    pub fn find(
        &mut self,
        key: Option<ImageKey>,
        image: &RgbImage,
        prompt: &ConceptPrompt,
        opts: &FindOptions,
    ) -> Result<(Vec<Found>, bool)> {
        let encoded = self.set_image(key, image)?;
        let found = self.find_encoded(image, prompt, opts)?;
        Ok((found, encoded))
    }

    fn find_encoded(&self, image: &RgbImage, prompt: &ConceptPrompt, opts: &FindOptions) -> Result<Vec<Found>> {
        let Some((_, vision)) = &self.encoded else {
            return Err(EngineError::InvalidRequest("no image set for concept segmentation".into()));
        };
        let size = (image.width, image.height);
        let (ids, mask) = self.tokenizer.encode(prompt.model_text())?;
        let t = ids.len();
        let ids = Tensor::from_vec(ids, (1, t), &self.device)?;
        let valid = Tensor::from_vec(mask, (1, t), &self.device)?;
        let exemplar_tensors = if prompt.exemplars.is_empty() {
            None
        } else {
            let n = prompt.exemplars.len();
            let boxes: Vec<f32> =
                prompt.exemplars.iter().flat_map(|e| processor::exemplar_box(&e.bbox, size)).collect();
            let labels: Vec<i64> = prompt.exemplars.iter().map(|e| i64::from(e.positive)).collect();
            Some((
                Tensor::from_vec(boxes, (1, n, 4), &self.device)?,
                Tensor::from_vec(labels, (1, n), &self.device)?,
                Tensor::ones((1, n), DType::F32, &self.device)?,
            ))
        };
        let exemplars = exemplar_tensors.as_ref().map(|(boxes, labels, valid)| Exemplars { boxes, labels, valid });
        let pred = self.model.predict_encoded(vision, &ids, &valid, exemplars.as_ref())?;
        let kept = select(&pred, 0, opts.threshold, opts.nms_iou)?;
        // On the CPU once, not from each worker thread.
        let masks = pred.masks.get(0)?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let (_, mh, mw) = masks.dims3()?;
        // Each mask is resampled to the image's size on its own: in parallel.
        kept.par_iter()
            .map(|inst| {
                let logits: Vec<f32> = masks.get(inst.query)?.flatten_all()?.to_vec1()?;
                Ok(Found {
                    bbox: processor::box_on_image(inst.bbox, size),
                    score: inst.score,
                    mask: processor::mask_on_image(&logits, (mh, mw), size, self.model.flavour),
                })
            })
            .collect()
    }
}

/// The concept lexicon (`assets/concepts.txt`), compiled in.
const LEXICON: &str = include_str!("../../../assets/concepts.txt");

/// `(concept, word)` pairs of the lexicon, longest word first.
fn lexicon() -> Vec<(&'static str, &'static str)> {
    let mut pairs: Vec<(&str, &str)> = LEXICON
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(concept, words)| {
            words.split(',').map(str::trim).filter(|w| !w.is_empty()).map(move |w| (concept.trim(), w))
        })
        .collect();
    pairs.sort_by_key(|(_, w)| std::cmp::Reverse(w.len()));
    pairs
}

/// Positions (byte offsets) where `word` or its plural stands as whole words in `text`.
fn occurrences(text: &str, word: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for form in [word.to_owned(), format!("{word}s"), format!("{word}es")] {
        let mut from = 0;
        while let Some(i) = text[from..].find(&form) {
            let at = from + i;
            let end = at + form.len();
            let before = text[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
            let after = text[end..].chars().next().is_none_or(|c| !c.is_alphanumeric());
            if before && after {
                out.push(at);
            }
            from = end;
        }
    }
    out
}

/// Lexicon matches in `text` (position, concept), longest words first, words
/// inside a longer matched phrase not counted again ("tank" in "storage tanks").
fn matches(text: &str, pairs: &[(&'static str, &'static str)]) -> Vec<(usize, &'static str)> {
    let text = text.to_lowercase();
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let mut found = Vec::new();
    for &(concept, word) in pairs {
        for at in occurrences(&text, word) {
            let span = (at, at + word.len());
            if taken.iter().all(|&(a, b)| span.1 <= a || span.0 >= b) {
                taken.push(span);
                found.push((at, concept));
            }
        }
    }
    found
}

/// The concept a question is about, for SAM 3, from the lexicon's phrases:
/// explicit questions name it ("which vessels…"), implicit ones leave it to
/// the reasoning ("where can planes take off?" → the runway the reasoning
/// concludes on). Each concept scores 2 if the question names it, 1 per
/// mention in the reasoning, 2 more if the reasoning's last sentence names it
/// and the question does not (a conclusion, not an echo of the question), and 3
/// if the answer's words do; ties go to the one named first. None when nothing
/// in the lexicon is named.
///
/// ```
/// use engine::segment::concept::concept_from;
/// let think = "The bottom-left basin of the harbor has ships moored at the pier. These vessels are it.";
/// assert_eq!(concept_from("Which vessels are moored in the bottom-left basin?", think, "").as_deref(), Some("ship"));
/// let think = "Planes need a runway to take off. The airport has a long runway in the centre. \
///              So the runway is where planes take off.";
/// assert_eq!(concept_from("where can planes take off?", think, "").as_deref(), Some("runway"));
/// let c = concept_from("what is there?", "Several storage tanks; one is empty.", "");
/// assert_eq!(c.as_deref(), Some("storage tank"));
/// assert_eq!(concept_from("how bright is it?", "It is bright.", ""), None);
/// ```
pub fn concept_from(query: &str, think: &str, answer: &str) -> Option<String> {
    let pairs = lexicon();
    let think = think.trim();
    let last_sentence = think
        .trim_end_matches(['.', '!', '?', ' ', '\n'])
        .rfind(['.', '!', '?', '\n'])
        .map_or(think, |i| &think[i + 1..]);
    // The answer's words, not its box list.
    let answer_words: String = answer.chars().filter(|c| !c.is_ascii_digit()).collect();
    let mut scores: Vec<(&str, usize, usize)> = Vec::new(); // concept, score, first seen
    let mut add = |found: Vec<(usize, &'static str)>, each: usize, once: usize, offset: usize| {
        let mut seen: Vec<&str> = Vec::new();
        for (at, concept) in found {
            let first = !seen.contains(&concept);
            seen.push(concept);
            let gain = each + if first { once } else { 0 };
            match scores.iter_mut().find(|(c, _, _)| *c == concept) {
                Some(e) => e.1 += gain,
                None => scores.push((concept, gain, offset + at)),
            }
        }
    };
    let asked = matches(query, &pairs);
    let in_query: Vec<&str> = asked.iter().map(|(_, c)| *c).collect();
    add(asked, 0, 2, 0);
    add(matches(think, &pairs), 1, 0, 1 << 20);
    let concluded = matches(last_sentence, &pairs).into_iter().filter(|(_, c)| !in_query.contains(c)).collect();
    add(concluded, 0, 2, 1 << 21);
    add(matches(&answer_words, &pairs), 0, 3, 1 << 22);
    scores.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    scores.first().map(|(c, _, _)| (*c).to_owned())
}
