//! `weights import`: a PyTorch or TensorFlow 2 checkpoint converted without
//! Python.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::Result;
use crate::jobs::weights_import::{import, Arch, ImportOptions, LayoutChoice};

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Convert a PyTorch checkpoint (torch.save .pth/.pt, pycls .pyth) or a
    /// TensorFlow 2 checkpoint of the official DELG model into a delg-gpu
    /// weight file, as tools/convert_torch.py, tools/convert_dolg_pyth.py and
    /// tools/convert_delg_tf2.py do, without Python (docs/weights.md).
    Import(ImportArgs),
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
    /// A TensorFlow checkpoint is always DELG.
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
    let WeightsCommand::Import(a) = what;
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
    for line in import(&opts)? {
        println!("{line}");
    }
    Ok(())
}
