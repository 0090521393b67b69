//! `remote-reasoner models pull|list`: getting checkpoints from the Hugging Face hub
//! (or any server speaking its protocol) and seeing what is installed.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use engine::hub::{self, PullRequest};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download a checkpoint (e.g. 1e12Leon/RemoteReasoner) and verify every file.
    Pull {
        repo_id: String,
        /// Fetch only these files (e.g. --file sam2.1_hiera_tiny.pt from facebook/sam2.1-hiera-tiny);
        /// default: a transformers checkpoint's inference files.
        #[arg(long = "file")]
        files: Vec<String>,
        #[arg(long, default_value = "main")]
        revision: String,
        /// Hub cache directory (default: $RR_MODELS, else the Hugging Face cache).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Hub server (default: $HF_ENDPOINT, else https://huggingface.co).
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// List installed checkpoints with their size and weights hash.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: &ModelsArgs) -> anyhow::Result<()> {
    match &args.command {
        ModelsCommand::Pull { repo_id, files, revision, dir, endpoint } => {
            let req = PullRequest {
                repo_id: repo_id.clone(),
                revision: revision.clone(),
                cache_dir: dir.clone(),
                endpoint: endpoint.clone(),
                files: files.clone(),
            };
            let mut err = std::io::stderr().lock();
            let mut last = (String::new(), u64::MAX);
            let snapshot = hub::pull(&req, |p| {
                let pct = (p.file_bytes * 100).checked_div(p.file_size).unwrap_or(100);
                if last.0 != p.file || pct / 5 != last.1 / 5 {
                    let _ = write!(
                        err,
                        "\r[{}/{}] {} {:>3}% of {:.1} MB   ",
                        p.file_index + 1,
                        p.files,
                        p.file,
                        pct,
                        p.file_size as f64 / 1e6
                    );
                    let _ = err.flush();
                    last = (p.file.clone(), pct);
                }
            })?;
            let _ = writeln!(err);
            println!("{}", snapshot.display());
            Ok(())
        }
        ModelsCommand::List { dir, json } => {
            let dir = dir.clone().unwrap_or_else(hub::default_cache_dir);
            let installed = hub::list(&dir)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&installed)?);
            } else if installed.is_empty() {
                println!("No checkpoints in {} (remote-reasoner models pull REPO_ID).", dir.display());
            } else {
                for m in installed {
                    println!(
                        "{}  {}  {} files  {:.2} GB  weights {}\n    {}",
                        m.repo_id,
                        &m.revision[..m.revision.len().min(12)],
                        m.files,
                        m.bytes as f64 / 1e9,
                        m.weights_hash,
                        m.path.display()
                    );
                }
            }
            Ok(())
        }
    }
}
