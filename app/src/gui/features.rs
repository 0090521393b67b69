//! The features table (synchronised with the map's selection) and the
//! selected feature's trace, attributes and simplification.

use egui::RichText;
use egui_extras::{Column, TableBuilder};
use engine::contour::SimplifyMethod;

use super::WorkbenchApp;
use super::overlay::feature_colour;

pub fn features_panel_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    egui::Panel::bottom("features_panel").resizable(true).default_size(200.0).min_size(150.0).show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.heading("Features");
            let s = &app.session;
            ui.label(RichText::new(format!("{} feature(s)", s.features.len())).weak());
            if let Some(l) = s.features.undo_label() {
                ui.label(RichText::new(format!("Undo: {l} (Ctrl+Z)")).weak());
            }
            if let Some(l) = s.features.redo_label() {
                ui.label(RichText::new(format!("Redo: {l} (Ctrl+Shift+Z)")).weak());
            }
        });
        ui.columns(2, |cols| {
            table_ui(app, &mut cols[0]);
            details_ui(app, &mut cols[1]);
        });
    });
}

fn table_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let s = &mut app.session;
    // Only the rows on screen are looked at (validity checks are not free).
    let ids: Vec<u64> = s.features.iter().map(|f| f.id).collect();
    let mut clicked = None;
    TableBuilder::new(ui)
        .id_salt("features_table")
        .striped(true)
        .sense(egui::Sense::click())
        .column(Column::exact(36.0))
        .column(Column::exact(54.0))
        .column(Column::remainder().at_least(40.0).clip(true))
        .column(Column::exact(42.0))
        .column(Column::exact(52.0))
        .column(Column::exact(42.0))
        .header(18.0, |mut h| {
            for t in ["id", "task", "query", "score", "vertices", "edited"] {
                h.col(|ui| {
                    ui.strong(t);
                });
            }
        })
        .body(|body| {
            body.rows(18.0, ids.len(), |mut row| {
                let id = ids[row.index()];
                let Some(f) = s.features.get(id) else { return };
                row.set_selected(s.selected == Some(id));
                row.col(|ui| {
                    // The feature's map colour beside its id (a painted swatch: no glyph needed).
                    ui.horizontal(|ui| {
                        let (swatch, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
                        ui.painter().rect_filled(swatch, 2.0, feature_colour(id));
                        ui.label(id.to_string());
                    });
                });
                row.col(|ui| {
                    ui.label(&f.provenance.task);
                });
                row.col(|ui| {
                    ui.label(&f.provenance.query);
                });
                row.col(|ui| {
                    ui.label(f.score.map_or_else(String::new, |v| format!("{v:.3}")));
                });
                row.col(|ui| {
                    let (n, valid) = (f.vertex_count(), f.is_valid());
                    let text = if valid { n.to_string() } else { format!("{n} (invalid)") };
                    ui.label(text).on_hover_text(if valid {
                        "valid geometry"
                    } else {
                        "invalid geometry (self-intersection?)"
                    });
                });
                row.col(|ui| {
                    ui.label(if f.edited { "yes" } else { "" });
                });
                if row.response().clicked() {
                    clicked = Some(id);
                }
            });
        });
    if let Some(id) = clicked {
        s.selected = Some(id);
        s.selected_vertex = None;
    }
}

fn details_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let s = &mut app.session;
    let Some(f) = s.selected.and_then(|id| s.features.get(id)).cloned() else {
        ui.label(RichText::new("Select a feature on the map or in the table.").weak());
        return;
    };
    egui::ScrollArea::vertical().id_salt("details").show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.strong(format!("Feature {}", f.id));
            if ui.button("Delete").on_hover_text("Delete the feature (Del)").clicked() {
                s.features.remove("delete feature", &[f.id]);
                s.selected = None;
            }
        });
        let p = &f.provenance;
        egui::Grid::new("attrs").num_columns(2).striped(true).show(ui, |ui| {
            let mut row = |k: &str, v: String| {
                ui.label(RichText::new(k).strong());
                ui.label(v);
                ui.end_row();
            };
            row("task", p.task.clone());
            row("query", p.query.clone());
            row("answer", p.answer.clone());
            row("model", p.model.clone());
            row("weights", p.weights_hash.clone());
            row("segmenter", p.segmenter.clone());
            if !p.concept.is_empty() || !p.exemplars.is_empty() {
                row("concept", p.concept.clone());
                row("exemplars", p.exemplars.replace(';', "; "));
                row("SAM 3 weights", p.segmenter_hash.clone());
            }
            row("score", f.score.map_or_else(String::new, |v| format!("{v:.4}")));
            row("object score", f.object_score.map_or_else(String::new, |v| format!("{v:.3}")));
            row("window", p.window.map_or_else(String::new, |w| format!("{},{},{},{}", w.x, w.y, w.width, w.height)));
            row("created", p.created_at.clone());
            row("edited", if f.edited { "yes".into() } else { "no".into() });
            row("vertices", f.vertex_count().to_string());
        });
        // Simplification, re-applied from the exact polygons.
        ui.horizontal(|ui| {
            let label = ui.label("Simplify (px)");
            let mut tol = f.simplify.map_or(0.0, |(_, t)| t);
            let method = f.simplify.map_or(s.settings.simplify_method, |(m, _)| m);
            let slider = ui.add(egui::Slider::new(&mut tol, 0.0..=10.0).step_by(0.25)).labelled_by(label.id);
            if slider.drag_stopped() || (slider.changed() && !slider.dragged()) {
                let simplify = (tol > 0.0).then_some((method, tol));
                let _ = s.features.replace("simplify", f.with_simplify(simplify));
            }
            ui.label(match method {
                SimplifyMethod::DouglasPeucker => "DP",
                SimplifyMethod::VisvalingamPreserve => "VW",
            });
        });
        if !p.reasoning.is_empty() {
            ui.label(RichText::new("Reasoning").strong());
            ui.add(egui::Label::new(RichText::new(&p.reasoning).italics()).wrap());
        }
    });
}
