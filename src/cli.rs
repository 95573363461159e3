//! Command-line interface: argument parsing and one-line error reports.

use std::time::Duration;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::gpu::{list_adapters, Gpu, GpuOptions};
use crate::jobs::bench;

mod checks;

#[derive(Parser, Debug)]
#[command(
    name = "delg-gpu",
    version,
    about = "DELG/DOLG image retrieval on any GPU (wgpu + WGSL)"
)]
pub struct Cli {
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GpuArgs {
    /// Graphics API: vulkan, metal, dx12 or gl (default: WGPU_BACKEND, else the best available).
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Adapter name substring or index from `delg-gpu info` (default: WGPU_ADAPTER_NAME, else the best).
    #[arg(long, global = true)]
    pub adapter: Option<String>,
}

impl GpuArgs {
    pub fn options(&self) -> GpuOptions {
        GpuOptions {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
            ..Default::default()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List adapters with backend, driver, features and the limits that matter.
    Info,
    /// The whole pipeline on a generated image set: extract, search, re-rank and score.
    Demo {
        /// Folder for the generated images, features and results.
        #[arg(long, default_value = "delg-demo")]
        out: PathBuf,
        /// Weights to use (default: a tiny model initialised from a fixed seed).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, value_parser = checks::int_in::<u32, 1, 10_000>, default_value_t = 4)]
        scenes: u32,
        /// Side of the generated images in pixels.
        #[arg(long, value_parser = checks::int_in::<u32, 32, 4096>, default_value_t = 256)]
        size: u32,
        /// Only write a generated scene, a warped copy and their homography
        /// (inputs for `match`), instead of running the pipeline.
        #[arg(long)]
        pair: bool,
    },
    /// Extract DELG global descriptors and local features from a folder of images.
    Extract(ExtractArgs),
    /// Join the outputs of sharded extractions into one feature folder.
    Merge {
        /// Feature folders written by `extract --shard i/N`.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a randomly initialised model (for tests, benchmarks and fine-tuning from scratch).
    InitWeights(InitArgs),
    /// Train DELG end to end from image-level labels.
    Train(TrainArgs),
    /// Rank a database for every query by global similarity, optionally re-ranked by local matching + RANSAC.
    Search(SearchArgs),
    /// Score retrieval on a ground truth (gnd.json): global and re-ranked, side by side.
    Eval(EvalArgs),
    /// Match two images: local features, RANSAC, and a picture of the correspondences.
    Match(MatchArgs),
    /// Model weights: import a PyTorch checkpoint without Python.
    Weights {
        #[command(subcommand)]
        what: WeightsCommand,
    },
    /// Measure kernels (and, later, end-to-end throughput).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Global search of random descriptors at scale (database generated in chunks).
    Search {
        #[arg(long, value_parser = checks::int_in::<usize, 1, 10_000_000>, default_value_t = 1000)]
        queries: usize,
        #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000_000>, default_value_t = 1_000_000)]
        db: usize,
        #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>, default_value_t = 2048)]
        dim: usize,
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
        #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
        shortlist: usize,
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
        #[arg(long, value_parser = checks::int_in::<u32, 16, 16_384>, default_value_t = 768)]
        image_height: u32,
        /// Timed images after one warm-up image.
        #[arg(long, value_parser = checks::int_in::<usize, 1, 10_000>, default_value_t = 2)]
        images: usize,
    },
    /// Every kernel at the shapes that matter, every matmul variant side by side.
    Kernels {
        /// Only cases whose name contains this text.
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
    },
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Folder of images (searched recursively).
    pub input: PathBuf,
    /// Model weights (safetensors written by delg-gpu or its converters).
    #[arg(long)]
    pub weights: PathBuf,
    /// Check that the weights hold this architecture (delg or dolg); the
    /// weights' metadata decides the model and the default settings.
    #[arg(long)]
    pub arch: Option<String>,
    /// Output folder (resumes an interrupted run into the same folder).
    #[arg(long)]
    pub out: PathBuf,
    /// JSON file with extraction settings (see ExtractConfig); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ExtractFlags,
    /// Also write sign-binarised local descriptors (16 bytes each).
    #[arg(long)]
    pub binarize: bool,
    /// Process only shard i of N (e.g. 0/4): several machines split a collection.
    #[arg(long)]
    pub shard: Option<String>,
    /// Extract the queries of this ground truth (gnd.json) instead of the whole
    /// folder, each cropped to its box at the scale it has in the full image.
    #[arg(long, conflicts_with = "boxes")]
    pub queries_of: Option<PathBuf>,
    /// Extract only the images of this CSV (path,x1,y1,x2,y2 per line, paths
    /// relative to the folder), each cropped to its box.
    #[arg(long)]
    pub boxes: Option<PathBuf>,
    /// No progress bar (the line of each skipped image is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Fail (exit code 1) when any image could not be extracted, instead of
    /// exit code 3.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct RerankArgs {
    /// Re-rank the shortlist by local-feature matching and RANSAC (DELG's second stage).
    #[arg(long)]
    pub rerank: bool,
    /// Shortlist length for re-ranking.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
    pub shortlist: usize,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// Match sign-binarised descriptors by Hamming distance below this many bits
    /// (DELG's binarised variant), instead of float descriptors by L2.
    #[arg(long, value_parser = checks::int_in::<u32, 0, 4096>)]
    pub hamming: Option<u32>,
    /// RANSAC with a homography instead of an affine model.
    #[arg(long)]
    pub homography: bool,
    /// Where descriptor nearest neighbours are computed: auto (the faster
    /// for this adapter, as measured), cpu or gpu.
    #[arg(long, default_value = "auto")]
    pub match_on: String,
}

/// Descriptor matching and RANSAC settings shared by re-ranking and `match`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Descriptor distance threshold (or ratio with --ratio-test).
    #[arg(long, value_parser = checks::positive, default_value_t = 1.0)]
    pub match_threshold: f32,
    /// Lowe's ratio test instead of an absolute distance threshold.
    #[arg(long)]
    pub ratio_test: bool,
    /// RANSAC inlier threshold in pixels.
    #[arg(long, value_parser = checks::positive_f64, default_value_t = 20.0)]
    pub residual_threshold: f64,
    #[arg(long, value_parser = checks::int_in::<usize, 1, 10_000_000>, default_value_t = 1000)]
    pub ransac_trials: usize,
}

impl VerifyArgs {
    fn matching(&self) -> crate::retrieval::matching::MatchParams {
        crate::retrieval::matching::MatchParams {
            threshold: self.match_threshold,
            ratio_test: self.ratio_test,
        }
    }

    /// DELG's RANSAC for `homography` false, else the homography variant,
    /// with these flags' threshold and trials.
    fn ransac(&self, homography: bool) -> crate::retrieval::ransac::RansacParams {
        use crate::retrieval::ransac::RansacParams;
        let base = if homography {
            RansacParams::homography()
        } else {
            RansacParams::default()
        };
        RansacParams {
            residual_threshold: self.residual_threshold,
            max_trials: self.ransac_trials,
            ..base
        }
    }
}

impl RerankArgs {
    pub fn params(&self) -> Result<Option<crate::jobs::search::RerankParams>> {
        let match_on = crate::jobs::local_match::MatchOn::parse(&self.match_on)?;
        Ok(self.rerank.then(|| {
            let mut matching = self.verify.matching();
            if let Some(h) = self.hamming {
                matching.threshold = h as f32;
            }
            crate::jobs::search::RerankParams {
                shortlist: self.shortlist,
                matching,
                ransac: self.verify.ransac(self.homography),
                binary: self.hamming.is_some(),
                match_on,
            }
        }))
    }
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Query feature folder (from `extract`).
    #[arg(long)]
    pub queries: PathBuf,
    /// Database feature folder (from `extract`).
    #[arg(long)]
    pub db: PathBuf,
    /// Output folder: ranking.csv, ranks.npy, scores.npy, inliers.npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Results kept per query.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 100_000>, default_value_t = 100)]
    pub k: usize,
    #[command(flatten)]
    pub rerank: RerankArgs,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Ground truth in the gnd.json form; images are found beside it.
    #[arg(long)]
    pub gnd: PathBuf,
    /// Extract features with these weights (into --work)...
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// ...or use existing feature folders.
    #[arg(long)]
    pub db_features: Option<PathBuf>,
    #[arg(long)]
    pub query_features: Option<PathBuf>,
    /// Folder for extracted features (reused and resumed across runs).
    #[arg(long, default_value = "delg-eval")]
    pub work: PathBuf,
    #[command(flatten)]
    pub settings: ExtractFlags,
    #[command(flatten)]
    pub rerank: RerankArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MatchArgs {
    /// First image (DELG's database side: the transform maps A onto B).
    pub a: PathBuf,
    /// Second image (DELG's query side).
    pub b: PathBuf,
    /// Model weights (safetensors written by delg-gpu or its converters).
    #[arg(long)]
    pub weights: PathBuf,
    /// Write the picture here (PNG).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the matches and the transform as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also draw outlier matches, faint.
    #[arg(long)]
    pub dim_outliers: bool,
    /// Draw lines for at most this many inliers (dots for all), for dense matches.
    #[arg(long, value_parser = checks::int_in::<usize, 0, 10_000_000>)]
    pub max_lines: Option<usize>,
    /// RANSAC model: affine (DELG's) or homography.
    #[arg(long, default_value = "affine")]
    pub model: String,
    /// A true A→B homography (nine numbers, Oxford "H1to2p" form): report the corner error.
    #[arg(long)]
    pub gt_homography: Option<PathBuf>,
    #[command(flatten)]
    pub verify: VerifyArgs,
    #[command(flatten)]
    pub settings: ExtractFlags,
}

/// Extraction settings every extracting command can override; the defaults
/// are the paper's for the model in the weights.
#[derive(Args, Debug)]
pub struct ExtractFlags {
    /// Largest image side after the initial resize; 0 keeps the original size.
    #[arg(long, value_parser = checks::int_in::<u32, 0, 65_535>)]
    pub max_image_size: Option<u32>,
    /// Attention threshold τ (default: the value stored with the weights).
    #[arg(long, value_parser = checks::finite)]
    pub score_threshold: Option<f32>,
    /// Local features kept per image.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 1_000_000>)]
    pub max_features: Option<usize>,
    /// Pyramid scales, comma-separated.
    #[arg(long, value_parser = checks::pyramid_scale, value_delimiter = ',')]
    pub scales: Option<Vec<f64>>,
    /// Indices of the scales whose global descriptors are aggregated, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub global_scales: Option<Vec<usize>>,
    /// Images with more pixels are reported and skipped before decoding
    /// (forged headers and decompression bombs); default 100 megapixels.
    #[arg(long, value_parser = MAX_PIXELS)]
    pub max_pixels: Option<u64>,
}

/// `--max-pixels`: 1 pixel to 1 terapixel.
const MAX_PIXELS: fn(&str) -> Result<u64, String> = checks::int_in::<u64, 1, 1_000_000_000_000>;

impl ExtractFlags {
    /// Overrides `cfg` with the flags given, then validates it.
    pub fn apply(&self, cfg: &mut crate::jobs::extract::ExtractConfig) -> Result<()> {
        if let Some(m) = self.max_image_size {
            cfg.max_image_size = (m > 0).then_some(m);
        }
        if self.score_threshold.is_some() {
            cfg.score_threshold = self.score_threshold;
        }
        if let Some(m) = self.max_features {
            cfg.max_features = m;
        }
        if let Some(s) = &self.scales {
            cfg.scales = s.clone();
            if self.global_scales.is_none() {
                // New scales invalidate the default indices: the middle one
                // (scale 1 in a symmetric pyramid) unless told otherwise.
                cfg.global_scales = vec![s.len() / 2];
            }
        }
        if let Some(g) = &self.global_scales {
            cfg.global_scales = g.clone();
        }
        if let Some(m) = self.max_pixels {
            cfg.max_pixels = m;
        }
        cfg.validate()
    }
}

fn match_pair(opts: &GpuOptions, a: &MatchArgs) -> Result<()> {
    use crate::jobs::pair;
    if a.out.is_none() && !a.json {
        return Err(Error::InvalidArgument(
            "match: give --out pair.png, --json, or both".into(),
        ));
    }
    let ransac = match a.model.as_str() {
        "affine" => a.verify.ransac(false),
        "homography" => a.verify.ransac(true),
        other => {
            return Err(Error::InvalidArgument(format!(
                "--model '{other}': use affine or homography"
            )))
        }
    };
    let mut extract = crate::jobs::extract::ExtractConfig::default();
    a.settings.apply(&mut extract)?;
    // Read the ground truth before the slow extraction, so a typo fails fast.
    let truth = a
        .gt_homography
        .as_deref()
        .map(pair::read_homography)
        .transpose()?;
    let job = pair::PairJob {
        a: a.a.clone(),
        b: a.b.clone(),
        weights: a.weights.clone(),
        extract,
        matching: a.verify.matching(),
        ransac,
    };
    let gpu = Gpu::new(opts)?;
    let r = pair::match_pair(&gpu, &job)?;
    let caption = pair::caption(&r, truth.as_ref());
    if let Some(out) = &a.out {
        let render = pair::RenderOptions {
            dim_outliers: a.dim_outliers,
            max_lines: a.max_lines,
            ..Default::default()
        };
        pair::write_picture(&r, &caption, &render, job.extract.max_pixels, out)?;
    }
    if a.json {
        println!("{}", pair::to_json(&r, truth.as_ref()));
    } else {
        for l in &caption {
            println!("{l}");
        }
        if let Some(out) = &a.out {
            println!("picture: {}", out.display());
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Attention threshold stored with the model.
    #[arg(long, value_parser = checks::finite, default_value_t = 0.0)]
    pub score_threshold: f32,
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Architecture: delg or dolg (DOLG always uses the torchvision layout).
    #[arg(long, default_value = "delg")]
    pub arch: String,
    /// Backbone depth: 50, 101, or "tiny" (one block per stage) for tests.
    #[arg(long, default_value = "50")]
    pub depth: String,
    /// delg (the official TF layout) or torchvision.
    #[arg(long, default_value = "delg")]
    pub layout: String,
    /// Stem width (64 for standard ResNets).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 4096>)]
    pub width: Option<usize>,
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub global_dim: Option<usize>,
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub attention_dim: Option<usize>,
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub local_dim: Option<usize>,
    /// DOLG: add the multi-atrous block in front of the local branch.
    #[arg(long)]
    pub multi_atrous: bool,
    /// DOLG: dilation rates of the multi-atrous block (3,6,9 as the paper's re-implementations).
    #[arg(long, value_parser = checks::int_in::<usize, 1, 256>, value_delimiter = ',', default_value = "6,12,18")]
    pub dilations: Vec<usize>,
    /// DOLG: size of the final descriptor.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 65_536>)]
    pub output_dim: Option<usize>,
}

impl ModelArgs {
    /// The model these flags describe.
    pub fn model_config(&self) -> Result<crate::model::ModelConfig> {
        use crate::model::dolg::{DolgConfig, MultiAtrous};
        use crate::model::ModelConfig;
        match self.arch.as_str() {
            "delg" => Ok(ModelConfig::Delg(self.config()?)),
            "dolg" => {
                let delg = self.config()?;
                let mut model = DolgConfig::new(delg.backbone);
                model.output_dim = self.output_dim.unwrap_or(model.output_dim);
                if self.multi_atrous {
                    model.multi_atrous = Some(MultiAtrous {
                        dilations: self.dilations.clone(),
                        branch_dim: if self.depth == "tiny" { 16 } else { 512 },
                    });
                }
                model.validate()?;
                Ok(ModelConfig::Dolg(model))
            }
            other => Err(Error::InvalidArgument(format!(
                "--arch '{other}': use delg or dolg"
            ))),
        }
    }

    /// The DELG configuration of these flags (DOLG takes its backbone from it).
    pub fn config(&self) -> Result<crate::model::delg::DelgConfig> {
        use crate::model::delg::DelgConfig;
        use crate::model::resnet::{Layout, ResNetConfig};
        let layout = match self.layout.as_str() {
            "delg" => Layout::Delg,
            "torchvision" => Layout::Torchvision,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--layout '{other}': use delg or torchvision"
                )))
            }
        };
        let mut backbone = match self.depth.as_str() {
            "50" => ResNetConfig::resnet50(layout),
            "101" => ResNetConfig::resnet101(layout),
            "tiny" => ResNetConfig {
                blocks: [1, 1, 1, 1],
                width: 8,
                ..ResNetConfig::resnet50(layout)
            },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--depth '{other}': use 50, 101 or tiny"
                )))
            }
        };
        if let Some(w) = self.width {
            backbone.width = w;
        }
        let mut model = DelgConfig::new(backbone);
        if self.depth == "tiny" {
            model.attention_dim = 16;
            model.local_dim = 16;
        }
        model.global_dim = self.global_dim.unwrap_or(model.backbone.d_channels());
        model.attention_dim = self.attention_dim.unwrap_or(model.attention_dim);
        model.local_dim = self.local_dim.unwrap_or(model.local_dim);
        Ok(model)
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training images: a folder with one sub-folder per class.
    #[arg(long, conflicts_with_all = ["csv", "gnd"])]
    pub data: Option<PathBuf>,
    /// Or the labelled images of a gnd.json ground truth (its "labels" map).
    #[arg(long, conflicts_with = "csv")]
    pub gnd: Option<PathBuf>,
    /// Or a GLDv2-style CSV (id,landmark_id) with --images as the image root.
    #[arg(long, requires = "images")]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Run folder: config, metrics.jsonl, checkpoints, model.safetensors. Rerun to resume.
    #[arg(long)]
    pub run: PathBuf,
    /// Initial weights (e.g. a converted ImageNet backbone); other tensors start random.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per micro-batch: what one forward and backward pass holds in device memory.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 4096>, default_value_t = 16)]
    pub batch: usize,
    /// Micro-batches averaged into one SGD step (effective batch = batch × accumulate);
    /// batch norm statistics stay per micro-batch.
    #[arg(long, value_parser = checks::int_in::<usize, 1, 4096>, default_value_t = 1)]
    pub accumulate: usize,
    /// Square training size (the paper's is 512).
    #[arg(long, value_parser = checks::int_in::<usize, 32, 4096>, default_value_t = 512)]
    pub size: usize,
    #[arg(long, value_parser = checks::int_in::<u64, 1, 1_000_000_000>, default_value_t = 1000)]
    pub steps: u64,
    #[arg(long, value_parser = checks::positive, default_value_t = 0.01)]
    pub lr: f32,
    /// linear or cosine (with --warmup steps). Default: linear for DELG,
    /// cosine with a warm-up over the first 5% of the steps for DOLG.
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long, value_parser = checks::int_in::<u64, 0, 1_000_000_000>)]
    pub warmup: Option<u64>,
    #[arg(long, value_parser = checks::fraction_f32, default_value_t = 0.9)]
    pub momentum: f32,
    /// Nesterov momentum (default: off for DELG, on for DOLG).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub nesterov: Option<bool>,
    /// Default: 0 for DELG, 1e-4 for DOLG.
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
    #[arg(long, value_parser = checks::non_negative, default_value_t = 1.0)]
    pub attention_weight: f32,
    #[arg(long, value_parser = checks::non_negative, default_value_t = 10.0)]
    pub reconstruction_weight: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_parser = checks::int_in::<u64, 1, 1_000_000_000>, default_value_t = 500)]
    pub checkpoint_every: u64,
    #[arg(long, value_parser = checks::fraction, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Random horizontal flips (default: off for DELG, on for DOLG).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub flip: Option<bool>,
    /// Images with more pixels fail before decoding.
    #[arg(long, value_parser = MAX_PIXELS, default_value_t = crate::io::images::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    #[arg(long)]
    pub quiet: bool,
    /// Print the planned device memory of a step by category and exit (no device needed).
    #[arg(long)]
    pub plan_only: bool,
}

/// The architecture in a weight file and the paper's extraction settings for it.
fn extract_defaults(
    weights: &std::path::Path,
) -> Result<(&'static str, crate::jobs::extract::ExtractConfig)> {
    let meta = crate::io::weights::WeightFile::read_metadata(weights)?;
    let arch = crate::model::ModelConfig::from_metadata(&meta, weights)?.arch();
    Ok((arch, crate::jobs::extract::ExtractConfig::for_arch(arch)))
}

fn extract_config(a: &ExtractArgs) -> Result<crate::jobs::extract::ExtractConfig> {
    let (stored, defaults) = extract_defaults(&a.weights)?;
    if let Some(arch) = &a.arch {
        if arch != stored {
            return Err(Error::File {
                path: a.weights.clone(),
                reason: format!(
                    "holds a '{stored}' model, not '{arch}': drop --arch or pass other weights"
                ),
            });
        }
    }
    let mut cfg = match &a.config {
        Some(p) => {
            let bad = |reason: String| Error::File {
                path: p.clone(),
                reason,
            };
            let text = std::fs::read_to_string(p).map_err(|e| bad(e.to_string()))?;
            // The file overrides the model's defaults key by key, so a partial
            // file keeps the DOLG recipe for a DOLG model.
            let given: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| bad(format!("bad extraction settings: {e}")))?;
            let mut merged = serde_json::to_value(&defaults).map_err(|e| bad(e.to_string()))?;
            if let Some(fields) = merged.as_object_mut() {
                fields.extend(given);
            }
            serde_json::from_value(merged)
                .map_err(|e| bad(format!("bad extraction settings: {e}")))?
        }
        None => defaults,
    };
    cfg.binarize |= a.binarize;
    a.settings.apply(&mut cfg)?;
    Ok(cfg)
}

type Selection = (
    Option<Vec<String>>,
    std::collections::HashMap<String, crate::jobs::extract::CropBox>,
);

/// The images and crop boxes `--queries-of` or `--boxes` ask for.
fn query_selection(a: &ExtractArgs) -> Result<Selection> {
    let mut crops = std::collections::HashMap::new();
    let mut only = Vec::new();
    if let Some(gnd) = &a.queries_of {
        let gt = crate::io::groundtruth::GroundTruth::load(gnd)?;
        for q in &gt.queries {
            let rel = format!("{}/{}{}", gt.image_dir, q.image, gt.image_ext);
            if let Some(b) = q.bbox {
                if crops.insert(rel.clone(), b).is_some_and(|prev| prev != b) {
                    return Err(Error::unsupported(
                        "extract",
                        format!("image '{}' is a query with two different boxes", q.image),
                    ));
                }
            }
            if !only.contains(&rel) {
                only.push(rel);
            }
        }
    } else if let Some(csv) = &a.boxes {
        for (path, b) in crate::jobs::collection::read_box_list(csv)? {
            crops.insert(path.clone(), b);
            only.push(path);
        }
    } else {
        return Ok((None, crops));
    }
    Ok((Some(only), crops))
}

fn init_weights(a: &InitArgs) -> Result<()> {
    use crate::model::{ModelConfig, META_SCORE_THRESHOLD};
    let model = a.model.model_config()?;
    let params = match &model {
        ModelConfig::Delg(cfg) => crate::model::delg::inference_graph(cfg, 64, 64)?.3,
        ModelConfig::Dolg(cfg) => crate::model::dolg::inference_graph(cfg, 1, 64, 64)?.3,
    };
    let mut file = crate::model::params::random_weights(&params.specs, a.seed);
    file.metadata.extend(model.metadata()?);
    if let ModelConfig::Delg(_) = model {
        file.metadata
            .insert(META_SCORE_THRESHOLD.into(), a.score_threshold.to_string());
    }
    file.save(&a.out)?;
    let n: usize = file.tensors.values().map(|t| t.data.len()).sum();
    println!(
        "wrote {} ({} tensors, {:.2} M parameters)",
        a.out.display(),
        file.tensors.len(),
        n as f64 / 1e6
    );
    Ok(())
}

fn train(opts: &GpuOptions, a: &TrainArgs) -> Result<()> {
    use crate::jobs::train::{run_train, DataSource, Schedule, TrainConfig, TrainJob, TrainModel};
    let data = match (&a.data, &a.gnd, &a.csv, &a.images) {
        (Some(d), _, _, _) => DataSource::Folders(d.clone()),
        (None, Some(g), _, _) => DataSource::Gnd(g.clone()),
        (None, None, Some(csv), Some(root)) => DataSource::Csv {
            csv: csv.clone(),
            root: root.clone(),
        },
        _ => {
            return Err(Error::InvalidArgument(
                "give --data FOLDER, --gnd gnd.json, or --csv FILE with --images ROOT".into(),
            ))
        }
    };
    let data = data.load()?;
    let classes = data.classes.len();
    let model = a.model.model_config()?;
    let dolg = model.arch() == "dolg";
    let net = match model {
        crate::model::ModelConfig::Delg(model) => {
            let mut loss = crate::model::delg::DelgLossConfig::paper(classes);
            loss.arcface_margin = a.arcface_margin.unwrap_or(loss.arcface_margin);
            loss.arcface_scale = a.arcface_scale.unwrap_or(loss.arcface_scale);
            loss.attention_weight = a.attention_weight;
            loss.reconstruction_weight = a.reconstruction_weight;
            TrainModel::Delg { model, loss }
        }
        crate::model::ModelConfig::Dolg(model) => {
            let mut loss = crate::model::dolg::DolgLossConfig::official(classes);
            loss.margin = a.arcface_margin.unwrap_or(loss.margin);
            loss.scale = a.arcface_scale.unwrap_or(loss.scale);
            loss.curricular = !a.plain_arcface;
            TrainModel::Dolg { model, loss }
        }
    };
    if a.plain_arcface && !dolg {
        return Err(Error::InvalidArgument(
            "--plain-arcface is DOLG's head option (DELG's head is plain ArcFace): add --arch dolg"
                .into(),
        ));
    }
    // The recipes differ (docs/recipe.md §3 and §8.6): DOLG uses Nesterov momentum,
    // weight decay, a cosine schedule with warm-up, flips and no clipping.
    let schedule_name = a
        .schedule
        .clone()
        .unwrap_or_else(|| if dolg { "cosine" } else { "linear" }.into());
    let schedule = match schedule_name.as_str() {
        "linear" => Schedule::Linear,
        "cosine" => Schedule::Cosine {
            warmup: a.warmup.unwrap_or(if dolg { a.steps / 20 } else { 0 }),
        },
        other => {
            return Err(Error::InvalidArgument(format!(
                "--schedule '{other}': use linear or cosine"
            )))
        }
    };
    let layout = match &net {
        TrainModel::Delg { model, .. } => model.backbone.layout,
        TrainModel::Dolg { model, .. } => model.backbone.layout,
    };
    let bn_momentum = match layout {
        crate::model::resnet::Layout::Delg => 0.01,
        crate::model::resnet::Layout::Torchvision => 0.1,
    };
    let config = TrainConfig {
        net,
        batch: a.batch,
        accumulate: a.accumulate,
        image_size: a.size,
        steps: a.steps,
        lr: a.lr,
        schedule,
        momentum: a.momentum,
        nesterov: a.nesterov.unwrap_or(dolg),
        weight_decay: a.weight_decay.unwrap_or(if dolg { 1e-4 } else { 0.0 }),
        clip_norm: a.clip_norm.unwrap_or(if dolg { 0.0 } else { 10.0 }),
        bn_momentum,
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        val_fraction: a.val_fraction,
        flip: a.flip.unwrap_or(dolg),
    };
    if a.plan_only {
        let rows = crate::jobs::train::planned_memory(&config)?;
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "planned device memory, batch {} × {} micro-batches, {}², {} classes:",
            config.batch, config.accumulate, config.image_size, classes
        );
        for (what, bytes) in &rows {
            println!("  {what:<40} {:>10.1} MiB", mib(*bytes));
        }
        let total: u64 = rows.iter().map(|r| r.1).sum();
        println!(
            "  {:<40} {:>10.1} MiB ({:.2} GiB; kernel scratch and driver memory come on top)",
            "total",
            mib(total),
            total as f64 / (1u64 << 30) as f64
        );
        return Ok(());
    }
    let gpu = Gpu::new(opts)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C asks for a checkpoint at the end of the current step, then exits.
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let job = TrainJob {
        data,
        run: a.run.clone(),
        init: a.init.clone(),
        config,
        max_pixels: a.max_pixels,
        quiet: a.quiet,
    };
    let m = run_train(&gpu, &job, &stop)?;
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

fn search(opts: &GpuOptions, a: &SearchArgs) -> Result<()> {
    use crate::io::features::FeatureSet;
    use crate::jobs::search::{global_search, rerank};
    let rerank_params = a.rerank.params()?;
    let q = FeatureSet::load(&a.queries)?;
    let db = FeatureSet::load(&a.db)?;
    for (set, dir) in [(&q, &a.queries), (&db, &a.db)] {
        if set.is_empty() {
            return Err(Error::file(
                dir,
                "holds no images: its extraction skipped every image (reasons in its errors.txt)",
            ));
        }
    }
    if a.out.is_file() {
        return Err(Error::file(&a.out, "is a file: --out takes a folder"));
    }
    q.check_same_model(&a.queries, &db, &a.db)?;
    let gpu = Gpu::new(opts)?;
    let t = std::time::Instant::now();
    let k = a.k.min(db.len());
    let mut hits = global_search(&gpu, &q.global, &db.global, db.global_dim, k)?;
    let global_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    if let Some(p) = rerank_params {
        let mut matcher = crate::jobs::local_match::LocalMatcher::new(&gpu, p.match_on);
        for (i, h) in hits.iter_mut().enumerate() {
            *h = rerank(&q.image(i), &db, h, &|_| false, &p, &mut matcher)?;
        }
    }
    let rerank_s = t.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut csv = String::from("query,db,rank,global_score,inliers\n");
    let (mut ranks, mut scores, mut inliers) = (Vec::new(), Vec::new(), Vec::new());
    for (qi, h) in hits.iter().enumerate() {
        for (r, x) in h.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},{},{},{}\n",
                q.ids[qi],
                db.ids[x.db],
                r + 1,
                x.score,
                x.inliers
            ));
            ranks.push(x.db as i64);
            scores.push(x.score);
            inliers.push(x.inliers as i64);
        }
    }
    use crate::io::npy;
    npy::write_atomic(&a.out.join("ranking.csv"), csv.as_bytes())?;
    npy::write(&a.out.join("ranks.npy"), &[q.len(), k], &ranks)?;
    npy::write(&a.out.join("scores.npy"), &[q.len(), k], &scores)?;
    npy::write(&a.out.join("inliers.npy"), &[q.len(), k], &inliers)?;
    println!(
        "{} queries against {} images: global search {:.3} s, re-ranking {:.2} s; results in {}",
        q.len(),
        db.len(),
        global_s,
        rerank_s,
        a.out.display()
    );
    Ok(())
}

fn merge(inputs: &[PathBuf], out: &std::path::Path) -> Result<()> {
    let s = crate::jobs::merge::merge_shards(inputs, out)?;
    println!(
        "merged {} images from {} shards into {} ({} lines in errors.txt)",
        s.images,
        s.shards,
        out.display(),
        s.failed
    );
    Ok(())
}

/// How a command that finished ended; errors are the `Err` of `run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done.
    Complete,
    /// The run finished but some images were skipped (listed in errors.txt).
    SomeFailed,
}

impl Outcome {
    /// The process exit code (README, "Exit codes"): 0 complete, 3 some
    /// images skipped; errors exit with 1 and bad arguments with 2 (clap).
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Complete => 0,
            Outcome::SomeFailed => 3,
        }
    }
}

pub fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Extract(a) => extract(&cli.gpu.options(), &a),
        command => run_command(&cli.gpu.options(), command).map(|()| Outcome::Complete),
    }
}

fn extract(opts: &GpuOptions, a: &ExtractArgs) -> Result<Outcome> {
    let config = extract_config(a)?;
    let (only, crops) = query_selection(a)?;
    let gpu = Gpu::new(opts)?;
    let job = crate::jobs::extract::ExtractJob {
        input: a.input.clone(),
        out: a.out.clone(),
        weights: a.weights.clone(),
        config,
        shard: a
            .shard
            .as_deref()
            .map(crate::jobs::collection::Shard::parse)
            .transpose()?,
        only,
        crops,
        quiet: a.quiet,
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

fn run_command(opts: &GpuOptions, command: Command) -> Result<()> {
    let opts = opts.clone();
    match command {
        Command::Info => info(&opts),
        Command::InitWeights(a) => init_weights(&a),
        Command::Weights { what } => weights_command(what),
        Command::Demo {
            out,
            weights,
            scenes,
            size,
            pair,
        } => {
            use crate::jobs::eval::{print_report, run_eval, EvalJob};
            if pair {
                let p = crate::jobs::demo::write_pair(&out, size)?;
                println!(
                    "wrote {}, {} and the true homography {}; try:\n  delg-gpu match {} {} --weights W --out pair.png --gt-homography {}",
                    p.scene.display(),
                    p.warped.display(),
                    p.homography.display(),
                    p.scene.display(),
                    p.warped.display(),
                    p.homography.display()
                );
                return Ok(());
            }
            crate::jobs::demo::write_dataset(&out, scenes, size)?;
            let weights = match weights {
                Some(w) => w,
                None => {
                    let w = out.join("tiny-seed0.safetensors");
                    let model = ModelArgs {
                        arch: "delg".into(),
                        multi_atrous: false,
                        dilations: vec![6, 12, 18],
                        output_dim: None,
                        depth: "tiny".into(),
                        layout: "delg".into(),
                        width: None,
                        global_dim: None,
                        attention_dim: None,
                        local_dim: None,
                    };
                    init_weights(&InitArgs {
                        out: w.clone(),
                        seed: 0,
                        model,
                        score_threshold: 0.0,
                    })?;
                    w
                }
            };
            println!(
                "{} images of {scenes} scenes in {}",
                scenes * 4,
                out.join("jpg").display()
            );
            let gpu = Gpu::new(&opts)?;
            let job = EvalJob {
                gnd: out.join("gnd.json"),
                weights: Some(weights),
                db_features: None,
                query_features: None,
                work: out.join("features"),
                extract: Default::default(),
                rerank: Some(Default::default()),
            };
            print_report(&run_eval(&gpu, &job)?);
            Ok(())
        }
        Command::Train(a) => train(&opts, &a),
        Command::Search(a) => search(&opts, &a),
        Command::Eval(a) => {
            use crate::jobs::eval::{print_report, run_eval, EvalJob};
            let mut extract = match &a.weights {
                Some(w) => extract_defaults(w)?.1,
                None => Default::default(),
            };
            a.settings.apply(&mut extract)?;
            let gpu = Gpu::new(&opts)?;
            let job = EvalJob {
                gnd: a.gnd.clone(),
                weights: a.weights.clone(),
                db_features: a.db_features.clone(),
                query_features: a.query_features.clone(),
                work: a.work.clone(),
                extract,
                rerank: a.rerank.params()?,
            };
            let report = run_eval(&gpu, &job)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_report(&report);
            }
            Ok(())
        }
        Command::Match(a) => match_pair(&opts, &a),
        Command::Merge { inputs, out } => merge(&inputs, &out),
        Command::Extract(a) => extract(&opts, &a).map(|_| ()),
        Command::Bench {
            what:
                BenchWhat::Search {
                    queries,
                    db,
                    dim,
                    k,
                },
        } => {
            let gpu = Gpu::new(&opts)?;
            bench::print_adapter(&gpu);
            bench::bench_search(&gpu, queries, db, dim, k).map(|_| ())
        }
        Command::Bench {
            what:
                BenchWhat::Match {
                    rows,
                    db_rows,
                    shortlist,
                    dim,
                },
        } => {
            let gpu = Gpu::new(&opts)?;
            bench::print_adapter(&gpu);
            bench::bench_local_matching(&gpu, rows, db_rows, shortlist, dim)
        }
        Command::Bench {
            what:
                BenchWhat::Extract {
                    model,
                    image_width,
                    image_height,
                    images,
                },
        } => {
            let gpu = Gpu::new(&opts)?;
            bench::print_adapter(&gpu);
            bench::bench_extract(
                &gpu,
                &model.model_config()?,
                image_width,
                image_height,
                images.max(1),
            )
            .map(|_| ())
        }
        Command::Bench {
            what:
                BenchWhat::Kernels {
                    filter,
                    reps,
                    seconds,
                    json,
                },
        } => {
            let gpus = bench::variant_devices(&opts)?;
            if !json {
                bench::print_header(&gpus[0]);
            }
            for case in bench::kernel_cases() {
                if filter
                    .as_ref()
                    .is_some_and(|f| !case.name.contains(f.as_str()))
                {
                    continue;
                }
                for gpu in &gpus {
                    let r = bench::run_case(gpu, &case, reps, Duration::from_secs_f64(seconds))?;
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        bench::print_row(&r);
                    }
                }
            }
            Ok(())
        }
    }
}

fn info(opts: &GpuOptions) -> Result<()> {
    let adapters = list_adapters(opts)?;
    if adapters.is_empty() {
        // Gpu::new turns this into the error that explains how to get a driver.
        Gpu::new(opts)?;
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        let f = a.features();
        let has = |x: wgpu::Features| if f.contains(x) { "yes" } else { "no" };
        println!(
            "[{i}] {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    features: SHADER_F16 {} | SUBGROUP {} (size {}..{}) | TIMESTAMP_QUERY {}",
            has(wgpu::Features::SHADER_F16),
            has(wgpu::Features::SUBGROUP),
            info.subgroup_min_size,
            info.subgroup_max_size,
            has(wgpu::Features::TIMESTAMP_QUERY)
        );
        println!(
            "    limits: storage binding {} MiB | buffer {} MiB | workgroups/dim {} | invocations/workgroup {} | workgroup memory {} KiB | storage buffers/stage {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_storage_buffers_per_shader_stage
        );
        let facts = crate::gpu::AdapterFacts {
            name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
        };
        let tuning =
            crate::gpu::Tuning::for_adapter(&facts, f & crate::gpu::device::OPTIONAL_FEATURES);
        println!("    tuning: {}", tuning.describe());
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Convert a PyTorch checkpoint (torch.save .pth/.pt, pycls .pyth) into a
    /// delg-gpu weight file, as tools/convert_torch.py and
    /// tools/convert_dolg_pyth.py do, without Python (docs/weights.md).
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The checkpoint: a state dict, or a checkpoint dict holding one.
    pub path: PathBuf,
    /// The model it holds: a whole DELG model (torchvision backbone names,
    /// delg-gpu head names) or an official DOLG checkpoint.
    #[arg(long, value_parser = ["delg", "dolg"])]
    pub arch: String,
    /// DELG backbone layout; auto: delg when the convolutions have biases.
    #[arg(long, value_parser = ["auto", "torchvision", "delg"], default_value = "auto")]
    pub layout: String,
    /// DOLG: rates of the multi-atrous block (checkpoints do not store them).
    #[arg(long, value_delimiter = ',', default_value = "6,12,18")]
    pub dilations: Vec<usize>,
    /// DOLG: keep desc_cls.* (class weights) to continue training.
    #[arg(long)]
    pub keep_classifier: bool,
    /// DELG: attention threshold τ to store with the weights.
    #[arg(long)]
    pub score_threshold: Option<f64>,
    /// The delg-gpu .safetensors to write.
    #[arg(long)]
    pub out: PathBuf,
}

fn weights_command(what: WeightsCommand) -> Result<()> {
    use crate::jobs::weights_import::{import_torch, Arch, ImportOptions, LayoutChoice};
    let WeightsCommand::Import(a) = what;
    let opts = ImportOptions {
        arch: if a.arch == "dolg" {
            Arch::Dolg
        } else {
            Arch::Delg
        },
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
    for line in import_torch(&opts)? {
        println!("{line}");
    }
    Ok(())
}
