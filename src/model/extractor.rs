//! Runs a DELG model over an image pyramid on the device: one planned,
//! recorded executable per (image size, pyramid level), kept in a small
//! cache because collections repeat sizes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::delg::{inference_graph, DelgConfig};
use super::params::load_params;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::graph::exec::{Executable, ParamStore};
use crate::graph::{Graph, TensorId};
use crate::io::weights::WeightFile;
use crate::ops::resize::ResizeBilinear;
use crate::pipeline::extract::{
    aggregate_global, select_local, ExtractConfig, LevelOutput, LocalFeatures,
};
use crate::tensor::{HostTensor, Tensor};

/// Metadata keys of a DELG weight file.
pub const META_ARCH: &str = "delg_gpu.arch";
pub const META_CONFIG: &str = "delg_gpu.config";
pub const META_SCORE_THRESHOLD: &str = "delg_gpu.score_threshold";

const PLAN_CACHE: usize = 24;

struct Plan {
    exe: Executable,
    image: TensorId,
    global: Option<TensorId>,
    attention: TensorId,
    local: TensorId,
    map_hw: (usize, usize),
    last_used: u64,
}

pub struct DelgExtractor {
    gpu: Arc<Gpu>,
    pub model: DelgConfig,
    pub extract: ExtractConfig,
    pub tau: f32,
    params: ParamStore,
    plans: HashMap<(usize, usize, usize), Plan>,
    clock: u64,
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

impl DelgExtractor {
    /// Loads a DELG weight file; the model configuration comes from its metadata.
    pub fn load(gpu: &Arc<Gpu>, path: &Path, extract: ExtractConfig) -> Result<DelgExtractor> {
        Self::from_weights(gpu, &WeightFile::load(path)?, path, extract)
    }

    /// A DELG model from weights in memory (`path` names them in errors).
    pub fn from_weights(
        gpu: &Arc<Gpu>,
        file: &WeightFile,
        path: &Path,
        extract: ExtractConfig,
    ) -> Result<DelgExtractor> {
        extract.validate()?;
        let bad = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason,
        };
        match file.metadata.get(META_ARCH).map(String::as_str) {
            Some("delg") => {}
            Some(other) => return Err(bad(format!("holds a '{other}' model; this command needs a DELG model (or pass --arch {other})"))),
            None => return Err(bad(format!("has no '{META_ARCH}' metadata: convert it with the tools/ scripts or `delg-gpu init-weights`"))),
        }
        let model: DelgConfig = serde_json::from_str(
            file.metadata
                .get(META_CONFIG)
                .ok_or_else(|| bad(format!("has no '{META_CONFIG}' metadata")))?,
        )
        .map_err(|e| bad(format!("bad model configuration in metadata: {e}")))?;
        let tau = match extract.score_threshold {
            Some(t) => t,
            None => file
                .metadata
                .get(META_SCORE_THRESHOLD)
                .and_then(|v| v.parse::<f32>().ok())
                .ok_or_else(|| {
                    bad("stores no attention threshold; pass --score-threshold".into())
                })?,
        };
        // Any input size gives the same parameter list; a small one builds fast.
        let (_, _, _, mp) = inference_graph(&model, 64, 64)?;
        let constants = [("gem.p".to_string(), Tensor::new([1], vec![model.gem_p])?)];
        let params = load_params(gpu, path, file, &mp, model.backbone.bn_eps(), &constants)?;
        Ok(DelgExtractor {
            gpu: gpu.clone(),
            model,
            extract,
            tau,
            params,
            plans: HashMap::new(),
            clock: 0,
        })
    }

    fn plan(&mut self, height: usize, width: usize, level: usize) -> Result<&Plan> {
        self.clock += 1;
        let key = (height, width, level);
        if !self.plans.contains_key(&key) {
            if self.plans.len() >= PLAN_CACHE {
                if let Some(old) = self
                    .plans
                    .iter()
                    .min_by_key(|(_, p)| p.last_used)
                    .map(|(k, _)| *k)
                {
                    self.plans.remove(&old);
                }
            }
            let (lh, lw) = self.extract.level_sizes(height as u32, width as u32)[level];
            let mut g = Graph::new();
            let image = g.input("image", [1, height, width, 3]);
            let (net, net_image, out, _) = inference_graph(&self.model, lh as usize, lw as usize)?;
            let resized = g.apply1(
                ResizeBilinear {
                    out_h: lh as usize,
                    out_w: lw as usize,
                },
                &[image],
            )?;
            let map = g.import(&net, &[(net_image, resized)])?;
            let wants_global = self.extract.global_scales.contains(&level);
            let (attention, local) = (map[&out.attention], map[&out.local]);
            let global = wants_global.then(|| map[&out.global]);
            let mut targets = vec![attention, local];
            targets.extend(global);
            let exe = Executable::new(&self.gpu, &g, &targets, &self.params)?;
            let [_, mh, mw, _] = g.shape(attention).nhwc("attention")?;
            self.plans.insert(
                key,
                Plan {
                    exe,
                    image,
                    global,
                    attention,
                    local,
                    map_hw: (mh, mw),
                    last_used: 0,
                },
            );
        }
        let clock = self.clock;
        let plan = self
            .plans
            .get_mut(&key)
            .ok_or_else(|| Error::Graph("plan cache".into()))?;
        plan.last_used = clock;
        Ok(plan)
    }

    /// FLOPs of one image through every pyramid level (after `extract` ran on its size).
    pub fn flops_per_image(&self, height: usize, width: usize) -> u64 {
        (0..self.extract.scales.len())
            .filter_map(|l| self.plans.get(&(height, width, l)))
            .map(|p| p.exe.flops)
            .sum()
    }

    /// Global descriptor and local features of one prepared image.
    pub fn extract(&mut self, img: &PreparedImage) -> Result<Extracted> {
        let [_, h, w, _] = img.pixels.shape.nhwc("image")?;
        let mut levels = Vec::new();
        let mut globals = Vec::new();
        for level in 0..self.extract.scales.len() {
            let scale = self.extract.scales[level];
            let plan = self.plan(h, w, level)?;
            plan.exe.set_input(plan.image, &img.pixels)?;
            if std::env::var_os("DELG_PROFILE").is_some() {
                print_profile(&format!("level {level} ({scale})"), &plan.exe.profile()?);
            }
            plan.exe.run()?;
            let (mh, mw) = plan.map_hw;
            if let Some(gt) = plan.global {
                globals.push(plan.exe.read(gt)?.data);
            }
            let attention = plan.exe.read(plan.attention)?.data;
            let descriptors = plan.exe.read(plan.local)?.data;
            levels.push(LevelOutput {
                scale,
                height: mh,
                width: mw,
                global: Vec::new(),
                attention,
                descriptors,
            });
        }
        let global = aggregate_global(&globals.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
        let local = select_local(
            &levels,
            self.tau,
            &self.extract,
            img.resize_factor,
            self.model.local_dim,
        );
        Ok(Extracted { global, local })
    }
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
