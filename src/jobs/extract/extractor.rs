//! Runs a model (any architecture) over an image pyramid on the device: one
//! planned, recorded executable per (batch, image size, pyramid level), kept
//! in a small cache because collections repeat sizes. Images of equal size
//! run together as one batched graph per level (`extract_batch`), which fills
//! a GPU that a small pyramid level of one image leaves idle. Per batch the
//! host uploads the pixels once (every level resizes from one shared buffer),
//! encodes all levels and their readbacks into one submission and waits once:
//! nothing is created and nothing is recorded in the steady state. Submitting
//! and reading back are separate steps (`submit_batch`, `finish`), so a job
//! submits the next batch before it waits for the last one's results and the
//! device never idles while the host selects keypoints and writes files.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::recipe::{aggregate_global, select_local, ExtractConfig, LevelOutput, LocalFeatures};
use crate::error::{Error, Result};
use crate::gpu::buffer::{PendingRead, Readback};
use crate::gpu::{DeviceTensor, Gpu};
use crate::graph::exec::{Executable, ParamStore};
use crate::graph::{Graph, TensorId};
use crate::io::weights::WeightFile;
use crate::model::{ModelConfig, META_SCORE_THRESHOLD};
use crate::ops::resize::ResizeBilinear;
use crate::tensor::{HostTensor, Precision};

/// Plans kept: a pyramid of 7 levels for a few image sizes, and for batched
/// extraction also the smaller batches a size group can end with.
const PLAN_CACHE: usize = 32;

/// A plan's cache key: images per batch, image height and width, pyramid level.
type PlanKey = (usize, usize, usize, usize);

struct Plan {
    exe: Executable,
    /// What the readbacks copy: the global descriptor (if `reads.global`),
    /// then attention and local descriptors (for models with local
    /// features), in that order, each holding the batch's images one after
    /// another.
    outputs: Vec<TensorId>,
    /// Readbacks of `outputs`: one is busy per batch in flight (its
    /// `PendingBatch` holds it); a job keeps at most two batches in flight.
    readbacks: Vec<Arc<Readback>>,
    reads: LevelReads,
    last_used: u64,
}

/// How one level's read-back bytes split into outputs.
#[derive(Clone, Copy)]
struct LevelReads {
    level: usize,
    global: bool,
    /// The attention map's (height, width), for models with local features.
    local_map: Option<(usize, usize)>,
}

impl Plan {
    /// A readback no batch in flight holds (made when all are busy).
    fn free_readback(&mut self) -> Result<Arc<Readback>> {
        if let Some(free) = self.readbacks.iter().find(|r| Arc::strong_count(r) == 1) {
            return Ok(free.clone());
        }
        let made = Arc::new(self.exe.readback(&self.outputs)?);
        self.readbacks.push(made.clone());
        Ok(made)
    }
}

/// A batch submitted to the device whose results are not read yet: it owns
/// all that reading them needs, so the plans it ran may be evicted meanwhile.
pub struct PendingBatch {
    resize_factors: Vec<(f64, f64)>,
    levels: Vec<LevelReads>,
    read: PendingRead<Arc<Readback>>,
    /// Stage times so far (when timing).
    spent: Vec<(String, f64)>,
}

pub struct Extractor {
    gpu: Arc<Gpu>,
    pub model: ModelConfig,
    pub extract: ExtractConfig,
    /// The attention threshold (unused by models without local features).
    pub tau: f32,
    /// The weight file's fingerprint (None for weights built in memory).
    pub model_id: Option<String>,
    params: ParamStore,
    plans: HashMap<PlanKey, Plan>,
    /// The pixels of the current batch, one buffer per cached (batch, image
    /// size), read by every level's plan.
    images: HashMap<(usize, usize, usize), DeviceTensor>,
    clock: u64,
    /// Time by stage, accumulated while Some (each stage then waits for the
    /// device on its own, so timing slows extraction a little).
    pub timing: Option<StageTimes>,
}

/// Seconds spent per stage over the images extracted while timing was on.
#[derive(Clone, Debug, Default)]
pub struct StageTimes {
    pub images: usize,
    /// (stage, seconds), in the order the stages first ran.
    pub seconds: Vec<(String, f64)>,
}

impl StageTimes {
    pub fn add(&mut self, stage: &str, seconds: f64) {
        match self.seconds.iter_mut().find(|(s, _)| s == stage) {
            Some((_, total)) => *total += seconds,
            None => self.seconds.push((stage.to_string(), seconds)),
        }
    }
}

/// An image ready for the network: normalised RGB in NHWC, with the factors
/// that map its pixels back to the original file.
pub struct PreparedImage {
    pub pixels: HostTensor,
    /// New size / original size, per axis (y, x).
    pub resize_factor: (f64, f64),
}

/// What one image yields.
pub struct Extracted {
    pub global: Vec<f32>,
    pub local: LocalFeatures,
}

impl Extractor {
    /// Loads a weight file; the model comes from its metadata.
    pub fn load(gpu: &Arc<Gpu>, path: &Path, extract: ExtractConfig) -> Result<Extractor> {
        Self::from_weights(gpu, &WeightFile::load(path)?, path, extract)
    }

    /// A model from weights in memory (`path` names them in errors).
    pub fn from_weights(
        gpu: &Arc<Gpu>,
        file: &WeightFile,
        path: &Path,
        extract: ExtractConfig,
    ) -> Result<Extractor> {
        extract.validate()?;
        if extract.precision == Precision::F16 && !gpu.features.contains(wgpu::Features::SHADER_F16)
        {
            return Err(Error::InvalidArgument(format!(
                "--precision f16 needs 16-bit floats in shaders (SHADER_F16), which the adapter \
                 '{}' does not offer: extract with --precision f32, or pick an adapter that has \
                 them (`delg-gpu info` lists its features)",
                gpu.facts.name
            )));
        }
        let model = ModelConfig::from_metadata(&file.metadata, path)?;
        let tau = if model.local_dim() == 0 {
            0.0
        } else {
            match extract.score_threshold {
                Some(t) => t,
                None => file
                    .metadata
                    .get(META_SCORE_THRESHOLD)
                    .and_then(|v| v.parse::<f32>().ok())
                    .ok_or_else(|| {
                        Error::file(
                            path,
                            "stores no attention threshold; pass --score-threshold",
                        )
                    })?,
            }
        };
        let params =
            model.load_params(gpu, path, file, &model.parameters_at(extract.precision)?)?;
        Ok(Extractor {
            gpu: gpu.clone(),
            model,
            extract,
            tau,
            model_id: file.fingerprint.clone(),
            params,
            plans: HashMap::new(),
            images: HashMap::new(),
            clock: 0,
            timing: None,
        })
    }

    /// Images per batch the adapter's tuning table gives extraction.
    pub fn default_batch(&self) -> usize {
        self.gpu.tuning.extract_batch
    }

    /// Size of the stored local descriptors (0: the model has none).
    pub fn local_dim(&self) -> usize {
        self.model.local_dim()
    }

    fn plan(
        &mut self,
        batch: usize,
        height: usize,
        width: usize,
        level: usize,
    ) -> Result<&mut Plan> {
        self.clock += 1;
        let key = (batch, height, width, level);
        if !self.plans.contains_key(&key) {
            if self.plans.len() >= PLAN_CACHE {
                if let Some(old) = self
                    .plans
                    .iter()
                    .min_by_key(|(_, p)| p.last_used)
                    .map(|(k, _)| *k)
                {
                    self.plans.remove(&old);
                    let (ob, oh, ow, _) = old;
                    if !self
                        .plans
                        .keys()
                        .any(|&(b, h, w, _)| (b, h, w) == (ob, oh, ow))
                    {
                        self.images.remove(&(ob, oh, ow));
                    }
                }
            }
            let pixels = match self.images.get(&(batch, height, width)) {
                Some(t) => t.clone(),
                None => {
                    let t = DeviceTensor::zeros(&self.gpu, [batch, height, width, 3].into())?;
                    self.images.insert((batch, height, width), t.clone());
                    t
                }
            };
            let (lh, lw) = self.extract.level_sizes(height as u32, width as u32)[level];
            let (lh, lw) = (lh as usize, lw as usize);
            let mut g = Graph::new();
            let image = g.input("image", [batch, height, width, 3]);
            g.begin_stage("pyramid");
            let resized = g.apply1(
                ResizeBilinear {
                    out_h: lh,
                    out_w: lw,
                },
                &[image],
            )?;
            let wants_global = self.extract.global_scales.contains(&level);
            let net = self
                .model
                .inference_graph_at(batch, lh, lw, self.extract.precision)?;
            let map = g.import(&net.graph, &[(net.image, resized)])?;
            let local = net.local.map(|l| (map[&l.attention], map[&l.descriptors]));
            // A model without local features only runs at the global scales.
            let global = (wants_global || local.is_none()).then(|| map[&net.global]);
            let mut read: Vec<TensorId> = global.into_iter().collect();
            read.extend(local.iter().flat_map(|&(a, l)| [a, l]));
            let bound = HashMap::from([(image, pixels)]);
            let exe = Executable::with_inputs(&self.gpu, &g, &read, &self.params, &bound)?;
            // Two from the start: a job keeps two batches in flight, and
            // the steady state creates nothing.
            let readbacks = vec![
                Arc::new(exe.readback(&read)?),
                Arc::new(exe.readback(&read)?),
            ];
            let local_map = local
                .map(|(attention, _)| {
                    let [_, mh, mw, _] = g.shape(attention).nhwc("attention")?;
                    Ok::<_, Error>((mh, mw))
                })
                .transpose()?;
            self.plans.insert(
                key,
                Plan {
                    exe,
                    outputs: read,
                    readbacks,
                    reads: LevelReads {
                        level,
                        global: global.is_some(),
                        local_map,
                    },
                    last_used: 0,
                },
            );
        }
        let clock = self.clock;
        let plan = self
            .plans
            .get_mut(&key)
            .ok_or_else(|| Error::Internal("plan cache".into()))?;
        plan.last_used = clock;
        Ok(plan)
    }

    /// FLOPs per image through every pyramid level at `batch` images per
    /// batch (after `extract_batch` ran on that batch and size).
    pub fn flops_per_image(&self, batch: usize, height: usize, width: usize) -> u64 {
        (0..self.extract.scales.len())
            .filter_map(|l| self.plans.get(&(batch, height, width, l)))
            .map(|p| p.exe.flops)
            .sum::<u64>()
            / batch.max(1) as u64
    }

    pub fn plans_cached(&self) -> usize {
        self.plans.len()
    }

    /// Device bytes the model holds: parameters, every cached plan's
    /// activations and inputs, and the convolutions' scratch memory. Nothing
    /// is freed between images, so after a run this is its peak.
    pub fn device_bytes(&self) -> u64 {
        let params: u64 = self.params.tensors.values().map(|t| t.bytes()).sum();
        let plans: u64 = self.plans.values().map(|p| p.exe.device_bytes()).sum();
        let images: u64 = self.images.values().map(|t| t.bytes()).sum();
        params + plans + images + self.gpu.scratch_bytes()
    }

    /// Global descriptor and local features of one prepared image.
    pub fn extract(&mut self, img: &PreparedImage) -> Result<Extracted> {
        self.extract_batch(&[img])?
            .pop()
            .ok_or_else(|| Error::Internal("a batch of one returned no result".into()))?
    }

    /// Global descriptors and local features of images of one size, run as
    /// one batch per pyramid level; the same results as one by one (tested).
    /// The outer error fails the whole batch (a size too small for the
    /// network, a device error); the inner ones are per image.
    pub fn extract_batch(&mut self, imgs: &[&PreparedImage]) -> Result<Vec<Result<Extracted>>> {
        let pending = self.submit_batch(imgs)?;
        self.finish(pending)
    }

    /// The first half of `extract_batch`: uploads the images and submits
    /// every level with its readback, without waiting for the device. At
    /// most a few batches should be in flight: each holds a readback per level.
    pub fn submit_batch(&mut self, imgs: &[&PreparedImage]) -> Result<PendingBatch> {
        let first = imgs
            .first()
            .ok_or_else(|| Error::Internal("an empty batch".into()))?;
        let [_, h, w, _] = first.pixels.shape.nhwc("image")?;
        for img in imgs {
            let [n, ih, iw, c] = img.pixels.shape.nhwc("image")?;
            if (n, c) != (1, 3) {
                return Err(Error::shape(
                    "image",
                    format!("expected one RGB image, got {n} images of {c} channels"),
                ));
            }
            if (ih, iw) != (h, w) {
                return Err(Error::Internal(format!(
                    "a batch mixes {iw}×{ih} and {w}×{h} images"
                )));
            }
        }
        let batch = imgs.len();
        let global_only = self.local_dim() == 0;
        let timed = self.timing.is_some();
        let mut spent: Vec<(String, f64)> = Vec::new();
        let sizes = self.extract.level_sizes(h as u32, w as u32);
        let min_side = self.model.backbone().min_input_side();
        // A model without local features runs only at the global scales, and
        // levels too small for the network are dropped: local features come
        // from the others, the global descriptor from the global scales left.
        let run: Vec<usize> = (0..sizes.len())
            .filter(|l| !global_only || self.extract.global_scales.contains(l))
            .filter(|&l| sizes[l].0.min(sizes[l].1) >= min_side)
            .collect();
        if !run.iter().any(|l| self.extract.global_scales.contains(l)) {
            let (lh, lw) = self
                .extract
                .global_scales
                .iter()
                .map(|&l| sizes[l])
                .max()
                .unwrap_or_default();
            return Err(Error::InvalidArgument(format!(
                "a {w}×{h} image is too small: its largest global pyramid level is {lw}×{lh}, \
                 below the network's minimum of {min_side} px a side; use larger images"
            )));
        }
        let mut readbacks = Vec::with_capacity(run.len());
        for &level in &run {
            readbacks.push(self.plan(batch, h, w, level)?.free_readback()?);
        }
        let upload = std::time::Instant::now();
        if let Some(pixels) = self.images.get(&(batch, h, w)) {
            // Ordered after the batches in flight (a queue write runs at the
            // start of the next submission), so one buffer serves them all.
            let image_bytes = (h * w * 3 * std::mem::size_of::<f32>()) as u64;
            for (i, img) in imgs.iter().enumerate() {
                let bytes = bytemuck::cast_slice(&img.pixels.data);
                self.gpu.write(
                    &pixels.buffer,
                    pixels.offset + i as u64 * image_bytes,
                    bytes,
                );
            }
        }
        spent.push(("upload".into(), upload.elapsed().as_secs_f64()));
        let plans: Vec<&Plan> = run
            .iter()
            .map(|&l| &self.plans[&(batch, h, w, l)])
            .collect();
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        for plan in &plans {
            let scale = self.extract.scales[plan.reads.level];
            if std::env::var_os("DELG_PROFILE").is_some() {
                print_profile(
                    &format!(
                        "level {} ({scale}), {}",
                        plan.reads.level,
                        plan.exe.timing_source()
                    ),
                    &plan.exe.profile()?,
                );
            }
            if !timed {
                plan.exe.encode(&mut enc);
                continue;
            }
            for (stage, secs) in plan.exe.run_stages()? {
                let stage = match stage.as_str() {
                    "backbone" => format!("backbone at scale {scale:.3}"),
                    "pyramid" => "pyramid (resize)".into(),
                    _ => stage,
                };
                spent.push((stage, secs));
            }
        }
        // One submission runs every level (unless timed) and copies out its results.
        let readback = std::time::Instant::now();
        for r in &readbacks {
            r.encode(&mut enc);
        }
        let levels = plans.iter().map(|p| p.reads).collect();
        let read = self.gpu.submit_reading(enc, readbacks)?;
        spent.push(("readback".into(), readback.elapsed().as_secs_f64()));
        Ok(PendingBatch {
            resize_factors: imgs.iter().map(|img| img.resize_factor).collect(),
            levels,
            read,
            spent,
        })
    }

    /// The second half of `extract_batch`: waits for the batch's results
    /// and selects each image's features.
    pub fn finish(&mut self, pending: PendingBatch) -> Result<Vec<Result<Extracted>>> {
        let PendingBatch {
            resize_factors,
            levels: reads,
            read,
            mut spent,
        } = pending;
        let batch = resize_factors.len();
        let global_only = self.local_dim() == 0;
        let readback = std::time::Instant::now();
        let results = read.wait(&self.gpu)?;
        spent.push(("readback".into(), readback.elapsed().as_secs_f64()));
        // Per image: its global descriptor of each global level, its local outputs per level.
        let mut globals: Vec<Vec<Vec<f32>>> = vec![Vec::new(); batch];
        let mut levels: Vec<Vec<LevelOutput>> = (0..batch).map(|_| Vec::new()).collect();
        for (level, parts) in reads.iter().zip(results) {
            let mut parts = parts.iter().map(|b| split_images(b, batch));
            let mut next = || {
                parts
                    .next()
                    .ok_or_else(|| Error::Internal("a plan read back fewer outputs".into()))?
            };
            if level.global {
                for (image, g) in globals.iter_mut().zip(next()?) {
                    image.push(g);
                }
            }
            if let Some((mh, mw)) = level.local_map {
                let attention = next()?;
                let descriptors = next()?;
                for ((image, a), d) in levels.iter_mut().zip(attention).zip(descriptors) {
                    image.push(LevelOutput {
                        scale: self.extract.scales[level.level],
                        height: mh,
                        width: mw,
                        global: Vec::new(),
                        attention: a,
                        descriptors: d,
                    });
                }
            }
        }
        let selection = std::time::Instant::now();
        let extracted = resize_factors
            .iter()
            .zip(globals.iter().zip(&levels))
            .map(|(&resize_factor, (globals, levels))| {
                let global =
                    aggregate_global(&globals.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
                let local = if global_only {
                    LocalFeatures::default()
                } else {
                    select_local(
                        levels,
                        self.tau,
                        &self.extract,
                        self.model.backbone().keypoint_stride(),
                        resize_factor,
                        self.local_dim(),
                    )
                };
                Ok(Extracted { global, local })
            })
            .collect();
        if let Some(times) = &mut self.timing {
            spent.push((
                "selection, global aggregation".into(),
                selection.elapsed().as_secs_f64(),
            ));
            times.images += batch;
            for (stage, secs) in spent {
                times.add(&stage, secs);
            }
        }
        Ok(extracted)
    }
}

/// One read-back output of a batch, split into its images' values.
fn split_images(bytes: &[u8], batch: usize) -> Result<Vec<Vec<f32>>> {
    let values: Vec<f32> = bytemuck::pod_collect_to_vec::<u8, f32>(bytes);
    if values.is_empty() || !values.len().is_multiple_of(batch) {
        return Err(Error::Internal(format!(
            "{} values read back do not split into {batch} images",
            values.len()
        )));
    }
    Ok(values
        .chunks(values.len() / batch)
        .map(<[f32]>::to_vec)
        .collect())
}

/// Prints a per-op profile, slowest op kinds first (DELG_PROFILE=1).
pub fn print_profile(title: &str, rows: &[(String, crate::tensor::Shape, u64, f64)]) {
    let mut by_op: HashMap<&str, (f64, u64, usize)> = HashMap::new();
    for (name, _, flops, secs) in rows {
        let e = by_op.entry(name.as_str()).or_default();
        e.0 += secs;
        e.1 += flops;
        e.2 += 1;
    }
    let mut v: Vec<_> = by_op.into_iter().collect();
    v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let total: f64 = rows.iter().map(|r| r.3).sum();
    eprintln!(
        "profile {title}: {:.1} ms in {} dispatches",
        total * 1e3,
        rows.len()
    );
    for (name, (secs, flops, n)) in v {
        eprintln!(
            "  {name:<28} {n:>4}x {:>10.2} ms {:>8.2} GFLOP/s",
            secs * 1e3,
            flops as f64 / secs.max(1e-12) / 1e9
        );
    }
}
