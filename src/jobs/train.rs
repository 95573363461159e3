//! `delg-gpu train`: DELG (docs/recipe.md §1.4, §2, §3: three losses, the local head
//! behind a stop-gradient) or DOLG (docs/recipe.md §8.5, §8.6: one margin loss, end to
//! end) trained on the device: autodiff through the whole network, global-norm
//! clipping and SGD with momentum in recorded graphs.
//!
//! A run folder holds `config.json`, `metrics.jsonl` (one line per step),
//! `checkpoint.safetensors` (weights, optimiser velocities, BN statistics,
//! step; written atomically) and, at the end, `model.safetensors`, which
//! `delg-gpu extract` loads. Batches are a function of (seed, step), so a run
//! resumed from a checkpoint ends exactly where an uninterrupted run ends.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{needs_bytes, DeviceTensor, Gpu};
use crate::graph::exec::{scratch_needs, Executable, ParamStore};
use crate::graph::plan::plan_storages;
use crate::graph::{Graph, TensorId, TensorKind};
use crate::io::weights::WeightFile;
use crate::jobs::allreduce::{Buckets, StepTimes, DEFAULT_BUCKET_MIB};
use crate::jobs::dataset::{make_batch, Augment, Batch, Dataset};
use crate::jobs::distributed::{checksum, data_index, World};
use crate::model::builder::{ParamSpec, Role};
use crate::model::contract::{LossOptions, ValidationGraph};
use crate::model::params::random_weights;
use crate::model::resnet::Layout;
// Re-exported where the training job's users have always found it.
pub use crate::model::TrainModel;
use crate::model::{ModelConfig, ARCH_BACKBONE, META_ARCH, META_SCORE_THRESHOLD};
use crate::ops::optim::{GlobalNormClip, GradAccumulate, SgdStep};
use crate::tensor::{HostTensor, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr₀·(1 − t/T), DELG's schedule.
    Linear,
    /// Cosine from lr₀ to 0 over the whole run, multiplied during the first
    /// `warmup` steps by a factor rising linearly from 0.1 to 1 (DOLG's).
    Cosine { warmup: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub net: TrainModel,
    /// Images per micro-batch (one forward and backward pass on the device).
    pub batch: usize,
    /// Micro-batches whose mean gradient makes one SGD step: the effective
    /// batch is batch × accumulate. Batch norm sees each micro-batch alone.
    #[serde(default = "one")]
    pub accumulate: usize,
    pub image_size: usize,
    pub steps: u64,
    pub lr: f32,
    pub schedule: Schedule,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// Global-norm clipping threshold; 0 turns clipping off (DOLG).
    pub clip_norm: f32,
    /// PyTorch convention (weight of the new batch); DELG's Keras 0.99 is 0.01.
    pub bn_momentum: f32,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub val_fraction: f64,
    pub flip: bool,
}

fn one() -> usize {
    1
}

impl TrainConfig {
    /// How images are prepared for training (`training`) or validation.
    /// The augmentation of a training (or validation) image; larger images
    /// than `max_pixels` fail before decoding.
    pub fn augment(&self, training: bool, max_pixels: u64) -> Augment {
        Augment {
            size: self.image_size,
            training,
            flip: training && self.flip,
            recipe: self.net.architecture().augment_recipe(),
            norm: self.net.architecture().pixel_norm(),
            max_pixels,
        }
    }

    pub fn learning_rate(&self, step: u64) -> f32 {
        let t = step as f64 / self.steps.max(1) as f64;
        let lr0 = self.lr as f64;
        let lr = match self.schedule {
            Schedule::Linear => lr0 * (1.0 - t),
            // pycls, which DOLG's code runs on: the cosine spans the whole
            // run and the warm-up multiplies it (docs/recipe.md §8.6).
            Schedule::Cosine { warmup } => {
                let cosine = lr0 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                if step < warmup {
                    cosine * (0.1 + 0.9 * step as f64 / warmup as f64)
                } else {
                    cosine
                }
            }
        };
        lr.max(0.0) as f32
    }
}

/// Training settings as a user gives them: `None` takes the recipe's
/// default for the architecture (docs/recipe.md §3 for DELG, §8.6 for DOLG).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub batch: usize,
    pub accumulate: usize,
    pub image_size: usize,
    pub steps: u64,
    pub lr: f32,
    /// "linear" or "cosine".
    pub schedule: Option<String>,
    pub warmup: Option<u64>,
    pub momentum: f32,
    pub nesterov: Option<bool>,
    pub weight_decay: Option<f32>,
    pub clip_norm: Option<f32>,
    pub arcface_margin: Option<f32>,
    pub arcface_scale: Option<f32>,
    /// DOLG only: ArcFace without CurricularFace's hard-negative weighting.
    pub plain_arcface: bool,
    /// DELG only (DOLG has no attention or reconstruction loss).
    pub attention_weight: f32,
    pub reconstruction_weight: f32,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub val_fraction: f64,
    pub flip: Option<bool>,
}

/// The command line's defaults (`delg-gpu train` takes its defaults from
/// here): every `None` is the architecture's recipe value.
impl Default for TrainOptions {
    fn default() -> TrainOptions {
        TrainOptions {
            batch: 16,
            accumulate: 1,
            image_size: 512,
            steps: 1000,
            lr: 0.01,
            schedule: None,
            warmup: None,
            momentum: 0.9,
            nesterov: None,
            weight_decay: None,
            clip_norm: None,
            arcface_margin: None,
            arcface_scale: None,
            plain_arcface: false,
            attention_weight: 1.0,
            reconstruction_weight: 10.0,
            seed: 0,
            checkpoint_every: 500,
            val_fraction: 0.2,
            flip: None,
        }
    }
}

impl TrainOptions {
    /// The full configuration for training `model` on `classes` classes.
    pub fn resolve(&self, model: ModelConfig, classes: usize) -> Result<TrainConfig> {
        let defaults = model.training_defaults(self.steps);
        let bn_momentum = model.backbone().bn_momentum();
        let loss = LossOptions {
            margin: self.arcface_margin,
            scale: self.arcface_scale,
            plain_arcface: self.plain_arcface,
            attention_weight: self.attention_weight,
            reconstruction_weight: self.reconstruction_weight,
        };
        let net = model.train_model(classes, &loss)?;
        let schedule_name = self
            .schedule
            .clone()
            .unwrap_or_else(|| defaults.schedule.into());
        let schedule = match schedule_name.as_str() {
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine {
                warmup: self.warmup.unwrap_or(defaults.warmup),
            },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "--schedule '{other}': use linear or cosine"
                )))
            }
        };
        Ok(TrainConfig {
            net,
            batch: self.batch,
            accumulate: self.accumulate,
            image_size: self.image_size,
            steps: self.steps,
            lr: self.lr,
            schedule,
            momentum: self.momentum,
            nesterov: self.nesterov.unwrap_or(defaults.nesterov),
            weight_decay: self.weight_decay.unwrap_or(defaults.weight_decay),
            clip_norm: self.clip_norm.unwrap_or(defaults.clip_norm),
            bn_momentum,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            val_fraction: self.val_fraction,
            flip: self.flip.unwrap_or(defaults.flip),
        })
    }
}

/// Where training images come from.
#[derive(Clone, Debug)]
pub enum DataSource {
    Folders(PathBuf),
    /// The labelled images of a `gnd.json` ground truth.
    Gnd(PathBuf),
    Csv {
        csv: PathBuf,
        root: PathBuf,
    },
}

pub struct TrainJob {
    /// The whole labelled set; the run splits off its validation part.
    pub data: Dataset,
    pub run: PathBuf,
    /// Initial weights (e.g. converted ImageNet weights); missing head tensors are initialised.
    pub init: Option<PathBuf>,
    pub config: TrainConfig,
    /// Larger images fail before decoding (`--max-pixels`).
    pub max_pixels: u64,
    pub quiet: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f32,
    /// The margin loss on the global descriptor (DOLG's only loss).
    pub global_loss: f32,
    /// DELG's local-head losses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_loss: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconstruction_loss: Option<f32>,
    pub lr: f32,
    pub grad_norm: f32,
    pub global_accuracy: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_accuracy: Option<f32>,
    pub images_per_s: f64,
    /// Under MPI: where rank 0's step spent its time.
    #[serde(flatten)]
    pub times: Option<StepTimes>,
}

/// How a rank of a data-parallel run works with the others.
#[derive(Clone, Copy, Debug)]
pub struct RankOptions {
    /// Steps between checks that every rank holds the same parameters (0:
    /// only at the end).
    pub check_every: u64,
    /// Gradient bytes per all-reduce bucket (`jobs::allreduce`); 0 reduces
    /// all of them at once after the backward pass.
    pub bucket_bytes: u64,
}

impl Default for RankOptions {
    fn default() -> Self {
        RankOptions {
            check_every: 0,
            bucket_bytes: DEFAULT_BUCKET_MIB << 20,
        }
    }
}

const VELOCITY: &str = "optimizer.velocity.";
pub const GRAD_SUM: &str = "optimizer.gradient_sum.";
const META_STEP: &str = "delg_gpu.step";
const META_TRAIN: &str = "delg_gpu.train_config";
/// The number of ranks whose summed gradients a checkpoint's steps used.
const META_RANKS: &str = "delg_gpu.ranks";

/// One training step as two graphs. `graph` runs once per micro-batch: the
/// forward pass, the gradients of the total loss for every trainable
/// parameter, and their accumulation into `optimizer.gradient_sum.*` (scaled
/// by 1/(accumulate × ranks), so after the last micro-batch, and the sum over
/// the ranks of a distributed run, the sums hold the mean gradient). `update` runs once per step: global-norm clipping of the sums
/// and one SGD step each. The sums only matter within a step (the first
/// micro-batch overwrites them), so checkpoints never store them.
pub struct StepGraph {
    pub graph: Graph,
    pub images: TensorId,
    pub labels: TensorId,
    /// 0 for the first micro-batch of a step (start new sums), 1 after.
    pub keep: TensorId,
    /// The micro-batch's total loss, then its parts (DELG: global, attention,
    /// reconstruction).
    pub outputs: Vec<TensorId>,
    pub cosines: TensorId,
    /// DELG's attention-head logits.
    pub logits: Option<TensorId>,
    pub attention: TensorId,
    pub update: Graph,
    pub lr: TensorId,
    pub grad_norm: TensorId,
    pub specs: Vec<ParamSpec>,
}

fn trainable(s: &ParamSpec) -> bool {
    !matches!(s.role, Role::BnMean | Role::BnVar | Role::CurricularState)
}

pub fn build_step(cfg: &TrainConfig) -> Result<StepGraph> {
    build_step_across(cfg, 1)
}

/// The step of one of `ranks` data-parallel processes, whose gradient sums
/// are added up across the ranks before the update.
pub fn build_step_across(cfg: &TrainConfig, ranks: usize) -> Result<StepGraph> {
    if cfg.accumulate == 0 || ranks == 0 {
        return Err(Error::InvalidArgument(
            "--accumulate must be at least 1 (micro-batches per step)".into(),
        ));
    }
    let t = cfg
        .net
        .training_graph(cfg.batch, cfg.image_size, cfg.bn_momentum)?;
    let mut g = t.graph;
    let specs = t.params.specs;
    let ids: BTreeMap<&str, TensorId> = g
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == TensorKind::Param)
        .map(|(k, i)| (i.name.as_str(), TensorId(k)))
        .collect();
    let train: Vec<(String, TensorId)> = specs
        .iter()
        .filter(|s| trainable(s))
        .map(|s| (s.name.clone(), ids[s.name.as_str()]))
        .collect();
    let wrt: Vec<TensorId> = train.iter().map(|(_, t)| *t).collect();
    let grads = g.grad(t.losses[0], &wrt)?;
    let keep = g.input("keep", [1]);
    let accumulate = GradAccumulate {
        scale: 1.0 / (cfg.accumulate * ranks) as f32,
    };
    let mut update = Graph::new();
    let lr = update.input("lr", [1]);
    let mut sums = Vec::new();
    let mut steps = Vec::new();
    for ((name, p), gr) in train.iter().zip(&grads) {
        let Some(gr) = gr else { continue };
        let shape = g.shape(*p).clone();
        let sum = g.param(&format!("{GRAD_SUM}{name}"), shape.clone());
        g.apply(accumulate, &[sum, *gr, keep])?;
        let p = update.param(name, shape.clone());
        let sum = update.param(&format!("{GRAD_SUM}{name}"), shape.clone());
        let v = update.param(&format!("{VELOCITY}{name}"), shape);
        sums.push(sum);
        steps.push([p, sum, v]);
    }
    // Without clipping the op still measures the norm for the metrics.
    let max_norm = if cfg.clip_norm > 0.0 {
        cfg.clip_norm
    } else {
        f32::MAX
    };
    let clip = update.apply(GlobalNormClip { max_norm }, &sums)?;
    let sgd = SgdStep {
        momentum: cfg.momentum,
        nesterov: cfg.nesterov,
        weight_decay: cfg.weight_decay,
    };
    for [p, sum, v] in steps {
        update.apply(sgd, &[p, sum, v, lr, clip[1]])?;
    }
    Ok(StepGraph {
        graph: g,
        images: t.images,
        labels: t.labels,
        keep,
        outputs: t.losses,
        cosines: t.cosines,
        logits: t.logits,
        attention: t.attention,
        update,
        lr,
        grad_norm: clip[0],
        specs,
    })
}

impl StepGraph {
    /// Targets of the micro-batch graph: losses, classifier scores, attention.
    pub fn targets(&self) -> Vec<TensorId> {
        let mut targets = self.outputs.clone();
        targets.push(self.cosines);
        targets.extend(self.logits);
        targets.push(self.attention);
        targets
    }

    /// The two executables of a step, sharing the parameters in `store`.
    pub fn executables(
        &self,
        gpu: &Arc<Gpu>,
        store: &ParamStore,
    ) -> Result<(Executable, Executable)> {
        let micro = Executable::new(gpu, &self.graph, &self.targets(), store)?;
        let update = Executable::new(gpu, &self.update, &[self.grad_norm], store)?;
        Ok((micro, update))
    }
}

/// Device memory a run on `gpu` plans for, by category, in bytes: what the
/// memory planner, the parameter shapes and the ops' declared scratch
/// (convolution staging, GEMM operand textures, reduction partials) fix
/// before any kernel is recorded. The driver's own allocations come on top.
pub fn planned_memory(gpu: &Gpu, cfg: &TrainConfig) -> Result<Vec<(&'static str, u64)>> {
    let sg = build_step(cfg)?;
    let mut params: BTreeMap<&str, u64> = BTreeMap::new();
    let mut inputs = 0;
    for info in sg.graph.tensors.iter().chain(&sg.update.tensors) {
        match info.kind {
            TensorKind::Param => {
                params.insert(&info.name, info.shape.bytes());
            }
            TensorKind::Input => inputs += info.shape.bytes(),
            TensorKind::Computed => {}
        }
    }
    let category = |prefix: &str| -> u64 {
        params
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, b)| b)
            .sum()
    };
    let (velocity, sums) = (category(VELOCITY), category(GRAD_SUM));
    let weights = params.values().sum::<u64>() - velocity - sums;
    let micro_plan = plan_storages(&sg.graph, &sg.targets());
    let update_plan = plan_storages(&sg.update, &[sg.grad_norm]);
    // Validation builds its own folded copy of the weights and an inference
    // plan while the training executables stay alive.
    let ValidationGraph {
        graph: g, scores, ..
    } = cfg.net.validation_graph(cfg.batch, cfg.image_size)?;
    let validation_plan = plan_storages(&g, &scores);
    let validation = g
        .tensors
        .iter()
        .filter(|i| i.kind != TensorKind::Computed)
        .map(|i| i.shape.bytes())
        .sum::<u64>()
        + validation_plan.memory.total_bytes();
    // One scratch arena serves the three plans: each purpose at its largest.
    let scratch = needs_bytes(
        [
            scratch_needs(gpu, &sg.graph, &micro_plan.schedule)?,
            scratch_needs(gpu, &sg.update, &update_plan.schedule)?,
            scratch_needs(gpu, &g, &validation_plan.schedule)?,
        ]
        .concat(),
    );
    Ok(vec![
        ("weights and batch-norm statistics", weights),
        ("SGD velocities", velocity),
        ("gradient sums", sums),
        ("step inputs (images, labels, lr)", inputs),
        (
            "activations and gradients (planned)",
            micro_plan.memory.total_bytes(),
        ),
        (
            "clipping and SGD (planned)",
            update_plan.memory.total_bytes(),
        ),
        ("validation (folded weights + plan)", validation),
        ("kernel scratch (declared by the ops)", scratch),
    ])
}

/// Prints `planned_memory` as a table (MiB per category and the total).
pub fn print_planned_memory(gpu: &Gpu, cfg: &TrainConfig) -> Result<()> {
    let rows = planned_memory(gpu, cfg)?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "planned device memory, batch {} × {} micro-batches, {}², {} classes:",
        cfg.batch,
        cfg.accumulate,
        cfg.image_size,
        cfg.net.num_classes()
    );
    for (what, bytes) in &rows {
        println!("  {what:<40} {:>10.1} MiB", mib(*bytes));
    }
    let total: u64 = rows.iter().map(|r| r.1).sum();
    println!(
        "  {:<40} {:>10.1} MiB ({:.2} GiB on {}; the driver's own memory comes on top)",
        "total",
        mib(total),
        total as f64 / (1u64 << 30) as f64,
        gpu.facts.name
    );
    Ok(())
}

/// Device tensors for every parameter of the step graph, from a weight file
/// (PyTorch layouts) or fresh initialisation, velocities zero unless stored.
pub fn upload_state(
    gpu: &Gpu,
    step: &StepGraph,
    file: &WeightFile,
    cfg: &TrainConfig,
) -> Result<ParamStore> {
    let mut store = ParamStore::default();
    for s in &step.specs {
        let t = file
            .tensors
            .get(&s.name)
            .ok_or_else(|| Error::Internal(format!("no value for '{}'", s.name)))?;
        if t.shape != s.shape {
            return Err(Error::shape(
                "weights",
                format!(
                    "'{}' is {:?}, the model needs {:?}",
                    s.name, t.shape, s.shape
                ),
            ));
        }
        store.insert(gpu, &s.name, &s.role.to_device(t)?)?;
    }
    for info in &step.update.tensors {
        if info.name.starts_with(GRAD_SUM) {
            store.insert(gpu, &info.name, &Tensor::zeros(info.shape.clone()))?;
        } else if let Some(name) = info.name.strip_prefix(VELOCITY) {
            let v = match file.tensors.get(&info.name) {
                Some(v) => match step.specs.iter().find(|s| s.name == name) {
                    Some(spec) => spec.role.to_device(v)?,
                    None => v.clone(),
                },
                None => Tensor::zeros(info.shape.clone()),
            };
            store.insert(gpu, &info.name, &v)?;
        }
    }
    for (name, value) in cfg.net.architecture().constants()? {
        store.insert(gpu, &name, &value)?;
    }
    Ok(store)
}

/// Reads the device state back into a weight file in PyTorch layouts: the
/// parameters and, `with_optimizer`, their velocities (gradient sums and the
/// model's constants are not state).
pub fn download_state(
    gpu: &Gpu,
    step: &StepGraph,
    store: &ParamStore,
    with_optimizer: bool,
) -> Result<WeightFile> {
    let mut file = WeightFile::default();
    let roles: BTreeMap<&str, Role> = step
        .specs
        .iter()
        .map(|s| (s.name.as_str(), s.role))
        .collect();
    for (name, t) in &store.tensors {
        let base = name.strip_prefix(VELOCITY);
        let Some(role) = roles.get(base.unwrap_or(name)) else {
            continue;
        };
        if base.is_some() && !with_optimizer {
            continue;
        }
        file.tensors
            .insert(name.clone(), role.to_file(t.download(gpu)?)?);
    }
    Ok(file)
}

fn argmax_accuracy(scores: &HostTensor, labels: &HostTensor) -> f32 {
    let c = scores.shape.dims().last().copied().unwrap_or(1).max(1);
    let hits = scores
        .data
        .chunks(c)
        .zip(&labels.data)
        .filter(|(row, &l)| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                == Some(l as usize)
        })
        .count();
    hits as f32 / labels.data.len().max(1) as f32
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl DataSource {
    pub fn load(&self) -> Result<Dataset> {
        match self {
            DataSource::Folders(root) => Dataset::from_folders(root),
            DataSource::Gnd(gnd) => Dataset::from_gnd(gnd),
            DataSource::Csv { csv, root } => Dataset::from_csv(csv, root),
        }
    }
}

/// The validation classifier for `batch` images with the current training
/// state: its executable, image input and score outputs.
pub fn validation_executable(
    gpu: &Arc<Gpu>,
    cfg: &TrainConfig,
    sg: &StepGraph,
    store: &ParamStore,
    batch: usize,
) -> Result<(Executable, TensorId, Vec<TensorId>)> {
    let file = download_state(gpu, sg, store, false)?;
    let ValidationGraph {
        graph: g,
        images,
        scores,
        params,
    } = cfg.net.validation_graph(batch, cfg.image_size)?;
    let store =
        cfg.net
            .architecture()
            .load_params(gpu, Path::new("<training state>"), &file, &params)?;
    let exe = Executable::new(gpu, &g, &scores, &store)?;
    Ok((exe, images, scores))
}

/// Accuracy of the classifiers (the global head, and DELG's attention head) on
/// the validation images, in inference mode (batch norms folded from the
/// current running statistics, no margin); images are resized whole to the
/// training size.
fn validate(
    gpu: &Arc<Gpu>,
    cfg: &TrainConfig,
    val: &Dataset,
    sg: &StepGraph,
    store: &ParamStore,
    max_pixels: u64,
) -> Result<Option<Vec<f32>>> {
    if val.samples.is_empty() {
        return Ok(None);
    }
    let batch = cfg.batch.min(val.samples.len());
    let (exe, images, scores) = validation_executable(gpu, cfg, sg, store, batch)?;
    let aug = cfg.augment(false, max_pixels);
    let mut hits = vec![0f32; scores.len()];
    let mut n = 0usize;
    for chunk in val.samples.chunks(batch) {
        let mut px = Vec::with_capacity(batch * cfg.image_size * cfg.image_size * 3);
        let mut labels = Vec::new();
        for s in chunk {
            // An unreadable validation image is left out of the accuracy.
            if let Ok(p) =
                crate::jobs::dataset::load_sample(&s.path, aug, &mut crate::tensor::Rng::new(0))
            {
                px.extend(p);
                labels.push(s.label as f32);
            }
        }
        let real = labels.len();
        if real == 0 {
            continue;
        }
        // Pad a short last batch with copies of its first image; only real rows count.
        let one = px[..cfg.image_size * cfg.image_size * 3].to_vec();
        while labels.len() < batch {
            px.extend_from_slice(&one);
            labels.push(labels[0]);
        }
        exe.set_input(
            images,
            &Tensor::new([batch, cfg.image_size, cfg.image_size, 3], px)?,
        )?;
        exe.run()?;
        let lab = Tensor::new([real], labels[..real].to_vec())?;
        let rows = |t: HostTensor| -> Result<HostTensor> {
            let c = t.shape.dims()[1];
            Tensor::new([real, c], t.data[..real * c].to_vec())
        };
        for (h, &t) in hits.iter_mut().zip(&scores) {
            *h += argmax_accuracy(&rows(exe.read(t)?)?, &lab) * real as f32;
        }
        n += real;
    }
    Ok((n > 0).then(|| hits.iter().map(|h| h / n as f32).collect()))
}

/// Refuses initial weights made for another architecture or backbone layout:
/// their tensors would load by name into a network that computes something
/// else (the layouts differ in biases, strides and padding, not in names).
/// Files without delg-gpu metadata show their layout in the stem: only the
/// DELG layout's convolutions have biases.
pub fn check_init_fits(path: &Path, init: &WeightFile, model: &ModelConfig) -> Result<()> {
    let wanted = model.backbone().layout;
    let given = if init
        .metadata
        .get(META_ARCH)
        .is_some_and(|a| a != ARCH_BACKBONE)
    {
        let theirs = ModelConfig::from_metadata(&init.metadata, path)?;
        if theirs.arch() != model.arch() {
            return Err(Error::file(
                path,
                format!(
                    "holds a {} model but this run trains {}: pass --arch {} or initialise from {} weights",
                    theirs.arch(),
                    model.arch(),
                    theirs.arch(),
                    model.arch()
                ),
            ));
        }
        theirs.backbone().layout
    } else {
        Layout::detect(|name| init.tensors.contains_key(name))
    };
    if given != wanted {
        return Err(Error::file(
            path,
            format!(
                "holds a {}-layout backbone but the model is {}-layout: pass --layout {} or initialise from {}-layout weights",
                given.name(),
                wanted.name(),
                given.name(),
                wanted.name()
            ),
        ));
    }
    Ok(())
}

/// Drops the lines of steps after `step` from a run's metrics: a run killed
/// after its last checkpoint wrote them, and the resumed run writes those
/// steps again. A torn last line (killed mid-write) goes too.
fn keep_metrics_up_to(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let step_of = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()?
            .get("step")?
            .as_u64()
    };
    let kept: String = text
        .lines()
        .filter(|line| step_of(line).is_some_and(|s| s <= step))
        .map(|line| format!("{line}\n"))
        .collect();
    if kept.len() != text.len() {
        crate::io::npy::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Trains, resuming from `run/checkpoint.safetensors` when it exists.
pub fn run_train(gpu: &Arc<Gpu>, job: &TrainJob, stop: &AtomicBool) -> Result<StepMetrics> {
    run_train_across(gpu, job, stop, &World::single(), RankOptions::default())
}

/// The gradient sums: their tensors in the micro-batch graph and on the
/// device, in the graph's order (the same on every rank).
fn gradient_sums<'a>(
    sg: &StepGraph,
    store: &'a ParamStore,
) -> Result<Vec<(TensorId, &'a DeviceTensor)>> {
    sg.graph
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == TensorKind::Param && i.name.starts_with(GRAD_SUM))
        .map(|(k, i)| {
            let t = store
                .get(&i.name)
                .ok_or_else(|| Error::Internal(format!("no device tensor '{}'", i.name)))?;
            Ok((TensorId(k), t))
        })
        .collect()
}

/// The values of `tensors`, downloaded one after the other into one vector.
fn download_concat(gpu: &Gpu, tensors: &[&DeviceTensor]) -> Result<Vec<f32>> {
    let mut all = Vec::new();
    for t in tensors {
        all.extend(t.download(gpu)?.data);
    }
    Ok(all)
}

/// Writes consecutive parts of `values` back into `tensors` (the inverse of
/// `download_concat`).
pub(crate) fn upload_split(gpu: &Gpu, tensors: &[&DeviceTensor], values: &[f32]) -> Result<()> {
    let mut at = 0;
    for t in tensors {
        let n = t.shape.numel();
        let part = values
            .get(at..at + n)
            .ok_or_else(|| Error::Internal("reduced values shorter than the tensors".into()))?;
        gpu.write(&t.buffer, t.offset, bytemuck::cast_slice(part));
        at += n;
    }
    Ok(())
}

/// The store's tensors of the parameters with `role_filter`, in spec order.
fn tensors_where<'a>(
    sg: &StepGraph,
    store: &'a ParamStore,
    role_filter: impl Fn(&ParamSpec) -> bool,
) -> Result<Vec<&'a DeviceTensor>> {
    sg.specs
        .iter()
        .filter(|s| role_filter(s))
        .map(|s| {
            store
                .get(&s.name)
                .ok_or_else(|| Error::Internal(format!("no device tensor '{}'", s.name)))
        })
        .collect()
}

/// Stops with an error naming `step` when the trainable parameters of some
/// rank are not bit-identical to rank 0's. A collective: all ranks call it.
fn check_ranks_agree(
    gpu: &Gpu,
    sg: &StepGraph,
    store: &ParamStore,
    world: &World,
    step: u64,
) -> Result<()> {
    let mine = checksum(download_concat(gpu, &tensors_where(sg, store, trainable)?)?);
    let mut root = mine;
    world.broadcast_u64(&mut root);
    if world.all_false(mine != root) {
        return Ok(());
    }
    Err(Error::Internal(format!(
        "after step {step} the parameters of the {} ranks differ (rank {} checksum {mine:016x}, rank 0 {root:016x}): \
         the ranks no longer train the same model; rerun from the last checkpoint",
        world.size(),
        world.rank()
    )))
}

/// Averages the batch-norm running statistics (and other per-rank state such
/// as CurricularFace's) over the ranks, so that a checkpoint, its validation
/// and every rank continue from the same values. A collective.
fn average_rank_state(gpu: &Gpu, sg: &StepGraph, store: &ParamStore, world: &World) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let state = tensors_where(sg, store, |s| !trainable(s))?;
    let mut values = download_concat(gpu, &state)?;
    world.all_reduce_sum_f32(&mut values);
    let ranks = world.size() as f32;
    values.iter_mut().for_each(|v| *v /= ranks);
    upload_split(gpu, &state, &values)
}

/// Trains as one of the ranks of `world` (see `jobs::distributed`): each rank
/// runs its own disjoint micro-batches of every step, the gradient sums are
/// added up across the ranks during the last micro-batch's backward pass (in
/// buckets of `ranks.bucket_bytes`, see `jobs::allreduce`), and every rank
/// applies the same update. Batch norm uses
/// each rank's own micro-batch statistics, like one process with
/// `--accumulate accumulate × ranks`; the running statistics are averaged
/// across the ranks before each checkpoint. Only rank 0 writes files. Every
/// `ranks.check_every` steps (0: only at the end) the ranks compare a
/// checksum of their parameters.
pub fn run_train_across(
    gpu: &Arc<Gpu>,
    job: &TrainJob,
    stop: &AtomicBool,
    world: &World,
    ranks: RankOptions,
) -> Result<StepMetrics> {
    let check_every = ranks.check_every;
    let cfg = &job.config;
    let root = world.is_root();
    let io_err = |p: &Path, e: std::io::Error| Error::File {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&job.run).map_err(|e| io_err(&job.run, e))?;
    let data = &job.data;
    if data.classes.len() != cfg.net.num_classes() {
        return Err(Error::InvalidArgument(format!(
            "the data has {} classes but the configuration {}",
            data.classes.len(),
            cfg.net.num_classes()
        )));
    }
    let (train, val) = data.split(cfg.val_fraction, cfg.seed);
    let step_graph = build_step_across(cfg, world.size())?;

    let checkpoint = job.run.join("checkpoint.safetensors");
    let config_path = job.run.join("config.json");
    let (file, start) = if checkpoint.exists() {
        let f = WeightFile::load(&checkpoint)?;
        let saved: Option<TrainConfig> = f
            .metadata
            .get(META_TRAIN)
            .and_then(|t| serde_json::from_str(t).ok());
        if saved.as_ref() != Some(cfg) {
            return Err(Error::File {
                path: checkpoint,
                reason: "was written with a different training configuration; use a new run folder"
                    .into(),
            });
        }
        // Older checkpoints have no rank count: they come from one process.
        let ranks = f
            .metadata
            .get(META_RANKS)
            .map_or(Some(1), |r| r.parse::<usize>().ok());
        if ranks != Some(world.size()) {
            return Err(Error::file(
                &checkpoint,
                format!(
                    "was written by a run of {} rank(s) but this run has {}: resume with the same \
                     number of ranks (mpirun -np), or use a new run folder",
                    f.metadata.get(META_RANKS).map_or("1", |r| r.as_str()),
                    world.size()
                ),
            ));
        }
        let step = f
            .metadata
            .get(META_STEP)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (f, step)
    } else {
        let mut f = random_weights(&step_graph.specs, cfg.seed);
        if let Some(init) = &job.init {
            let given = WeightFile::load(init)?;
            check_init_fits(init, &given, &cfg.net.model_config())?;
            let mut unknown = Vec::new();
            for (name, t) in given.tensors {
                match f.tensors.get_mut(&name) {
                    Some(slot) if slot.shape != t.shape => {
                        return Err(Error::file(
                            init,
                            format!(
                                "'{name}' is {:?}, the model needs {:?}",
                                t.shape, slot.shape
                            ),
                        ));
                    }
                    Some(slot) => *slot = t,
                    None if name.ends_with("num_batches_tracked") => {}
                    None => unknown.push(name),
                }
            }
            if !unknown.is_empty() {
                return Err(Error::file(
                    init,
                    format!(
                        "holds {} tensors this model does not have ({}{}): a backbone of another depth? \
                         match --depth to it; a raw torchvision state dict? `delg-gpu weights import` it first",
                        unknown.len(),
                        unknown[..unknown.len().min(3)].join(", "),
                        if unknown.len() > 3 { ", …" } else { "" }
                    ),
                ));
            }
        }
        (f, 0)
    };
    let config_json =
        serde_json::to_string_pretty(cfg).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if root {
        crate::io::npy::write_atomic(&config_path, config_json.as_bytes())?;
    }

    let store = upload_state(gpu, &step_graph, &file, cfg)?;
    drop(file);
    let sg = &step_graph;
    let (exe, update) = sg.executables(gpu, &store)?;

    // A single rank has nothing to reduce and runs each micro-batch whole.
    let buckets = if world.size() > 1 {
        let sums = gradient_sums(sg, &store)?;
        let buckets = Buckets::new(gpu, &sg.graph, &exe, &sums, ranks.bucket_bytes)?;
        if root && !job.quiet {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            let buckets_said: Vec<String> = buckets
                .bytes()
                .iter()
                .zip(buckets.ready_shares(&sg.graph, &exe))
                .map(|(&b, share)| format!("{:.1} MiB after {:.0} %", mib(b), share * 100.0))
                .collect();
            eprintln!(
                "all-reduce of {:.1} MiB of gradients per step in {} bucket(s), each final \
                 after a share of the micro-batch's {:.1} GFLOP: {}",
                mib(buckets.bytes().iter().sum()),
                buckets.len(),
                exe.flops as f64 / 1e9,
                buckets_said.join(", ")
            );
        }
        Some(buckets)
    } else {
        None
    };

    // Only rank 0 writes: the other ranks' lines would be the same.
    let metrics_path = job.run.join("metrics.jsonl");
    if root {
        keep_metrics_up_to(&metrics_path, start)?;
    }
    let mut metrics: Box<dyn Write> = if root {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| io_err(&metrics_path, e))?,
        )
    } else {
        Box::new(std::io::sink())
    };
    let save = |step: u64, store: &ParamStore| -> Result<()> {
        average_rank_state(gpu, sg, store, world)?;
        if !root {
            return Ok(());
        }
        let mut f = download_state(gpu, sg, store, true)?;
        f.metadata.insert(META_STEP.into(), step.to_string());
        f.metadata.insert(META_TRAIN.into(), config_json.clone());
        f.metadata
            .insert(META_RANKS.into(), world.size().to_string());
        f.save(&checkpoint)
    };

    let aug = cfg.augment(true, job.max_pixels);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
    {
        let (train, seed, batch) = (train.clone(), cfg.seed, cfg.batch);
        let micro = cfg.accumulate as u64;
        let (first, end) = (start * micro, cfg.steps * micro);
        let (rank, ranks) = (world.rank(), world.size());
        std::thread::spawn(move || {
            // Micro-batch k of step s is micro-batch s·accumulate + k of this
            // rank's share of the data order.
            for index in first..end {
                if tx
                    .send(make_batch(
                        &train,
                        batch,
                        aug,
                        seed,
                        data_index(index, rank, ranks),
                    ))
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    let bar = if job.quiet || !root {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(cfg.steps)
    };
    bar.set_position(start);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut last = StepMetrics {
        step: start,
        ..Default::default()
    };
    let mut last_attention = Vec::new();
    for step in start..cfg.steps {
        let t0 = std::time::Instant::now();
        // Sums over the micro-batches: the losses, then the accuracies.
        let losses = sg.outputs.len();
        let mut sums = vec![0f32; losses + 2];
        let mut times = StepTimes::default();
        for k in 0..cfg.accumulate {
            let batch = rx
                .recv()
                .map_err(|_| Error::Internal("the data loader stopped".into()))??;
            for (path, why) in &batch.skipped {
                bar.println(format!("skipped {}: {why}", path.display()));
            }
            exe.set_input(sg.images, &batch.images)?;
            exe.set_input(sg.labels, &batch.labels)?;
            exe.set_input(sg.keep, &Tensor::new([1], vec![(k > 0) as u8 as f32])?)?;
            match &buckets {
                Some(buckets) if k + 1 == cfg.accumulate => {
                    let compute_before = times.compute_s;
                    times = buckets.run_and_reduce(gpu, &exe, world)?;
                    times.compute_s += compute_before;
                }
                _ => {
                    let t = std::time::Instant::now();
                    exe.run()?;
                    times.compute_s += t.elapsed().as_secs_f64();
                }
            }
            for (sum, &t) in sums.iter_mut().zip(&sg.outputs) {
                *sum += exe.read(t)?.data[0];
            }
            sums[losses] += argmax_accuracy(&exe.read(sg.cosines)?, &batch.labels);
            if let Some(logits) = sg.logits {
                sums[losses + 1] += argmax_accuracy(&exe.read(logits)?, &batch.labels);
            }
        }
        // The gradient sums were reduced with the backward pass; the metric
        // sums and whether any rank was asked to stop follow.
        let stopping = if world.size() > 1 {
            let mut shared = sums.clone();
            shared.push(stop.load(Ordering::SeqCst) as u8 as f32);
            world.all_reduce_sum_f32(&mut shared);
            let stop_flag = shared.pop().unwrap_or(0.0);
            sums.copy_from_slice(&shared);
            stop_flag > 0.0
        } else {
            stop.load(Ordering::SeqCst)
        };
        let lr = cfg.learning_rate(step);
        let update_started = std::time::Instant::now();
        update.set_input(sg.lr, &Tensor::new([1], vec![lr])?)?;
        update.run()?;
        times.update_s = update_started.elapsed().as_secs_f64();
        let micro_batches = (cfg.accumulate * world.size()) as f32;
        let mean: Vec<f32> = sums.iter().map(|v| v / micro_batches).collect();
        // A second classifier comes with DELG's local-head losses.
        let local_head = sg.logits.is_some();
        last = StepMetrics {
            step: step + 1,
            loss: mean[0],
            global_loss: if local_head { mean[1] } else { mean[0] },
            attention_loss: local_head.then(|| mean[2]),
            reconstruction_loss: local_head.then(|| mean[3]),
            lr,
            grad_norm: update.read(sg.grad_norm)?.data[0],
            global_accuracy: mean[losses],
            attention_accuracy: local_head.then(|| mean[losses + 1]),
            images_per_s: (cfg.batch * cfg.accumulate * world.size()) as f64
                / t0.elapsed().as_secs_f64(),
            times: buckets.is_some().then_some(times),
        };
        if !last.loss.is_finite() {
            return Err(Error::Diverged {
                value: last.loss,
                step: step + 1,
            });
        }
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&last).unwrap_or_default()
        )
        .map_err(|e| io_err(&metrics_path, e))?;
        bar.set_position(step + 1);
        let parts = match (last.attention_loss, last.reconstruction_loss) {
            (Some(a), Some(r)) => format!(" (g {:.3} a {a:.3} r {r:.4})", last.global_loss),
            _ => String::new(),
        };
        bar.set_message(format!(
            "loss {:.4}{parts}  lr {:.2e}  {:.2} img/s",
            last.loss, lr, last.images_per_s
        ));
        let done = step + 1 == cfg.steps;
        if done {
            last_attention = exe.read(sg.attention)?.data;
        }
        if world.size() > 1 && (done || (check_every > 0 && (step + 1) % check_every == 0)) {
            check_ranks_agree(gpu, sg, &store, world, step + 1)?;
        }
        if done || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) || stopping
        {
            save(step + 1, &store)?;
            if !stopping && root {
                if let Some(acc) = validate(gpu, cfg, &val, sg, &store, job.max_pixels)? {
                    let mut line =
                        serde_json::json!({"step": step + 1, "val_global_accuracy": acc[0]});
                    let mut text = format!("global {:.3}", acc[0]);
                    if let Some(a) = acc.get(1) {
                        line["val_attention_accuracy"] = serde_json::json!(a);
                        text += &format!(", attention {a:.3}");
                    }
                    writeln!(metrics, "{line}").map_err(|e| io_err(&metrics_path, e))?;
                    bar.println(format!("step {}: validation accuracy {text}", step + 1));
                }
            }
            if stopping && !done {
                bar.abandon_with_message(format!(
                    "interrupted: checkpoint at step {} written; rerun the same command to resume",
                    step + 1
                ));
                return Ok(last);
            }
        }
    }
    bar.finish_and_clear();
    if !root {
        return Ok(last);
    }

    // The extraction model: no optimiser state, no training-only heads; with
    // local features, τ = the median attention of the last batch (DELG's rule).
    let mut model = download_state(gpu, sg, &store, false)?;
    let inference = cfg.net.architecture().parameters()?.specs;
    let keep: std::collections::HashSet<&str> = inference.iter().map(|s| s.name.as_str()).collect();
    model.tensors.retain(|n, _| keep.contains(n.as_str()));
    model.metadata.extend(cfg.net.model_config().metadata()?);
    if cfg.net.architecture().local_dim() > 0 {
        model.metadata.insert(
            META_SCORE_THRESHOLD.into(),
            median(last_attention).to_string(),
        );
    }
    model.save(&job.run.join("model.safetensors"))?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::dataset::AugmentRecipe;
    use crate::model::delg::{DelgConfig, DelgLossConfig};
    use crate::model::dolg::DolgConfig;
    use crate::model::resnet::ResNetConfig;

    fn tiny(layout: Layout) -> DelgConfig {
        DelgConfig::new(ResNetConfig {
            blocks: [1, 1, 1, 1],
            width: 8,
            ..ResNetConfig::resnet50(layout)
        })
    }

    fn config(schedule: Schedule) -> TrainConfig {
        let model = tiny(Layout::Delg);
        TrainConfig {
            net: TrainModel::Delg {
                loss: DelgLossConfig::paper(3),
                model,
            },
            batch: 2,
            accumulate: 1,
            image_size: 64,
            steps: 100,
            lr: 0.01,
            schedule,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
            clip_norm: 0.0,
            bn_momentum: 0.1,
            seed: 0,
            checkpoint_every: 0,
            val_fraction: 0.0,
            flip: false,
        }
    }

    #[test]
    fn the_cosine_spans_the_whole_run_and_the_warm_up_multiplies_it() {
        let cfg = config(Schedule::Cosine { warmup: 10 });
        let cosine =
            |step: u64| 0.01 * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / 100.0).cos());
        let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-9;
        assert!(close(cfg.learning_rate(0), 0.001));
        assert!(close(cfg.learning_rate(5), cosine(5) * 0.55));
        // No restart after the warm-up: the cosine has already moved on.
        assert!(close(cfg.learning_rate(10), cosine(10)));
        assert!(close(cfg.learning_rate(50), 0.005));
        assert!(close(cfg.learning_rate(100), 0.0));
    }

    #[test]
    fn delg_trains_with_the_official_fixed_arcface_scale() {
        assert_eq!(DelgLossConfig::paper(3).arcface_scale, 45.25);
    }

    fn weights_of(model: &ModelConfig, with_metadata: bool, stem_bias: bool) -> WeightFile {
        let mut file = WeightFile {
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
            fingerprint: None,
        };
        if with_metadata {
            file.metadata.extend(model.metadata().unwrap());
        }
        if stem_bias {
            file.tensors
                .insert("conv1.bias".into(), Tensor::new([8], vec![0.0; 8]).unwrap());
        }
        file
    }

    fn options() -> TrainOptions {
        TrainOptions {
            batch: 2,
            image_size: 64,
            steps: 200,
            checkpoint_every: 0,
            val_fraction: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn each_architecture_brings_its_recipe_defaults_and_options_override_them() {
        let delg = options()
            .resolve(ModelConfig::Delg(tiny(Layout::Delg)), 3)
            .unwrap();
        assert_eq!(delg.schedule, Schedule::Linear);
        assert_eq!(
            (delg.nesterov, delg.weight_decay, delg.clip_norm, delg.flip),
            (false, 0.0, 10.0, false)
        );
        assert_eq!(delg.bn_momentum, 0.01, "Keras's 0.99");
        assert_eq!(
            delg.net,
            TrainModel::Delg {
                model: tiny(Layout::Delg),
                loss: DelgLossConfig::paper(3),
            }
        );
        assert_eq!(delg.augment(true, 1).recipe, AugmentRecipe::Delg);

        let dolg_model = DolgConfig::new(tiny(Layout::Torchvision).backbone);
        let dolg = options()
            .resolve(ModelConfig::Dolg(dolg_model.clone()), 3)
            .unwrap();
        assert_eq!(dolg.schedule, Schedule::Cosine { warmup: 10 });
        assert_eq!(
            (dolg.nesterov, dolg.weight_decay, dolg.clip_norm, dolg.flip),
            (true, 1e-4, 0.0, true)
        );
        assert_eq!(dolg.bn_momentum, 0.1);
        assert_eq!(
            dolg.augment(false, 1).norm,
            crate::jobs::extract::PixelNorm::Imagenet
        );

        let mut given = options();
        given.schedule = Some("cosine".into());
        given.arcface_margin = Some(0.3);
        given.plain_arcface = true;
        given.clip_norm = Some(5.0);
        let dolg = given
            .resolve(ModelConfig::Dolg(dolg_model.clone()), 3)
            .unwrap();
        let loss = crate::model::dolg::DolgLossConfig {
            margin: 0.3,
            curricular: false,
            ..crate::model::dolg::DolgLossConfig::official(3)
        };
        assert_eq!(
            dolg.net,
            TrainModel::Dolg {
                model: dolg_model,
                loss
            }
        );
        assert_eq!(dolg.clip_norm, 5.0);
        let delg = given.resolve(ModelConfig::Delg(tiny(Layout::Delg)), 3);
        let err = delg.unwrap_err().to_string();
        assert!(err.contains("--arch dolg"), "{err}");
        given.plain_arcface = false;
        let delg = given
            .resolve(ModelConfig::Delg(tiny(Layout::Delg)), 3)
            .unwrap();
        assert_eq!(delg.schedule, Schedule::Cosine { warmup: 0 });
    }

    #[test]
    fn init_weights_of_another_layout_or_architecture_are_refused() {
        let path = Path::new("init.safetensors");
        let delg = ModelConfig::Delg(tiny(Layout::Delg));
        let torchvision = ModelConfig::Delg(tiny(Layout::Torchvision));
        let dolg = ModelConfig::Dolg(DolgConfig::new(ResNetConfig {
            blocks: [1, 1, 1, 1],
            width: 8,
            ..ResNetConfig::resnet50(Layout::Torchvision)
        }));
        check_init_fits(path, &weights_of(&delg, true, true), &delg).unwrap();
        check_init_fits(path, &weights_of(&torchvision, true, false), &torchvision).unwrap();
        let err = check_init_fits(path, &weights_of(&torchvision, true, false), &delg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--layout torchvision"), "{err}");
        // Without metadata the stem's bias tells the layout.
        let err = check_init_fits(path, &weights_of(&delg, false, true), &torchvision)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--layout delg"), "{err}");
        check_init_fits(path, &weights_of(&delg, false, false), &torchvision).unwrap();
        let err = check_init_fits(path, &weights_of(&dolg, true, false), &torchvision)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--arch dolg"), "{err}");
    }
}
