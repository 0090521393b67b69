//! Writing features through GDAL/OGR: GeoPackage, ESRI Shapefile, GeoJSON and
//! FlatGeobuf, georeferenced, with provenance attributes.
//!
//! - **Layers**: `polygons` (MultiPolygon) first, then `boxes` (Polygon). A
//!   GeoPackage holds both; the single-layer formats write the polygons to the
//!   named file and the boxes beside it as `<stem>_boxes.<ext>`.
//! - **CRS**: the raster's, or EPSG:4326 (longitude, latitude) on request;
//!   GeoJSON in EPSG:4326 is written as RFC 7946 (11 decimals, ~1 µm, so that
//!   coordinates projected back land on pixel corners). Rings are counter-clockwise
//!   (exteriors) / clockwise (holes); the Shapefile driver reverses them as its
//!   format requires.
//! - **Attributes** (name in GPKG/GeoJSON/FlatGeobuf → name in Shapefile, which
//!   allows 10 characters): `id`, `task`, `query`, `answer`, `model`,
//!   `weights_hash` → `weights`, `segmenter` → `segmenter`, `score`,
//!   `object_score` → `obj_score`, `reasoning`, `source`, `window` (`x,y,w,h`),
//!   `created_at` → `created`, `edited`, `simplify_method` → `simp_meth`,
//!   `simplify_tol` → `simp_tol` (pixels), and for SAM 3's instances `concept`,
//!   `exemplars` (`+x1,y1,x2,y2;-…` raster pixels) and `segmenter_hash` → `seg_hash`. Shapefile strings hold at most 254
//!   bytes (UTF-8, `.cpg` written): longer values are cut at a character
//!   boundary and the cut fields are listed in an extra `truncated` field.
//! - **Atomic**: everything is written into a temporary directory beside the
//!   target and renamed into place only after GDAL closed the files without
//!   error, so a failed or cancelled export leaves the previous files as they were.

use std::path::{Path, PathBuf};

use gdal::DriverManager;
use gdal::spatial_ref::{AxisMappingStrategy, CoordTransform, SpatialRef};
use gdal::vector::{FieldDefn, LayerAccess, LayerOptions, OGRFieldType, ToGdal};
use gdal_sys::OGRwkbGeometryType;

use crate::error::{EngineError, Result};
use crate::features::{Feature, FeatureSet};
use crate::geo::GeoTransform;
use crate::raster::gdal_reason;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    GeoPackage,
    Shapefile,
    GeoJson,
    FlatGeobuf,
}

impl Format {
    /// The format a file name implies (`.gpkg`, `.shp`, `.geojson`/`.json`, `.fgb`).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
        Some(match ext.as_str() {
            "gpkg" => Self::GeoPackage,
            "shp" => Self::Shapefile,
            "geojson" | "json" => Self::GeoJson,
            "fgb" => Self::FlatGeobuf,
            _ => return None,
        })
    }

    fn driver(self) -> &'static str {
        match self {
            Self::GeoPackage => "GPKG",
            Self::Shapefile => "ESRI Shapefile",
            Self::GeoJson => "GeoJSON",
            Self::FlatGeobuf => "FlatGeobuf",
        }
    }

    fn multi_layer(self) -> bool {
        self == Self::GeoPackage
    }
}

/// Which CRS coordinates are written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputCrs {
    #[default]
    Raster,
    /// EPSG:4326, longitude/latitude order.
    Wgs84,
}

/// What to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// `None`: from the file name.
    pub format: Option<Format>,
    pub crs: OutputCrs,
    pub polygons: bool,
    pub boxes: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { format: None, crs: OutputCrs::Raster, polygons: true, boxes: true }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportReport {
    pub files: Vec<PathBuf>,
    /// (layer, features written).
    pub layers: Vec<(String, usize)>,
    /// Features not written, with the reason.
    pub skipped: Vec<String>,
    /// Things the analyst should know (e.g. Shapefile cuts).
    pub notes: Vec<String>,
}

/// Shapefile's DBF limit for a string field, in bytes.
const SHP_STRING_BYTES: usize = 254;

struct FieldSpec {
    name: &'static str,
    shp: &'static str,
    ty: OGRFieldType::Type,
}

const fn field(name: &'static str, shp: &'static str, ty: OGRFieldType::Type) -> FieldSpec {
    FieldSpec { name, shp, ty }
}

const FIELDS: [FieldSpec; 19] = [
    field("id", "id", OGRFieldType::OFTInteger64),
    field("task", "task", OGRFieldType::OFTString),
    field("query", "query", OGRFieldType::OFTString),
    field("answer", "answer", OGRFieldType::OFTString),
    field("model", "model", OGRFieldType::OFTString),
    field("weights_hash", "weights", OGRFieldType::OFTString),
    field("segmenter", "segmenter", OGRFieldType::OFTString),
    field("score", "score", OGRFieldType::OFTReal),
    field("object_score", "obj_score", OGRFieldType::OFTReal),
    field("reasoning", "reasoning", OGRFieldType::OFTString),
    field("source", "source", OGRFieldType::OFTString),
    field("window", "window", OGRFieldType::OFTString),
    field("created_at", "created", OGRFieldType::OFTString),
    field("edited", "edited", OGRFieldType::OFTInteger),
    field("simplify_method", "simp_meth", OGRFieldType::OFTString),
    field("simplify_tol", "simp_tol", OGRFieldType::OFTReal),
    field("concept", "concept", OGRFieldType::OFTString),
    field("exemplars", "exemplars", OGRFieldType::OFTString),
    field("segmenter_hash", "seg_hash", OGRFieldType::OFTString),
];

enum Value<'a> {
    Int(i64),
    Real(Option<f64>),
    Text(std::borrow::Cow<'a, str>),
}

/// A feature's attribute values, in [`FIELDS`] order (text borrowed, not copied).
fn values(f: &Feature) -> [Value<'_>; 19] {
    fn text(s: &str) -> Value<'_> {
        Value::Text(std::borrow::Cow::Borrowed(s))
    }
    let p = &*f.provenance;
    let window = p.window.map(|w| format!("{},{},{},{}", w.x, w.y, w.width, w.height)).unwrap_or_default();
    [
        Value::Int(f.id),
        text(&p.task),
        text(&p.query),
        text(&p.answer),
        text(&p.model),
        text(&p.weights_hash),
        text(&p.segmenter),
        Value::Real(f.score),
        Value::Real(f.object_score),
        text(&p.reasoning),
        text(&p.source),
        Value::Text(window.into()),
        text(&p.created_at),
        Value::Int(i64::from(f.edited)),
        Value::Text(f.simplify.map(|(m, _)| m.to_string()).unwrap_or_default().into()),
        Value::Real(f.simplify.map(|(_, t)| t)),
        text(&p.concept),
        text(&p.exemplars),
        text(&p.segmenter_hash),
    ]
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Writer<'a> {
    format: Format,
    gt: GeoTransform,
    srs: Option<SpatialRef>,
    to_wgs84: Option<CoordTransform>,
    report: &'a mut ExportReport,
}

impl Writer<'_> {
    fn layer(
        &mut self,
        ds: &mut gdal::Dataset,
        name: &str,
        features: &[Feature],
        polygons: bool,
        progress: &mut dyn FnMut(usize) -> bool,
    ) -> Result<()> {
        let shp = self.format == Format::Shapefile;
        let mut options: Vec<&str> = Vec::new();
        match self.format {
            Format::Shapefile => options.push("ENCODING=UTF-8"),
            Format::GeoJson if self.to_wgs84.is_some() => options.extend(["RFC7946=YES", "COORDINATE_PRECISION=11"]),
            _ => {}
        }
        let ty = if polygons { OGRwkbGeometryType::wkbMultiPolygon } else { OGRwkbGeometryType::wkbPolygon };
        let gdal_err = |e: gdal::errors::GdalError| EngineError::Internal(gdal_reason(&e));
        let layer = ds
            .create_layer(LayerOptions { name, srs: self.srs.as_ref(), ty, options: Some(&options) })
            .map_err(gdal_err)?;
        for f in &FIELDS {
            let defn = FieldDefn::new(if shp { f.shp } else { f.name }, f.ty).map_err(gdal_err)?;
            if shp && f.ty == OGRFieldType::OFTString {
                defn.set_width(SHP_STRING_BYTES as i32);
            }
            defn.add_to_layer(&layer).map_err(gdal_err)?;
        }
        if shp {
            let defn = FieldDefn::new("truncated", OGRFieldType::OFTString).map_err(gdal_err)?;
            defn.set_width(80);
            defn.add_to_layer(&layer).map_err(gdal_err)?;
        }
        let defn = layer.defn();
        let mut written = 0;
        let mut cut_features = 0;
        for (i, f) in features.iter().enumerate() {
            if i % 512 == 0 && !progress(i) {
                return Err(EngineError::Cancelled);
            }
            let pixels = f.geometry.to_polygons();
            if pixels.0.is_empty() {
                self.report.skipped.push(format!("{name} {}: empty geometry", f.id));
                continue;
            }
            let map = crate::contour::to_map(&pixels.0, &self.gt);
            let mut geom = if polygons { map.to_gdal() } else { map.0[0].to_gdal() }.map_err(gdal_err)?;
            if let Some(ct) = &self.to_wgs84 {
                geom.transform_inplace(ct).map_err(gdal_err)?;
            }
            let mut feature = gdal::vector::Feature::new(defn).map_err(gdal_err)?;
            let mut cut = Vec::new();
            for (idx, (spec, value)) in FIELDS.iter().zip(values(f)).enumerate() {
                match value {
                    Value::Int(v) => feature.set_field_integer64(idx, v),
                    Value::Real(Some(v)) => feature.set_field_double(idx, v),
                    Value::Real(None) => feature.set_field_null(idx),
                    Value::Text(s) => {
                        let s = if shp && s.len() > SHP_STRING_BYTES {
                            cut.push(spec.name);
                            cut_utf8(&s, SHP_STRING_BYTES)
                        } else {
                            &s
                        };
                        feature.set_field_string(idx, s)
                    }
                }
                .map_err(gdal_err)?;
            }
            if shp {
                feature.set_field_string(FIELDS.len(), &cut.join(",")).map_err(gdal_err)?;
                cut_features += usize::from(!cut.is_empty());
            }
            feature.set_geometry(geom).map_err(gdal_err)?;
            feature.create(&layer).map_err(gdal_err)?;
            written += 1;
        }
        if cut_features > 0 {
            self.report.notes.push(format!(
                "{name}: {cut_features} feature(s) had text longer than Shapefile's {SHP_STRING_BYTES} bytes; \
                 cut, and listed in the `truncated` field (GeoPackage keeps it whole)"
            ));
        }
        self.report.layers.push((name.to_owned(), written));
        Ok(())
    }
}

/// Writes `set` to `path` (see the module docs). `progress(done, total)`
/// returning `false` cancels; the previous file is then left untouched.
pub fn export(
    path: &Path,
    set: &FeatureSet,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<ExportReport> {
    export_with(path, set, opts, progress, &[])
}

/// [`export`], plus an attribute-only table `name` of (key, value) rows in the
/// same GeoPackage (a project's settings).
pub(crate) fn export_with(
    path: &Path,
    set: &FeatureSet,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(usize, usize) -> bool,
    table: &[(&str, &[(String, String)])],
) -> Result<ExportReport> {
    crate::gdal_init();
    let werr = |reason: String| EngineError::Write { path: path.to_owned(), reason };
    let format = opts
        .format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| werr("unknown vector format: use .gpkg, .shp, .geojson or .fgb".into()))?;
    if !opts.polygons && !opts.boxes {
        return Err(werr("nothing to export: neither polygons nor boxes selected".into()));
    }
    let raster_srs = match &set.crs_wkt {
        Some(wkt) => {
            let mut srs = SpatialRef::from_wkt(wkt).map_err(|e| werr(format!("bad CRS: {}", gdal_reason(&e))))?;
            srs.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
            Some(srs)
        }
        None => None,
    };
    let (srs, to_wgs84) = match opts.crs {
        OutputCrs::Raster => (raster_srs, None),
        OutputCrs::Wgs84 => {
            let Some(src) = raster_srs.filter(|_| set.geotransform.is_some()) else {
                return Err(werr("EPSG:4326 output needs a georeferenced raster with a CRS; this one has none".into()));
            };
            let mut dst = SpatialRef::from_epsg(4326).map_err(|e| werr(gdal_reason(&e)))?;
            dst.set_axis_mapping_strategy(AxisMappingStrategy::TraditionalGisOrder);
            let ct = CoordTransform::new(&src, &dst).map_err(|e| werr(gdal_reason(&e)))?;
            (Some(dst), Some(ct))
        }
    };
    let mut report = ExportReport::default();
    let mut writer = Writer { format, gt: set.geotransform.unwrap_or_default(), srs, to_wgs84, report: &mut report };
    let staging = crate::atomic::Staging::new(path)?;
    let name = path.file_name().ok_or_else(|| werr("not a file name".into()))?;
    let driver = DriverManager::get_driver_by_name(format.driver()).map_err(|e| werr(gdal_reason(&e)))?;
    let total = usize::from(opts.polygons) * set.polygons.len() + usize::from(opts.boxes) * set.boxes.len();
    let mut layers: Vec<(&str, &[Feature], bool, PathBuf)> = Vec::new();
    if opts.polygons {
        layers.push(("polygons", &set.polygons, true, staging.dir().join(name)));
    }
    if opts.boxes {
        let file = if format.multi_layer() || !opts.polygons {
            staging.dir().join(name)
        } else {
            // `<stem>_boxes.<ext>`, byte for byte (names need not be UTF-8).
            let mut boxes = path.file_stem().unwrap_or_default().to_owned();
            boxes.push("_boxes.");
            boxes.push(path.extension().unwrap_or_default());
            staging.dir().join(boxes)
        };
        layers.push(("boxes", &set.boxes, false, file));
    }
    let mut done = 0;
    let mut open: Option<(PathBuf, gdal::Dataset)> = None;
    let write_err = |e: EngineError| match e {
        EngineError::Internal(reason) => EngineError::Write { path: path.to_owned(), reason },
        other => other,
    };
    for (layer_name, features, polygons, file) in layers {
        if open.as_ref().is_none_or(|(p, _)| p != &file) {
            if let Some((_, ds)) = open.take() {
                ds.close().map_err(|e| werr(gdal_reason(&e)))?;
            }
            let ds = crate::raster::source::create_vector(&driver, &file).map_err(|e| werr(gdal_reason(&e)))?;
            open = Some((file.clone(), ds));
        }
        let Some((_, ds)) = open.as_mut() else { unreachable!("opened above") };
        let base = done;
        let mut tick = |i: usize| progress(base + i, total);
        // One transaction per GeoPackage layer (~100× faster than one per feature).
        if format == Format::GeoPackage {
            let mut txn = ds.start_transaction().map_err(|e| werr(gdal_reason(&e)))?;
            writer.layer(&mut txn, layer_name, features, polygons, &mut tick).map_err(write_err)?;
            txn.commit().map_err(|e| werr(gdal_reason(&e)))?;
        } else {
            writer.layer(ds, layer_name, features, polygons, &mut tick).map_err(write_err)?;
        }
        done += features.len();
    }
    if let Some((_, mut ds)) = open.take() {
        for (name, rows) in table {
            write_table(&mut ds, name, rows).map_err(|e| werr(gdal_reason(&e)))?;
        }
        ds.close().map_err(|e| werr(gdal_reason(&e)))?;
    }
    if !progress(total, total) {
        return Err(EngineError::Cancelled);
    }
    // Everything is on disk: replace the old set as one (see `atomic`).
    let stale = if format == Format::Shapefile { stale_sidecars(&staging)? } else { Vec::new() };
    report.files = staging.commit(&stale)?;
    Ok(report)
}

/// A table without geometry: one row per (key, value).
fn write_table(ds: &mut gdal::Dataset, name: &str, rows: &[(String, String)]) -> gdal::errors::Result<()> {
    let layer = ds.create_layer(LayerOptions { name, ty: OGRwkbGeometryType::wkbNone, ..Default::default() })?;
    for field in ["key", "value"] {
        FieldDefn::new(field, OGRFieldType::OFTString)?.add_to_layer(&layer)?;
    }
    let defn = layer.defn();
    for (k, v) in rows {
        let mut f = gdal::vector::Feature::new(defn)?;
        f.set_field_string(0, k)?;
        f.set_field_string(1, v)?;
        f.create(&layer)?;
    }
    Ok(())
}

/// A Shapefile replaced by one without a `.prj` (or `.cpg`, index …) must not
/// keep the old one: a stale `.prj` would put the new shapes in the wrong place.
/// The names of the sidecars of every shapefile staged (polygons and
/// `<stem>_boxes`) that the new set does not have.
fn stale_sidecars(staging: &crate::atomic::Staging) -> Result<Vec<std::ffi::OsString>> {
    let staged: Vec<PathBuf> = std::fs::read_dir(staging.dir())
        .map_err(|e| EngineError::Write { path: staging.dir().to_owned(), reason: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let mut stale = Vec::new();
    for shp in staged.iter().filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("shp"))) {
        for ext in ["prj", "cpg", "qix", "sbn", "sbx", "shp.xml"] {
            let sidecar = shp.with_extension(ext);
            if !staged.contains(&sidecar)
                && let Some(name) = sidecar.file_name()
            {
                stale.push(name.to_owned());
            }
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut_utf8("abc", 5), "abc");
        assert_eq!(cut_utf8("aé", 2), "a");
        assert_eq!(cut_utf8("日本語", 7), "日本");
        assert_eq!(Format::from_path(Path::new("x/Out.GPKG")), Some(Format::GeoPackage));
        assert_eq!(Format::from_path(Path::new("a.txt")), None);
    }
}
