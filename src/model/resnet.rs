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

use super::builder::{ConvSpec, Mode, NetBuilder};
// Re-exported where integration tests have always found it.
pub use super::builder::ParamSpec;
use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::pool::{MaxPool, Subsample};
use crate::tensor::Precision;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Delg,
    Torchvision,
}

impl Layout {
    /// The layout's name on the command line and in weight-file configurations.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Delg => "delg",
            Layout::Torchvision => "torchvision",
        }
    }

    /// The layout of a backbone in torchvision names, from its tensors: only
    /// the DELG layout's convolutions have biases, the stem's included.
    pub fn detect(has_tensor: impl Fn(&str) -> bool) -> Layout {
        if has_tensor("conv1.bias") {
            Layout::Delg
        } else {
            Layout::Torchvision
        }
    }
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
    /// Batch-norm momentum in PyTorch's convention (weight of the new batch):
    /// DELG's Keras 0.99 is 0.01, torchvision's default 0.1.
    pub fn bn_momentum(&self) -> f32 {
        match self.layout {
            Layout::Delg => 0.01,
            Layout::Torchvision => 0.1,
        }
    }
    /// The stride of S in input pixels, which places keypoints: 32 for the
    /// DELG layout and for torchvision with `s_stride32`, otherwise 16
    /// (DELG's export uses 16 × its stride factor, docs/recipe.md §4.3).
    pub fn keypoint_stride(&self) -> f64 {
        if self.layout == Layout::Delg || self.s_stride32 {
            32.0
        } else {
            16.0
        }
    }
    /// The smallest input side that yields a non-empty feature map. The DELG
    /// layout's stem is a "same" 7×7/2 convolution (ceil(n/2) pixels) then a
    /// 3×3/2 max-pool without padding, which needs 3 of them: 5 input pixels.
    /// Torchvision pads every window, so any size passes.
    pub fn min_input_side(&self) -> u32 {
        match self.layout {
            Layout::Delg => 5,
            Layout::Torchvision => 1,
        }
    }
    fn conv_bias(&self) -> bool {
        self.layout == Layout::Delg
    }
}

/// Backbone outputs.
pub struct Features {
    /// Shallow map S (conv4), the local branch's input.
    pub s: TensorId,
    /// Deep map D (conv5), the global branch's input.
    pub d: TensorId,
}

/// The tensors the backbone alone reads, named and shaped as a weight file
/// stores them.
pub fn backbone_params(cfg: &ResNetConfig) -> Result<Vec<ParamSpec>> {
    let mut g = Graph::new();
    let image = g.input("image", [1, 64, 64, 3]);
    let mut b = NetBuilder::new(&mut g, Mode::Inference, cfg.bn_eps());
    backbone(&mut b, cfg, image)?;
    Ok(b.specs)
}

/// Adds the backbone for input `x` [N, H, W, 3]. The image is cast to
/// `b.precision` first, so every activation from the stem on (the stem's
/// output is the largest of all) and every convolution weight is stored at
/// it; S and D come out as f32 for the heads.
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
    let x = b.cast(x, b.precision)?;
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
            // The subsample and the heads read f32.
            let conv4 = b.cast(t, Precision::F32)?;
            s = Some(if delg {
                // DELG subsamples conv4 itself; conv5 then runs at stride 1.
                let sub = b.g.apply1(Subsample { stride: 2 }, &[conv4])?;
                t = b.cast(sub, b.precision)?;
                sub
            } else if cfg.s_stride32 {
                // Only the local branch sees the subsampled map; conv5 keeps its stride.
                b.g.apply1(Subsample { stride: 2 }, &[conv4])?
            } else {
                conv4
            });
        }
    }
    let s = s.ok_or_else(|| Error::Internal("conv4 output missing".into()))?;
    let d = b.cast(t, Precision::F32)?;
    Ok(Features { s, d })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypoints_use_the_s_stride_of_every_layout() {
        let tv = ResNetConfig::resnet50(Layout::Torchvision);
        assert_eq!(ResNetConfig::resnet50(Layout::Delg).keypoint_stride(), 32.0);
        assert_eq!(
            tv.keypoint_stride(),
            16.0,
            "torchvision takes S at stride 16"
        );
        let tv32 = ResNetConfig {
            s_stride32: true,
            ..tv
        };
        assert_eq!(tv32.keypoint_stride(), 32.0);
    }
}
