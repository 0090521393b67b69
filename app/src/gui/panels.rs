//! Menu bar, side panel (display and metadata), status bar and notifications.

use egui::{Color32, RichText};
use engine::raster::{BandMapping, RasterInfo, RenderParams, Stretch};

use super::WorkbenchApp;

pub fn menu_bar_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    egui::Panel::top("menu_bar").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open raster…  (Ctrl+O)").clicked() {
                    app.commands.push(super::Command::OpenDialog);
                    ui.close();
                }
                if ui.button("Open URL or STAC item…").clicked() {
                    app.session.open_url.get_or_insert_with(String::new);
                    ui.close();
                }
                ui.separator();
                if ui.button("Open project…").clicked() {
                    app.pick_file(super::DialogPurpose::OpenProject, false, "gpkg");
                    ui.close();
                }
                if ui.button("Save project  (Ctrl+S)").clicked() {
                    match app.session.project_path.clone() {
                        Some(p) => app.commands.push(super::Command::SaveProject(p)),
                        None => app.pick_file(super::DialogPurpose::SaveProject, true, "gpkg"),
                    }
                    ui.close();
                }
                if ui.button("Save project as…  (Ctrl+Shift+S)").clicked() {
                    app.pick_file(super::DialogPurpose::SaveProject, true, "gpkg");
                    ui.close();
                }
                if ui.button("Export features…  (Ctrl+E)").clicked() {
                    app.session.export_dialog.get_or_insert_with(Default::default);
                    ui.close();
                }
                ui.separator();
                if ui.button("Settings…").clicked() {
                    app.session.show_settings = true;
                    ui.close();
                }
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("Edit", |ui| {
                let undo = app.session.features.undo_label().map(|l| format!("Undo {l}  (Ctrl+Z)"));
                if ui.add_enabled(undo.is_some(), egui::Button::new(undo.unwrap_or_else(|| "Undo".into()))).clicked() {
                    app.session.features.undo();
                    ui.close();
                }
                let redo = app.session.features.redo_label().map(|l| format!("Redo {l}  (Ctrl+Shift+Z)"));
                if ui.add_enabled(redo.is_some(), egui::Button::new(redo.unwrap_or_else(|| "Redo".into()))).clicked() {
                    app.session.features.redo();
                    ui.close();
                }
                if ui.add_enabled(app.session.selected.is_some(), egui::Button::new("Delete selected  (Del)")).clicked()
                {
                    app.delete_selection();
                    ui.close();
                }
            });
            ui.menu_button("Help", |ui| {
                if ui.button("Keyboard shortcuts  (F1)").clicked() {
                    app.session.show_help = true;
                    ui.close();
                }
                if ui.button("Set up models…").clicked() {
                    app.open_setup();
                    ui.close();
                }
                if ui.button("About RemoteReasoner").clicked() {
                    app.session.show_about = true;
                    ui.close();
                }
            });
            ui.separator();
            for (tool, name, tip) in [
                (super::session::Tool::Select, "Select", "Select and edit; drag elsewhere pans (V)"),
                (super::session::Tool::DrawBox, "Box", "Draw a box to segment (B)"),
                (super::session::Tool::DrawArea, "Area", "Draw the area the model sees (A)"),
                (super::session::Tool::DrawExemplar, "Exemplar", "Draw an example for Find all (E)"),
                (
                    super::session::Tool::Refine,
                    "Refine",
                    "Clicks refine the selected mask: left = object, right = not (R)",
                ),
            ] {
                if ui.selectable_label(app.session.tool == tool, name).on_hover_text(tip).clicked() {
                    app.set_tool(tool);
                }
            }
            ui.separator();
            let has_doc = app.doc.is_some();
            if ui
                .add_enabled(has_doc, egui::Button::new("Fit"))
                .on_hover_text("Zoom to full extent (Ctrl+Shift+F)")
                .clicked()
                && let Some(doc) = app.doc.as_mut()
            {
                doc.fit_pending = true;
            }
            if ui
                .add_enabled(has_doc, egui::Button::new("1:1"))
                .on_hover_text("One raster pixel per screen pixel (Ctrl+1)")
                .clicked()
            {
                let ppp = ui.ctx().pixels_per_point();
                if let Some(doc) = app.doc.as_mut() {
                    doc.view = doc.view.one_to_one(ppp);
                    doc.fitted_to = None;
                }
            }
            if let Some(doc) = &app.doc {
                ui.separator();
                let path = &doc.info.path;
                let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
                ui.label(RichText::new(name).weak()).on_hover_text(path.display().to_string());
            }
        });
    });
}

/// Cursor position as the status bar shows it: pixel, then map coordinates in CRS units.
pub fn format_position(info: &RasterInfo, source: [f64; 2]) -> String {
    let (col, row) = (source[0].floor(), source[1].floor());
    let pixel = format!("Pixel {col:.0}, {row:.0}");
    let Some(gt) = info.geotransform.map(engine::geo::GeoTransform) else {
        return format!("{pixel}   (not georeferenced)");
    };
    let (x, y) = gt.pixel_to_world(source[0], source[1]);
    if info.crs_geographic {
        format!("{pixel}   Lon {x:.7}°  Lat {y:.7}°   {}", info.crs_label())
    } else {
        format!("{pixel}   X {x:.2}  Y {y:.2}   {}", info.crs_label())
    }
}

pub fn status_bar_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    egui::Panel::bottom("status_bar").show(ui, |ui| {
        ui.horizontal(|ui| {
            let Some(doc) = &app.doc else {
                ui.label("No raster open");
                return;
            };
            match app.cursor_source {
                Some(s)
                    if s[0] >= 0.0 && s[1] >= 0.0 && s[0] < doc.info.width as f64 && s[1] < doc.info.height as f64 =>
                {
                    ui.label(format_position(&doc.info, s));
                }
                _ => {
                    ui.label(RichText::new("Pointer outside the raster").weak());
                }
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let ppp = f64::from(ui.ctx().pixels_per_point());
                let level = doc.info.pyramid().level_for_zoom(doc.view.zoom * ppp);
                ui.label(format!("Zoom {:.1}%   Level {level}", doc.view.zoom * ppp * 100.0));
                if app.jobs.tiles().is_some() {
                    ui.spinner();
                }
            });
        });
    });
}

pub fn side_panel_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    egui::Panel::left("side_panel").default_size(290.0).show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            let Some(doc) = &app.doc else {
                ui.heading("RemoteReasoner");
                ui.label("No raster open.");
                if ui.button("Open raster…").clicked() {
                    app.open_dialog();
                }
                return;
            };
            let mut params = doc.params;
            let info = doc.info.clone();
            let overview_job = app.jobs.overviews();
            display_ui(ui, &info, &mut params);
            app.set_params(params);
            ui.separator();
            overviews_ui(app, ui, &info, overview_job);
            ui.separator();
            egui::CollapsingHeader::new("Metadata")
                .default_open(app.show_metadata)
                .show(ui, |ui| metadata_ui(ui, &info));
        });
    });
}

fn band_label(info: &RasterInfo, b: usize) -> String {
    format!("{b}: {} ({})", info.color_interp[b - 1], info.dtypes[b - 1])
}

/// A band picker, named for screen readers by the label in front of it.
fn band_combo(ui: &mut egui::Ui, label: &str, info: &RasterInfo, band: &mut usize) {
    let label = ui.label(label);
    egui::ComboBox::from_id_salt(("band", label.id))
        .selected_text(band_label(info, *band))
        .show_ui(ui, |ui| {
            for b in 1..=info.bands {
                ui.selectable_value(band, b, band_label(info, b));
            }
        })
        .response
        .labelled_by(label.id);
}

/// Band mapping and stretch.
fn display_ui(ui: &mut egui::Ui, info: &RasterInfo, params: &mut RenderParams) {
    ui.heading("Display");
    ui.horizontal(|ui| {
        let is_rgb = matches!(params.bands, BandMapping::Rgb(_));
        if ui.selectable_label(is_rgb, "RGB").clicked() && !is_rgb {
            params.bands = match BandMapping::default_for(info) {
                rgb @ BandMapping::Rgb(_) => rgb,
                BandMapping::Grey(b) => BandMapping::Rgb([b; 3]),
            };
        }
        if ui.selectable_label(!is_rgb, "Single band (grey)").clicked() && is_rgb {
            params.bands = BandMapping::Grey(params.bands.bands()[0]);
        }
    });
    egui::Grid::new("bands").num_columns(2).show(ui, |ui| match &mut params.bands {
        BandMapping::Rgb(rgb) => {
            for (i, name) in ["Red", "Green", "Blue"].iter().enumerate() {
                band_combo(ui, name, info, &mut rgb[i]);
                ui.end_row();
            }
        }
        BandMapping::Grey(b) => {
            band_combo(ui, "Band", info, b);
            ui.end_row();
        }
    });
    ui.horizontal(|ui| {
        let label = ui.label("Stretch");
        egui::ComboBox::from_id_salt("stretch")
            .selected_text(match params.stretch {
                Stretch::None => "None".to_owned(),
                Stretch::MinMax => "Min–max".to_owned(),
                Stretch::Percentile { lo, hi } => format!("Percentile {lo}–{hi} %"),
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut params.stretch, Stretch::None, "None");
                ui.selectable_value(&mut params.stretch, Stretch::MinMax, "Min–max");
                if ui.selectable_label(matches!(params.stretch, Stretch::Percentile { .. }), "Percentile").clicked()
                    && !matches!(params.stretch, Stretch::Percentile { .. })
                {
                    params.stretch = Stretch::PERCENTILE_2_98;
                }
            })
            .response
            .labelled_by(label.id);
    });
    if let Stretch::Percentile { lo, hi } = &mut params.stretch {
        ui.horizontal(|ui| {
            let label = ui.label("Clip");
            ui.add(egui::DragValue::new(lo).range(0.0..=49.0).speed(0.1).suffix(" %")).labelled_by(label.id);
            ui.label("–");
            ui.add(egui::DragValue::new(hi).range(51.0..=100.0).speed(0.1).suffix(" %")).labelled_by(label.id);
        });
    }
}

fn overviews_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, info: &RasterInfo, job: Option<(u64, f32)>) {
    ui.heading("Overviews");
    if info.overviews.is_empty() {
        ui.label("None. Zoomed-out views read the full-resolution data.");
    } else {
        let sizes: Vec<String> = info.overviews.iter().map(|(w, h)| format!("{w}×{h}")).collect();
        ui.label(format!("{} levels: {}", sizes.len(), sizes.join(", ")));
    }
    match job {
        Some((job, fraction)) => {
            ui.horizontal(|ui| {
                ui.add(egui::ProgressBar::new(fraction).show_percentage().desired_width(160.0));
                if ui.button("Cancel").clicked() {
                    app.commands.push(super::Command::Cancel(job));
                }
            });
        }
        None => {
            let enabled = engine::overviews::default_factors(info.width, info.height).len() > info.overviews.len();
            let label = if info.overviews.is_empty() { "Build overviews" } else { "Rebuild overviews" };
            if ui
                .add_enabled(enabled, egui::Button::new(label))
                .on_hover_text("Writes an external .ovr file next to the raster; the raster is not modified.")
                .clicked()
            {
                app.commands.push(super::Command::BuildOverviews);
            }
        }
    }
}

fn metadata_ui(ui: &mut egui::Ui, info: &RasterInfo) {
    egui::Grid::new("metadata").num_columns(2).striped(true).show(ui, |ui| {
        let mut row = |k: &str, v: String| {
            ui.label(RichText::new(k).strong());
            ui.label(v);
            ui.end_row();
        };
        row("Driver", info.driver.clone());
        row("Size", format!("{} × {} px", info.width, info.height));
        row("Bands", info.bands.to_string());
        for b in 1..=info.bands {
            let nodata = info.nodata[b - 1].map(|v| format!(", nodata {v}")).unwrap_or_default();
            row(&format!("Band {b}"), format!("{} {}{nodata}", info.dtypes[b - 1], info.color_interp[b - 1]));
        }
        row("CRS", info.crs_name.clone().unwrap_or_else(|| "none".into()));
        row("EPSG", info.epsg.map_or_else(|| "unknown".into(), |c| c.to_string()));
        match info.geotransform {
            Some(gt) => {
                row("Origin", format!("{:.6}, {:.6}", gt[0], gt[3]));
                row("Pixel size", format!("{:.6} × {:.6}", gt[1], gt[5]));
                row("Rotation", format!("{:.6}, {:.6}", gt[2], gt[4]));
            }
            None => row("Georeferencing", "none".into()),
        }
        row("Block", format!("{} × {}", info.block_size.0, info.block_size.1));
    });
    if let Some(wkt) = &info.crs_wkt {
        egui::CollapsingHeader::new("CRS WKT").show(ui, |ui| {
            ui.add(egui::Label::new(RichText::new(wkt).monospace().size(10.0)).wrap());
        });
    }
}

/// Errors stay until dismissed; notes fade after a few seconds.
pub fn notifications_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    if app.notifications.is_empty() {
        return;
    }
    let mut dismiss = None;
    egui::Area::new(egui::Id::unique("notifications"))
        .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
        .show(ctx, |ui| {
            for (i, n) in app.notifications.iter().enumerate() {
                let fill = if n.is_error { Color32::from_rgb(110, 30, 30) } else { Color32::from_rgb(30, 60, 90) };
                egui::Frame::popup(ui.style()).fill(fill).show(ui, |ui| {
                    ui.set_max_width(420.0);
                    ui.horizontal(|ui| {
                        ui.add(egui::Label::new(RichText::new(&n.text).color(Color32::WHITE)).wrap());
                        if ui.small_button("×").on_hover_text("Dismiss").clicked() {
                            dismiss = Some(i);
                        }
                    });
                });
            }
        });
    if let Some(i) = dismiss {
        app.notifications.remove(i);
    }
    if app.notifications.iter().any(|n| !n.is_error) {
        ctx.request_repaint_after(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(geo: bool, geographic: bool) -> RasterInfo {
        RasterInfo {
            path: "x.tif".into(),
            driver: "GTiff".into(),
            width: 100,
            height: 100,
            bands: 1,
            dtypes: vec!["Byte".into()],
            nodata: vec![None],
            color_interp: vec!["Gray".into()],
            crs_wkt: None,
            epsg: Some(if geographic { 4326 } else { 32631 }),
            crs_name: None,
            crs_geographic: geographic,
            geotransform: geo.then_some([500_000.0, 2.0, 0.0, 4_000_000.0, 0.0, -2.0]),
            overviews: vec![],
            block_size: (100, 1),
        }
    }

    #[test]
    fn position_in_projected_geographic_and_plain_rasters() {
        assert_eq!(
            format_position(&info(true, false), [10.5, 4.0]),
            "Pixel 10, 4   X 500021.00  Y 3999992.00   EPSG:32631"
        );
        assert!(format_position(&info(true, true), [0.0, 0.0]).contains("Lon 500000.0000000°"));
        assert_eq!(format_position(&info(false, false), [3.2, 7.9]), "Pixel 3, 7   (not georeferenced)");
    }
}
