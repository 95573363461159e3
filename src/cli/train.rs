//! `train`: DELG or DOLG from image-level labels.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;

use super::checks;
use super::groups::{ModelArgs, MAX_PIXELS};
use crate::error::{Error, Result};
use crate::gpu::device::list_adapters;
use crate::gpu::{DeviceProfile, Gpu, GpuOptions};
use crate::jobs::distributed::World;
use crate::jobs::train::{run_train_across, DataSource, RankOptions, TrainJob, TrainOptions};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training images: a folder with one sub-folder per class (one of
    /// --data, --gnd or --csv is required; no default).
    #[arg(long, conflicts_with_all = ["csv", "gnd"])]
    pub data: Option<PathBuf>,
    /// Or the labelled images of a gnd.json ground truth (its "labels" map;
    /// no default).
    #[arg(long, conflicts_with = "csv")]
    pub gnd: Option<PathBuf>,
    /// Or a GLDv2-style CSV (id,landmark_id) with --images as the image root
    /// (no default).
    #[arg(long, requires = "images")]
    pub csv: Option<PathBuf>,
    /// Image root of --csv: each id's image is found under it (required with
    /// --csv; no default).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Run folder: config, metrics.jsonl, checkpoints, model.safetensors. Rerun to resume.
    #[arg(long)]
    pub run: PathBuf,
    /// Initial weights: a file, or a fetched model of `delg-gpu weights list`
    /// such as resnet50-imagenet (an ImageNet backbone); tensors it lacks,
    /// such as the heads, start random (default: every tensor random).
    #[arg(long, value_parser = super::weights::weights_path)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per micro-batch: what one forward and backward pass holds in device memory.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 4096>, default_value_t = TrainOptions::default().batch)]
    pub batch: usize,
    /// Micro-batches averaged into one SGD step (effective batch = batch × accumulate);
    /// batch norm statistics stay per micro-batch.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 4096>, default_value_t = TrainOptions::default().accumulate)]
    pub accumulate: usize,
    /// Square training size (the paper's is 512).
    #[arg(long, value_parser = checks::int_in::<usize, 32, 4096>, default_value_t = TrainOptions::default().image_size)]
    pub size: usize,
    /// SGD steps of the whole run (the schedule spans them).
    #[arg(long, value_parser = checks::int_in::<u64, 1, 1_000_000_000>, default_value_t = TrainOptions::default().steps)]
    pub steps: u64,
    /// Initial learning rate.
    #[arg(long, value_parser = checks::positive, default_value_t = TrainOptions::default().lr)]
    pub lr: f32,
    /// linear or cosine (with --warmup steps). Default: linear for DELG,
    /// cosine with a warm-up over the first 5% of the steps for DOLG.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Warm-up steps of the cosine schedule (default: 5% of --steps for DOLG, 0 for DELG).
    #[arg(long, value_parser = checks::int_in::<u64, 0, 1_000_000_000>)]
    pub warmup: Option<u64>,
    /// SGD momentum.
    #[arg(long, value_parser = checks::fraction_f32, default_value_t = TrainOptions::default().momentum)]
    pub momentum: f32,
    /// Nesterov momentum (default: off for DELG, on for DOLG).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub nesterov: Option<bool>,
    /// L2 weight decay (default: 0 for DELG, 1e-4 for DOLG).
    #[arg(long, value_parser = checks::non_negative)]
    pub weight_decay: Option<f32>,
    /// Gradient clipping by global norm; 0 turns it off. Default: 10 for DELG, off for DOLG.
    #[arg(long, value_parser = checks::non_negative)]
    pub clip_norm: Option<f32>,
    /// ArcFace margin (default: 0.1 for DELG, 0.15 for DOLG).
    #[arg(long, value_parser = checks::margin)]
    pub arcface_margin: Option<f32>,
    /// ArcFace scale γ (default: 45.25 for DELG, 30 for DOLG).
    #[arg(long, value_parser = checks::positive)]
    pub arcface_scale: Option<f32>,
    /// DOLG: plain ArcFace, without the official head's CurricularFace-style
    /// re-weighting of hard negatives.
    #[arg(long)]
    pub plain_arcface: bool,
    /// DELG: weight of the attention head's classification loss.
    #[arg(long, value_parser = checks::non_negative, default_value_t = TrainOptions::default().attention_weight)]
    pub attention_weight: f32,
    /// DELG: weight of the local descriptors' reconstruction loss.
    #[arg(long, value_parser = checks::non_negative, default_value_t = TrainOptions::default().reconstruction_weight)]
    pub reconstruction_weight: f32,
    /// Seed of the initialisation, the validation split, batch order and augmentation.
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    /// Steps between checkpoints (a run resumes from the last one).
    #[arg(long, value_parser = checks::int_in::<u64, 1, 1_000_000_000>, default_value_t = TrainOptions::default().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Fraction of the images held out to measure validation accuracy.
    #[arg(long, value_parser = checks::fraction, default_value_t = TrainOptions::default().val_fraction)]
    pub val_fraction: f64,
    /// Random horizontal flips (default: off for DELG, on for DOLG).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub flip: Option<bool>,
    /// Images with more pixels fail before decoding.
    #[arg(long, value_parser = MAX_PIXELS, default_value_t = crate::io::images::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// No progress bar, skipped-image or validation lines: only the final summary.
    #[arg(long)]
    pub quiet: bool,
    /// Under mpirun/srun: steps between checks that every rank holds the same
    /// parameters (a checksum; 0 checks only at the end).
    #[arg(long, value_parser = checks::int_in::<u64, 0, 1_000_000_000>, default_value_t = 100)]
    pub check_every: u64,
    /// Under mpirun/srun: MiB of gradients per all-reduce bucket. Each bucket
    /// is summed across the ranks as soon as the backward pass has finished
    /// its gradients (last layers first), while the device computes the rest;
    /// 0 sums all gradients at once after the backward pass. Same results.
    #[arg(long, value_parser = checks::non_negative, default_value_t = crate::jobs::allreduce::DEFAULT_BUCKET_MIB as f32)]
    pub allreduce_bucket_mb: f32,
    /// Print the planned device memory of a step on the chosen adapter by category (kernel scratch included) and exit.
    #[arg(long)]
    pub plan_only: bool,
    /// With --plan-only: plan for a kind of adapter instead of the one
    /// present, with no device at all (lavapipe-256, lavapipe-512,
    /// discrete-gpu, wave32-64-gpu, apple-gpu, intel-igpu, webgpu-baseline,
    /// small-bindings;
    /// default: the adapter present).
    #[arg(long, requires = "plan_only", value_name = "PROFILE", value_parser = checks::device_profile)]
    pub device_profile: Option<DeviceProfile>,
}

impl TrainArgs {
    /// The labelled images the flags name.
    fn data_source(&self) -> Result<DataSource> {
        match (&self.data, &self.gnd, &self.csv, &self.images) {
            (Some(d), _, _, _) => Ok(DataSource::Folders(d.clone())),
            (None, Some(g), _, _) => Ok(DataSource::Gnd(g.clone())),
            (None, None, Some(csv), Some(root)) => Ok(DataSource::Csv {
                csv: csv.clone(),
                root: root.clone(),
            }),
            _ => Err(Error::InvalidArgument(
                "give --data FOLDER, --gnd gnd.json, or --csv FILE with --images ROOT".into(),
            )),
        }
    }

    fn options(&self) -> TrainOptions {
        TrainOptions {
            batch: self.batch,
            accumulate: self.accumulate,
            image_size: self.size,
            steps: self.steps,
            lr: self.lr,
            schedule: self.schedule.clone(),
            warmup: self.warmup,
            momentum: self.momentum,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
            clip_norm: self.clip_norm,
            arcface_margin: self.arcface_margin,
            arcface_scale: self.arcface_scale,
            plain_arcface: self.plain_arcface,
            attention_weight: self.attention_weight,
            reconstruction_weight: self.reconstruction_weight,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            val_fraction: self.val_fraction,
            flip: self.flip,
        }
    }
}

pub(super) fn run(opts: &GpuOptions, a: &TrainArgs) -> Result<()> {
    let world = World::from_launcher()?;
    let result = run_as_rank(opts, a, &world);
    if let Err(e) = &result {
        if world.size() > 1 {
            // The other ranks would wait for this one forever.
            rank_line(format!(
                "error on rank {} of {}: {e}",
                world.rank(),
                world.size()
            ));
            world.abort_others(1);
        }
    }
    result
}

/// The adapter options of this rank: `--adapter` (or WGPU_ADAPTER_NAME) when
/// given, else, among the adapters of the best adapter's backend (the others
/// are the same devices through a slower API, e.g. GL), the one whose index
/// is the rank's local rank, wrapping around when a machine runs more ranks
/// than it has adapters.
fn rank_adapter(opts: &GpuOptions, world: &World) -> Result<GpuOptions> {
    let mut opts = opts.clone();
    if world.size() > 1 && opts.adapter.is_none() && std::env::var_os("WGPU_ADAPTER_NAME").is_none()
    {
        let adapters = list_adapters(&opts)?;
        let Some(best) = adapters.first().map(|a| a.get_info().backend) else {
            return Ok(opts);
        };
        let same_api: Vec<usize> = (0..adapters.len())
            .filter(|&i| adapters[i].get_info().backend == best)
            .collect();
        let index = same_api[world.local_rank() % same_api.len()];
        opts.adapter = Some(index.to_string());
    }
    Ok(opts)
}

/// Writes one line to stderr in a single write. Every rank of a job shares the
/// launcher's stderr pipe, and `eprintln!` writes each formatted piece
/// separately, so lines of different ranks would interleave mid-line.
fn rank_line(mut line: String) {
    use std::io::Write;
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn run_as_rank(opts: &GpuOptions, a: &TrainArgs, world: &World) -> Result<()> {
    let data = a.data_source()?.load()?;
    let config = a
        .options()
        .resolve(a.model.model_config()?, data.classes.len())?;
    let gpu = match &a.device_profile {
        Some(profile) => Gpu::without_device(profile)?,
        None => Gpu::new(&rank_adapter(opts, world)?)?,
    };
    if world.size() > 1 {
        rank_line(format!(
            "rank {} of {} (local rank {}): adapter {}; effective batch {} = {} per micro-batch × {} micro-batches × {} ranks",
            world.rank(),
            world.size(),
            world.local_rank(),
            gpu.facts.name,
            config.batch * config.accumulate * world.size(),
            config.batch,
            config.accumulate,
            world.size()
        ));
    }
    if world.rank() == 0 && gpu.executes() {
        if let Some(note) = gpu.facts.emulation_note(opts.backend.is_some()) {
            rank_line(note);
        }
    }
    if a.plan_only {
        return crate::jobs::train::print_planned_memory(&gpu, &config);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C asks for a checkpoint at the end of the current step, then exits.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let job = TrainJob {
        data,
        run: a.run.clone(),
        init: a.init.clone(),
        config,
        max_pixels: a.max_pixels,
        quiet: a.quiet,
    };
    let ranks = RankOptions {
        check_every: a.check_every,
        bucket_bytes: (a.allreduce_bucket_mb as f64 * (1u64 << 20) as f64) as u64,
    };
    let m = run_train_across(&gpu, &job, &stop, world, ranks)?;
    if !world.is_root() {
        return Ok(());
    }
    let parts = match (m.attention_loss, m.reconstruction_loss) {
        (Some(at), Some(r)) => format!(
            " (global {:.4}, attention {at:.4}, reconstruction {r:.5})",
            m.global_loss
        ),
        _ => String::new(),
    };
    println!(
        "step {}: loss {:.4}{parts}; run folder {}",
        m.step,
        m.loss,
        a.run.display()
    );
    Ok(())
}
