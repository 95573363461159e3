//! DOLG (docs/recipe.md §8): a torchvision-style ResNet whose conv4 map feeds a local
//! branch (optional multi-atrous block, 1×1 conv + BN, channel L2
//! normalisation taken before the ReLU, softplus attention) and whose conv5
//! map feeds a global branch (GeM with learnable p, FC); the attention-pooled
//! local vector loses its component along the global vector, and the two are
//! concatenated and reduced to the final descriptor. One margin loss trains
//! everything end to end: no stop-gradient.
//!
//! Head parameter names follow the official code (PyTorch layouts; see
//! docs/weights.md): `pool_g.p` [1], `fc_t.weight` [F, C_D], `fc_t.bias` [F];
//! `localmodel.conv1.weight` [F, C_in, 1, 1], `localmodel.conv1.bias`,
//! `localmodel.bn.{weight,bias,running_mean,running_var}` [F],
//! `localmodel.conv2.weight` [1, F, 1, 1], `localmodel.conv2.bias` [1];
//! multi-atrous: `localmodel.aspp.aspp.{0..}.{weight,bias}` (a 1×1 branch,
//! then one dilated 3×3 per dilation), `localmodel.aspp.im_pool.1.{weight,bias}`,
//! `localmodel.aspp.conv_after.0.{weight,bias}`; `fc.weight` [E, 2F],
//! `fc.bias` [E]; training only: `desc_cls.weight` [classes, E].

use serde::{Deserialize, Serialize};

use super::builder::{ConvSpec, Mode, ModelParams, NetBuilder, Role};
use super::contract::{
    Architecture, AugmentRecipe, ExtractionDefaults, InferenceGraph, PixelNorm, TrainingDefaults,
};
use super::resnet::{backbone, Layout, ResNetConfig};
use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::concat::ChannelConcat;
use crate::ops::elementwise::{Reshape, Unary, UnaryKind};
use crate::ops::fusion::OrthogonalFusion;
use crate::ops::gemm::Matmul;
use crate::ops::global_pool::{AttentionPool, GeMPool, MeanPool};
use crate::ops::loss::{ArcFaceLoss, ArcFaceScale, CurricularUpdate, MarginFallback};
use crate::ops::normalize::L2Normalize;
use crate::ops::resize::ResizeBilinear;
use crate::tensor::{Precision, Shape};

/// The optional multi-atrous block in front of the local branch (docs/recipe.md §8.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiAtrous {
    /// One dilated 3×3 branch per rate: 6/12/18 in the official code, 3/6/9
    /// in the re-implementations that follow the paper.
    pub dilations: Vec<usize>,
    /// Output channels of every branch (512 in the official code).
    pub branch_dim: usize,
}

impl MultiAtrous {
    pub fn official() -> Self {
        MultiAtrous {
            dilations: vec![6, 12, 18],
            branch_dim: 512,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DolgConfig {
    /// Torchvision layout with S at stride 16 (conv4) and D at stride 32 (conv5).
    pub backbone: ResNetConfig,
    /// GeM clamp ε; p itself is the learnable `pool_g.p` (initialised to 3).
    pub gem_eps: f32,
    /// Channels of the local branch and of the projected global vector
    /// (1024 = conv4's width in the official model).
    pub fusion_dim: usize,
    /// Final descriptor size (512).
    pub output_dim: usize,
    pub multi_atrous: Option<MultiAtrous>,
}

impl DolgConfig {
    pub fn new(mut backbone: ResNetConfig) -> Self {
        backbone.layout = Layout::Torchvision;
        backbone.s_stride32 = false;
        DolgConfig {
            fusion_dim: backbone.s_channels(),
            backbone,
            gem_eps: 1e-6,
            output_dim: 512,
            multi_atrous: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.backbone.layout != Layout::Torchvision || self.backbone.s_stride32 {
            return Err(Error::InvalidArgument(
                "DOLG uses the torchvision backbone with conv4 at stride 16".into(),
            ));
        }
        if self.fusion_dim == 0 || self.output_dim == 0 {
            return Err(Error::InvalidArgument(
                "DOLG fusion and output sizes must be positive".into(),
            ));
        }
        if let Some(ma) = &self.multi_atrous {
            if ma.branch_dim == 0 || ma.dilations.contains(&0) {
                return Err(Error::InvalidArgument(format!(
                    "multi-atrous branches need positive widths and dilations, got {ma:?}"
                )));
            }
        }
        Ok(())
    }
}

/// DOLG's five scales of the original image (docs/recipe.md §8.7), the official
/// code's four-digit literals rather than exact powers of √2.
#[allow(clippy::approx_constant)]
pub const DOLG_SCALES: [f64; 5] = [0.3535, 0.5, 0.7071, 1.0, 1.4142];

impl Architecture for DolgConfig {
    fn name(&self) -> &'static str {
        "dolg"
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
        let (graph, image, descriptor, params) =
            inference_graph_at(self, batch, height, width, precision)?;
        Ok(InferenceGraph {
            graph,
            image,
            global: descriptor,
            local: None,
            params,
        })
    }

    fn global_dim(&self) -> usize {
        self.output_dim
    }

    fn extraction_defaults(&self) -> ExtractionDefaults {
        extraction_defaults()
    }

    /// docs/recipe.md §8.6: Nesterov momentum, weight decay, a cosine
    /// schedule with a warm-up of 1/20 of the run, flips and no clipping.
    fn training_defaults(&self, steps: u64) -> TrainingDefaults {
        TrainingDefaults {
            schedule: "cosine",
            warmup: steps / 20,
            nesterov: true,
            weight_decay: 1e-4,
            clip_norm: 0.0,
            flip: true,
        }
    }

    fn augment_recipe(&self) -> AugmentRecipe {
        AugmentRecipe::Dolg
    }
}

/// DOLG's extraction settings (docs/recipe.md §8.7): the five scales of the
/// original image, global descriptors only.
pub fn extraction_defaults() -> ExtractionDefaults {
    ExtractionDefaults {
        // No size cap: scales apply to the original image.
        max_image_size: None,
        scales: DOLG_SCALES.to_vec(),
        global_scales: (0..DOLG_SCALES.len()).collect(),
        max_features: 0,
        pixel_norm: PixelNorm::Imagenet,
        truncate_boxes: true,
    }
}

/// DOLG's margin loss (docs/recipe.md §8.5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DolgLossConfig {
    pub num_classes: usize,
    pub margin: f32,
    pub scale: f32,
    /// The official code's CurricularFace-style re-weighting of hard negatives.
    pub curricular: bool,
}

impl DolgLossConfig {
    /// The official configuration: m = 0.15, s = 30, with the official head's
    /// CurricularFace-style re-weighting.
    pub fn official(num_classes: usize) -> Self {
        DolgLossConfig {
            num_classes,
            margin: 0.15,
            scale: 30.0,
            curricular: true,
        }
    }
}

/// The multi-atrous block: image-pool branch (upsampled back to the map's
/// size), a 1×1 branch and one dilated 3×3 branch per rate, concatenated in
/// that order, then 1×1 + ReLU back to the input width.
fn multi_atrous(b: &mut NetBuilder, ma: &MultiAtrous, x: TensorId) -> Result<TensorId> {
    let [n, h, w, c] = b.g.shape(x).nhwc("multi-atrous")?;
    let pooled = b.g.apply1(MeanPool, &[x])?;
    let pooled = b.g.apply1(
        Reshape {
            shape: Shape::new(&[n, 1, 1, c]),
        },
        &[pooled],
    )?;
    let pooled = b.conv1x1(
        pooled,
        "localmodel.aspp.im_pool.1",
        None,
        ma.branch_dim,
        true,
    )?;
    let mut branches = vec![b
        .g
        .apply1(ResizeBilinear { out_h: h, out_w: w }, &[pooled])?];
    branches.push(b.conv1x1(x, "localmodel.aspp.aspp.0", None, ma.branch_dim, false)?);
    for (i, &d) in ma.dilations.iter().enumerate() {
        let name = format!("localmodel.aspp.aspp.{}", i + 1);
        let spec = ConvSpec {
            bias: true,
            dilation: d,
            ..ConvSpec::new(&name, ma.branch_dim, 3)
        };
        branches.push(b.conv(x, spec)?);
    }
    let joined = b.g.apply1(ChannelConcat, &branches)?;
    b.conv1x1(joined, "localmodel.aspp.conv_after.0", None, c, true)
}

/// Tensors of the forward pass shared by extraction and training.
struct Forward {
    /// Final descriptor [N, E] (not normalised).
    descriptor: TensorId,
    /// Attention map [N, h, w, 1] of the local branch.
    attention: TensorId,
}

fn forward(b: &mut NetBuilder, cfg: &DolgConfig, image: TensorId) -> Result<Forward> {
    cfg.validate()?;
    // pycls initialises every convolution He-normal, heads included.
    b.head_conv = Role::ConvWeight;
    let f = backbone(b, &cfg.backbone, image)?;
    b.g.begin_stage("heads");
    let c_d = cfg.backbone.d_channels();
    let p = b.param("pool_g.p", &[1], Role::GemPower);
    let pooled = b.g.apply1(GeMPool { eps: cfg.gem_eps }, &[f.d, p])?;
    let wt = b.param("fc_t.weight", &[cfg.fusion_dim, c_d], Role::LinearWeight);
    let bt = b.param("fc_t.bias", &[cfg.fusion_dim], Role::Bias);
    let global = b.g.apply1(Matmul::new(false, true), &[pooled, wt, bt])?;

    let mut s = f.s;
    if let Some(ma) = &cfg.multi_atrous {
        s = multi_atrous(b, ma, s)?;
    }
    let x = b.conv1x1(
        s,
        "localmodel.conv1",
        Some("localmodel.bn"),
        cfg.fusion_dim,
        false,
    )?;
    let normalized = b.g.apply1(L2Normalize::default(), &[x])?;
    let hidden = b.relu(x)?;
    let logits = b.conv1x1(hidden, "localmodel.conv2", None, 1, false)?;
    let attention = b.g.apply1(Unary(UnaryKind::Softplus), &[logits])?;
    // mean_hw(a·f_norm): pooling before the projection is exact (it is linear).
    let local = b.g.apply1(AttentionPool, &[normalized, attention])?;
    let fused = b.g.apply1(OrthogonalFusion, &[global, local])?;
    let w = b.param(
        "fc.weight",
        &[cfg.output_dim, 2 * cfg.fusion_dim],
        Role::LinearWeight,
    );
    let bias = b.param("fc.bias", &[cfg.output_dim], Role::Bias);
    let descriptor = b.g.apply1(Matmul::new(false, true), &[fused, w, bias])?;
    Ok(Forward {
        descriptor,
        attention,
    })
}

fn model_params(b: NetBuilder) -> ModelParams {
    ModelParams {
        specs: b.specs,
        folds: b.folds,
    }
}

/// The extraction graph for a batch of `batch` images of `height`×`width`
/// (normalised RGB, NHWC): returns the graph, its image input, the
/// descriptor [batch, E] before L2 normalisation, and the parameters.
pub fn inference_graph(
    cfg: &DolgConfig,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<(Graph, TensorId, TensorId, ModelParams)> {
    inference_graph_at(cfg, batch, height, width, Precision::F32)
}

/// `inference_graph` with the backbone stored at `precision`.
pub fn inference_graph_at(
    cfg: &DolgConfig,
    batch: usize,
    height: usize,
    width: usize,
    precision: Precision,
) -> Result<(Graph, TensorId, TensorId, ModelParams)> {
    let mut g = Graph::new();
    let image = g.input("image", [batch, height, width, 3]);
    let mut b = NetBuilder::new(&mut g, Mode::Inference, cfg.backbone.bn_eps());
    b.precision = precision;
    let f = forward(&mut b, cfg, image)?;
    let params = model_params(b);
    Ok((g, image, f.descriptor, params))
}

/// Tensors of a DOLG training graph.
pub struct DolgTraining {
    pub images: TensorId,
    pub labels: TensorId,
    pub loss: TensorId,
    /// Cosines to the class weights [B, classes], for accuracy.
    pub cosines: TensorId,
    pub descriptor: TensorId,
    pub attention: TensorId,
}

/// Cosines between the L2-normalised descriptors and class weights.
fn cosines(b: &mut NetBuilder, cfg: &DolgConfig, classes: usize, d: TensorId) -> Result<TensorId> {
    let embedding = b.g.apply1(L2Normalize::default(), &[d])?;
    let w = b.param("desc_cls.weight", &[classes, cfg.output_dim], Role::Other);
    let w = b.g.apply1(L2Normalize::default(), &[w])?;
    b.g.apply1(Matmul::new(false, true), &[embedding, w])
}

/// The training graph for `batch` images of `size`×`size`: batch norm on
/// batch statistics, ArcFace (with the fallback penalty past π − m) on the
/// cosines of the final descriptor.
pub fn training_graph(
    cfg: &DolgConfig,
    loss: &DolgLossConfig,
    batch: usize,
    size: usize,
    bn_momentum: f32,
) -> Result<(Graph, DolgTraining, ModelParams)> {
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
    let f = forward(&mut b, cfg, images)?;
    let cos = cosines(&mut b, cfg, loss.num_classes, f.descriptor)?;
    let arcface = ArcFaceLoss {
        scale: ArcFaceScale::Fixed(loss.scale),
        margin: loss.margin,
        fallback: MarginFallback::Penalty,
        curricular: loss.curricular,
    };
    let mut ins = vec![cos, labels];
    if loss.curricular {
        // The statistic t is state, like batch-norm running statistics: updated
        // from this batch's target cosines, then read by the loss.
        let t = b.param("desc_cls.t", &[1], Role::CurricularState);
        b.g.apply(CurricularUpdate { rate: 0.01 }, &[cos, labels, t])?;
        ins.push(t);
    }
    let total = b.g.apply(arcface, &ins)?[0];
    let params = model_params(b);
    Ok((
        g,
        DolgTraining {
            images,
            labels,
            loss: total,
            cosines: cos,
            descriptor: f.descriptor,
            attention: f.attention,
        },
        params,
    ))
}

/// Validation: cosines to the class weights in inference mode (batch norms folded).
pub fn validation_graph(
    cfg: &DolgConfig,
    classes: usize,
    batch: usize,
    size: usize,
) -> Result<(Graph, TensorId, TensorId, ModelParams)> {
    let mut g = Graph::new();
    let images = g.input("images", [batch, size, size, 3]);
    let mut b = NetBuilder::new(&mut g, Mode::Inference, cfg.backbone.bn_eps());
    let f = forward(&mut b, cfg, images)?;
    let cos = cosines(&mut b, cfg, classes, f.descriptor)?;
    let params = model_params(b);
    Ok((g, images, cos, params))
}
