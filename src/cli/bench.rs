//! `bench`: kernel, extraction, search and matching throughput, and the
//! whole-adapter report `bench gpu`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use super::checks;
use super::groups::ModelArgs;
use crate::error::Result;
use crate::gpu::{Gpu, GpuOptions};
use crate::jobs::bench;
use crate::jobs::gpu_report::{self, ReportSize};

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Global search of random descriptors at scale (database generated in chunks).
    Search {
        /// Query descriptors.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 10_000_000>, default_value_t = 1000)]
        queries: usize,
        /// Database descriptors.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000_000>, default_value_t = 1_000_000)]
        db: usize,
        /// Descriptor size.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>, default_value_t = 2048)]
        dim: usize,
        /// Results kept per query.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
        k: usize,
    },
    /// Local-descriptor neighbour search of one query against a re-ranking
    /// shortlist: the CPU path and the GPU matrix-product path side by side.
    Match {
        /// Descriptors of the query image.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000>, default_value_t = 1000)]
        rows: usize,
        /// Descriptors of each shortlist image.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000>, default_value_t = 1000)]
        db_rows: usize,
        /// Images in the shortlist.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
        shortlist: usize,
        /// Local descriptor size.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>, default_value_t = 128)]
        dim: usize,
    },
    /// End-to-end extraction throughput (full DELG recipe) with a random model.
    Extract {
        #[command(flatten)]
        model: ModelArgs,
        /// Width of the generated test images.
        #[arg(long, value_parser = checks::int_in::<u32, 16, 16_384>, default_value_t = 1024)]
        image_width: u32,
        /// Height of the generated test images.
        #[arg(long, value_parser = checks::int_in::<u32, 16, 16_384>, default_value_t = 768)]
        image_height: u32,
        /// Timed images after one warm-up batch (rounded up to whole batches).
        #[arg(long, value_parser = checks::int_in::<usize, 1, 10_000>, default_value_t = 2)]
        images: usize,
        /// Images per batch, as `extract --batch` (default: the adapter's tuning table).
        #[arg(long, value_parser = checks::int_in::<usize, 1, 64>)]
        batch: Option<usize>,
        /// How the backbone stores weights and activations (f16 needs SHADER_F16).
        #[arg(long, value_parser = ["f32", "f16"], default_value = "f32")]
        precision: String,
    },
    /// f16 against f32 extraction of the same photos: global cosine, local
    /// keypoints found again, descriptor error, device memory and time.
    Precision {
        /// Folders of photos; `--per-folder` images are taken from each,
        /// evenly spaced in name order.
        #[arg(required = true)]
        folders: Vec<PathBuf>,
        /// Images taken from each folder.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 10)]
        per_folder: usize,
        /// A weight file (default: a model of --arch/--depth/... with random
        /// weights and τ = 0).
        #[arg(long, value_parser = super::weights::weights_path)]
        weights: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Every kernel at the shapes that matter, every matmul variant side by side.
    Kernels {
        /// Only cases whose name contains this text (default: every case).
        #[arg(long)]
        filter: Option<String>,
        /// Minimum repetitions per case.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000>, default_value_t = 3)]
        reps: usize,
        /// Time budget per case in seconds (more reps while it lasts).
        #[arg(long, value_parser = checks::positive_f64, default_value_t = 1.0)]
        seconds: f64,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Only the matmul variant the tuning table chooses, without the
        /// slower ones as baselines.
        #[arg(long)]
        chosen_only: bool,
        /// On llvmpipe (lavapipe), then run again in a child process with
        /// the other vector width (256 or 512 bits, LP_NATIVE_VECTOR_WIDTH).
        #[arg(long)]
        both_widths: bool,
    },
    /// The report to send from a real GPU: adapter, every kernel variant at
    /// ResNet-50 shapes, extraction, a training step, cold start with and
    /// without the pipeline cache, host work per image and device memory
    /// (docs/gpu-results.md). The full DELG-R50 report takes a few minutes
    /// on a GPU and tens of minutes on a CPU emulation such as lavapipe.
    Gpu {
        /// Write the report here as JSON (schema-versioned, written
        /// atomically; default: the summary on stdout only).
        #[arg(long)]
        json: Option<PathBuf>,
        /// The tiny model and small shapes: every section in about a
        /// minute, to check the command works before the full run.
        #[arg(long)]
        quick: bool,
    },
}

pub(super) fn run(opts: &GpuOptions, what: BenchWhat) -> Result<()> {
    match what {
        BenchWhat::Search {
            queries,
            db,
            dim,
            k,
        } => bench::bench_search(&open(opts)?, queries, db, dim, k).map(|_| ()),
        BenchWhat::Match {
            rows,
            db_rows,
            shortlist,
            dim,
        } => bench::bench_local_matching(&open(opts)?, rows, db_rows, shortlist, dim),
        BenchWhat::Extract {
            model,
            image_width,
            image_height,
            images,
            batch,
            precision,
        } => {
            let gpu = open(opts)?;
            let model = model.model_config()?;
            let batch = batch.unwrap_or(gpu.tuning.extract_batch);
            let precision = precision.parse()?;
            bench::bench_extract(
                &gpu,
                &model,
                image_width,
                image_height,
                images,
                batch,
                precision,
            )
            .map(|_| ())
        }
        BenchWhat::Precision {
            folders,
            per_folder,
            weights,
            model,
        } => {
            let mut images = Vec::new();
            for dir in &folders {
                let found =
                    crate::jobs::collection::discover(dir, &indicatif::ProgressBar::hidden())?;
                let step = (found.images.len() / per_folder).max(1);
                images.extend(
                    found
                        .images
                        .iter()
                        .step_by(step)
                        .take(per_folder)
                        .map(|rel| dir.join(rel)),
                );
            }
            let (file, tau) = match &weights {
                Some(path) => (crate::io::weights::WeightFile::load(path)?, None),
                None => (model.model_config()?.random_weights(0, 0.0)?, Some(0.0)),
            };
            let gpu = open(opts)?;
            let figures = bench::compare_precisions(&gpu, &file, &images, tau)?;
            bench::print_precision(&figures);
            Ok(())
        }
        BenchWhat::Kernels {
            filter,
            reps,
            seconds,
            json,
            chosen_only,
            both_widths,
        } => bench::run_kernels(
            opts,
            filter.as_deref(),
            reps,
            Duration::from_secs_f64(seconds),
            json,
            [chosen_only, both_widths],
        ),
        BenchWhat::Gpu { json, quick } => {
            let size = if quick {
                ReportSize::quick()?
            } else {
                ReportSize::full()?
            };
            let exe = gpu_report::this_program()?;
            gpu_report::run_gpu_report(opts, &size, &exe, json.as_deref()).map(|_| ())
        }
    }
}

/// The device, announced by the adapter line every report starts with.
fn open(opts: &GpuOptions) -> Result<Arc<Gpu>> {
    let gpu = Gpu::new(opts)?;
    bench::print_adapter(&gpu);
    Ok(gpu)
}
