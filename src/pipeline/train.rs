//! `delg-gpu train`: DELG trained end to end on the device (spec §1.4, §2,
//! §3): the three losses, autodiff through the whole network, global-norm
//! clipping and SGD with momentum in one recorded graph per step.
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
use crate::gpu::Gpu;
use crate::graph::exec::{Executable, ParamStore};
use crate::graph::{Graph, TensorId};
use crate::io::weights::WeightFile;
use crate::model::delg::{training_graph, DelgConfig, DelgLossConfig};
use crate::model::params::{hwio_to_oihw, oihw_to_hwio, random_weights};
use crate::model::resnet::{ParamSpec, Role};
use crate::model::{META_ARCH, META_CONFIG, META_SCORE_THRESHOLD};
use crate::ops::optim::{GlobalNormClip, SgdStep};
use crate::pipeline::dataset::{make_batch, Augment, Batch, Dataset};
use crate::tensor::{HostTensor, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// lr₀·(1 − t/T), DELG's schedule.
    Linear,
    /// Linear warm-up from 0.1·lr₀ over `warmup` steps, then cosine to 0 (DOLG's).
    Cosine { warmup: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: DelgConfig,
    pub loss: DelgLossConfig,
    pub batch: usize,
    pub image_size: usize,
    pub steps: u64,
    pub lr: f32,
    pub schedule: Schedule,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub clip_norm: f32,
    /// PyTorch convention (weight of the new batch); DELG's Keras 0.99 is 0.01.
    pub bn_momentum: f32,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub val_fraction: f64,
    pub flip: bool,
}

impl TrainConfig {
    pub fn learning_rate(&self, step: u64) -> f32 {
        let t = step as f64 / self.steps.max(1) as f64;
        let lr0 = self.lr as f64;
        let lr = match self.schedule {
            Schedule::Linear => lr0 * (1.0 - t),
            Schedule::Cosine { warmup } if step < warmup => {
                lr0 * (0.1 + 0.9 * step as f64 / warmup as f64)
            }
            Schedule::Cosine { warmup } => {
                let u = (step - warmup) as f64 / (self.steps.saturating_sub(warmup)).max(1) as f64;
                lr0 * 0.5 * (1.0 + (std::f64::consts::PI * u).cos())
            }
        };
        lr.max(0.0) as f32
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
    pub data: DataSource,
    pub run: PathBuf,
    /// Initial weights (e.g. converted ImageNet weights); missing head tensors are initialised.
    pub init: Option<PathBuf>,
    pub config: TrainConfig,
    pub quiet: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f32,
    pub global_loss: f32,
    pub attention_loss: f32,
    pub reconstruction_loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub global_accuracy: f32,
    pub attention_accuracy: f32,
    pub images_per_s: f64,
}

const VELOCITY: &str = "optimizer.velocity.";
const META_STEP: &str = "delg_gpu.step";
const META_TRAIN: &str = "delg_gpu.train_config";

/// The training graph plus the optimiser: gradients of the total loss for
/// every trainable parameter, global-norm clipping, and one SGD step each.
pub struct StepGraph {
    pub graph: Graph,
    pub images: TensorId,
    pub labels: TensorId,
    pub lr: TensorId,
    /// Total, global, attention and reconstruction losses.
    pub outputs: [TensorId; 4],
    pub grad_norm: TensorId,
    pub cosines: TensorId,
    pub logits: TensorId,
    pub attention: TensorId,
    pub specs: Vec<ParamSpec>,
}

fn trainable(s: &ParamSpec) -> bool {
    !matches!(s.role, Role::BnMean | Role::BnVar)
}

pub fn build_step(cfg: &TrainConfig) -> Result<StepGraph> {
    let (mut g, t, params) = training_graph(
        &cfg.model,
        &cfg.loss,
        cfg.batch,
        cfg.image_size,
        cfg.bn_momentum,
    )?;
    let specs = params.specs;
    let ids: BTreeMap<&str, TensorId> = g
        .tensors
        .iter()
        .enumerate()
        .filter(|(_, i)| i.kind == crate::graph::TensorKind::Param)
        .map(|(k, i)| (i.name.as_str(), TensorId(k)))
        .collect();
    let train: Vec<(String, TensorId)> = specs
        .iter()
        .filter(|s| trainable(s))
        .map(|s| (s.name.clone(), ids[s.name.as_str()]))
        .collect();
    let wrt: Vec<TensorId> = train.iter().map(|(_, t)| *t).collect();
    let grads = g.grad(t.total_loss, &wrt)?;
    let present: Vec<(String, TensorId, TensorId)> = train
        .iter()
        .zip(&grads)
        .filter_map(|((n, p), gr)| gr.map(|gr| (n.clone(), *p, gr)))
        .collect();
    let lr = g.input("lr", [1]);
    let clip = g.apply(
        GlobalNormClip {
            max_norm: cfg.clip_norm,
        },
        &present.iter().map(|x| x.2).collect::<Vec<_>>(),
    )?;
    let sgd = SgdStep {
        momentum: cfg.momentum,
        nesterov: cfg.nesterov,
        weight_decay: cfg.weight_decay,
    };
    for (name, p, gr) in &present {
        let shape = g.shape(*p).clone();
        let v = g.param(&format!("{VELOCITY}{name}"), shape);
        g.apply(sgd, &[*p, *gr, v, lr, clip[1]])?;
    }
    Ok(StepGraph {
        graph: g,
        images: t.images,
        labels: t.labels,
        lr,
        outputs: [
            t.total_loss,
            t.global_loss,
            t.attention_loss,
            t.reconstruction_loss,
        ],
        grad_norm: clip[0],
        cosines: t.global_cosines,
        logits: t.attention_logits,
        attention: t.attention,
        specs,
    })
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
            .ok_or_else(|| Error::Graph(format!("no value for '{}'", s.name)))?;
        if t.shape != s.shape {
            return Err(Error::shape(
                "weights",
                format!(
                    "'{}' is {:?}, the model needs {:?}",
                    s.name, t.shape, s.shape
                ),
            ));
        }
        let device = if s.role == Role::ConvWeight {
            oihw_to_hwio(t)?
        } else {
            t.clone()
        };
        store.insert(gpu, &s.name, &device)?;
    }
    for info in &step.graph.tensors {
        if let Some(name) = info.name.strip_prefix(VELOCITY) {
            let v = match file.tensors.get(&info.name) {
                Some(v) => {
                    let spec = step.specs.iter().find(|s| s.name == name);
                    if spec.is_some_and(|s| s.role == Role::ConvWeight) {
                        oihw_to_hwio(v)?
                    } else {
                        v.clone()
                    }
                }
                None => Tensor::zeros(info.shape.clone()),
            };
            store.insert(gpu, &info.name, &v)?;
        }
    }
    store.insert(gpu, "gem.p", &Tensor::new([1], vec![cfg.model.gem_p])?)?;
    Ok(store)
}

/// Reads the device state back into a weight file in PyTorch layouts.
fn download_state(
    gpu: &Gpu,
    step: &StepGraph,
    store: &ParamStore,
    with_optimizer: bool,
) -> Result<WeightFile> {
    let mut file = WeightFile::default();
    let conv: std::collections::HashSet<&str> = step
        .specs
        .iter()
        .filter(|s| s.role == Role::ConvWeight)
        .map(|s| s.name.as_str())
        .collect();
    for (name, t) in &store.tensors {
        let base = name.strip_prefix(VELOCITY);
        if name == "gem.p" || (base.is_some() && !with_optimizer) {
            continue;
        }
        let host = t.download(gpu)?;
        let host = if conv.contains(base.unwrap_or(name)) {
            hwio_to_oihw(&host)?
        } else {
            host
        };
        file.tensors.insert(name.clone(), host);
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

/// Accuracy of both classifiers on the validation images, in inference mode
/// (batch norms folded from the current running statistics, no margin);
/// images are resized whole to the training size.
fn validate(
    gpu: &Arc<Gpu>,
    cfg: &TrainConfig,
    val: &Dataset,
    sg: &StepGraph,
    store: &ParamStore,
) -> Result<Option<(f32, f32)>> {
    if val.samples.is_empty() {
        return Ok(None);
    }
    let file = download_state(gpu, sg, store, false)?;
    let batch = cfg.batch.min(val.samples.len());
    let (g, images, cosines, logits, params) =
        crate::model::delg::validation_graph(&cfg.model, &cfg.loss, batch, cfg.image_size)?;
    let constants = [(
        "gem.p".to_string(),
        Tensor::new([1], vec![cfg.model.gem_p])?,
    )];
    let store = crate::model::params::load_params(
        gpu,
        Path::new("<training state>"),
        &file,
        &params,
        cfg.model.backbone.bn_eps(),
        &constants,
    )?;
    let exe = Executable::new(gpu, &g, &[cosines, logits], &store)?;
    let aug = Augment {
        size: cfg.image_size,
        random_crop: false,
        flip: false,
    };
    let (mut hits_g, mut hits_a, mut n) = (0.0f32, 0.0f32, 0usize);
    for chunk in val.samples.chunks(batch) {
        let mut px = Vec::with_capacity(batch * cfg.image_size * cfg.image_size * 3);
        let mut labels = Vec::new();
        for s in chunk {
            // An unreadable validation image is left out of the accuracy.
            if let Ok(p) =
                crate::pipeline::dataset::load_sample(&s.path, aug, &mut crate::tensor::Rng::new(0))
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
        hits_g += argmax_accuracy(&rows(exe.read(cosines)?)?, &lab) * real as f32;
        hits_a += argmax_accuracy(&rows(exe.read(logits)?)?, &lab) * real as f32;
        n += real;
    }
    Ok((n > 0).then(|| (hits_g / n as f32, hits_a / n as f32)))
}

/// Trains, resuming from `run/checkpoint.safetensors` when it exists.
pub fn run_train(gpu: &Arc<Gpu>, job: &TrainJob, stop: &AtomicBool) -> Result<StepMetrics> {
    let cfg = &job.config;
    let io_err = |p: &Path, e: std::io::Error| Error::File {
        path: p.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&job.run).map_err(|e| io_err(&job.run, e))?;
    let data = job.data.load()?;
    if data.classes.len() != cfg.loss.num_classes {
        return Err(Error::InvalidArgument(format!(
            "the data has {} classes but the configuration {}",
            data.classes.len(),
            cfg.loss.num_classes
        )));
    }
    let (train, val) = data.split(cfg.val_fraction, cfg.seed);
    let step_graph = build_step(cfg)?;

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
            for (name, t) in given.tensors {
                if let Some(slot) = f.tensors.get_mut(&name) {
                    if slot.shape != t.shape {
                        return Err(Error::File {
                            path: init.clone(),
                            reason: format!(
                                "'{name}' is {:?}, the model needs {:?}",
                                t.shape, slot.shape
                            ),
                        });
                    }
                    *slot = t;
                }
            }
        }
        (f, 0)
    };
    let config_json =
        serde_json::to_string_pretty(cfg).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    crate::io::npy::write_atomic(&config_path, config_json.as_bytes())?;

    let store = upload_state(gpu, &step_graph, &file, cfg)?;
    let sg = &step_graph;
    let targets = [
        sg.outputs.as_slice(),
        &[sg.grad_norm, sg.cosines, sg.logits, sg.attention],
    ]
    .concat();
    let exe = Executable::new(gpu, &sg.graph, &targets, &store)?;

    let metrics_path = job.run.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io_err(&metrics_path, e))?;
    let save = |step: u64, store: &ParamStore| -> Result<()> {
        let mut f = download_state(gpu, sg, store, true)?;
        f.metadata.insert(META_STEP.into(), step.to_string());
        f.metadata.insert(META_TRAIN.into(), config_json.clone());
        f.save(&checkpoint)
    };

    let aug = Augment {
        size: cfg.image_size,
        random_crop: true,
        flip: cfg.flip,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2);
    {
        let (train, seed, batch, steps) = (train.clone(), cfg.seed, cfg.batch, cfg.steps);
        std::thread::spawn(move || {
            for step in start..steps {
                if tx.send(make_batch(&train, batch, aug, seed, step)).is_err() {
                    return;
                }
            }
        });
    }
    let bar = if job.quiet {
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
        let batch = rx
            .recv()
            .map_err(|_| Error::Graph("the data loader stopped".into()))??;
        for (path, why) in &batch.skipped {
            bar.println(format!("skipped {}: {why}", path.display()));
        }
        let t0 = std::time::Instant::now();
        let lr = cfg.learning_rate(step);
        exe.set_input(sg.images, &batch.images)?;
        exe.set_input(sg.labels, &batch.labels)?;
        exe.set_input(sg.lr, &Tensor::new([1], vec![lr])?)?;
        exe.run()?;
        let scalar = |t: TensorId| exe.read(t).map(|v| v.data[0]);
        last = StepMetrics {
            step: step + 1,
            loss: scalar(sg.outputs[0])?,
            global_loss: scalar(sg.outputs[1])?,
            attention_loss: scalar(sg.outputs[2])?,
            reconstruction_loss: scalar(sg.outputs[3])?,
            lr,
            grad_norm: scalar(sg.grad_norm)?,
            global_accuracy: argmax_accuracy(&exe.read(sg.cosines)?, &batch.labels),
            attention_accuracy: argmax_accuracy(&exe.read(sg.logits)?, &batch.labels),
            images_per_s: cfg.batch as f64 / t0.elapsed().as_secs_f64(),
        };
        if !last.loss.is_finite() {
            return Err(Error::Graph(format!(
                "the loss became {} at step {}; lower --lr",
                last.loss,
                step + 1
            )));
        }
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&last).unwrap_or_default()
        )
        .map_err(|e| io_err(&metrics_path, e))?;
        bar.set_position(step + 1);
        bar.set_message(format!(
            "loss {:.4} (g {:.3} a {:.3} r {:.4})  lr {:.2e}  {:.2} img/s",
            last.loss,
            last.global_loss,
            last.attention_loss,
            last.reconstruction_loss,
            lr,
            last.images_per_s
        ));
        let done = step + 1 == cfg.steps;
        if done {
            last_attention = exe.read(sg.attention)?.data;
        }
        if done
            || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0)
            || stop.load(Ordering::SeqCst)
        {
            save(step + 1, &store)?;
            if !stop.load(Ordering::SeqCst) {
                if let Some((g, a)) = validate(gpu, cfg, &val, sg, &store)? {
                    let line = serde_json::json!({"step": step + 1, "val_global_accuracy": g, "val_attention_accuracy": a});
                    writeln!(metrics, "{line}").map_err(|e| io_err(&metrics_path, e))?;
                    bar.println(format!(
                        "step {}: validation accuracy global {g:.3}, attention {a:.3}",
                        step + 1
                    ));
                }
            }
            if stop.load(Ordering::SeqCst) && !done {
                bar.abandon_with_message(format!(
                    "interrupted: checkpoint at step {} written; rerun the same command to resume",
                    step + 1
                ));
                return Ok(last);
            }
        }
    }
    bar.finish_and_clear();

    // The extraction model: no optimiser state, no training-only heads, τ =
    // the median attention of the last batch (the paper's rule).
    let mut model = download_state(gpu, sg, &store, false)?;
    let (_, _, _, inference) = crate::model::delg::inference_graph(&cfg.model, 64, 64)?;
    let keep: std::collections::HashSet<&str> =
        inference.specs.iter().map(|s| s.name.as_str()).collect();
    model.tensors.retain(|n, _| keep.contains(n.as_str()));
    model.metadata.insert(META_ARCH.into(), "delg".into());
    model.metadata.insert(
        META_CONFIG.into(),
        serde_json::to_string(&cfg.model).unwrap_or_default(),
    );
    model.metadata.insert(
        META_SCORE_THRESHOLD.into(),
        median(last_attention).to_string(),
    );
    model.save(&job.run.join("model.safetensors"))?;
    Ok(last)
}
