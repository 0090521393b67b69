//! Windows: export, settings, keyboard shortcuts, restoring after a crash.

use std::path::PathBuf;

use egui::RichText;
use engine::contour::SimplifyMethod;
use engine::export::{ExportOptions, Format, OutputCrs};

use super::WorkbenchApp;

/// The export dialog's choices.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportDialog {
    pub path: String,
    /// The file picked with "Browse…", byte for byte (its name need not be
    /// UTF-8); used while `path` still shows it unedited.
    pub picked: Option<PathBuf>,
    pub format: Format,
    pub crs: OutputCrs,
    pub polygons: bool,
    pub boxes: bool,
    /// Simplify every polygon for this export (pixels; 0 = as they are).
    pub simplify: f64,
}

impl ExportDialog {
    /// Where to export: the picked file unless the text was edited since.
    pub fn target(&self) -> PathBuf {
        match &self.picked {
            Some(p) if p.display().to_string() == self.path => p.clone(),
            _ => PathBuf::from(self.path.trim()),
        }
    }
}

impl Default for ExportDialog {
    fn default() -> Self {
        Self {
            path: String::new(),
            picked: None,
            format: Format::GeoPackage,
            crs: OutputCrs::Raster,
            polygons: true,
            boxes: true,
            simplify: 0.0,
        }
    }
}

fn format_label(f: Format) -> &'static str {
    match f {
        Format::GeoPackage => "GeoPackage (.gpkg)",
        Format::Shapefile => "ESRI Shapefile (.shp)",
        Format::GeoJson => "GeoJSON (.geojson)",
        Format::FlatGeobuf => "FlatGeobuf (.fgb)",
    }
}

fn extension(f: Format) -> &'static str {
    match f {
        Format::GeoPackage => "gpkg",
        Format::Shapefile => "shp",
        Format::GeoJson => "geojson",
        Format::FlatGeobuf => "fgb",
    }
}

pub fn export_dialog_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let Some(mut d) = app.session.export_dialog.take() else { return };
    let mut open = true;
    let mut go = false;
    egui::Window::new("Export features").open(&mut open).resizable(false).show(ctx, |ui| {
        egui::Grid::new("export_grid").num_columns(2).show(ui, |ui| {
            let label = ui.label("Format");
            egui::ComboBox::from_id_salt("export_format")
                .selected_text(format_label(d.format))
                .show_ui(ui, |ui| {
                    for f in [Format::GeoPackage, Format::Shapefile, Format::GeoJson, Format::FlatGeobuf] {
                        if ui.selectable_value(&mut d.format, f, format_label(f)).clicked() && !d.path.is_empty() {
                            let p = d.target().with_extension(extension(f));
                            d.path = p.display().to_string();
                            d.picked = Some(p);
                        }
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();
            let label = ui.label("Save to");
            ui.horizontal(|ui| {
                ui.add(egui::TextEdit::singleline(&mut d.path).desired_width(260.0)).labelled_by(label.id);
                if ui.button("Browse…").clicked() {
                    app.pick_file(super::DialogPurpose::ExportTo, true, extension(d.format));
                }
            });
            ui.end_row();
            let label = ui.label("CRS");
            ui.horizontal(|ui| {
                ui.selectable_value(&mut d.crs, OutputCrs::Raster, "Raster's").labelled_by(label.id);
                ui.selectable_value(&mut d.crs, OutputCrs::Wgs84, "EPSG:4326 (lon/lat)");
            });
            ui.end_row();
            ui.label("Layers");
            ui.horizontal(|ui| {
                ui.checkbox(&mut d.polygons, "Polygons");
                ui.checkbox(&mut d.boxes, "Boxes");
            });
            ui.end_row();
            let label = ui.label("Simplify (px)");
            ui.add(egui::Slider::new(&mut d.simplify, 0.0..=10.0).step_by(0.25)).labelled_by(label.id);
            ui.end_row();
        });
        let n = app.session.features.len();
        ui.label(RichText::new(format!("{n} feature(s)")).weak());
        if let Some(last) = &app.session.last_export {
            ui.label(last);
        }
        let ready = !d.path.trim().is_empty()
            && (d.polygons || d.boxes)
            && !app.jobs.any(|p| matches!(p, super::Pending::Export));
        if ui.add_enabled(ready, egui::Button::new("Export")).clicked() {
            go = true;
        }
    });
    if let Some(p) = app.take_picked(super::DialogPurpose::ExportTo) {
        d.path = p.display().to_string();
        d.picked = Some(p);
    }
    if go {
        app.commands.push(super::Command::Export(Box::new(d.clone())));
    }
    if open {
        app.session.export_dialog = Some(d);
    }
}

impl WorkbenchApp {
    /// Sends an export of every feature with the dialog's choices.
    pub fn export(&mut self, d: &ExportDialog) {
        let Some(doc) = &self.doc else {
            self.notify_error("Open the raster the features belong to before exporting.");
            return;
        };
        // Simplified and written on a file thread: nothing heavy in this frame.
        let features: Vec<_> = self.session.features.iter().cloned().collect();
        let simplify = (d.simplify > 0.0).then_some((self.session.settings.simplify_method, d.simplify));
        let (geotransform, crs_wkt) = (doc.info.geotransform.map(engine::geo::GeoTransform), doc.info.crs_wkt.clone());
        let options = ExportOptions { format: Some(d.format), crs: d.crs, polygons: d.polygons, boxes: d.boxes };
        let path = d.target();
        let request = engine::RequestKind::Export { path, features, simplify, geotransform, crs_wkt, options };
        self.start(request, super::Pending::Export);
    }
}

/// One row of the settings grid: a label and the text field it names.
fn text_row(ui: &mut egui::Ui, label: &str, value: &mut String, hint: &str) {
    let label = ui.label(label);
    ui.add(egui::TextEdit::singleline(value).hint_text(hint).desired_width(260.0)).labelled_by(label.id);
    ui.end_row();
}

pub fn settings_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    if !app.session.show_settings {
        return;
    }
    let mut open = true;
    let pull = app.jobs.pull().map(|(f, what)| (f, what.to_owned()));
    let is_repo = app.session.model_is_repo();
    let s = &mut app.session.settings;
    let mut browse = None;
    let mut download = false;
    egui::Window::new("Settings").open(&mut open).show(ctx, |ui| {
        egui::Grid::new("settings_grid").num_columns(2).show(ui, |ui| {
            let label = ui.label("RemoteReasoner model");
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut s.model)
                        .hint_text("directory or 1e12Leon/RemoteReasoner")
                        .desired_width(260.0),
                )
                .labelled_by(label.id);
                if ui.button("Browse…").clicked() {
                    browse = Some(super::DialogPurpose::ModelDir);
                }
            });
            ui.end_row();
            text_row(ui, "Or an endpoint", &mut s.endpoint, "OpenAI-compatible URL, e.g. http://gpu:8000");
            text_row(ui, "Endpoint model", &mut s.api_model, "default: the first it lists");
            let label = ui.label("SAM checkpoint");
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut s.sam).hint_text("empty: watershed fallback").desired_width(260.0),
                )
                .labelled_by(label.id);
                if ui.button("Browse…").clicked() {
                    browse = Some(super::DialogPurpose::SamCheckpoint);
                }
            });
            ui.end_row();
            text_row(
                ui,
                "SAM 3 folder",
                &mut s.sam3,
                "transformers or Meta (sam3.pt) weights + tokenizer.json: Find all",
            );
            let label = ui.label("Device");
            let mut device = s.device.to_string();
            egui::ComboBox::from_id_salt("device")
                .selected_text(&device)
                .show_ui(ui, |ui| {
                    for d in ["cpu", "cuda:0", "metal:0"] {
                        ui.selectable_value(&mut device, d.to_owned(), d);
                    }
                })
                .response
                .labelled_by(label.id);
            if let Ok(d) = device.parse() {
                s.device = d;
            }
            ui.end_row();
            let label = ui.label("Max pixels");
            ui.add(egui::DragValue::new(&mut s.max_pixels).range(3136..=12_845_056).speed(1000.0))
                .labelled_by(label.id);
            ui.end_row();
            let label = ui.label("Temperature");
            ui.horizontal(|ui| {
                let mut custom = s.temperature.is_some();
                ui.checkbox(&mut custom, "override").labelled_by(label.id);
                let mut t = s.temperature.unwrap_or(0.0);
                ui.add_enabled(custom, egui::DragValue::new(&mut t).range(0.0..=2.0).speed(0.01));
                s.temperature = custom.then_some(t);
                ui.label(RichText::new("0 = greedy; off = the checkpoint's").weak());
            });
            ui.end_row();
            let label = ui.label("Max new tokens");
            ui.add(egui::DragValue::new(&mut s.max_new_tokens).range(16..=8192)).labelled_by(label.id);
            ui.end_row();
            let label = ui.label("Simplification");
            ui.horizontal(|ui| {
                ui.selectable_value(
                    &mut s.simplify_method,
                    SimplifyMethod::VisvalingamPreserve,
                    "Visvalingam (topology-preserving)",
                )
                .labelled_by(label.id);
                ui.selectable_value(&mut s.simplify_method, SimplifyMethod::DouglasPeucker, "Douglas–Peucker");
            });
            ui.end_row();
            text_row(ui, "Hub server", &mut s.hub_endpoint, "default: huggingface.co");
            text_row(ui, "Models cache", &mut s.models_cache, "default: the Hugging Face cache");
        });
        ui.horizontal(|ui| match &pull {
            Some((fraction, what)) => {
                ui.add(egui::ProgressBar::new(*fraction).show_percentage().desired_width(180.0));
                ui.label(what);
            }
            None => {
                download = ui
                    .add_enabled(is_repo, egui::Button::new("Download model"))
                    .on_hover_text("Fetches the repository's files into the models cache, each verified by its hash")
                    .clicked();
            }
        });
        ui.label(RichText::new("Enter a hub repository (e.g. 1e12Leon/RemoteReasoner) and download it once.").weak());
    });
    if download {
        app.commands.push(super::Command::PullModel);
    }
    if let Some(purpose) = browse {
        app.pick_file(purpose, false, "");
    }
    if let Some(p) = app.take_picked(super::DialogPurpose::ModelDir) {
        app.session.settings.model = p.display().to_string();
    }
    if let Some(p) = app.take_picked(super::DialogPurpose::SamCheckpoint) {
        app.session.settings.sam = p.display().to_string();
    }
    app.session.show_settings = open;
}

/// Keyboard shortcuts, following QGIS where it has one.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Ctrl+O", "Open a raster"),
    ("Ctrl+S / Ctrl+Shift+S", "Save the project / save as"),
    ("Ctrl+E", "Export features"),
    ("Ctrl+Enter", "Run the question"),
    ("Ctrl+Z", "Undo"),
    ("Ctrl+Shift+Z, Ctrl+Y", "Redo"),
    ("V", "Select / edit tool: click selects, drag vertices and box handles, drag elsewhere pans"),
    ("B", "Draw a box to segment"),
    ("A", "Draw the area the model sees"),
    ("R", "Refine the selected mask: left click = object, right click = not object"),
    ("E", "Draw an exemplar for Find all (SAM 3)"),
    ("Double-click an edge", "Insert a vertex"),
    ("Del", "Delete the selected vertex, or the selected feature"),
    ("Esc", "Back to the select tool, clear the selection"),
    ("Ctrl+Shift+F", "Zoom to full extent"),
    ("Ctrl+1", "1:1 (one raster pixel per screen pixel)"),
    ("F1", "This help"),
];

pub fn help_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let mut open = app.session.show_help;
    egui::Window::new("Keyboard shortcuts").open(&mut open).show(ctx, |ui| {
        egui::Grid::new("shortcuts").num_columns(2).striped(true).show(ui, |ui| {
            for (k, v) in SHORTCUTS {
                ui.label(RichText::new(*k).monospace());
                ui.label(*v);
                ui.end_row();
            }
        });
    });
    app.session.show_help = open;
}

/// What this build is (as `--version` prints it) and the licences of what it
/// carries.
pub fn about_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let mut open = app.session.show_about;
    egui::Window::new("About RemoteReasoner").open(&mut open).resizable(false).show(ctx, |ui| {
        ui.heading("RemoteReasoner");
        ui.label("Geospatial reasoning on remote-sensing imagery: region, pixel and contour answers.");
        ui.separator();
        ui.label(RichText::new(crate::build_info::BuildInfo::current().to_string()).monospace());
        ui.separator();
        for line in LICENCES {
            ui.label(*line);
        }
    });
    app.session.show_about = open;
}

/// The licences the About window names (the package ships their texts).
pub const LICENCES: &[&str] = &[
    "RemoteReasoner: Apache-2.0.",
    "Bundled sample image: SpaceNet (SpaceNet LLC / CosmiQ Works; Maxar), CC BY-SA 4.0.",
    "Linked libraries: GDAL and PROJ (MIT), egui/eframe and candle (MIT or Apache-2.0); model weights carry their own licences.",
    "Every Rust crate in the binary with its licence text: /usr/share/doc/remote-reasoner/rust-crates.txt.gz \
     (the portable bundle: share/doc/licences/, with the copyright of each bundled library).",
];

/// A raster by URL (`https://`, `s3://`, `/vsicurl/` …) or a STAC item
/// (`…/item.json`, `#asset` to pick one), read through GDAL on a thread of its own.
pub fn open_url_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let Some(mut url) = app.session.open_url.take() else { return };
    let (mut open, mut go) = (true, false);
    egui::Window::new("Open URL").open(&mut open).resizable(false).show(ctx, |ui| {
        let label = ui.label("URL, /vsi… name or STAC item");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut url)
                    .hint_text("https://…/scene.tif, s3://bucket/key.tif, …/item.json#visual")
                    .desired_width(380.0),
            )
            .labelled_by(label.id);
        let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        go = (ui.add_enabled(!url.trim().is_empty(), egui::Button::new("Open")).clicked() || enter)
            && !url.trim().is_empty();
    });
    if go {
        app.commands.push(super::Command::OpenAny(PathBuf::from(url.trim())));
    } else if open {
        app.session.open_url = Some(url);
    }
}

pub fn recovery_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let Some((path, written)) = app.session.recovery_offer.clone() else { return };
    let modified = written.map(humantime_like).unwrap_or_default();
    egui::Window::new("Restore unsaved work?").collapsible(false).resizable(false).show(ctx, |ui| {
        ui.label(format!("RemoteReasoner did not close normally. Unsaved work was kept {modified}."));
        ui.horizontal(|ui| {
            if ui.button("Restore").clicked() {
                app.session.recovery_offer = None;
                app.commands.push(super::Command::Restore(path.clone()));
            }
            if ui.button("Discard").clicked() {
                app.session.recovery_offer = None;
                let _ = std::fs::remove_file(&path);
            }
        });
    });
}

fn humantime_like(t: std::time::SystemTime) -> String {
    match t.elapsed() {
        Ok(d) if d.as_secs() < 120 => format!("{} s ago", d.as_secs()),
        Ok(d) if d.as_secs() < 7200 => format!("{} min ago", d.as_secs() / 60),
        Ok(d) => format!("{} h ago", d.as_secs() / 3600),
        Err(_) => "just now".into(),
    }
}

/// Closing with unsaved work: save it, discard it, or keep working.
pub fn close_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let wants_close = ctx.input(|i| i.viewport().close_requested());
    let s = &app.session;
    let unsaved = s.is_dirty() && !s.features.is_empty();
    if wants_close && unsaved && !s.discard_on_close && !s.close_after_save {
        ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
        app.session.confirm_close = true;
    }
    if !app.session.confirm_close {
        return;
    }
    egui::Window::new("Unsaved changes").collapsible(false).resizable(false).show(ctx, |ui| {
        ui.label(format!("{} feature(s) have changes that are not saved in a project.", app.session.features.len()));
        ui.horizontal(|ui| {
            if ui.button("Save…").clicked() {
                app.session.confirm_close = false;
                app.session.close_after_save = true;
                match app.session.project_path.clone() {
                    Some(p) => app.commands.push(super::Command::SaveProject(p)),
                    None => app.pick_file(super::DialogPurpose::SaveProject, true, "gpkg"),
                }
            }
            if ui.button("Close without saving").clicked() {
                app.session.confirm_close = false;
                app.session.discard_on_close = true;
                let _ = std::fs::remove_file(&app.recovery_path);
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
            if ui.button("Cancel").clicked() {
                app.session.confirm_close = false;
            }
        });
    });
}
