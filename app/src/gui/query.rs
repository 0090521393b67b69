//! The query panel: what to ask, about which area, with which model; Run and
//! Cancel; the stage line; the reasoning trace as it streams; VQA/caption answers.

use egui::{Color32, RichText};

use super::Command;
use super::WorkbenchApp;
use super::session::{AreaMode, NO_MODEL, Tool};
use engine::base::Goal;

pub fn query_panel_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    egui::Panel::right("query_panel").default_size(340.0).show(ui, |ui| {
        egui::ScrollArea::vertical().id_salt("query_scroll").show(ui, |ui| {
            ui.heading("Ask");
            models_ui(app, ui);
            ui.separator();
            let s = &mut app.session;
            ui.horizontal(|ui| {
                let label = ui.label("Task");
                egui::ComboBox::from_id_salt("task")
                    .selected_text(s.task.label())
                    .show_ui(ui, |ui| {
                        for t in Goal::ALL {
                            ui.selectable_value(&mut s.task, t, t.label());
                        }
                    })
                    .response
                    .labelled_by(label.id);
            });
            let enabled = s.task != Goal::Caption;
            let label = ui.label("Question");
            let edit = ui.add_enabled(
                enabled,
                egui::TextEdit::multiline(&mut s.query)
                    .hint_text("e.g. where can planes take off?")
                    .desired_rows(2)
                    .desired_width(f32::INFINITY),
            );
            let edit = edit.labelled_by(label.id);
            let enter = edit.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift);
            if enter {
                // Enter runs; Shift+Enter makes a new line.
                s.query = s.query.trim_end_matches('\n').to_owned();
            }
            if !s.history.is_empty() {
                let hlabel = ui.label("History");
                egui::ComboBox::from_id_salt("history")
                    .selected_text("Earlier questions…")
                    .width(ui.available_width() - 8.0)
                    .show_ui(ui, |ui| {
                        for q in s.history.clone() {
                            if ui.selectable_label(false, &q).clicked() {
                                s.query = q;
                            }
                        }
                    })
                    .response
                    .labelled_by(hlabel.id);
            }
            ui.horizontal(|ui| {
                let label = ui.label("Area");
                ui.selectable_value(&mut s.area_mode, AreaMode::View, "View").labelled_by(label.id);
                if ui
                    .selectable_label(s.area_mode == AreaMode::Drawn, "Rectangle")
                    .on_hover_text("Drag a rectangle on the map (A)")
                    .clicked()
                {
                    s.tool = Tool::DrawArea;
                    s.area_mode = AreaMode::Drawn;
                }
                ui.selectable_value(&mut s.area_mode, AreaMode::Whole, "Whole raster");
            });
            if let Some(w) = super::overlay::area_window(app) {
                ui.label(RichText::new(format!("{} × {} px at ({}, {})", w.width, w.height, w.x, w.y)).weak());
            } else if app.session.area_mode == AreaMode::Drawn {
                ui.label(RichText::new("Drag the area on the map.").weak());
            }
            run_buttons_ui(app, ui, enter);
            sweep_ui(app, ui);
            ui.separator();
            find_all_ui(app, ui);
            ui.separator();
            trace_ui(app, ui);
        });
    });
}

fn models_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let s = &app.session;
    let model = match (&s.reasoner, s.settings.model.trim()) {
        (Some(r), _) if r.device == "remote" => format!("Model: {} at {} (remote)", r.precision, r.dir.display()),
        (None, _) if !s.settings.endpoint.trim().is_empty() => {
            format!("Model: {} (connects on first question)", s.settings.endpoint.trim())
        }
        (Some(r), _) => format!(
            "Model: {} ({}, {}, {:.1} B parameters)",
            short(&r.dir.display().to_string()),
            r.device,
            r.precision,
            r.parameters as f64 / 1e9
        ),
        (None, "") => "Model: none configured".into(),
        (None, m) => format!("Model: {} (loads on first question)", short(m)),
    };
    ui.label(model);
    let seg = match (&s.segmenter, s.settings.sam.trim()) {
        (Some(m), _) => format!("Segmenter: {m}"),
        (None, "") => "Segmenter: watershed fallback (no SAM checkpoint)".into(),
        (None, p) => format!("Segmenter: {} (loads when needed)", short(p)),
    };
    ui.label(seg);
    let unconfigured = s.settings.model.trim().is_empty() && s.settings.endpoint.trim().is_empty();
    if unconfigured {
        ui.label(RichText::new(NO_MODEL).color(Color32::from_rgb(230, 180, 80)));
    }
    ui.horizontal(|ui| {
        if unconfigured && app.session.setup.is_none() && ui.button("Set up models…").clicked() {
            app.open_setup();
        }
        if ui.button("Settings…").clicked() {
            app.session.show_settings = true;
        }
    });
}

fn short(s: &str) -> String {
    let parts: Vec<&str> = s.rsplit('/').take(2).collect();
    if parts.len() == 2 && s.matches('/').count() > 1 { format!("…/{}/{}", parts[1], parts[0]) } else { s.to_owned() }
}

fn run_buttons_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, enter: bool) {
    let running = app.session.run.as_ref().is_some_and(super::session::Run::is_running);
    ui.horizontal(|ui| {
        let can_run = app.doc.is_some() && !running;
        let run = ui.add_enabled(can_run, egui::Button::new("Run")).on_hover_text("Ask (Ctrl+Enter)").clicked();
        let ctrl_enter = ui.input(|i| i.modifiers.command && i.key_pressed(egui::Key::Enter));
        if (run || enter || ctrl_enter) && can_run {
            app.commands.push(Command::RunQuery);
        }
        if ui.add_enabled(running, egui::Button::new("Cancel")).clicked() {
            app.commands.push(Command::CancelRun);
        }
        if let Some(r) = &app.session.run {
            if let Some(stage) = &r.stage {
                ui.spinner();
                ui.label(format!("{}  {:.1} s", stage.label(), r.started.elapsed().as_secs_f64()));
                ui.ctx().request_repaint_after(std::time::Duration::from_millis(100));
            } else if let Some(d) = r.finished {
                let what = if r.error.is_some() { "Stopped" } else { "Done" };
                ui.label(RichText::new(format!("{what} in {:.1} s", d.as_secs_f64())).weak());
            }
        }
    });
}

/// Sweeping the whole raster tile by tile, with progress and Cancel.
fn sweep_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    match app.jobs.sweep().map(|(job, sw)| (job, sw.clone())) {
        Some((job, sw)) => {
            ui.horizontal(|ui| {
                ui.add(egui::ProgressBar::new(sw.fraction).show_percentage().desired_width(120.0));
                ui.label(&sw.message);
                if ui.button("Cancel sweep").clicked() {
                    app.commands.push(Command::Cancel(job));
                }
            });
            ui.ctx().request_repaint_after(std::time::Duration::from_millis(200));
        }
        None => {
            let idle = app.doc.is_some() && !app.busy();
            if ui
                .add_enabled(idle, egui::Button::new("Sweep whole raster"))
                .on_hover_text("Ask about every 1024-px tile (128 px overlap) and merge across the seams; resumable")
                .clicked()
            {
                app.commands.push(Command::RunSweep);
            }
        }
    }
}

/// "Find all" (SAM 3): a noun phrase and exemplar boxes drawn on the map find
/// every instance in the area; "From the answer" lets the reasoner's answer to
/// the question above supply the exemplars (and the concept, when none is typed).
fn find_all_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    ui.label(RichText::new("Find all (SAM 3)").strong());
    let s = &mut app.session;
    let label = ui.label("Concept");
    ui.add(
        egui::TextEdit::singleline(&mut s.find.concept)
            .hint_text("e.g. ship, storage tank")
            .desired_width(f32::INFINITY),
    )
    .labelled_by(label.id);
    ui.horizontal(|ui| {
        let drawing = s.tool == Tool::DrawExemplar;
        if ui
            .selectable_label(drawing, "Draw exemplar")
            .on_hover_text("Drag a box around one instance (E); SAM 3 finds the others like it")
            .clicked()
        {
            s.tool = if drawing { Tool::Select } else { Tool::DrawExemplar };
        }
        ui.checkbox(&mut s.find.negative, "counter-example");
    });
    if !s.find.exemplars.is_empty() {
        ui.horizontal(|ui| {
            let (pos, neg) =
                s.find.exemplars.iter().fold((0, 0), |(p, n), e| if e.positive { (p + 1, n) } else { (p, n + 1) });
            ui.label(format!("{pos} exemplar(s), {neg} counter-example(s)"));
            if ui.small_button("Clear").clicked() {
                s.find.exemplars.clear();
            }
        });
    }
    ui.checkbox(&mut s.find.from_answer, "From the answer")
        .on_hover_text("Ask the question above first: its boxes become exemplars and its concept the text, kept to the area the answer points at");
    ui.add(egui::Slider::new(&mut s.find.threshold, 0.05..=0.95).text("min score"));
    let idle = app.doc.is_some() && !app.busy();
    if ui
        .add_enabled(idle, egui::Button::new("Find all"))
        .on_hover_text("Every instance in the area, one feature each")
        .clicked()
    {
        app.commands.push(Command::FindAll);
    }
}

fn trace_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui) {
    let Some(run) = &app.session.run else {
        ui.label(RichText::new("The model's reasoning appears here as it is generated.").weak());
        return;
    };
    ui.label(RichText::new("Reasoning").strong());
    let (think, answer) = split_trace(&run.text);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_min_width(ui.available_width());
        ui.add(egui::Label::new(RichText::new(if think.is_empty() { "…" } else { think }).italics()).wrap());
    });
    if let Some(a) = answer {
        ui.label(RichText::new("Answer").strong());
        ui.add(egui::Label::new(a).wrap());
    }
    if let Some(o) = &run.outcome {
        if run.task.grounds() {
            ui.label(format!("{} box(es) found", o.boxes.len()));
        }
        for r in &o.answer.repairs {
            ui.label(RichText::new(format!("note: {r:?}")).weak());
        }
    }
    if let Some(e) = &run.error {
        ui.label(RichText::new(e).color(Color32::from_rgb(240, 110, 110)));
    }
}

/// The streamed text split into the `<think>` part and the answer (once it starts).
pub fn split_trace(text: &str) -> (&str, Option<&str>) {
    let body = text.trim_start().strip_prefix("<think>").unwrap_or(text);
    match body.split_once("</think>") {
        Some((think, rest)) => {
            let rest = rest.trim();
            let rest = rest.strip_prefix("<answer>").unwrap_or(rest);
            let rest = rest.strip_suffix("</answer>").unwrap_or(rest);
            (think.trim(), Some(rest.trim()))
        }
        None => (body.trim(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_splits_as_it_streams() {
        assert_eq!(split_trace("<think>Runw"), ("Runw", None));
        assert_eq!(
            split_trace("<think>Runways.</think>\n<answer>[[1,2,3,4]]</answer>"),
            ("Runways.", Some("[[1,2,3,4]]"))
        );
        assert_eq!(split_trace("plain"), ("plain", None));
    }
}
