//! The graph builder every model uses: it adds convolutions (with batch
//! norm folded for inference or run on batch statistics for training) and
//! records each parameter's name, PyTorch shape and role, so one pass over a
//! model's construction yields both its graph and its weight-file contents.

use crate::error::{Error, Result};
use crate::graph::{Graph, TensorId};
use crate::ops::batchnorm::{BatchNormRunningUpdate, BatchNormTrain};
use crate::ops::cast::Cast;
use crate::ops::conv2d::{Conv2d, Padding};
use crate::ops::elementwise::{Unary, UnaryKind};
use crate::tensor::{HostTensor, Precision, Shape, Tensor};

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

    /// The device shape of a tensor of this role whose file shape is `shape`.
    pub fn device_shape(self, shape: &[usize]) -> Vec<usize> {
        match <[usize; 4]>::try_from(shape) {
            Ok(oihw) if self.is_conv() => OIHW_TO_HWIO.map(|axis| oihw[axis]).to_vec(),
            _ => shape.to_vec(),
        }
    }

    /// A file tensor (PyTorch layout) as the device stores it.
    pub fn to_device(self, t: &HostTensor) -> Result<HostTensor> {
        if self.is_conv() {
            oihw_to_hwio(t)
        } else {
            Ok(t.clone())
        }
    }

    /// A device tensor back in the file's PyTorch layout.
    pub fn to_file(self, t: HostTensor) -> Result<HostTensor> {
        if self.is_conv() {
            hwio_to_oihw(&t)
        } else {
            Ok(t)
        }
    }
}

/// Reorders the axes of a 4-D tensor: output axis k is input axis `perm[k]`.
pub fn permute4(t: &HostTensor, perm: [usize; 4]) -> Result<HostTensor> {
    let d: [usize; 4] = t.shape.dims().try_into().map_err(|_| {
        Error::shape(
            "permute",
            format!("expected 4 dimensions, got {:?}", t.shape),
        )
    })?;
    let out_dims = perm.map(|p| d[p]);
    let in_strides = [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];
    let s = perm.map(|p| in_strides[p]);
    let mut out = Vec::with_capacity(t.data.len());
    for a in 0..out_dims[0] {
        for b in 0..out_dims[1] {
            for c in 0..out_dims[2] {
                for e in 0..out_dims[3] {
                    out.push(t.data[a * s[0] + b * s[1] + c * s[2] + e * s[3]]);
                }
            }
        }
    }
    Tensor::new(out_dims, out)
}

/// Axes of PyTorch's OIHW convolution weight in the device's HWIO order, and back.
const OIHW_TO_HWIO: [usize; 4] = [2, 3, 1, 0];
const HWIO_TO_OIHW: [usize; 4] = [3, 2, 0, 1];

/// PyTorch's OIHW convolution weight → the device's HWIO.
pub fn oihw_to_hwio(t: &HostTensor) -> Result<HostTensor> {
    permute4(t, OIHW_TO_HWIO)
}

/// The device's HWIO convolution weight → PyTorch's OIHW.
pub fn hwio_to_oihw(t: &HostTensor) -> Result<HostTensor> {
    permute4(t, HWIO_TO_OIHW)
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Shape,
    pub role: Role,
    /// How the device stores it (f16: the weights of f16 convolutions).
    pub precision: Precision,
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
    /// How the backbone stores its activations and convolution weights
    /// (inference only); the heads always read f32.
    pub precision: Precision,
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
            precision: Precision::F32,
        }
    }

    pub fn param(&mut self, name: &str, shape: &[usize], role: Role) -> TensorId {
        self.param_as(name, shape, role, Precision::F32)
    }

    fn param_as(
        &mut self,
        name: &str,
        shape: &[usize],
        role: Role,
        precision: Precision,
    ) -> TensorId {
        self.specs.push(ParamSpec {
            name: name.into(),
            shape: Shape::new(shape),
            role,
            precision,
        });
        self.g.param_as(name, role.device_shape(shape), precision)
    }

    /// `x` stored at `precision`: itself, or a cast of it.
    pub fn cast(&mut self, x: TensorId, precision: Precision) -> Result<TensorId> {
        if self.g.precision(x) == precision {
            return Ok(x);
        }
        self.g.apply1(Cast { to: precision }, &[x])
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

    /// conv → [bias] → [batch norm] → [+ residual] → [ReLU], stored at the
    /// precision of `x` (its weight too).
    pub fn conv(&mut self, x: TensorId, s: ConvSpec) -> Result<TensorId> {
        let [_, h, w, c_in] = self.g.shape(x).nhwc("conv")?;
        let precision = self.g.precision(x);
        if precision != Precision::F32 && self.mode != Mode::Inference {
            return Err(Error::unsupported(
                "conv",
                "training runs in f32: only extraction stores f16",
            ));
        }
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
        let weight = self.param_as(
            &format!("{}.weight", s.conv),
            &[s.c_out, c_in, k, k],
            s.role,
            precision,
        );
        let bias = s
            .bias
            .then(|| self.param(&format!("{}.bias", s.conv), &[s.c_out], Role::Bias));
        let base = Conv2d::new([s.stride, s.stride], padding)
            .dilation([s.dilation, s.dilation])
            .stored(precision);
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
                    // Only the batch norm below reads the output.
                    op = op.bias().bias_before_batch_norm();
                    ins.push(b);
                }
                let y = self.g.apply1(op, &ins)?;
                // The block's residual add and ReLU ride on the batch
                // norm's output pass, and its backward reads dy through the
                // ReLU's mask (BENCHMARKS.md: fewer passes, less CPU time).
                let mut op = BatchNormTrain::new(self.bn_eps);
                let mut ins = vec![y, gamma, beta];
                if let Some(r) = s.residual {
                    op = op.residual();
                    ins.push(r);
                }
                if s.relu {
                    op = op.relu();
                }
                let outs = self.g.apply(op, &ins)?;
                let rows = self.g.shape(y).numel() / c;
                let update = BatchNormRunningUpdate {
                    momentum,
                    unbiased: true,
                    count: rows,
                };
                self.g.apply(update, &[mean, var, outs[1], outs[2]])?;
                Ok(outs[0])
            }
        }
    }
}
