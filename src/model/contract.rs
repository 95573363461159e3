//! What an architecture answers for the jobs (the `Architecture` trait) and
//! the shapes of those answers: its graphs and their outputs, its
//! preprocessing, and the defaults of its extraction and training recipes.
//! Every architecture file implements the trait; `arch.rs` dispatches to it,
//! so extraction, training and import never branch on the architecture.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::builder::ModelParams;
use super::resnet::ResNetConfig;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::graph::exec::ParamStore;
use crate::graph::{Graph, TensorId};
use crate::io::weights::WeightFile;
use crate::tensor::{HostTensor, Precision};

/// The questions every job asks of a model, whatever its architecture.
pub trait Architecture {
    /// The name in weight-file metadata and on the command line.
    fn name(&self) -> &'static str;

    fn backbone(&self) -> &ResNetConfig;

    /// The extraction graph for `batch` images of `height`×`width`
    /// (normalised RGB, NHWC) and the parameters it reads. Every image's
    /// outputs depend on that image alone (inference batch norm uses the
    /// running statistics), so a batch extracts what its images would one by one.
    fn inference_graph(&self, batch: usize, height: usize, width: usize) -> Result<InferenceGraph> {
        self.inference_graph_at(batch, height, width, Precision::F32)
    }

    /// `inference_graph` with the backbone stored at `precision`.
    fn inference_graph_at(
        &self,
        batch: usize,
        height: usize,
        width: usize,
        precision: Precision,
    ) -> Result<InferenceGraph>;

    /// Size of the global descriptor.
    fn global_dim(&self) -> usize;

    /// Size of the local descriptors; 0 when the model has none (and so no
    /// attention threshold τ either).
    fn local_dim(&self) -> usize {
        0
    }

    /// Device tensors that are configuration, not weight-file contents.
    fn constants(&self) -> Result<Vec<(String, HostTensor)>> {
        Ok(Vec::new())
    }

    /// The paper's extraction settings for this model.
    fn extraction_defaults(&self) -> ExtractionDefaults;

    /// The pixel normalisation the model was trained with.
    fn pixel_norm(&self) -> PixelNorm {
        self.extraction_defaults().pixel_norm
    }

    /// The training recipe's defaults for a run of `steps` steps.
    fn training_defaults(&self, steps: u64) -> TrainingDefaults;

    /// How the training recipe crops and distorts images.
    fn augment_recipe(&self) -> AugmentRecipe;

    /// The parameters of the extraction model, listed by building its graph
    /// once at a small size (graph construction only; nothing runs): the
    /// builder is the one description of what a model holds.
    fn parameters(&self) -> Result<ModelParams> {
        self.parameters_at(Precision::F32)
    }

    /// `parameters` of the extraction graph at `precision`.
    fn parameters_at(&self, precision: Precision) -> Result<ModelParams> {
        Ok(self.inference_graph_at(1, 64, 64, precision)?.params)
    }

    /// Uploads the parameters of `params` from `file` with this model's
    /// batch-norm ε and constants (`path` names the file in errors).
    fn load_params(
        &self,
        gpu: &Gpu,
        path: &Path,
        file: &WeightFile,
        params: &ModelParams,
    ) -> Result<ParamStore> {
        let constants = self.constants()?;
        let bn_eps = self.backbone().bn_eps();
        super::params::load_params(gpu, path, file, params, bn_eps, &constants)
    }
}

/// An extraction graph: a batch of images in, per image a global descriptor
/// and (when the model has them) local features out.
pub struct InferenceGraph {
    pub graph: Graph,
    pub image: TensorId,
    /// Global descriptor before L2 normalisation, [batch, G].
    pub global: TensorId,
    pub local: Option<LocalOutputs>,
    pub params: ModelParams,
}

/// The local branch's extraction outputs.
pub struct LocalOutputs {
    /// Attention scores, [1, h, w, 1].
    pub attention: TensorId,
    /// Local descriptors, [1, h, w, L].
    pub descriptors: TensorId,
}

/// Tensors of a training graph, whatever the architecture.
pub struct TrainingGraph {
    pub graph: Graph,
    pub images: TensorId,
    pub labels: TensorId,
    /// The total loss first, then its parts (DELG: global, attention, reconstruction).
    pub losses: Vec<TensorId>,
    /// Cosines to the class weights, for accuracy.
    pub cosines: TensorId,
    /// Logits of a second classifier (DELG's attention head), for accuracy.
    pub logits: Option<TensorId>,
    /// Attention scores [B, h, w, 1]: with local features, their median at
    /// the end of training is τ.
    pub attention: TensorId,
    pub params: ModelParams,
}

/// Inference-mode classifier scores for validation: the image input and the
/// score tensors (the cosines first).
pub struct ValidationGraph {
    pub graph: Graph,
    pub images: TensorId,
    pub scores: Vec<TensorId>,
    pub params: ModelParams,
}

/// The loss settings a user may override; `None` keeps the recipe's value.
#[derive(Clone, Debug)]
pub struct LossOptions {
    pub margin: Option<f32>,
    pub scale: Option<f32>,
    /// ArcFace without CurricularFace's hard-negative weighting.
    pub plain_arcface: bool,
    /// Weights of the local-head losses.
    pub attention_weight: f32,
    pub reconstruction_weight: f32,
}

/// The optimiser and data defaults of an architecture's training recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingDefaults {
    /// "linear" or "cosine".
    pub schedule: &'static str,
    /// Warm-up steps of the cosine schedule.
    pub warmup: u64,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// 0 turns clipping off.
    pub clip_norm: f32,
    pub flip: bool,
}

/// The extraction settings that differ between the papers' recipes.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractionDefaults {
    /// Largest image side after the initial resize; None keeps the size.
    pub max_image_size: Option<u32>,
    pub scales: Vec<f64>,
    /// Indices into `scales` whose global descriptors are aggregated.
    pub global_scales: Vec<usize>,
    pub max_features: usize,
    pub pixel_norm: PixelNorm,
    /// Query boxes cast to integers by truncation rather than rounded.
    pub truncate_boxes: bool,
}

/// Pixel normalisation a model was trained with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelNorm {
    /// DELG: (v − 128) / 128.
    #[default]
    Delg,
    /// ImageNet mean and standard deviation on [0, 1] RGB. DOLG's official
    /// code feeds BGR with the statistics reversed; its converter flips the
    /// first convolution's input channels instead, so every model reads RGB.
    Imagenet,
}

impl PixelNorm {
    /// Normalises interleaved RGB values in [0, 255] in place.
    pub fn normalize(self, rgb: &mut [f32]) {
        const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const STD: [f32; 3] = [0.229, 0.224, 0.225];
        match self {
            PixelNorm::Delg => rgb.iter_mut().for_each(|v| *v = (*v - 128.0) / 128.0),
            PixelNorm::Imagenet => rgb
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = (*v / 255.0 - MEAN[i % 3]) / STD[i % 3]),
        }
    }

    pub fn apply(self, rgb: &[u8]) -> Vec<f32> {
        let mut px: Vec<f32> = rgb.iter().map(|&v| v as f32).collect();
        self.normalize(&mut px);
        px
    }
}

/// Which training recipe's augmentation (docs/recipe.md §3 for DELG, §8.6 for DOLG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AugmentRecipe {
    /// TF's distorted-box crop and "area" resize; validation: the whole
    /// image, bilinear.
    Delg,
    /// pycls's Inception crop, bilinear resize, PCA lighting; validation
    /// and the crop's fallback: the centre square, bilinear.
    Dolg,
}
