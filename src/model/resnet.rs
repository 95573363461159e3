//! ResNet backbones built as graph nodes, in the two layouts delg-gpu loads:
//!
//! - `Delg`: the official TensorFlow DELG backbone (docs/recipe.md §1.1): every conv has
//!   a bias, TF "same" padding, the stride on the first 1×1 of a block, a
//!   3×3/2 max-pool without padding, batch-norm ε 1e-3, and conv4's output
//!   subsampled to stride 32 while conv5's first block runs at stride 1, so S
//!   and D share one grid.
//! - `Torchvision`: torchvision's ResNet (no conv bias, stride on the 3×3,
//!   max-pool padding 1, ε 1e-5); S is conv4 at stride 16, or subsampled to 32.
//!
//! Parameter names are torchvision's, so a torchvision state dict loads as is.
//! In inference mode every batch norm is folded into its convolution's
//! epilogue (`{bn}.fold_scale` / `{bn}.fold_shift`, derived at load time); in
//! training mode batch norm runs on batch statistics and updates its running
//! statistics in place.

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::batchnorm::{BatchNormRunningUpdate, BatchNormTrain};
use crate::ops::conv2d::{Conv2d, Padding};
use crate::ops::elementwise::{Binary, BinaryKind, Unary, UnaryKind};
use crate::ops::pool::{MaxPool, Subsample};
use crate::tensor::Shape;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Delg,
    Torchvision,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResNetConfig {
    pub layout: Layout,
    /// Bottleneck blocks per stage (conv2..conv5).
    pub blocks: [usize; 4],
    /// Channels of the stem; stage widths are width·(1, 2, 4, 8), outputs 4× that.
    pub width: usize,
    /// Torchvision layout only: subsample conv4 to stride 32 for S.
    pub s_stride32: bool,
}

impl ResNetConfig {
    pub fn resnet50(layout: Layout) -> Self {
        ResNetConfig {
            layout,
            blocks: [3, 4, 6, 3],
            width: 64,
            s_stride32: layout == Layout::Delg,
        }
    }
    pub fn resnet101(layout: Layout) -> Self {
        ResNetConfig {
            blocks: [3, 4, 23, 3],
            ..Self::resnet50(layout)
        }
    }
    /// Channels of S (conv4 output) and D (conv5 output).
    pub fn s_channels(&self) -> usize {
        self.width * 16
    }
    pub fn d_channels(&self) -> usize {
        self.width * 32
    }
    pub fn bn_eps(&self) -> f32 {
        match self.layout {
            Layout::Delg => 1e-3,
            Layout::Torchvision => 1e-5,
        }
    }
    fn conv_bias(&self) -> bool {
        self.layout == Layout::Delg
    }
}

/// How batch norm runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Folded into the convolutions.
    Inference,
    /// Batch statistics; running statistics updated with PyTorch-convention momentum.
    Train { momentum: f32 },
}

/// What a model's weight file must hold, in PyTorch layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// OIHW convolution weight (stored HWIO on the device), He-normal
    /// (fan-out) at initialisation as torchvision and pycls.
    ConvWeight,
    /// A head's OIHW convolution weight, Glorot-uniform at initialisation
    /// (the Keras default DELG's heads start from, docs/recipe.md §3).
    HeadConvWeight,
    /// `[out, in]` linear weight (used as is: the GEMM reads it transposed).
    LinearWeight,
    Bias,
    BnWeight,
    BnBias,
    BnMean,
    BnVar,
    /// A learnable GeM power, initialised to 3.
    GemPower,
    /// Non-learned training state other than batch-norm statistics (DOLG's
    /// CurricularFace t), initialised to 0.
    CurricularState,
    /// Any other learnable tensor (class weights, ...).
    Other,
}

impl Role {
    /// OIHW in files, HWIO on the device.
    pub fn is_conv(self) -> bool {
        matches!(self, Role::ConvWeight | Role::HeadConvWeight)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Shape,
    pub role: Role,
}

/// The parameters a model graph reads: the file's tensors and, for
/// inference, the batch norms folded into convolutions (conv, bn, conv has a bias).
#[derive(Clone, Debug, Default)]
pub struct ModelParams {
    pub specs: Vec<ParamSpec>,
    pub folds: Vec<(String, String, bool)>,
}

/// Builds network graphs and records the parameters they use.
pub struct NetBuilder<'g> {
    pub g: &'g mut Graph,
    pub mode: Mode,
    pub specs: Vec<ParamSpec>,
    /// Inference only: batch norms folded into convolutions (conv, bn, conv has bias).
    pub folds: Vec<(String, String, bool)>,
    pub bn_eps: f32,
    /// How `conv1x1` head weights initialise: DELG's Keras heads are
    /// `HeadConvWeight`, DOLG's pycls heads `ConvWeight`.
    pub head_conv: Role,
}

/// One convolution (+ batch norm) with its epilogue.
pub struct ConvSpec<'a> {
    pub conv: &'a str,
    pub bn: Option<&'a str>,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub bias: bool,
    pub tf_same: bool,
    pub relu: bool,
    pub residual: Option<TensorId>,
    /// The weight's role (its initialisation).
    pub role: Role,
}

impl<'a> ConvSpec<'a> {
    pub fn new(conv: &'a str, c_out: usize, kernel: usize) -> Self {
        ConvSpec {
            conv,
            bn: None,
            c_out,
            kernel,
            stride: 1,
            dilation: 1,
            bias: false,
            tf_same: false,
            relu: false,
            residual: None,
            role: Role::ConvWeight,
        }
    }
}

impl<'g> NetBuilder<'g> {
    pub fn new(g: &'g mut Graph, mode: Mode, bn_eps: f32) -> Self {
        NetBuilder {
            g,
            mode,
            specs: Vec::new(),
            folds: Vec::new(),
            bn_eps,
            head_conv: Role::HeadConvWeight,
        }
    }

    pub fn param(&mut self, name: &str, shape: &[usize], role: Role) -> TensorId {
        self.specs.push(ParamSpec {
            name: name.into(),
            shape: Shape::new(shape),
            role,
        });
        // Conv weights live on the device as HWIO.
        let device_shape = match shape {
            &[o, i, h, w] if role.is_conv() => vec![h, w, i, o],
            _ => shape.to_vec(),
        };
        self.g.param(name, device_shape)
    }

    fn derived(&mut self, name: &str, shape: &[usize]) -> TensorId {
        self.g.param(name, shape.to_vec())
    }

    pub fn relu(&mut self, x: TensorId) -> Result<TensorId> {
        self.g.apply1(Unary(UnaryKind::Relu), &[x])
    }

    /// A head's 1×1 convolution with bias (→ [batch norm] → [ReLU]).
    pub fn conv1x1(
        &mut self,
        x: TensorId,
        name: &str,
        bn: Option<&str>,
        c_out: usize,
        relu: bool,
    ) -> Result<TensorId> {
        self.conv(
            x,
            ConvSpec {
                bn,
                bias: true,
                relu,
                role: self.head_conv,
                ..ConvSpec::new(name, c_out, 1)
            },
        )
    }

    /// conv → [bias] → [batch norm] → [+ residual] → [ReLU].
    pub fn conv(&mut self, x: TensorId, s: ConvSpec) -> Result<TensorId> {
        let [_, h, w, c_in] = self.g.shape(x).nhwc("conv")?;
        let k = s.kernel;
        let padding = if s.tf_same {
            Padding::same(
                [h, w],
                [k, k],
                [s.stride, s.stride],
                [s.dilation, s.dilation],
            )
        } else {
            let p = s.dilation * (k - 1) / 2;
            Padding::symmetric(p, p)
        };
        let weight = self.param(
            &format!("{}.weight", s.conv),
            &[s.c_out, c_in, k, k],
            s.role,
        );
        let bias = s
            .bias
            .then(|| self.param(&format!("{}.bias", s.conv), &[s.c_out], Role::Bias));
        let base = Conv2d::new([s.stride, s.stride], padding).dilation([s.dilation, s.dilation]);
        let Some(bn) = s.bn else {
            let mut op = base;
            let mut ins = vec![x, weight];
            if let Some(b) = bias {
                op = op.bias();
                ins.push(b);
            }
            if let Some(r) = s.residual {
                op = op.residual();
                ins.push(r);
            }
            if s.relu {
                op = op.relu();
            }
            return self.g.apply1(op, &ins);
        };
        let c = s.c_out;
        let gamma = self.param(&format!("{bn}.weight"), &[c], Role::BnWeight);
        let beta = self.param(&format!("{bn}.bias"), &[c], Role::BnBias);
        let mean = self.param(&format!("{bn}.running_mean"), &[c], Role::BnMean);
        let var = self.param(&format!("{bn}.running_var"), &[c], Role::BnVar);
        match self.mode {
            Mode::Inference => {
                // The conv bias, γ, β and the running statistics fold into one
                // per-channel scale and shift at load time.
                let _ = (gamma, beta, mean, var);
                self.folds
                    .push((s.conv.to_string(), bn.to_string(), bias.is_some()));
                let scale = self.derived(&format!("{bn}.fold_scale"), &[c]);
                let shift = self.derived(&format!("{bn}.fold_shift"), &[c]);
                let mut op = base.scale_shift();
                let mut ins = vec![x, weight, scale, shift];
                if let Some(r) = s.residual {
                    op = op.residual();
                    ins.push(r);
                }
                if s.relu {
                    op = op.relu();
                }
                self.g.apply1(op, &ins)
            }
            Mode::Train { momentum } => {
                let mut op = base;
                let mut ins = vec![x, weight];
                if let Some(b) = bias {
                    op = op.bias();
                    ins.push(b);
                }
                let y = self.g.apply1(op, &ins)?;
                let outs = self
                    .g
                    .apply(BatchNormTrain { eps: self.bn_eps }, &[y, gamma, beta])?;
                let rows = self.g.shape(y).numel() / c;
                let update = BatchNormRunningUpdate {
                    momentum,
                    unbiased: true,
                    count: rows,
                };
                self.g.apply(update, &[mean, var, outs[1], outs[2]])?;
                let mut t = outs[0];
                if let Some(r) = s.residual {
                    t = self.g.apply1(Binary::new(BinaryKind::Add), &[t, r])?;
                }
                if s.relu {
                    t = self.relu(t)?;
                }
                Ok(t)
            }
        }
    }
}

/// Backbone outputs.
pub struct Features {
    /// Shallow map S (conv4), the local branch's input.
    pub s: TensorId,
    /// Deep map D (conv5), the global branch's input.
    pub d: TensorId,
}

/// Adds the backbone for input `x` [N, H, W, 3].
pub fn backbone(b: &mut NetBuilder, cfg: &ResNetConfig, x: TensorId) -> Result<Features> {
    b.g.begin_stage("backbone");
    let delg = cfg.layout == Layout::Delg;
    if cfg.blocks.contains(&0) || cfg.width == 0 {
        return Err(Error::InvalidArgument(format!(
            "every ResNet stage needs a block and a width, got {cfg:?}"
        )));
    }
    let stem = ConvSpec {
        bn: Some("bn1"),
        stride: 2,
        bias: cfg.conv_bias(),
        tf_same: delg,
        relu: true,
        ..ConvSpec::new("conv1", cfg.width, 7)
    };
    let mut t = b.conv(x, stem)?;
    let pool = if delg {
        MaxPool::valid(3, 2)
    } else {
        MaxPool::padded(3, 2, 1)
    };
    t = b.g.apply1(pool, &[t])?;
    let mut s = None;
    for stage in 0..4 {
        let planes = cfg.width << stage;
        let mut stride = if stage == 0 { 1 } else { 2 };
        if delg && stage == 3 {
            // The last stride moved in front of conv5 (block3_strides).
            stride = 1;
        }
        for block in 0..cfg.blocks[stage] {
            let name = format!("layer{}.{block}", stage + 1);
            t = bottleneck(
                b,
                cfg,
                t,
                &name,
                planes,
                if block == 0 { stride } else { 1 },
            )?;
        }
        if stage == 2 {
            s = Some(if delg {
                // DELG subsamples conv4 itself; conv5 then runs at stride 1.
                t = b.g.apply1(Subsample { stride: 2 }, &[t])?;
                t
            } else if cfg.s_stride32 {
                // Only the local branch sees the subsampled map; conv5 keeps its stride.
                b.g.apply1(Subsample { stride: 2 }, &[t])?
            } else {
                t
            });
        }
    }
    let s = s.ok_or_else(|| Error::Internal("conv4 output missing".into()))?;
    Ok(Features { s, d: t })
}

fn bottleneck(
    b: &mut NetBuilder,
    cfg: &ResNetConfig,
    x: TensorId,
    name: &str,
    planes: usize,
    stride: usize,
) -> Result<TensorId> {
    let delg = cfg.layout == Layout::Delg;
    let bias = cfg.conv_bias();
    let c_in = b.g.shape(x).nhwc("bottleneck")?[3];
    let out = planes * 4;
    let (s1, s2) = if delg { (stride, 1) } else { (1, stride) };
    let names: Vec<String> = [
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv3",
        "bn3",
        "downsample.0",
        "downsample.1",
    ]
    .iter()
    .map(|n| format!("{name}.{n}"))
    .collect();
    let shortcut = if stride != 1 || c_in != out {
        let spec = ConvSpec {
            bn: Some(&names[7]),
            stride,
            bias,
            tf_same: delg,
            ..ConvSpec::new(&names[6], out, 1)
        };
        b.conv(x, spec)?
    } else {
        x
    };
    let t = b.conv(
        x,
        ConvSpec {
            bn: Some(&names[1]),
            stride: s1,
            bias,
            tf_same: delg,
            relu: true,
            ..ConvSpec::new(&names[0], planes, 1)
        },
    )?;
    let t = b.conv(
        t,
        ConvSpec {
            bn: Some(&names[3]),
            stride: s2,
            bias,
            tf_same: delg,
            relu: true,
            ..ConvSpec::new(&names[2], planes, 3)
        },
    )?;
    b.conv(
        t,
        ConvSpec {
            bn: Some(&names[5]),
            bias,
            tf_same: delg,
            relu: true,
            residual: Some(shortcut),
            ..ConvSpec::new(&names[4], out, 1)
        },
    )
}
