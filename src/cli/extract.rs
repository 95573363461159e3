//! `extract` and `merge`: a collection into a feature folder, shard by shard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;

use super::groups::ExtractFlags;
use super::Outcome;
use crate::error::{Error, Result};
use crate::gpu::GpuOptions;
use crate::jobs::extract::{CropBox, ExtractConfig};

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Folder of images (searched recursively).
    pub input: PathBuf,
    /// Model weights: safetensors written by delg-gpu or its converters, or
    /// the name of a model fetched with `delg-gpu weights get` (default: the
    /// model set by `delg-gpu weights default`).
    #[arg(long, value_parser = super::weights::weights_path)]
    pub weights: Option<PathBuf>,
    /// Check that the weights hold this architecture (delg or dolg); the
    /// weights' metadata decides the model and the default settings.
    #[arg(long)]
    pub arch: Option<String>,
    /// Output folder (resumes an interrupted run into the same folder).
    #[arg(long)]
    pub out: PathBuf,
    /// JSON object of extraction settings whose fields (max_image_size,
    /// scales, global_scales, score_threshold, max_features, min_image_side,
    /// ...) replace the recipe's; flags override it (default: the recipe of
    /// the weights' architecture, docs/recipe.md §4).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ExtractFlags,
    /// Also write sign-binarised local descriptors (16 bytes each).
    #[arg(long)]
    pub binarize: bool,
    /// Process only shard i of N (e.g. 0/4): several machines split a
    /// collection. `auto` takes the shard from a Slurm job array
    /// (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, with --shards). Default: the whole collection.
    #[arg(long)]
    pub shard: Option<String>,
    /// With --shard auto: the number of shards. Needed for Kubernetes; for
    /// Slurm it makes the array's task ids the shard indices (0..N-1), so an
    /// array with gaps can rerun some shards (default under Slurm: the array's task range).
    #[arg(long, requires = "shard")]
    pub shards: Option<usize>,
    /// Extract the queries of this ground truth file (gnd.json) instead of the
    /// whole folder, each cropped to its box at the scale it has in the full
    /// image. INPUT must be the folder that holds gnd.json: query paths are
    /// its image_dir/NAME.ext. Default: every image, uncropped.
    #[arg(long, conflicts_with = "boxes")]
    pub queries_of: Option<PathBuf>,
    /// Extract only the images of this CSV (path,x1,y1,x2,y2 per line, paths
    /// relative to the folder), each cropped to its box (default: every
    /// image, uncropped).
    #[arg(long)]
    pub boxes: Option<PathBuf>,
    /// Images of equal resized size run together, N per pyramid level (at
    /// most 64); the features do not depend on it. Default: the adapter's
    /// tuning table (1 on CPU emulations such as lavapipe, 4 on discrete GPUs).
    #[arg(long, value_name = "N", value_parser = super::checks::int_in::<usize, 1, 64>)]
    pub batch: Option<usize>,
    /// No progress bar (the line of each skipped image is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Fail (exit code 1) when any image could not be extracted, instead of
    /// exit code 3.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Feature folders written by `extract --shard i/N`.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output feature folder (created; must not hold another run's features).
    #[arg(long)]
    pub out: PathBuf,
}

pub(super) fn run(opts: &GpuOptions, a: &ExtractArgs) -> Result<Outcome> {
    let weights = super::weights::weights_or_default(a.weights.as_deref())?;
    let config = extract_config(a, &weights)?;
    let (only, crops) = selection(a)?;
    let gpu = super::open_gpu(opts)?;
    let job = crate::jobs::extract::ExtractJob {
        input: a.input.clone(),
        out: a.out.clone(),
        weights,
        config,
        shard: shard(a)?,
        only,
        crops,
        quiet: a.quiet,
        batch: a.batch,
    };
    let s = crate::jobs::extract::run_extract(&gpu, &job)?;
    let errors = a.out.join("errors.txt");
    println!(
        "{} images: {} extracted, {} resumed, {} failed{}; {} local features, {:.1} s, {:.2} images/s",
        s.images,
        s.extracted_now,
        s.resumed,
        s.failed,
        if s.failed > 0 { format!(" (reasons in {})", errors.display()) } else { String::new() },
        s.local_features,
        s.seconds,
        s.extracted_now as f64 / s.seconds.max(1e-9)
    );
    match (s.failed, a.strict) {
        (0, _) => Ok(Outcome::Complete),
        (n, true) => Err(Error::file(
            &a.input,
            format!(
                "{n} entries were skipped and --strict is set: see {}",
                errors.display()
            ),
        )),
        _ => Ok(Outcome::SomeFailed),
    }
}

/// The shard of `--shard i/N` or, with `--shard auto`, of the scheduler.
fn shard(a: &ExtractArgs) -> Result<Option<crate::jobs::collection::Shard>> {
    match (a.shard.as_deref(), a.shards) {
        (None, _) => Ok(None),
        (Some("auto"), shards) => {
            let s = crate::jobs::scheduler::shard_from_env(shards, |k| std::env::var(k).ok())?;
            eprintln!("shard {}/{} ({})", s.shard.index, s.shard.count, s.source);
            Ok(Some(s.shard))
        }
        (Some(_), Some(_)) => Err(Error::InvalidArgument(
            "--shards goes with --shard auto; --shard i/N already gives the count".into(),
        )),
        (Some(given), None) => crate::jobs::collection::Shard::parse(given).map(Some),
    }
}

/// The weights' defaults, then the --config file, then the flags.
fn extract_config(a: &ExtractArgs, weights: &Path) -> Result<ExtractConfig> {
    let (stored, defaults) = crate::jobs::extract::defaults_for_weights(weights)?;
    if let Some(arch) = &a.arch {
        if arch != stored {
            return Err(Error::file(
                weights,
                format!(
                    "holds a '{stored}' model, not '{arch}': drop --arch or pass other weights"
                ),
            ));
        }
    }
    let mut cfg = match &a.config {
        Some(p) => crate::jobs::extract::settings_file_over(defaults, p)?,
        None => defaults,
    };
    cfg.binarize |= a.binarize;
    a.settings.apply(&mut cfg)?;
    Ok(cfg)
}

/// The images (all without a selection) and crop boxes `--queries-of` or `--boxes` ask for.
#[allow(clippy::type_complexity)]
fn selection(a: &ExtractArgs) -> Result<(Option<Vec<String>>, HashMap<String, CropBox>)> {
    if let Some(gnd) = &a.queries_of {
        let (only, crops) = crate::jobs::extract::queries_of(gnd)?;
        return Ok((Some(only), crops));
    }
    let mut crops = HashMap::new();
    match &a.boxes {
        Some(csv) => {
            let mut only = Vec::new();
            for (path, b) in crate::jobs::collection::read_box_list(csv)? {
                crops.insert(path.clone(), b);
                only.push(path);
            }
            Ok((Some(only), crops))
        }
        None => Ok((None, crops)),
    }
}

pub(super) fn merge(a: &MergeArgs) -> Result<()> {
    let s = crate::jobs::merge::merge_shards(&a.inputs, &a.out)?;
    println!(
        "merged {} images from {} shards into {} ({} lines in errors.txt)",
        s.images,
        s.shards,
        a.out.display(),
        s.failed
    );
    Ok(())
}
