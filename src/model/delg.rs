//! DELG (docs/recipe.md §1–§2): a ResNet backbone with a global head (GeM pooling and a
//! whitening layer over D) and a local head (attention and an autoencoder over
//! S), as graphs for extraction and for training.
//!
//! Head parameter names (PyTorch layouts; see docs/weights.md):
//! `whiten.weight` [G, C_D], `whiten.bias` [G];
//! `attention.conv1.weight` [A, C_S, 1, 1], `attention.conv1.bias`,
//! `attention.bn.{weight,bias,running_mean,running_var}` [A],
//! `attention.conv2.weight` [1, A, 1, 1], `attention.conv2.bias` [1];
//! `autoencoder.encoder.weight` [L, C_S, 1, 1], `autoencoder.encoder.bias` [L],
//! `autoencoder.decoder.weight` [C_S, L, 1, 1], `autoencoder.decoder.bias` [C_S];
//! training only: `arcface.weight` [classes, G],
//! `attention_classifier.weight` [classes, C_S], `attention_classifier.bias` [classes].

use serde::{Deserialize, Serialize};

use super::builder::{Mode, ModelParams, NetBuilder, Role};
use super::contract::{
    Architecture, AugmentRecipe, ExtractionDefaults, InferenceGraph, LocalOutputs, PixelNorm,
    TrainingDefaults,
};
use super::resnet::{backbone, ResNetConfig};
use crate::error::Result;
use crate::graph::{Graph, TensorId};
use crate::ops::elementwise::{Binary, BinaryKind, StopGradient, Unary, UnaryKind};
use crate::ops::gemm::Matmul;
use crate::ops::global_pool::{AttentionPool, GeMPool};
use crate::ops::loss::{ArcFaceLoss, MseLoss, SoftmaxCrossEntropy};
use crate::ops::normalize::L2Normalize;
use crate::tensor::{HostTensor, Precision, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelgConfig {
    pub backbone: ResNetConfig,
    /// GeM power (fixed in DELG: a constant, not learned).
    pub gem_p: f32,
    pub gem_eps: f32,
    /// Output size of the whitening layer (the global descriptor size).
    pub global_dim: usize,
    /// Hidden channels of the attention module.
    pub attention_dim: usize,
    /// Local descriptor size (autoencoder bottleneck).
    pub local_dim: usize,
}

impl DelgConfig {
    pub fn new(backbone: ResNetConfig) -> Self {
        let global_dim = backbone.d_channels();
        DelgConfig {
            backbone,
            gem_p: 3.0,
            gem_eps: 1e-6,
            global_dim,
            attention_dim: 512,
            local_dim: 128,
        }
    }
}

impl Architecture for DelgConfig {
    fn name(&self) -> &'static str {
        "delg"
    }

    fn backbone(&self) -> &ResNetConfig {
        &self.backbone
    }

    fn inference_graph_at(
        &self,
        batch: usize,
        height: usize,
        width: usize,
        precision: Precision,
    ) -> Result<InferenceGraph> {
        let (graph, image, out, params) =
            inference_graph_at(self, batch, height, width, precision)?;
        Ok(InferenceGraph {
            graph,
            image,
            global: out.global,
            local: Some(LocalOutputs {
                attention: out.attention,
                descriptors: out.local,
            }),
            params,
        })
    }

    fn global_dim(&self) -> usize {
        self.global_dim
    }

    fn local_dim(&self) -> usize {
        self.local_dim
    }

    /// GeM's fixed p.
    fn constants(&self) -> Result<Vec<(String, HostTensor)>> {
        Ok(vec![(
            "gem.p".to_string(),
            Tensor::new([1], vec![self.gem_p])?,
        )])
    }

    fn extraction_defaults(&self) -> ExtractionDefaults {
        extraction_defaults()
    }

    /// docs/recipe.md §3: a linear schedule, gradient clipping, no weight
    /// decay, no Nesterov momentum, no flips.
    fn training_defaults(&self, _steps: u64) -> TrainingDefaults {
        TrainingDefaults {
            schedule: "linear",
            warmup: 0,
            nesterov: false,
            weight_decay: 0.0,
            clip_norm: 10.0,
            flip: false,
        }
    }

    fn augment_recipe(&self) -> AugmentRecipe {
        AugmentRecipe::Delg
    }
}

/// DELG's extraction settings (docs/recipe.md §4), the defaults of every
/// extraction setting.
pub fn extraction_defaults() -> ExtractionDefaults {
    ExtractionDefaults {
        max_image_size: Some(1024),
        // The reference's f32 constants: 2^(k/2) for k = -4..2, rounded to f32.
        scales: (-4..=2)
            .map(|k| 2f64.powf(k as f64 / 2.0) as f32 as f64)
            .collect(),
        global_scales: vec![3, 4, 5],
        max_features: 1000,
        pixel_norm: PixelNorm::Delg,
        truncate_boxes: false,
    }
}

/// Losses and their weights (docs/recipe.md §2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelgLossConfig {
    pub num_classes: usize,
    pub arcface_margin: f32,
    pub arcface_scale: f32,
    pub attention_weight: f32,
    pub reconstruction_weight: f32,
}

impl DelgLossConfig {
    /// The official code's values: γ is the fixed 45.25 (≈ √2048) whatever
    /// the descriptor size.
    pub fn paper(num_classes: usize) -> Self {
        DelgLossConfig {
            num_classes,
            arcface_margin: 0.1,
            arcface_scale: 45.25,
            attention_weight: 1.0,
            reconstruction_weight: 10.0,
        }
    }
}

/// Extraction outputs of a batch of B images at one scale.
pub struct DelgOutputs {
    /// Global descriptor before L2 normalisation, [B, G].
    pub global: TensorId,
    /// Attention scores A = softplus(M(S)), [B, h, w, 1].
    pub attention: TensorId,
    /// Local descriptors L = T(S), [B, h, w, L].
    pub local: TensorId,
}

struct Heads {
    global: TensorId,
    attention: TensorId,
    local: TensorId,
    s: TensorId,
}

fn heads(b: &mut NetBuilder, cfg: &DelgConfig, image: TensorId) -> Result<Heads> {
    let f = backbone(b, &cfg.backbone, image)?;
    b.g.begin_stage("heads");
    let c_d = cfg.backbone.d_channels();
    // GeM's p is configuration in DELG: a parameter filled at load, never trained.
    let p = b.g.param("gem.p", [1]);
    let pooled = b.g.apply1(GeMPool { eps: cfg.gem_eps }, &[f.d, p])?;
    let w = b.param("whiten.weight", &[cfg.global_dim, c_d], Role::LinearWeight);
    let bias = b.param("whiten.bias", &[cfg.global_dim], Role::Bias);
    let global = b.g.apply1(Matmul::new(false, true), &[pooled, w, bias])?;

    // The local head reads S through a stop-gradient (docs/recipe.md §1.4): its losses
    // train the heads only, never the backbone.
    let s = b.g.apply1(StopGradient, &[f.s])?;
    let hidden = b.conv1x1(
        s,
        "attention.conv1",
        Some("attention.bn"),
        cfg.attention_dim,
        true,
    )?;
    let logits = b.conv1x1(hidden, "attention.conv2", None, 1, false)?;
    let attention = b.g.apply1(Unary(UnaryKind::Softplus), &[logits])?;
    let local = b.conv1x1(s, "autoencoder.encoder", None, cfg.local_dim, false)?;
    Ok(Heads {
        global,
        attention,
        local,
        s,
    })
}

/// The extraction graph for `batch` images of `height`×`width` (normalised RGB, NHWC).
pub fn inference_graph(
    cfg: &DelgConfig,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<(Graph, TensorId, DelgOutputs, ModelParams)> {
    inference_graph_at(cfg, batch, height, width, Precision::F32)
}

/// `inference_graph` with the backbone stored at `precision`.
pub fn inference_graph_at(
    cfg: &DelgConfig,
    batch: usize,
    height: usize,
    width: usize,
    precision: Precision,
) -> Result<(Graph, TensorId, DelgOutputs, ModelParams)> {
    let mut g = Graph::new();
    let image = g.input("image", [batch, height, width, 3]);
    let mut b = NetBuilder::new(&mut g, Mode::Inference, cfg.backbone.bn_eps());
    b.precision = precision;
    let h = heads(&mut b, cfg, image)?;
    let params = ModelParams {
        specs: b.specs,
        folds: b.folds,
    };
    Ok((
        g,
        image,
        DelgOutputs {
            global: h.global,
            attention: h.attention,
            local: h.local,
        },
        params,
    ))
}

/// Tensors of a training graph.
pub struct DelgTraining {
    pub images: TensorId,
    pub labels: TensorId,
    pub total_loss: TensorId,
    pub global_loss: TensorId,
    pub attention_loss: TensorId,
    pub reconstruction_loss: TensorId,
    /// Per-class cosines of the global head and logits of the attention head, for accuracy.
    pub global_cosines: TensorId,
    pub attention_logits: TensorId,
    /// Attention scores [B, h, w, 1]: their median at the end of training is τ.
    pub attention: TensorId,
}

/// The training-only heads: cosines to the L2-normalised class weights, the
/// reconstruction S′, and the attention classifier's logits on the
/// attention-pooled, L2-normalised S′.
struct Classifiers {
    cosines: TensorId,
    decoded: TensorId,
    attention_logits: TensorId,
}

fn classifiers(
    b: &mut NetBuilder,
    cfg: &DelgConfig,
    loss: &DelgLossConfig,
    h: &Heads,
) -> Result<Classifiers> {
    let c_s = cfg.backbone.s_channels();
    let embedding = b.g.apply1(L2Normalize::default(), &[h.global])?;
    let class_w = b.param(
        "arcface.weight",
        &[loss.num_classes, cfg.global_dim],
        Role::Other,
    );
    let class_w = b.g.apply1(L2Normalize::default(), &[class_w])?;
    let cosines =
        b.g.apply1(Matmul::new(false, true), &[embedding, class_w])?;
    let decoded = b.conv1x1(h.local, "autoencoder.decoder", None, c_s, true)?;
    let normalized = b.g.apply1(L2Normalize::default(), &[decoded])?;
    let pooled = b.g.apply1(AttentionPool, &[normalized, h.attention])?;
    let aw = b.param(
        "attention_classifier.weight",
        &[loss.num_classes, c_s],
        Role::LinearWeight,
    );
    let ab = b.param("attention_classifier.bias", &[loss.num_classes], Role::Bias);
    let attention_logits = b.g.apply1(Matmul::new(false, true), &[pooled, aw, ab])?;
    Ok(Classifiers {
        cosines,
        decoded,
        attention_logits,
    })
}

/// Validation: both classifiers in inference mode (batch norms folded, no
/// margin), for accuracy on held-out images. Returns the graph, its image
/// input, the global cosines and the attention logits.
pub fn validation_graph(
    cfg: &DelgConfig,
    loss: &DelgLossConfig,
    batch: usize,
    size: usize,
) -> Result<(Graph, TensorId, TensorId, TensorId, ModelParams)> {
    let mut g = Graph::new();
    let images = g.input("images", [batch, size, size, 3]);
    let mut b = NetBuilder::new(&mut g, Mode::Inference, cfg.backbone.bn_eps());
    let h = heads(&mut b, cfg, images)?;
    let c = classifiers(&mut b, cfg, loss, &h)?;
    let params = ModelParams {
        specs: b.specs,
        folds: b.folds,
    };
    Ok((g, images, c.cosines, c.attention_logits, params))
}

/// The training graph for a batch of `batch` images of `size`×`size` (docs/recipe.md §2):
/// ArcFace on the L2-normalised global descriptor, softmax cross-entropy on
/// the attention-pooled reconstruction, and the reconstruction MSE.
pub fn training_graph(
    cfg: &DelgConfig,
    loss: &DelgLossConfig,
    batch: usize,
    size: usize,
    bn_momentum: f32,
) -> Result<(Graph, DelgTraining, ModelParams)> {
    let mut g = Graph::new();
    let images = g.input("images", [batch, size, size, 3]);
    let labels = g.input("labels", [batch]);
    let mut b = NetBuilder::new(
        &mut g,
        Mode::Train {
            momentum: bn_momentum,
        },
        cfg.backbone.bn_eps(),
    );
    let h = heads(&mut b, cfg, images)?;

    let c = classifiers(&mut b, cfg, loss, &h)?;
    let (cosines, attention_logits) = (c.cosines, c.attention_logits);
    let global_loss = b.g.apply(
        ArcFaceLoss::delg(loss.arcface_scale, loss.arcface_margin),
        &[cosines, labels],
    )?[0];
    let target = h.s; // already behind the stop-gradient
    let reconstruction_loss = b.g.apply(MseLoss, &[c.decoded, target])?[0];
    let attention_loss =
        b.g.apply(SoftmaxCrossEntropy, &[attention_logits, labels])?[0];

    let weighted_a = b.g.apply1(
        Unary(UnaryKind::Scale(loss.attention_weight)),
        &[attention_loss],
    )?;
    let weighted_r = b.g.apply1(
        Unary(UnaryKind::Scale(loss.reconstruction_weight)),
        &[reconstruction_loss],
    )?;
    let sum =
        b.g.apply1(Binary::new(BinaryKind::Add), &[global_loss, weighted_a])?;
    let total_loss =
        b.g.apply1(Binary::new(BinaryKind::Add), &[sum, weighted_r])?;
    let params = ModelParams {
        specs: b.specs,
        folds: b.folds,
    };
    Ok((
        g,
        DelgTraining {
            images,
            labels,
            total_loss,
            global_loss,
            attention_loss,
            reconstruction_loss,
            global_cosines: cosines,
            attention_logits,
            attention: h.attention,
        },
        params,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::plan::plan_storages;
    use crate::model::resnet::Layout;

    #[test]
    fn an_f16_backbone_plans_far_less_activation_memory() {
        let cfg = DelgConfig::new(ResNetConfig::resnet50(Layout::Delg));
        let planned = |precision| {
            let (g, _, out, _) = inference_graph_at(&cfg, 1, 768, 1024, precision).unwrap();
            plan_storages(&g, &[out.global, out.attention, out.local])
                .memory
                .total_bytes()
        };
        let (full, half) = (planned(Precision::F32), planned(Precision::F16));
        eprintln!("R50 at 1024×768: f32 {full} bytes, f16 {half} bytes");
        assert!(
            (half as f64) < 0.7 * full as f64,
            "f16 {half} against f32 {full}"
        );
    }

    #[test]
    fn an_f16_backbone_halves_the_largest_activation_of_every_level() {
        // The stem's output (64 channels at stride 2) and conv2's (256 at
        // stride 4) are the largest tensors, equally large; both are f16
        // once the image is cast before the stem, so the largest of every
        // level halves exactly. (With an f32 stem it stayed as in f32.)
        let cfg = DelgConfig::new(ResNetConfig::resnet50(Layout::Delg));
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let levels = crate::jobs::extract::ExtractConfig::default().level_sizes(768, 1024);
        for (h, w) in levels {
            let planned = |precision| {
                let (g, _, out, _) =
                    inference_graph_at(&cfg, 1, h as usize, w as usize, precision).unwrap();
                let plan = plan_storages(&g, &[out.global, out.attention, out.local]);
                let largest = plan.lifetimes.iter().map(|l| l.bytes).max().unwrap();
                (largest, plan.memory.total_bytes())
            };
            let ((full, full_total), (half, half_total)) =
                (planned(Precision::F32), planned(Precision::F16));
            eprintln!(
                "R50 level {w}×{h}: largest activation f32 {:.1} MiB, f16 {:.1} MiB; planned f32 {:.1} MiB, f16 {:.1} MiB",
                mib(full),
                mib(half),
                mib(full_total),
                mib(half_total)
            );
            assert_eq!(2 * half, full, "level {w}×{h}");
        }
    }
}
