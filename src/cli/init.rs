//! `init-weights`: a randomly initialised model.

use std::path::{Path, PathBuf};

use clap::Args;

use super::checks;
use super::groups::ModelArgs;
use crate::error::Result;
use crate::model::ModelConfig;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Weight file to write (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random initialisation (the same seed gives the same weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Attention threshold stored with the model.
    #[arg(long, value_parser = checks::finite, default_value_t = 0.0)]
    pub score_threshold: f32,
}

pub(super) fn run(a: &InitArgs) -> Result<()> {
    write_random(&a.model.model_config()?, a.seed, a.score_threshold, &a.out)
}

/// Writes a random `model` to `out` and says so (`init-weights`, and `demo`
/// without --weights).
pub(super) fn write_random(
    model: &ModelConfig,
    seed: u64,
    score_threshold: f32,
    out: &Path,
) -> Result<()> {
    let file = model.random_weights(seed, score_threshold)?;
    file.save(out)?;
    let n: usize = file.tensors.values().map(|t| t.data.len()).sum();
    println!(
        "wrote {} ({} tensors, {:.2} M parameters)",
        out.display(),
        file.tensors.len(),
        n as f64 / 1e6
    );
    Ok(())
}
