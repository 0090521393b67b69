//! The first-run dialog: with neither a checkpoint nor an endpoint configured,
//! the workbench offers, in one window, to download RemoteReasoner-7B and SAM 2.1
//! from the hub (sizes asked of the hub first; resumable, each file verified), to
//! use a local checkpoint folder, or to use a server — instead of a hunt through
//! Settings. Help > Set up models… opens it again.

use egui::RichText;
use engine::hub::{Offer, REMOTE_REASONER_7B, RemoteFile, SAM2_1_TINY};

use super::WorkbenchApp;
use super::jobs::Pending;

/// What the dialog offers to download, in the order it downloads them.
pub const OFFERS: [Offer; 2] = [REMOTE_REASONER_7B, SAM2_1_TINY];

/// Where the answers will come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    #[default]
    Download,
    LocalFolder,
    Server,
}

/// The dialog's state while it is open.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub source: Source,
    /// Which of [`OFFERS`] to download.
    pub wanted: [bool; 2],
    /// Each offer's size in bytes, or why the hub could not say; `None` while asking.
    pub sizes: Option<Vec<Result<u64, String>>>,
    /// Offers still to download (the first is in flight).
    pub queue: Vec<usize>,
    pub local_model: String,
    pub local_sam: String,
    pub endpoint: String,
    pub api_model: String,
    /// The last download's failure, shown until the next try.
    pub error: Option<String>,
    /// Why the checkpoint folder was refused (checked when chosen, not every frame).
    pub local_error: Option<String>,
}

/// What the dialog asked for, applied after the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupCommand {
    Download,
    UseLocalFolder,
    UseServer,
    Later,
}

/// A byte count the way a download dialog shows it.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.0} MB", b as f64 / 1e6),
        b => format!("{:.0} kB", (b as f64 / 1e3).max(1.0)),
    }
}

/// An offer's size from the hub's listing (files it does not size count as 0).
fn total(plan: Result<Vec<RemoteFile>, String>) -> Result<u64, String> {
    plan.map(|files| files.iter().filter_map(|f| f.size).sum())
}

impl WorkbenchApp {
    /// Opens the dialog on a first start: nothing configured and the analyst has
    /// not chosen "Later" before.
    pub fn offer_setup(&mut self) {
        let s = &self.session.settings;
        if s.model.trim().is_empty() && s.endpoint.trim().is_empty() && !s.setup_seen {
            self.open_setup();
        }
    }

    /// Opens the dialog and asks the hub how big each offer is.
    pub fn open_setup(&mut self) {
        let s = &self.session.settings;
        self.session.setup = Some(Setup {
            wanted: [true, s.sam.trim().is_empty()],
            local_model: s.model.clone(),
            local_sam: s.sam.clone(),
            endpoint: s.endpoint.clone(),
            api_model: s.api_model.clone(),
            ..Setup::default()
        });
        let requests = OFFERS.iter().map(|o| self.offer_request(o)).collect();
        self.start(engine::RequestKind::PlanPull { requests }, Pending::PlanPull);
    }

    fn offer_request(&self, offer: &Offer) -> engine::hub::PullRequest {
        offer.request(Some(self.session.models_cache()), self.session.hub_endpoint())
    }

    /// Applies the dialog's choice.
    pub fn apply_setup(&mut self, command: SetupCommand) {
        let Some(setup) = self.session.setup.as_mut() else { return };
        let settings = &mut self.session.settings;
        match command {
            SetupCommand::Download => {
                setup.error = None;
                setup.queue = (0..OFFERS.len()).filter(|i| setup.wanted[*i]).collect();
                self.next_setup_download();
            }
            SetupCommand::UseLocalFolder => {
                let folder = std::path::Path::new(setup.local_model.trim());
                if !folder.join("config.json").is_file() {
                    setup.local_error = Some(format!("{} has no config.json.", folder.display()));
                    return;
                }
                settings.model = setup.local_model.trim().to_owned();
                settings.sam = setup.local_sam.trim().to_owned();
                settings.endpoint.clear();
                self.finish_setup("The local checkpoint is set; ask away.");
            }
            SetupCommand::UseServer => {
                settings.endpoint = setup.endpoint.trim().to_owned();
                settings.api_model = setup.api_model.trim().to_owned();
                self.finish_setup("The server is set; ask away.");
            }
            SetupCommand::Later => {
                settings.setup_seen = true;
                self.session.setup = None;
            }
        }
    }

    /// Starts the next queued download, or closes the dialog when none is left.
    fn next_setup_download(&mut self) {
        let Some(&i) = self.session.setup.as_ref().and_then(|s| s.queue.first()) else { return };
        let request = self.offer_request(&OFFERS[i]);
        let message = format!("{} — starting", OFFERS[i].title);
        self.start(
            engine::RequestKind::PullModel { request },
            Pending::Pull { fraction: 0.0, message, offer: Some(i) },
        );
    }

    /// A setup download finished: the settings now name it; on to the next.
    pub fn on_setup_pulled(&mut self, offer: usize, snapshot: &std::path::Path) {
        let o = OFFERS[offer];
        let settings = &mut self.session.settings;
        match o.files.first() {
            // A transformers checkpoint is named by its repository id (resolved in the cache).
            None => {
                settings.model = o.repo_id.to_owned();
                settings.endpoint.clear();
            }
            Some(file) => settings.sam = snapshot.join(file).display().to_string(),
        }
        let Some(setup) = self.session.setup.as_mut() else { return };
        setup.queue.retain(|i| *i != offer);
        if setup.queue.is_empty() {
            let names: Vec<&str> =
                OFFERS.iter().enumerate().filter(|(i, _)| setup.wanted[*i]).map(|(_, o)| o.title).collect();
            self.finish_setup(&format!("Downloaded and verified: {}. Ask away.", names.join("; ")));
        } else {
            self.next_setup_download();
        }
    }

    /// A setup download failed: the dialog says why and offers to try again
    /// (it resumes where it stopped).
    pub fn on_setup_failed(&mut self, error: &str) {
        if let Some(setup) = self.session.setup.as_mut() {
            setup.queue.clear();
            setup.error = Some(error.to_owned());
        }
    }

    /// The hub said what each offer holds: the dialog shows the sizes.
    pub fn on_pull_planned(&mut self, plans: Vec<Result<Vec<RemoteFile>, String>>) {
        if let Some(setup) = self.session.setup.as_mut() {
            setup.sizes = Some(plans.into_iter().map(total).collect());
        }
    }

    fn finish_setup(&mut self, message: &str) {
        self.session.settings.setup_seen = true;
        self.session.setup = None;
        self.notify_info(message.to_owned());
    }
}

/// The dialog. Returns what the analyst chose, if anything.
pub fn setup_ui(app: &mut WorkbenchApp, ctx: &egui::Context) {
    let pull = app.jobs.pull().map(|(f, what)| (f, what.to_owned()));
    let cache = app.session.models_cache();
    let Some(setup) = app.session.setup.as_mut() else { return };
    let mut command = None;
    let mut browse = None;
    let window = egui::Window::new("Set up RemoteReasoner").collapsible(false).resizable(false);
    window.anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0]).show(ctx, |ui| {
        ui.label("No RemoteReasoner checkpoint is configured yet. Where should the answers come from?");
        ui.add_space(6.0);
        ui.radio_value(&mut setup.source, Source::Download, "Download the models from the Hugging Face hub");
        if setup.source == Source::Download {
            ui.indent("download", |ui| download_ui(ui, setup, pull.as_ref(), &cache, &mut command));
        }
        ui.radio_value(&mut setup.source, Source::LocalFolder, "Use a checkpoint folder on this computer");
        if setup.source == Source::LocalFolder {
            ui.indent("local", |ui| local_ui(ui, setup, &mut command, &mut browse));
        }
        ui.radio_value(&mut setup.source, Source::Server, "Use a server (OpenAI-compatible: vLLM, SGLang, ours)");
        if setup.source == Source::Server {
            ui.indent("server", |ui| server_ui(ui, setup, &mut command));
        }
        ui.separator();
        ui.horizontal(|ui| {
            if ui.button("Later").on_hover_text("Settings and Help > Set up models… hold the same choices").clicked()
            {
                command = Some(SetupCommand::Later);
            }
            ui.label(RichText::new("Without a model you can still draw boxes (tool B).").weak());
        });
    });
    if let Some(c) = command {
        app.commands.push(super::Command::Setup(c));
    }
    if let Some(purpose) = browse {
        app.pick_file(purpose, false, "");
    }
    let picked_dir = app.take_picked(super::DialogPurpose::SetupModelDir);
    let picked_sam = app.take_picked(super::DialogPurpose::SetupSam);
    if let Some(setup) = app.session.setup.as_mut() {
        if let Some(p) = picked_dir {
            setup.local_model = p.display().to_string();
        }
        if let Some(p) = picked_sam {
            setup.local_sam = p.display().to_string();
        }
    }
}

fn download_ui(
    ui: &mut egui::Ui,
    setup: &mut Setup,
    pull: Option<&(f32, String)>,
    cache: &std::path::Path,
    command: &mut Option<SetupCommand>,
) {
    for (i, offer) in OFFERS.iter().enumerate() {
        let size = match setup.sizes.as_ref().map(|s| &s[i]) {
            None => "asking the hub for the size…".to_owned(),
            Some(Ok(bytes)) => human_size(*bytes),
            Some(Err(e)) => format!("size unknown ({e})"),
        };
        ui.add_enabled(pull.is_none(), egui::Checkbox::new(&mut setup.wanted[i], offer.title));
        ui.label(RichText::new(format!("{}  ·  {size}", offer.repo_id)).weak());
    }
    if let Some(sizes) = &setup.sizes {
        let wanted = sizes.iter().zip(setup.wanted).filter(|(_, w)| *w);
        let bytes: u64 = wanted.clone().filter_map(|(s, _)| s.as_ref().ok()).sum();
        let unknown = wanted.clone().any(|(s, _)| s.is_err());
        if bytes > 0 {
            ui.label(format!("{}{} to download", human_size(bytes), if unknown { " and more" } else { "" }));
        }
    }
    ui.label(
        RichText::new(format!(
            "Into {}. An interrupted download resumes where it stopped; every file is checked against the hash \
             the hub names it by.",
            cache.display()
        ))
        .weak(),
    );
    match pull {
        Some((fraction, what)) => {
            if let Some(&i) = setup.queue.first() {
                let n = setup.wanted.iter().filter(|w| **w).count();
                let k = n - setup.queue.len() + 1;
                ui.label(format!("Downloading {} ({k} of {n})", OFFERS[i].title));
            }
            ui.add(egui::ProgressBar::new(*fraction).show_percentage().text(what.as_str()));
        }
        None => {
            if let Some(e) = &setup.error {
                ui.colored_label(ui.visuals().error_fg_color, e);
            }
            let label = if setup.error.is_some() { "Resume download" } else { "Download" };
            if ui.add_enabled(setup.wanted.iter().any(|w| *w), egui::Button::new(label)).clicked() {
                *command = Some(SetupCommand::Download);
            }
        }
    }
}

fn local_ui(
    ui: &mut egui::Ui,
    setup: &mut Setup,
    command: &mut Option<SetupCommand>,
    browse: &mut Option<super::DialogPurpose>,
) {
    egui::Grid::new("setup_local").num_columns(3).show(ui, |ui| {
        let label = ui.label("Checkpoint folder");
        ui.add(egui::TextEdit::singleline(&mut setup.local_model).hint_text("holds config.json").desired_width(260.0))
            .labelled_by(label.id);
        if ui.button("Browse…").clicked() {
            *browse = Some(super::DialogPurpose::SetupModelDir);
        }
        ui.end_row();
        let label = ui.label("SAM checkpoint");
        ui.add(
            egui::TextEdit::singleline(&mut setup.local_sam)
                .hint_text("optional: .pt or .safetensors")
                .desired_width(260.0),
        )
        .labelled_by(label.id);
        if ui.button("Browse… ").clicked() {
            *browse = Some(super::DialogPurpose::SetupSam);
        }
        ui.end_row();
    });
    if let Some(e) = &setup.local_error {
        ui.colored_label(ui.visuals().warn_fg_color, e);
    }
    if ui.add_enabled(!setup.local_model.trim().is_empty(), egui::Button::new("Use this folder")).clicked() {
        *command = Some(SetupCommand::UseLocalFolder);
    }
}

fn server_ui(ui: &mut egui::Ui, setup: &mut Setup, command: &mut Option<SetupCommand>) {
    egui::Grid::new("setup_server").num_columns(2).show(ui, |ui| {
        let label = ui.label("Server URL");
        ui.add(egui::TextEdit::singleline(&mut setup.endpoint).hint_text("http://gpu:8000").desired_width(260.0))
            .labelled_by(label.id);
        ui.end_row();
        let label = ui.label("Model name");
        ui.add(
            egui::TextEdit::singleline(&mut setup.api_model)
                .hint_text("default: the first it lists")
                .desired_width(260.0),
        )
        .labelled_by(label.id);
        ui.end_row();
    });
    ui.label(RichText::new("Its key is read from RR_API_KEY or OPENAI_API_KEY, never stored.").weak());
    let url = setup.endpoint.trim();
    let ok = url.starts_with("http://") || url.starts_with("https://");
    if ui.add_enabled(ok, egui::Button::new("Use this server")).clicked() {
        *command = Some(SetupCommand::UseServer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_a_download_dialog_shows_them() {
        assert_eq!(human_size(15_231_000_000), "15.2 GB");
        assert_eq!(human_size(155_906_050), "156 MB");
        assert_eq!(human_size(2_300), "2 kB");
        assert_eq!(human_size(10), "1 kB");
        let files = vec![
            RemoteFile { name: "a".into(), size: Some(5) },
            RemoteFile { name: "b".into(), size: None },
            RemoteFile { name: "c".into(), size: Some(7) },
        ];
        assert_eq!(total(Ok(files)), Ok(12));
        assert_eq!(total(Err("offline".into())), Err("offline".into()));
    }
}
