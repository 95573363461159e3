//! Fused losses (`shaders/loss.wgsl`): softmax cross-entropy, ArcFace and MSE.
//! Each outputs the scalar loss [1] and, as its second output, the gradient of
//! the loss with respect to its main input, computed in the same pass; the
//! backward pass only scales that saved gradient by the upstream gradient
//! (`ScaleByScalar`). The saved gradients are by-products, not differentiable.
//!
//! The reductions to a scalar (`SquareSums`, the one-workgroup `sum_partials`) are
//! shared with the optimiser's global-norm clipping. Every op splits tensors
//! larger than one storage binding into windows.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{
    chunks, vec4_pieces, Binding, DeviceTensor, Gpu, Recorder, ScratchNeed, ShaderSpec,
};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

mod xent;

use xent::*;
pub use xent::{ArcFaceLoss, ArcFaceScale, CurricularUpdate, MarginFallback, SoftmaxCrossEntropy};

const WG: u64 = 256;
/// Elements (f32 or vec4) reduced by one workgroup of `sq_partials` (256 invocations × 16).
const SQ_PER_GROUP: u64 = WG * 16;
/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(entry: &str) -> Option<crate::gpu::UniformShape> {
    use crate::gpu::Uniform;
    Some(match entry {
        "softmax_xent" => XentParams::shape(),
        "gather_targets" => GatherParams::shape(),
        "curricular_ema" => EmaParams::shape(),
        "sum_partials" => SumParams::shape(),
        "sq_partials" => SqParams::shape(),
        "scale_by" => ScaleParams::shape(),
        _ => return None,
    })
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![
        xent_spec(false, false),
        xent_spec(true, false),
        xent_spec(false, true),
        xent_spec(true, true),
        gather_targets_spec(),
        curricular_ema_spec(),
        sum_spec(false),
        sum_spec(true),
        sq_spec(false, false),
        sq_spec(false, true),
        sq_spec(true, false),
        sq_spec(true, true),
        scale_by_spec(false),
        scale_by_spec(true),
    ]
}

fn sum_spec(norm: bool) -> ShaderSpec {
    ShaderSpec::new("loss", "sum_partials")
        .def("SUM", 1)
        .def("NORM", norm as u32)
}
fn sq_spec(diff: bool, vec4: bool) -> ShaderSpec {
    ShaderSpec::new("loss", "sq_partials")
        .def("SQ", 1)
        .def("DIFF", diff as u32)
        .def("VEC4", vec4 as u32)
}
fn scale_by_spec(vec4: bool) -> ShaderSpec {
    ShaderSpec::new("loss", "scale_by")
        .def("SCALE_BY", 1)
        .def("VEC4", vec4 as u32)
}

fn scalar_shape() -> Shape {
    Shape::new(&[1])
}

pub(crate) fn expect_scalar(op: &str, what: &str, s: &Shape) -> Result<()> {
    if s.numel() != 1 {
        return Err(Error::shape(
            op,
            format!("{what} must hold one value, got {s:?}"),
        ));
    }
    Ok(())
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct SumParams {
        n: u32,
        shift_in: u32,
        shift_out: u32,
        shift_clip: u32,
        alpha: f32,
        max_norm: f32,
        _pad: [u32; 2],
    }
}

/// out = alpha · Σ src[start..start+n] in one workgroup; with `norm = (max_norm, clip)`,
/// out = sqrt of that sum and clip = min(1, max_norm / (out + 1e-6)).
fn record_sum(
    rec: &mut Recorder,
    src: &DeviceTensor,
    start: u64,
    n: u64,
    alpha: f32,
    out: &DeviceTensor,
    norm: Option<(f32, &DeviceTensor)>,
) -> Result<()> {
    let gpu = rec.gpu();
    let input = src.window(gpu, start, n)?;
    let output = out.window(gpu, 0, 1)?;
    let mut params = SumParams {
        n: n as u32,
        shift_in: input.shift,
        shift_out: output.shift,
        shift_clip: 0,
        alpha,
        max_norm: 0.0,
        _pad: [0; 2],
    };
    let mut bindings = vec![(&input).into(), (&output).into()];
    if let Some((max_norm, clip)) = norm {
        let c = clip.window(gpu, 0, 1)?;
        params.shift_clip = c.shift;
        params.max_norm = max_norm;
        bindings.push((&c).into());
    }
    rec.dispatch(
        &sum_spec(norm.is_some()),
        bytemuck::bytes_of(&params),
        bindings,
        [1, 1, 1],
    )
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct SqParams {
        n: u32,
        shift_x: u32,
        shift_y: u32,
        shift_grad: u32,
        shift_part: u32,
        alpha: f32,
        _pad: [u32; 2],
    }
}

/// Σ d² over any number of tensors, two-level: `add` writes one partial per
/// workgroup into consecutive slots of a scratch buffer, `finish` sums them.
pub(crate) struct SquareSums {
    partials: DeviceTensor,
    next: u64,
    window: u64,
}

const SQUARE_PARTIALS: &str = "square-sum partials";

impl SquareSums {
    /// Slots for tensors of these element counts, split into windows of
    /// `window` elements: one per workgroup of the scalar kernel plus one
    /// per window, enough for any vec4/scalar split (`finish` reads only the
    /// slots written).
    fn slots(numels: impl IntoIterator<Item = u64>, window: u64) -> u64 {
        numels
            .into_iter()
            .flat_map(|n| chunks(n, window))
            .map(|r| (r.end - r.start).div_ceil(SQ_PER_GROUP) + 1)
            .sum::<u64>()
            .max(1)
    }

    pub(crate) fn need(numels: impl IntoIterator<Item = u64>, window: u64) -> ScratchNeed {
        ScratchNeed::Buffer {
            purpose: SQUARE_PARTIALS,
            bytes: SquareSums::slots(numels, window) * 4,
        }
    }

    pub(crate) fn new(
        rec: &Recorder,
        numels: impl IntoIterator<Item = u64>,
        window: u64,
    ) -> Result<SquareSums> {
        let slots = SquareSums::slots(numels, window);
        let partials = DeviceTensor {
            shape: Shape::new(&[slots as usize]),
            buffer: rec.gpu().scratch_buffer(SQUARE_PARTIALS, slots * 4)?,
            offset: 0,
            precision: crate::tensor::Precision::F32,
        };
        Ok(SquareSums {
            partials,
            next: 0,
            window,
        })
    }

    /// Adds Σ x² or, with `diff = (y, grad, alpha)`, Σ (x − y)² while writing grad = alpha·(x − y).
    pub(crate) fn add(
        &mut self,
        rec: &mut Recorder,
        x: &DeviceTensor,
        diff: Option<(&DeviceTensor, &DeviceTensor, f32)>,
    ) -> Result<()> {
        let gpu = rec.gpu();
        let parts = self.partials.whole(gpu)?;
        for range in chunks(x.numel(), self.window) {
            let count = range.end - range.start;
            let mut windows = vec![x.window(gpu, range.start, count)?];
            if let Some((y, grad, _)) = diff {
                windows.push(y.window(gpu, range.start, count)?);
                windows.push(grad.window(gpu, range.start, count)?);
            }
            let shifts: Vec<u32> = windows.iter().map(|w| w.shift).collect();
            let mut bindings: Vec<Binding> = windows.iter().map(Into::into).collect();
            bindings.push((&parts).into());
            for piece in vec4_pieces(&shifts, count) {
                let groups = piece.n.div_ceil(SQ_PER_GROUP);
                let params = SqParams {
                    n: piece.n as u32,
                    shift_x: piece.shifts[0],
                    shift_y: piece.shifts.get(1).copied().unwrap_or(0),
                    shift_grad: piece.shifts.get(2).copied().unwrap_or(0),
                    shift_part: (parts.shift as u64 + self.next) as u32,
                    alpha: diff.map_or(0.0, |d| d.2),
                    _pad: [0; 2],
                };
                rec.dispatch_groups(
                    &sq_spec(diff.is_some(), piece.vec4),
                    bytemuck::bytes_of(&params),
                    bindings.clone(),
                    groups,
                )?;
                self.next += groups;
            }
        }
        Ok(())
    }

    /// out = alpha · Σ, or the norm and clip factor (see `record_sum`).
    pub(crate) fn finish(
        self,
        rec: &mut Recorder,
        alpha: f32,
        out: &DeviceTensor,
        norm: Option<(f32, &DeviceTensor)>,
    ) -> Result<()> {
        record_sum(rec, &self.partials, 0, self.next, alpha, out, norm)
    }
}

/// x · s with s a one-element tensor: the backward of every fused loss
/// (saved gradient × upstream scalar gradient), so a schedule or a loss weight
/// can change s without re-recording. A gradient op: it has no backward itself.
#[derive(Clone, Copy, Debug)]
pub struct ScaleByScalar;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct ScaleParams {
        n: u32,
        shift_x: u32,
        shift_s: u32,
        shift_out: u32,
    }
}

impl Op for ScaleByScalar {
    fn name(&self) -> &'static str {
        "scale_by_scalar"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        expect_scalar(self.name(), "the scale", inputs[1])?;
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let s = inputs[1].data[0];
        Ok(vec![Tensor {
            shape: inputs[0].shape.clone(),
            data: inputs[0].data.iter().map(|v| v * s).collect(),
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        let gpu = rec.gpu();
        let (x, out) = (inputs[0], outputs[0]);
        let s = inputs[1].window(gpu, 0, 1)?;
        for range in chunks(x.numel(), window) {
            let count = range.end - range.start;
            let xw = x.window(gpu, range.start, count)?;
            let ow = out.window(gpu, range.start, count)?;
            let bindings: Vec<Binding> = [&xw, &s, &ow].into_iter().map(Into::into).collect();
            for piece in vec4_pieces(&[xw.shift, ow.shift], count) {
                let params = ScaleParams {
                    n: piece.n as u32,
                    shift_x: piece.shifts[0],
                    shift_s: s.shift,
                    shift_out: piece.shifts[1],
                };
                rec.dispatch_groups(
                    &scale_by_spec(piece.vec4),
                    bytemuck::bytes_of(&params),
                    bindings.clone(),
                    piece.n.div_ceil(WG),
                )?;
            }
        }
        Ok(())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// Backward of a fused loss: `saved` pairs an input index with the output
/// holding the saved gradient of the loss with respect to it.
fn fused_backward(
    g: &mut Graph,
    name: &str,
    n_inputs: usize,
    outputs: &[TensorId],
    grads: &[Option<TensorId>],
    saved: &[(usize, usize)],
) -> Result<Vec<Option<TensorId>>> {
    if grads.iter().skip(1).any(Option::is_some) {
        return Err(Error::Internal(format!(
            "{name}: its saved gradients are by-products and cannot be differentiated"
        )));
    }
    let mut out = vec![None; n_inputs];
    if let Some(dl) = grads[0] {
        for &(input, output) in saved {
            out[input] = Some(g.apply1(ScaleByScalar, &[outputs[output], dl])?);
        }
    }
    Ok(out)
}

/// Mean squared error over all elements of prediction and target (DELG's
/// reconstruction loss: per-location MSE over channels averaged over batch, H
/// and W is the plain mean). Outputs: loss [1] and dL/dprediction; the target
/// gets no gradient (DELG stops it).
#[derive(Clone, Copy, Debug)]
pub struct MseLoss;

impl Op for MseLoss {
    fn name(&self) -> &'static str {
        "mse_loss"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        if inputs[0] != inputs[1] || inputs[0].numel() == 0 {
            return Err(Error::shape(
                self.name(),
                format!(
                    "prediction {:?} and target {:?} must be equal and non-empty",
                    inputs[0], inputs[1]
                ),
            ));
        }
        Ok(vec![scalar_shape(), inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let n = inputs[0].data.len() as f64;
        let diff: Vec<f64> = inputs[0]
            .data
            .iter()
            .zip(&inputs[1].data)
            .map(|(a, b)| a - b)
            .collect();
        let loss = diff.iter().map(|d| d * d).sum::<f64>() / n;
        Ok(vec![
            Tensor {
                shape: scalar_shape(),
                data: vec![loss],
            },
            Tensor {
                shape: inputs[0].shape.clone(),
                data: diff.iter().map(|d| 2.0 * d / n).collect(),
            },
        ])
    }
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let n = inputs[0].numel() as u64;
        Ok(vec![SquareSums::need([n], gpu.max_window_elems())])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        let n = inputs[0].numel();
        let mut sums = SquareSums::new(rec, [n], window)?;
        sums.add(
            rec,
            inputs[0],
            Some((inputs[1], outputs[1], 2.0 / n as f32)),
        )?;
        sums.finish(rec, 1.0 / n as f32, outputs[0], None)
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        fused_backward(g, self.name(), inputs.len(), outputs, grads, &[(0, 1)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        4 * inputs[0].numel() as u64
    }
}

#[cfg(test)]
pub(crate) mod tests;
