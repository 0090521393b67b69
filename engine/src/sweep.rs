//! Whole-scene sweeps: the question asked tile by tile over a raster (or an
//! area of it), region → pixel → contour per tile with bounded parallel
//! requests, then merged across seams: boxes by non-maximum suppression
//! (IoU in raster pixels, the same as in map coordinates for a north-up or
//! rotated grid), polygons by uniting the parts that overlap or touch.
//!
//! Resumable: every finished tile is appended to a progress file beside the
//! output (`RESULT.gpkg.sweep.jsonl`); a rerun with the same settings skips them.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use geo::{Coord, LineString, MultiPolygon, Polygon};
use serde::{Deserialize, Serialize};

use crate::base::Window;
use crate::base::{Goal, PixelBox};
use crate::edit::WorkFeature;
use crate::error::{EngineError, Result};
use crate::eval::box_iou;
use crate::features::Provenance;
use crate::pipeline::{Backend, ConceptQuery, Origin, Question};
use crate::raster::{Raster, RenderParams};
use crate::reasoner::AskOptions;
use crate::segment::concept::{ConceptSegmenter, Exemplar};
use crate::segment::{Segmenter, WatershedSegmenter};

/// The sweep's settings (a rerun must use the same ones to resume).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepOptions {
    pub query: String,
    /// Region, pixel or contour (the tiles' boxes, masks or polygons).
    pub task: Goal,
    /// Tile side in pixels of the level read.
    pub tile: u64,
    /// Overlap between neighbouring tiles, in pixels of the level read.
    pub overlap: u64,
    /// Overview level: tiles are read at 1/2^level of full resolution.
    pub level: u32,
    /// Full-resolution window to sweep (default: the whole raster).
    pub aoi: Option<Window>,
    /// Pixel budget of the model's image.
    pub max_pixels: usize,
    /// A concept sweep: SAM 3 finds every instance of this in every tile (no
    /// reasoner); `task` is then contour and `query` the concept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<ConceptQuery>,
}

/// The tiles of a sweep, in full-resolution pixels, row by row.
pub fn tiles(width: u64, height: u64, opts: &SweepOptions) -> Result<Vec<Window>> {
    let scale = 1u64 << opts.level.min(20);
    let (side, overlap) = (opts.tile * scale, opts.overlap * scale);
    if opts.tile == 0 || overlap >= side {
        return Err(EngineError::InvalidRequest(format!(
            "the overlap ({}) must be smaller than the tile ({})",
            opts.overlap, opts.tile
        )));
    }
    let aoi = opts.aoi.unwrap_or(Window::full(width, height));
    if aoi.width == 0 || aoi.height == 0 || aoi.x + aoi.width > width || aoi.y + aoi.height > height {
        return Err(EngineError::InvalidRequest(format!("the area {aoi:?} is not inside the {width}×{height} raster")));
    }
    let stride = side - overlap;
    let starts = |from: u64, len: u64| {
        let mut v = vec![from];
        while v[v.len() - 1] + side < from + len {
            v.push(v[v.len() - 1] + stride);
        }
        v
    };
    let mut out = Vec::new();
    for y in starts(aoi.y, aoi.height) {
        for x in starts(aoi.x, aoi.width) {
            let w = (aoi.x + aoi.width).min(x + side) - x;
            let h = (aoi.y + aoi.height).min(y + side) - y;
            out.push(Window { x, y, width: w, height: h });
        }
    }
    Ok(out)
}

/// Polygon rings as plain coordinates (for the progress file).
type Rings = Vec<Vec<[f64; 2]>>;

fn to_rings(p: &Polygon<f64>) -> Rings {
    std::iter::once(p.exterior()).chain(p.interiors()).map(|r| r.0.iter().map(|c| [c.x, c.y]).collect()).collect()
}

fn from_rings(r: &Rings) -> Option<Polygon<f64>> {
    let ls = |v: &Vec<[f64; 2]>| LineString::new(v.iter().map(|&[x, y]| Coord { x, y }).collect());
    let (ext, holes) = r.split_first()?;
    Some(Polygon::new(ls(ext), holes.iter().map(ls).collect()))
}

/// One finished tile, as a line of the progress file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TileResult {
    pub index: usize,
    pub window: Window,
    /// Boxes in full-resolution raster pixels.
    pub boxes: Vec<[f64; 4]>,
    /// Polygons (raster pixels) of the tile's masks.
    pub polygons: Vec<Rings>,
    pub think: String,
    pub answer: String,
    /// A concept sweep's instances (their boxes are also in `boxes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<TileInstance>,
}

/// One SAM 3 instance of a tile: box (raster pixels), score, traced polygons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TileInstance {
    pub bbox: [f64; 4],
    pub score: f64,
    pub polygons: Vec<Rings>,
}

/// One instance of a concept sweep, merged across seams.
#[derive(Clone, Debug, PartialEq)]
pub struct SweptInstance {
    pub bbox: [f64; 4],
    pub score: f64,
    pub polygons: MultiPolygon<f64>,
}

/// The first line of a progress file: what the sweep was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    raster: PathBuf,
    options: SweepOptions,
    /// How the tiles were rendered for the model (band mapping, stretch).
    render: u64,
    tiles: usize,
}

/// The progress file beside an output.
pub fn progress_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".sweep.jsonl");
    out.with_file_name(name)
}

/// What a sweep produced, merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepResult {
    pub tiles: Vec<TileResult>,
    /// Boxes kept by non-maximum suppression (raster pixels).
    pub boxes: Vec<[f64; 4]>,
    /// Polygons united across seams (raster pixels).
    pub polygons: Vec<Polygon<f64>>,
    /// Tiles done by this run (the rest came from the progress file).
    pub processed: usize,
    /// The segmenter's name (empty for the region task).
    pub segmenter: String,
    /// A concept sweep's instances, each seen whole by one tile.
    pub instances: Vec<SweptInstance>,
}

impl SweepResult {
    /// The merged results as features: boxes for the region task, polygons
    /// otherwise, with the sweep's provenance.
    pub fn features(&self, opts: &SweepOptions, origin: &Origin) -> Vec<WorkFeature> {
        let provenance = self.provenance(opts, origin);
        if opts.concept.is_some() {
            return self
                .instances
                .iter()
                .map(|i| {
                    let mut f = WorkFeature::new(Some(i.bbox), i.polygons.clone(), provenance.clone());
                    f.score = Some(i.score);
                    f
                })
                .collect();
        }
        if opts.task == Goal::Region {
            let none = || MultiPolygon::new(vec![]);
            self.boxes.iter().map(|b| WorkFeature::new(Some(*b), none(), provenance.clone())).collect()
        } else {
            let one = |p: &Polygon<f64>| MultiPolygon::new(vec![p.clone()]);
            self.polygons.iter().map(|p| WorkFeature::new(None, one(p), provenance.clone())).collect()
        }
    }

    /// The provenance every feature of the sweep shares.
    pub fn provenance(&self, opts: &SweepOptions, origin: &Origin) -> Arc<Provenance> {
        let concept = opts.concept.as_ref();
        Arc::new(Provenance {
            task: if concept.is_some() { "sweep:concept".into() } else { format!("sweep:{}", opts.task) },
            query: opts.query.clone(),
            model: origin.model.clone(),
            weights_hash: origin.weights_hash.clone(),
            segmenter: self.segmenter.clone(),
            concept: concept.map(|c| c.text.clone()).unwrap_or_default(),
            exemplars: concept.map(|c| crate::pipeline::exemplars_text(&c.exemplars)).unwrap_or_default(),
            segmenter_hash: if concept.is_some() { origin.weights_hash.clone() } else { String::new() },
            source: origin.source.clone(),
            window: opts.aoi,
            created_at: Provenance::now(),
            ..Default::default()
        })
    }
}

/// Progress of a sweep: tiles done, tiles in all, seconds left (estimated).
pub type Progress<'a> = dyn FnMut(usize, usize, f64) + Send + 'a;

/// Boxes of all tiles, duplicates across seams removed. A box touching an
/// inner tile edge (not the swept area's; within `edge` pixels) is the cut-off
/// view of its object, so whole boxes win, the larger first; a cut box mostly
/// inside a kept one goes even when their IoU is small.
pub fn merge_boxes(tiles: &[TileResult], area: Window, edge: f64, iou_threshold: f64) -> Vec<[f64; 4]> {
    let all: Vec<(Window, [f64; 4])> = tiles.iter().flat_map(|t| t.boxes.iter().map(|b| (t.window, *b))).collect();
    keep_across_seams(&all, area, edge, iou_threshold).into_iter().map(|i| all[i].1).collect()
}

/// [`merge_boxes`] on boxes each seen by a tile: the indices of those kept.
fn keep_across_seams(boxes: &[(Window, [f64; 4])], area: Window, edge: f64, iou_threshold: f64) -> Vec<usize> {
    let (ax1, ay1) = (area.x as f64, area.y as f64);
    let (ax2, ay2) = (ax1 + area.width as f64, ay1 + area.height as f64);
    let mut all: Vec<([f64; 4], bool, f64, usize)> = boxes
        .iter()
        .enumerate()
        .map(|(i, (w, b))| {
            let (x1, y1) = (w.x as f64, w.y as f64);
            let (x2, y2) = (x1 + w.width as f64, y1 + w.height as f64);
            let near = |v: f64, edge_at: f64, outer: f64| (v - edge_at).abs() <= edge && (edge_at - outer).abs() > 0.5;
            let cut = near(b[0], x1, ax1) || near(b[1], y1, ay1) || near(b[2], x2, ax2) || near(b[3], y2, ay2);
            (*b, cut, (b[2] - b[0]) * (b[3] - b[1]), i)
        })
        .collect();
    all.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)));
    let inside_share = |b: [f64; 4], k: [f64; 4]| {
        let iw = (b[2].min(k[2]) - b[0].max(k[0])).max(0.0);
        let ih = (b[3].min(k[3]) - b[1].max(k[1])).max(0.0);
        let area = (b[2] - b[0]) * (b[3] - b[1]);
        if area > 0.0 { iw * ih / area } else { 1.0 }
    };
    let mut kept: Vec<([f64; 4], usize)> = Vec::new();
    for (b, cut, _, i) in all {
        let duplicate = kept.iter().any(|&(k, _)| box_iou(k, b) > iou_threshold || (cut && inside_share(b, k) > 0.5));
        if !duplicate {
            kept.push((b, i));
        }
    }
    kept.into_iter().map(|(_, i)| i).collect()
}

/// A concept sweep's instances across seams: boxes merged as [`merge_boxes`]
/// does, each kept instance with its own tile's polygons and score.
pub fn merge_instances(tiles: &[TileResult], area: Window, edge: f64, iou_threshold: f64) -> Vec<SweptInstance> {
    let all: Vec<(Window, &TileInstance)> =
        tiles.iter().flat_map(|t| t.instances.iter().map(move |i| (t.window, i))).collect();
    let boxes: Vec<(Window, [f64; 4])> = all.iter().map(|(w, i)| (*w, i.bbox)).collect();
    keep_across_seams(&boxes, area, edge, iou_threshold)
        .into_iter()
        .map(|k| {
            let i = all[k].1;
            let polygons = MultiPolygon::new(i.polygons.iter().filter_map(from_rings).collect());
            SweptInstance { bbox: i.bbox, score: i.score, polygons }
        })
        .collect()
}

/// Polygons of all tiles, the parts that overlap or touch united.
pub fn merge_polygons(tiles: &[TileResult]) -> Vec<Polygon<f64>> {
    let polys: Vec<Polygon<f64>> = tiles.iter().flat_map(|t| t.polygons.iter().filter_map(from_rings)).collect();
    if polys.is_empty() {
        return Vec::new();
    }
    geo::unary_union(&polys).0
}

/// Sweeps `raster` with one worker per backend (at most `backends.len()`
/// requests at a time); `segmenter` makes each worker's segmenter.
#[allow(clippy::too_many_arguments)] // one call site per front end; a struct would only rename them
pub fn sweep(
    raster_path: &Path,
    params: &RenderParams,
    opts: &SweepOptions,
    backends: &mut [Backend],
    segmenter: &(dyn Fn() -> Result<Box<dyn Segmenter>> + Sync),
    out: &Path,
    cancel: &std::sync::atomic::AtomicBool,
    progress: &mut Progress<'_>,
) -> Result<SweepResult> {
    opts.task.expect_one_of(&[Goal::Region, Goal::Pixel, Goal::Contour], "a sweep")?;
    if opts.concept.is_some() {
        return Err(EngineError::InvalidRequest("a concept sweep runs through sweep_concept".into()));
    }
    let segmenter_name = Mutex::new(String::new());
    // Each worker: its backend, and its segmenter once made (in the worker's thread).
    let workers: Vec<(&mut Backend, Option<Box<dyn Segmenter>>)> = backends.iter_mut().map(|b| (b, None)).collect();
    let tile = |(backend, seg): &mut (&mut Backend, Option<Box<dyn Segmenter>>), raster: &Raster, index, window| {
        if seg.is_none() {
            // The region task needs no SAM: the free fallback stands in, never asked.
            let made: Box<dyn Segmenter> =
                if opts.task.segments() { segmenter()? } else { Box::new(WatershedSegmenter::default()) };
            if opts.task.segments()
                && let Ok(mut n) = segmenter_name.lock()
            {
                *n = made.method().to_string();
            }
            *seg = Some(made);
        }
        let seg = seg.as_mut().ok_or_else(|| EngineError::Internal("no segmenter".into()))?;
        run_tile(raster, params, opts, backend, seg.as_mut(), index, window)
    };
    let (tiles, processed, area) = run_tiles(raster_path, params, opts, workers, &tile, out, cancel, progress)?;
    let edge = f64::from(1u32 << opts.level.min(20));
    let boxes = merge_boxes(&tiles, area, edge, 0.5);
    let polygons = merge_polygons(&tiles);
    let segmenter = segmenter_name.into_inner().unwrap_or_default();
    Ok(SweepResult { tiles, boxes, polygons, processed, segmenter, instances: Vec::new() })
}

/// A concept sweep: SAM 3 finds every instance of `opts.concept` in every
/// tile (exemplars are used by the tiles they lie in), instances merged across
/// seams by their boxes, each kept with its own tile's polygons and score.
pub fn sweep_concept(
    raster_path: &Path,
    params: &RenderParams,
    opts: &SweepOptions,
    seg: &mut ConceptSegmenter,
    out: &Path,
    cancel: &std::sync::atomic::AtomicBool,
    progress: &mut Progress<'_>,
) -> Result<SweepResult> {
    let Some(concept) = &opts.concept else {
        return Err(EngineError::InvalidRequest("a concept sweep needs a concept".into()));
    };
    if concept.text.trim().is_empty() {
        return Err(EngineError::InvalidRequest("a concept sweep needs a noun phrase (--text)".into()));
    }
    let method = seg.method().to_string();
    let tile = |seg: &mut &mut ConceptSegmenter, raster: &Raster, index, window| {
        concept_tile(raster, params, opts, concept, seg, index, window)
    };
    let (tiles, processed, area) = run_tiles(raster_path, params, opts, vec![seg], &tile, out, cancel, progress)?;
    let edge = f64::from(1u32 << opts.level.min(20));
    let instances = merge_instances(&tiles, area, edge, concept.options.nms_iou.min(0.5));
    let boxes = instances.iter().map(|i| i.bbox).collect();
    let polygons = instances.iter().flat_map(|i| i.polygons.0.iter().cloned()).collect();
    Ok(SweepResult { tiles, boxes, polygons, processed, segmenter: method, instances })
}

/// One tile of a concept sweep.
fn concept_tile(
    raster: &Raster,
    params: &RenderParams,
    opts: &SweepOptions,
    concept: &ConceptQuery,
    seg: &mut ConceptSegmenter,
    index: usize,
    window: Window,
) -> Result<TileResult> {
    let image = read_tile(raster, params, opts, window)?;
    let (x1, y1) = (window.x as f64, window.y as f64);
    let (x2, y2) = (x1 + window.width as f64, y1 + window.height as f64);
    let exemplars: Vec<Exemplar> = concept
        .exemplars
        .iter()
        .filter(|e| e.bbox.x2 > x1 && e.bbox.x1 < x2 && e.bbox.y2 > y1 && e.bbox.y1 < y2)
        .map(|e| Exemplar {
            bbox: PixelBox {
                x1: e.bbox.x1.max(x1),
                y1: e.bbox.y1.max(y1),
                x2: e.bbox.x2.min(x2),
                y2: e.bbox.y2.min(y2),
            },
            positive: e.positive,
        })
        .collect();
    let query = ConceptQuery { exemplars, ..concept.clone() };
    let o = crate::pipeline::find(seg, &image, None, &query, &Origin::default())?;
    let segments = o.segments.ok_or_else(|| EngineError::Internal("SAM 3 returned no segments".into()))?;
    let instances: Vec<TileInstance> = segments
        .per_box
        .iter()
        .zip(&segments.polygons)
        .map(|((b, s), mp)| TileInstance {
            bbox: b.to_array(),
            score: f64::from(s.iou.unwrap_or_default()),
            polygons: mp.0.iter().map(to_rings).collect(),
        })
        .collect();
    Ok(TileResult {
        index,
        window,
        boxes: instances.iter().map(|i| i.bbox).collect(),
        polygons: instances.iter().flat_map(|i| i.polygons.clone()).collect(),
        think: String::new(),
        answer: String::new(),
        instances,
    })
}

/// A tile read at the sweep's level (GDAL uses overviews): tile² pixels at most.
fn read_tile(
    raster: &Raster,
    params: &RenderParams,
    opts: &SweepOptions,
    window: Window,
) -> Result<crate::pipeline::WindowImage> {
    let scale = 1u64 << opts.level.min(20);
    let budget = ((window.width / scale).max(1) * (window.height / scale).max(1)) as usize;
    crate::pipeline::read_window(raster, window, params, budget.max(3136) / 4 + 1)
}

/// The machinery every sweep shares: the tiles, the progress file (resumed
/// when it holds the same sweep), one thread per worker taking tiles from a
/// queue, each finished tile appended as one line. Returns the tiles (sorted),
/// how many this run did, and the swept area.
#[allow(clippy::too_many_arguments)] // the sweep's parts, passed through from its two front doors
fn run_tiles<W: Send>(
    raster_path: &Path,
    params: &RenderParams,
    opts: &SweepOptions,
    workers: Vec<W>,
    tile: &(dyn Fn(&mut W, &Raster, usize, Window) -> Result<TileResult> + Sync),
    out: &Path,
    cancel: &std::sync::atomic::AtomicBool,
    progress: &mut Progress<'_>,
) -> Result<(Vec<TileResult>, usize, Window)> {
    let raster = Raster::open(raster_path)?;
    let (w, h) = (raster.info().width, raster.info().height);
    drop(raster);
    let windows = tiles(w, h, opts)?;
    let header = Header {
        raster: std::path::absolute(raster_path).unwrap_or_else(|_| raster_path.to_owned()),
        options: opts.clone(),
        render: params.cache_hash(),
        tiles: windows.len(),
    };
    let path = progress_path(out);
    let done = resume(&path, &header, windows.len())?;
    let err = |reason: String| EngineError::Write { path: path.clone(), reason };
    let finished: HashSet<usize> = done.iter().map(|t| t.index).collect();
    let todo: Vec<usize> = (0..windows.len()).filter(|i| !finished.contains(i)).collect();
    let total = windows.len();
    let writer = Mutex::new(std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| err(e.to_string()))?);
    let queue = Mutex::new(todo.into_iter());
    let results = Mutex::new(done);
    let started = Instant::now();
    let processed = std::sync::atomic::AtomicUsize::new(0);
    let failure: Mutex<Option<EngineError>> = Mutex::new(None);
    let progress = Mutex::new(progress);
    std::thread::scope(|scope| {
        for mut worker in workers {
            let (queue, results, writer, failure, progress, processed, windows) =
                (&queue, &results, &writer, &failure, &progress, &processed, &windows);
            scope.spawn(move || {
                let mut work = || -> Result<()> {
                    let raster = Raster::open(raster_path)?;
                    loop {
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                            return Ok(());
                        }
                        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                            return Err(EngineError::Cancelled);
                        }
                        let Some(index) = queue.lock().ok().and_then(|mut q| q.next()) else { return Ok(()) };
                        let t = tile(&mut worker, &raster, index, windows[index])?;
                        let mut line = serde_json::to_string(&t).map_err(|e| EngineError::Internal(e.to_string()))?;
                        line.push('\n');
                        if let Ok(mut w) = writer.lock() {
                            // One write per line: an interruption cuts at most the last line.
                            w.write_all(line.as_bytes())
                                .and_then(|()| w.flush())
                                .map_err(|e| EngineError::Internal(e.to_string()))?;
                        }
                        let n = processed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        let all_done = results.lock().map(|mut r| {
                            r.push(t);
                            r.len()
                        });
                        let left = total.saturating_sub(all_done.unwrap_or(total));
                        let eta = started.elapsed().as_secs_f64() / n as f64 * left as f64;
                        if let Ok(mut p) = progress.lock() {
                            (*p)(total - left, total, eta);
                        }
                    }
                };
                if let Err(e) = work()
                    && let Ok(mut f) = failure.lock()
                {
                    f.get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut tiles_done = results.into_inner().map_err(|_poisoned| EngineError::Internal("poisoned".into()))?;
    tiles_done.sort_by_key(|t| t.index);
    Ok((tiles_done, processed.into_inner(), opts.aoi.unwrap_or(Window::full(w, h))))
}

/// The tiles a progress file already holds (a new file is started with the
/// header when there is none); a file of another sweep is an error.
fn resume(path: &Path, header: &Header, tiles: usize) -> Result<Vec<TileResult>> {
    let err = |reason: String| EngineError::Write { path: path.to_owned(), reason };
    if !path.exists() {
        let first = serde_json::to_string(header).map_err(|e| err(e.to_string()))?;
        std::fs::write(path, format!("{first}\n")).map_err(|e| err(e.to_string()))?;
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    // An interrupted run may have left half a line: cut it off, it is redone.
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| err(e.to_string()))?;
        f.set_len(whole as u64).map_err(|e| err(e.to_string()))?;
    }
    let text = String::from_utf8_lossy(&bytes[..whole]);
    let mut lines = text.lines();
    let old: Header = serde_json::from_str(lines.next().unwrap_or_default())
        .map_err(|e| err(format!("not a sweep progress file: {e}")))?;
    if old != *header {
        return Err(err("holds a sweep with other settings; remove it or choose another output".into()));
    }
    let mut seen = HashSet::new();
    Ok(lines
        .filter_map(|l| serde_json::from_str::<TileResult>(l).ok())
        .filter(|t| t.index < tiles && seen.insert(t.index))
        .collect())
}

/// One tile through the question pipeline, read at the sweep's level.
fn run_tile(
    raster: &Raster,
    params: &RenderParams,
    opts: &SweepOptions,
    backend: &mut Backend,
    segmenter: &mut dyn Segmenter,
    index: usize,
    window: Window,
) -> Result<TileResult> {
    let image = read_tile(raster, params, opts, window)?;
    let question = Question {
        goal: opts.task,
        query: opts.query.clone(),
        options: AskOptions { max_pixels: Some(opts.max_pixels), ..Default::default() },
    };
    let continue_ = |_| std::ops::ControlFlow::Continue(());
    let o = crate::pipeline::run(backend, segmenter, &image, None, &question, &Origin::default(), continue_)?;
    let boxes = o.boxes.iter().map(PixelBox::to_array).collect();
    let polygons = o.segments.iter().flat_map(|s| &s.polygons).flat_map(|mp| mp.0.iter().map(to_rings)).collect();
    Ok(TileResult { index, window, boxes, polygons, think: o.answer.think, answer: o.answer.answer, instances: vec![] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(tile: u64, overlap: u64, level: u32) -> SweepOptions {
        SweepOptions {
            query: "q".into(),
            task: Goal::Region,
            tile,
            overlap,
            level,
            aoi: None,
            max_pixels: 802_816,
            concept: None,
        }
    }

    #[test]
    fn tiles_cover_the_area_with_overlap() {
        let t = tiles(2500, 1000, &opts(1024, 128, 0)).unwrap();
        // x starts 0, 896, 1792 (1792 + 1024 ≥ 2500); y starts 0 (1024 ≥ 1000).
        assert_eq!(t.len(), 3);
        assert_eq!((t[1].x, t[1].width), (896, 1024));
        assert_eq!((t[2].x, t[2].width, t[2].height), (1792, 708, 1000));
        // Level 2: tiles of 1024 px read at 1/4 cover 4096 source px.
        let t = tiles(8192, 8192, &opts(1024, 128, 2)).unwrap();
        assert_eq!(t.len(), 9);
        assert_eq!(t[1].x, 4096 - 512);
        assert!(tiles(100, 100, &opts(64, 64, 0)).is_err());
        let mut o = opts(64, 8, 0);
        o.aoi = Some(Window { x: 90, y: 0, width: 20, height: 10 });
        assert!(tiles(100, 100, &o).is_err(), "area outside the raster");
    }

    fn tile(index: usize, window: Window, boxes: Vec<[f64; 4]>, polys: &[Polygon<f64>]) -> TileResult {
        TileResult {
            index,
            window,
            boxes,
            polygons: polys.iter().map(to_rings).collect(),
            think: String::new(),
            answer: String::new(),
            instances: vec![],
        }
    }

    fn rect(x1: f64, y1: f64, x2: f64, y2: f64) -> Polygon<f64> {
        Polygon::new(vec![(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)].into(), vec![])
    }

    #[test]
    fn seams_merge_duplicates_and_split_objects() {
        // Two tiles overlapping on x ∈ [90, 100]; an object at x 80–110 seen by both,
        // cut by the first tile's edge (80–100) and whole in the second (80–110).
        let a = Window { x: 0, y: 0, width: 100, height: 100 };
        let b = Window { x: 90, y: 0, width: 100, height: 100 };
        let t = [
            tile(0, a, vec![[80.0, 40.0, 100.0, 60.0], [10.0, 10.0, 20.0, 20.0]], &[rect(80.0, 40.0, 100.0, 60.0)]),
            tile(1, b, vec![[80.0, 40.0, 110.0, 60.0]], &[rect(90.0, 40.0, 110.0, 60.0)]),
        ];
        let boxes = merge_boxes(&t, Window { x: 0, y: 0, width: 190, height: 100 }, 1.0, 0.5);
        assert_eq!(boxes.len(), 2);
        assert!(
            boxes.contains(&[80.0, 40.0, 110.0, 60.0]),
            "the whole view wins over the one cut by the tile edge: {boxes:?}"
        );
        // A long object (x 80–200) cut at the first tile's edge (100): IoU 20/120, still one box.
        let long = [
            tile(0, a, vec![[80.0, 40.0, 100.0, 60.0]], &[]),
            tile(1, Window { x: 90, y: 0, width: 200, height: 100 }, vec![[80.0, 40.0, 200.0, 60.0]], &[]),
        ];
        assert_eq!(
            merge_boxes(&long, Window { x: 0, y: 0, width: 290, height: 100 }, 1.0, 0.5),
            vec![[80.0, 40.0, 200.0, 60.0]]
        );
        let polys = merge_polygons(&t);
        assert_eq!(polys.len(), 1, "the two parts of the object are one polygon");
        use geo::Area;
        assert_eq!(polys[0].unsigned_area(), 30.0 * 20.0);
    }

    #[test]
    fn instances_merge_across_seams_keeping_the_whole_view() {
        let a = Window { x: 0, y: 0, width: 100, height: 100 };
        let b = Window { x: 90, y: 0, width: 100, height: 100 };
        let inst = |bbox: [f64; 4], score: f64| TileInstance {
            bbox,
            score,
            polygons: vec![to_rings(&rect(bbox[0], bbox[1], bbox[2], bbox[3]))],
        };
        let mut t0 = tile(0, a, vec![], &[]);
        t0.instances = vec![inst([80.0, 40.0, 100.0, 60.0], 0.9), inst([10.0, 10.0, 20.0, 20.0], 0.6)];
        let mut t1 = tile(1, b, vec![], &[]);
        t1.instances = vec![inst([80.0, 40.0, 110.0, 60.0], 0.7)];
        let merged = merge_instances(&[t0, t1], Window { x: 0, y: 0, width: 190, height: 100 }, 1.0, 0.5);
        assert_eq!(merged.len(), 2);
        let whole = merged.iter().find(|i| i.bbox == [80.0, 40.0, 110.0, 60.0]).expect("the uncut view is kept");
        assert_eq!(whole.score, 0.7, "with its own score");
        use geo::Area;
        assert_eq!(whole.polygons.unsigned_area(), 30.0 * 20.0, "and its own polygon");
    }
}
