//! `weights list | get | import`: the public models of weights/registry.toml
//! fetched, and PyTorch or TensorFlow 2 checkpoints converted without Python.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::Result;
use crate::jobs::weights_get::{self, GetOptions, Registry};
use crate::jobs::weights_import::{import, Arch, ImportOptions, LayoutChoice};

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Convert a PyTorch checkpoint (torch.save .pth/.pt, pycls .pyth) or a
    /// TensorFlow 2 checkpoint of the official DELG model into a delg-gpu
    /// weight file, as tools/convert_torch.py, tools/convert_dolg_pyth.py and
    /// tools/convert_delg_tf2.py do, without Python (docs/weights.md).
    Import(ImportArgs),
    /// The public models `get` fetches (weights/registry.toml), and which are fetched.
    List(RegistryArgs),
    /// Download a model of `list`, verify its SHA-256, convert it and keep it
    /// in the data directory (then `--weights NAME` finds it) or at --out.
    /// A cut download resumes when run again.
    Get(GetArgs),
    /// Make a fetched model (or a weight file) the one extract, eval and
    /// match use when no --weights is given; without NAME, show it.
    Default(DefaultArgs),
}

#[derive(Args, Debug)]
pub struct DefaultArgs {
    /// A model of `delg-gpu weights list` fetched with `get`, or a weight file.
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// A registry file instead of the built-in one (default: $DELG_GPU_REGISTRY,
    /// else the built-in registry).
    #[arg(long)]
    pub registry: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The model's name in `delg-gpu weights list`.
    pub name: String,
    /// Write the weights here instead of the data directory (default:
    /// $DELG_GPU_DATA_DIR, else the platform's data directory/delg-gpu/weights).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use a download whose SHA-256 the registry does not record (its digest is printed).
    #[arg(long)]
    pub accept_unverified: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The checkpoint. PyTorch: a state dict, or a checkpoint dict holding
    /// one. TensorFlow 2: a SavedModel directory, its variables/ directory, a
    /// training checkpoint directory, prefix or one of its files (.index,
    /// .data-*).
    pub path: PathBuf,
    /// The model a PyTorch checkpoint holds: a whole DELG model (torchvision
    /// backbone names, delg-gpu head names) or an official DOLG checkpoint.
    /// A TensorFlow checkpoint is always DELG. No default: required for a
    /// PyTorch checkpoint.
    #[arg(long, value_parser = ["delg", "dolg"])]
    pub arch: Option<String>,
    /// DELG backbone layout; auto: delg when the convolutions have biases.
    #[arg(long, value_parser = ["auto", "torchvision", "delg"], default_value = "auto")]
    pub layout: String,
    /// DOLG: rates of the multi-atrous block (checkpoints do not store them).
    #[arg(long, value_delimiter = ',', default_value = "6,12,18")]
    pub dilations: Vec<usize>,
    /// DOLG: keep desc_cls.* (class weights) to continue training.
    #[arg(long)]
    pub keep_classifier: bool,
    /// DELG: attention threshold τ to store with the weights (default: none stored).
    #[arg(long)]
    pub score_threshold: Option<f64>,
    /// The delg-gpu .safetensors to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(what: WeightsCommand) -> Result<()> {
    let lines = match what {
        WeightsCommand::Import(a) => run_import(a)?,
        WeightsCommand::List(a) => weights_get::list(&Registry::load(a.registry.as_deref())?)?,
        WeightsCommand::Get(a) => {
            let registry = Registry::load(a.registry.registry.as_deref())?;
            let opts = GetOptions {
                name: a.name,
                out: a.out,
                accept_unverified: a.accept_unverified,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            weights_get::get(&registry, &opts)?
        }
        WeightsCommand::Default(a) => match a.name {
            Some(name) => weights_get::set_default(&name)?,
            None => vec![weights_get::default_weights()?.display().to_string()],
        },
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn run_import(a: ImportArgs) -> Result<Vec<String>> {
    let opts = ImportOptions {
        arch: a.arch.map(|arch| {
            if arch == "dolg" {
                Arch::Dolg
            } else {
                Arch::Delg
            }
        }),
        layout: match a.layout.as_str() {
            "torchvision" => LayoutChoice::Torchvision,
            "delg" => LayoutChoice::Delg,
            _ => LayoutChoice::Auto,
        },
        src: a.path,
        out: a.out,
        dilations: a.dilations,
        keep_classifier: a.keep_classifier,
        score_threshold: a.score_threshold,
    };
    import(&opts)
}

/// `--weights`: a path, or the name of a fetched model of the registry
/// (one resolution for every command; see [`weights_get::resolve`]).
pub fn weights_path(arg: &str) -> std::result::Result<PathBuf, String> {
    weights_get::resolve(std::path::Path::new(arg)).map_err(|e| e.to_string())
}

/// `--weights` when given, else the default model (`weights default`).
pub fn weights_or_default(weights: Option<&std::path::Path>) -> Result<PathBuf> {
    match weights {
        Some(w) => Ok(w.to_path_buf()),
        None => weights_get::default_weights(),
    }
}
