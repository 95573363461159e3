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
use crate::gpu::{chunks, vec4_pieces, Binding, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 256;
/// Elements (f32 or vec4) reduced by one workgroup of `sq_partials` (256 invocations × 16).
const SQ_PER_GROUP: u64 = WG * 16;
/// Mirrors SIN_FLOOR in loss.wgsl: bounds d cos(θ+m)/d cos θ only where θ = 0 exactly.
const SIN_FLOOR: f64 = 1e-4;

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

fn xent_spec(gamma_input: bool, curricular: bool) -> ShaderSpec {
    ShaderSpec::new("loss", "softmax_xent")
        .def("SOFTMAX_XENT", 1)
        .def("GAMMA_INPUT", gamma_input as u32)
        .def("CURRICULAR", curricular as u32)
        .def("T_BINDING", 5 + gamma_input as u32)
}
fn gather_targets_spec() -> ShaderSpec {
    ShaderSpec::new("loss", "gather_targets").def("GATHER_TARGETS", 1)
}
fn curricular_ema_spec() -> ShaderSpec {
    ShaderSpec::new("loss", "curricular_ema").def("CURRICULAR_EMA", 1)
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

#[repr(C)]
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

#[repr(C)]
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

/// Σ d² over any number of tensors, two-level: `add` writes one partial per
/// workgroup into consecutive slots of a scratch buffer, `finish` sums them.
pub(crate) struct SquareSums {
    partials: DeviceTensor,
    next: u64,
    window: u64,
}

impl SquareSums {
    /// Scratch for tensors of these element counts, split into windows of
    /// `window` elements: one slot per workgroup of the scalar kernel plus one
    /// per window, enough for any vec4/scalar split (`finish` reads only the
    /// slots written).
    pub(crate) fn new(
        rec: &Recorder,
        numels: impl IntoIterator<Item = u64>,
        window: u64,
    ) -> Result<SquareSums> {
        let slots: u64 = numels
            .into_iter()
            .flat_map(|n| chunks(n, window))
            .map(|r| (r.end - r.start).div_ceil(SQ_PER_GROUP) + 1)
            .sum();
        let partials = DeviceTensor::zeros(rec.gpu(), Shape::new(&[slots.max(1) as usize]))?;
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

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScaleParams {
    n: u32,
    shift_x: u32,
    shift_s: u32,
    shift_out: u32,
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
        return Err(Error::Graph(format!(
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

/// What ArcFace does when θ + m would pass π (cos θ < −cos m).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarginFallback {
    /// DELG (TF `delg_model.py`): no margin, the target logit stays γ·cos θ
    /// (it jumps from −γ up to −γ·cos m as θ crosses π − m).
    Keep,
    /// DOLG / insightface: γ·(cos θ − m·sin m), i.e. cos θ − m·sin(π − m): past
    /// π − m, where cos(θ + m) would wrap around and rise again, the target
    /// keeps a fixed penalty below cos θ instead of losing its margin. DOLG's
    /// CurricularFace-style modulation of hard negatives (docs/recipe.md §8.5) is not
    /// part of this op.
    Penalty,
}

/// Where ArcFace's scale γ comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArcFaceScale {
    /// A constant (DELG: 45.25 = √2048, non-trainable).
    Fixed(f32),
    /// A third input tensor [1]; the op then outputs dL/dγ as a third output and
    /// the backward gives γ a gradient (the paper's "learnable scalar").
    Input,
}

/// ArcFace on precomputed cosines ⟨normalised embedding, normalised class
/// weight⟩ [B, C] with labels [B] (class ids as f32): the label cosine becomes
/// cos(θ + m) where θ + m ≤ π, logits = γ·cos', softmax cross-entropy summed
/// and divided by B. Outputs: loss [1], dL/dcos [B, C] (and dL/dγ [1] with
/// `ArcFaceScale::Input`). With `curricular`, a last input t [1] (DOLG's
/// statistic, updated by `CurricularUpdate` first) re-weights every hard
/// negative c > cos(θ_y + m) to c·(t + c); t gets no gradient. Labels are rounded to the nearest id (exact in f32
/// up to 2^24 classes); ids outside [0, C) are clamped into range on the device
/// (which cannot report them), and the reference does the same.
#[derive(Clone, Copy, Debug)]
pub struct ArcFaceLoss {
    pub scale: ArcFaceScale,
    pub margin: f32,
    pub fallback: MarginFallback,
    pub curricular: bool,
}

impl ArcFaceLoss {
    /// DELG's head: fixed γ, no margin past π − m.
    pub fn delg(scale: f32, margin: f32) -> Self {
        ArcFaceLoss {
            scale: ArcFaceScale::Fixed(scale),
            margin,
            fallback: MarginFallback::Keep,
            curricular: false,
        }
    }

    fn xent(&self) -> Result<RowXent> {
        let m = self.margin;
        if !(m.is_finite() && (0.0..std::f32::consts::PI).contains(&m)) {
            return Err(Error::unsupported(
                "arcface_loss",
                format!("margin {m} is outside [0, π)"),
            ));
        }
        let gamma = match self.scale {
            ArcFaceScale::Fixed(s) if !(s.is_finite() && s > 0.0) => {
                return Err(Error::unsupported(
                    "arcface_loss",
                    format!("scale {s} must be finite and positive"),
                ))
            }
            ArcFaceScale::Fixed(s) => Some(s),
            ArcFaceScale::Input => None,
        };
        Ok(RowXent {
            gamma,
            margin: Some((m, self.fallback)),
            curricular: self.curricular,
        })
    }
}

/// DOLG's CurricularFace statistic: t ← rate·mean_b clamp(cos[b, y_b]) +
/// (1 − rate)·t, in place, from the cosines [B, C] and labels [B] of a batch
/// (no gradient). Record it before the `ArcFaceLoss` that reads t.
#[derive(Clone, Copy, Debug)]
pub struct CurricularUpdate {
    /// 0.01 in the official code.
    pub rate: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    rows: u32,
    cols: u32,
    row0: u32,
    shift_x: u32,
    shift_labels: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmaParams {
    n: u32,
    shift_in: u32,
    shift_t: u32,
    rate: f32,
}

impl Op for CurricularUpdate {
    fn name(&self) -> &'static str {
        "curricular_update"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(Error::unsupported(
                self.name(),
                format!("rate {} is outside [0, 1]", self.rate),
            ));
        }
        expect_inputs(self.name(), inputs, 3)?;
        PLAIN_XENT.infer(self.name(), &inputs[..2])?;
        expect_scalar(self.name(), "t", inputs[2])?;
        Ok(vec![])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (b, c) = inputs[0].shape.matrix(self.name())?;
        let mean = (0..b)
            .map(|r| inputs[0].data[r * c + class_of(inputs[1].data[r], c)].clamp(-1.0, 1.0))
            .sum::<f64>()
            / b as f64;
        let rate = self.rate as f64;
        Ok(vec![Tensor {
            shape: scalar_shape(),
            data: vec![rate * mean + (1.0 - rate) * inputs[2].data[0]],
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, labels, t) = (inputs[0], inputs[1], inputs[2]);
        let (b, c) = x.shape.matrix(self.name())?;
        let (b, c) = (b as u64, c as u64);
        let targets = DeviceTensor::zeros(gpu, Shape::new(&[b as usize]))?;
        let tw = targets.whole(gpu)?;
        let rows_per_chunk = crate::gpu::rows_per_window(c, gpu.max_window_elems())?;
        for range in chunks(b, rows_per_chunk) {
            let n = range.end - range.start;
            let xw = x.window(gpu, range.start * c, n * c)?;
            let lw = labels.window(gpu, range.start, n)?;
            let p = GatherParams {
                rows: n as u32,
                cols: c as u32,
                row0: (tw.shift as u64 + range.start) as u32,
                shift_x: xw.shift,
                shift_labels: lw.shift,
                _pad: [0; 3],
            };
            rec.dispatch_groups(
                &gather_targets_spec(),
                bytemuck::bytes_of(&p),
                vec![(&xw).into(), (&lw).into(), (&tw).into()],
                n.div_ceil(WG),
            )?;
        }
        let state = t.window(gpu, 0, 1)?;
        let p = EmaParams {
            n: b as u32,
            shift_in: tw.shift,
            shift_t: state.shift,
            rate: self.rate,
        };
        rec.dispatch(
            &curricular_ema_spec(),
            bytemuck::bytes_of(&p),
            vec![(&tw).into(), (&state).into()],
            [1, 1, 1],
        )
    }
    fn mutates(&self) -> &'static [usize] {
        &[2]
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[1].numel() as u64
    }
}

/// Softmax cross-entropy of logits [B, C] with labels [B] (class ids as f32,
/// clamped into [0, C) like ArcFace's), summed and divided by B. Outputs: loss
/// [1] and dL/dlogits [B, C].
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxCrossEntropy;

const PLAIN_XENT: RowXent = RowXent {
    gamma: Some(1.0),
    margin: None,
    curricular: false,
};

/// The row kernel's configuration, shared by both cross-entropies: plain
/// softmax cross-entropy is ArcFace with γ = 1 and no margin.
#[derive(Clone, Copy, Debug)]
struct RowXent {
    /// None: γ is the third input.
    gamma: Option<f32>,
    margin: Option<(f32, MarginFallback)>,
    /// A last input t re-weights hard negatives (ArcFace only).
    curricular: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct XentParams {
    rows: u32,
    cols: u32,
    row0: u32,
    batch: u32,
    shift_x: u32,
    shift_labels: u32,
    shift_grad: u32,
    shift_gamma: u32,
    arcface: u32,
    gamma: f32,
    inv_batch: f32,
    cos_m: f32,
    sin_m: f32,
    threshold: f32,
    penalty: f32,
    shift_t: u32,
}

/// Same rule as `class_of` in loss.wgsl.
fn class_of(label: f64, cols: usize) -> usize {
    ((label + 0.5).floor().max(0.0) as usize).min(cols - 1)
}

impl RowXent {
    fn inputs(&self) -> usize {
        2 + self.gamma.is_none() as usize + self.curricular as usize
    }

    /// Input index of CurricularFace's t.
    fn t_input(&self) -> usize {
        2 + self.gamma.is_none() as usize
    }

    /// A non-target cosine and its derivative (mirrors `negative` in loss.wgsl).
    fn negative(&self, c: f64, hard: f64, t: f64) -> (f64, f64) {
        if self.curricular && c > hard {
            (c * (t + c), t + 2.0 * c)
        } else {
            (c, 1.0)
        }
    }

    fn infer(&self, op: &str, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(op, inputs, self.inputs())?;
        let (b, c) = inputs[0].matrix(op)?;
        if inputs[0].rank() != 2 || b == 0 || c == 0 {
            return Err(Error::shape(
                op,
                format!(
                    "expected a non-empty [batch, classes] matrix, got {:?}",
                    inputs[0]
                ),
            ));
        }
        if inputs[1].dims() != [b] {
            return Err(Error::shape(
                op,
                format!(
                    "labels must be [{b}] for {:?}, got {:?}",
                    inputs[0], inputs[1]
                ),
            ));
        }
        let mut out = vec![scalar_shape(), inputs[0].clone()];
        if self.gamma.is_none() {
            expect_scalar(op, "the scale γ", inputs[2])?;
            out.push(scalar_shape());
        }
        if self.curricular {
            expect_scalar(op, "CurricularFace's t", inputs[self.t_input()])?;
        }
        Ok(out)
    }

    /// (cos m, sin m, threshold −cos m, fallback penalty) as the kernel gets them.
    fn margin_consts(&self) -> [f64; 4] {
        match self.margin {
            None => [1.0, 0.0, -2.0, 0.0],
            Some((m, fallback)) => {
                let m = m as f64;
                let penalty = match fallback {
                    MarginFallback::Keep => 0.0,
                    MarginFallback::Penalty => m * m.sin(),
                };
                [m.cos(), m.sin(), -m.cos(), penalty]
            }
        }
    }

    /// Target cosine and its derivative (mirrors `margin_target` in loss.wgsl).
    fn target(&self, c: f64) -> (f64, f64) {
        if self.margin.is_none() {
            return (c, 1.0);
        }
        let [cos_m, sin_m, threshold, penalty] = self.margin_consts();
        let cc = c.clamp(-1.0, 1.0);
        if cc >= threshold {
            let s = (1.0 - cc * cc).max(0.0).sqrt();
            (
                cc * cos_m - s * sin_m,
                cos_m + sin_m * cc / s.max(SIN_FLOOR),
            )
        } else {
            (cc - penalty, 1.0)
        }
    }

    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let x = inputs[0];
        let (b, c) = x.shape.matrix("cross-entropy")?;
        let gamma = self
            .gamma
            .map(f64::from)
            .unwrap_or_else(|| inputs[2].data[0]);
        let t_stat = if self.curricular {
            inputs[self.t_input()].data[0]
        } else {
            0.0
        };
        let [cos_m, sin_m, ..] = self.margin_consts();
        let mut loss = 0.0;
        let mut dgamma = 0.0;
        let mut grad = vec![0.0; b * c];
        for r in 0..b {
            let row = &x.data[r * c..(r + 1) * c];
            let y = class_of(inputs[1].data[r], c);
            let (t, dt) = self.target(row[y]);
            let cy = row[y].clamp(-1.0, 1.0);
            let hard = cy * cos_m - (1.0 - cy * cy).max(0.0).sqrt() * sin_m;
            let neg: Vec<(f64, f64)> = row
                .iter()
                .map(|&v| self.negative(v, hard, t_stat))
                .collect();
            let cos = |j: usize| if j == y { t } else { neg[j].0 };
            let mx = (0..c)
                .map(|j| gamma * cos(j))
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..c).map(|j| (gamma * cos(j) - mx).exp()).sum();
            loss += sum.ln() + mx - gamma * t;
            for j in 0..c {
                let d = (gamma * cos(j) - mx).exp() / sum - if j == y { 1.0 } else { 0.0 };
                grad[r * c + j] = d * gamma * if j == y { dt } else { neg[j].1 } / b as f64;
                dgamma += d * cos(j);
            }
        }
        let scalar = |v: f64| Tensor {
            shape: scalar_shape(),
            data: vec![v / b as f64],
        };
        let mut out = vec![
            scalar(loss),
            Tensor {
                shape: x.shape.clone(),
                data: grad,
            },
        ];
        if self.gamma.is_none() {
            out.push(scalar(dgamma));
        }
        Ok(out)
    }

    fn record(
        &self,
        op: &str,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
        window: u64,
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, labels, loss, grad) = (inputs[0], inputs[1], outputs[0], outputs[1]);
        let (b, c) = x.shape.matrix(op)?;
        let (b, c) = (b as u64, c as u64);
        let rows_per_chunk = window / c;
        if rows_per_chunk == 0 {
            return Err(Error::LimitExceeded {
                what: format!("{op} over {c} classes"),
                needed: c * 4,
                limit: window * 4,
                name: "max_storage_buffer_binding_size",
                fix: "one row of classes must fit in one storage binding".into(),
            });
        }
        // Per-row losses, then per-row Σ (p − onehot)·cos' for dL/dγ.
        let rows = DeviceTensor::zeros(gpu, Shape::new(&[2 * b as usize]))?;
        let rows_win = rows.whole(gpu)?;
        let gamma = match self.gamma {
            None => Some(inputs[2].window(gpu, 0, 1)?),
            Some(_) => None,
        };
        let t_stat = match self.curricular {
            true => Some(inputs[self.t_input()].window(gpu, 0, 1)?),
            false => None,
        };
        let [cos_m, sin_m, threshold, penalty] = self.margin_consts();
        for range in chunks(b, rows_per_chunk) {
            let n = range.end - range.start;
            let xw = x.window(gpu, range.start * c, n * c)?;
            let lw = labels.window(gpu, range.start, n)?;
            let gw = grad.window(gpu, range.start * c, n * c)?;
            let params = XentParams {
                rows: n as u32,
                cols: c as u32,
                row0: (rows_win.shift as u64 + range.start) as u32,
                batch: b as u32,
                shift_x: xw.shift,
                shift_labels: lw.shift,
                shift_grad: gw.shift,
                shift_gamma: gamma.as_ref().map_or(0, |g| g.shift),
                arcface: self.margin.is_some() as u32,
                gamma: self.gamma.unwrap_or(0.0),
                inv_batch: 1.0 / b as f32,
                cos_m: cos_m as f32,
                sin_m: sin_m as f32,
                threshold: threshold as f32,
                penalty: penalty as f32,
                shift_t: t_stat.as_ref().map_or(0, |t| t.shift),
            };
            let mut bindings = vec![(&xw).into(), (&lw).into(), (&gw).into(), (&rows_win).into()];
            bindings.extend(gamma.iter().chain(&t_stat).map(Into::into));
            rec.dispatch_groups(
                &xent_spec(gamma.is_some(), self.curricular),
                bytemuck::bytes_of(&params),
                bindings,
                n,
            )?;
        }
        let inv_b = 1.0 / b as f32;
        record_sum(rec, &rows, 0, b, inv_b, loss, None)?;
        if let Some(dgamma) = outputs.get(2) {
            record_sum(rec, &rows, b, b, inv_b, dgamma, None)?;
        }
        Ok(())
    }

    fn backward(
        &self,
        op: &str,
        g: &mut Graph,
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let saved: &[(usize, usize)] = if self.gamma.is_some() {
            &[(0, 1)]
        } else {
            &[(0, 1), (2, 2)]
        };
        fused_backward(g, op, self.inputs(), outputs, grads, saved)
    }

    fn flops(&self, inputs: &[&Shape]) -> u64 {
        // Two passes over the row: max/exp/sum, then exp/scale/accumulate.
        10 * inputs[0].numel() as u64
    }
}

impl Op for ArcFaceLoss {
    fn name(&self) -> &'static str {
        "arcface_loss"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        self.xent()?.infer(self.name(), inputs)
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        self.xent()?.reference(inputs)
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        self.xent()?
            .record(self.name(), rec, inputs, outputs, window)
    }
    fn backward(
        &self,
        g: &mut Graph,
        _inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        self.xent()?.backward(self.name(), g, outputs, grads)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        PLAIN_XENT.flops(inputs)
    }
}

impl Op for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax_cross_entropy"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        PLAIN_XENT.infer(self.name(), inputs)
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        PLAIN_XENT.reference(inputs)
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        PLAIN_XENT.record(self.name(), rec, inputs, outputs, window)
    }
    fn backward(
        &self,
        g: &mut Graph,
        _inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        PLAIN_XENT.backward(self.name(), g, outputs, grads)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        PLAIN_XENT.flops(inputs)
    }
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
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::graph::exec::run_op;
    use crate::tensor::{HostTensor, Rng};
    use crate::testing::{check_op, grad_check, test_gpu, OpCase};

    fn labels(rng: &mut Rng, b: usize, c: usize) -> HostTensor {
        Tensor {
            shape: Shape::new(&[b]),
            data: (0..b).map(|_| rng.below(c) as f32).collect(),
        }
    }

    /// Cosines in (−0.95, 0.95) (acos is smooth there) with labels; `label_cos`
    /// overrides the label column (to reach θ > π − m).
    fn cosines(b: usize, c: usize, seed: u64, label_cos: Option<f32>) -> (HostTensor, HostTensor) {
        let mut rng = Rng::new(seed);
        let mut x = rng.tensor([b, c], -0.95, 0.95);
        let l = labels(&mut rng, b, c);
        if let Some(v) = label_cos {
            for r in 0..b {
                x.data[r * c + l.data[r] as usize] = v;
            }
        }
        (x, l)
    }

    fn xent_case(
        op: impl Op + 'static,
        b: usize,
        c: usize,
        seed: u64,
        label_cos: Option<f32>,
    ) -> OpCase {
        let (x, l) = cosines(b, c, seed, label_cos);
        OpCase::new(op).tensor(x).tensor(l)
    }

    const DELG: ArcFaceLoss = ArcFaceLoss {
        scale: ArcFaceScale::Fixed(45.25),
        margin: 0.1,
        fallback: MarginFallback::Keep,
        curricular: false,
    };
    const DOLG: ArcFaceLoss = ArcFaceLoss {
        scale: ArcFaceScale::Fixed(30.0),
        margin: 0.15,
        fallback: MarginFallback::Penalty,
        curricular: false,
    };
    const CURRICULAR: ArcFaceLoss = ArcFaceLoss {
        curricular: true,
        ..DOLG
    };
    const LEARNED: ArcFaceLoss = ArcFaceLoss {
        scale: ArcFaceScale::Input,
        margin: 0.1,
        fallback: MarginFallback::Keep,
        curricular: false,
    };

    fn gamma(v: f32) -> HostTensor {
        Tensor {
            shape: scalar_shape(),
            data: vec![v],
        }
    }

    #[test]
    fn cross_entropy_matches_reference() {
        for (b, c) in [(1, 1), (1, 5), (3, 7), (4, 257), (2, 81313)] {
            let mut rng = Rng::new(b as u64 * 31 + c as u64);
            let case = OpCase::new(SoftmaxCrossEntropy)
                .input([b, c], -8.0, 8.0)
                .tensor(labels(&mut rng, b, c));
            check_op(&case);
        }
    }

    #[test]
    fn arcface_matches_reference() {
        for (b, c) in [(1, 1), (3, 7), (5, 300)] {
            check_op(&xent_case(DELG, b, c, 1, None));
            check_op(&xent_case(DOLG, b, c, 2, None));
            check_op(&xent_case(LEARNED, b, c, 3, None).tensor(gamma(12.5)));
        }
        check_op(&xent_case(DELG, 2, 81313, 4, None));
        // θ > π − m: both fallbacks; and cosines at ±1 and just past them (rounding of a GEMM).
        let wide = ArcFaceLoss {
            margin: 0.5,
            ..DELG
        };
        for fallback in [MarginFallback::Keep, MarginFallback::Penalty] {
            check_op(&xent_case(
                ArcFaceLoss { fallback, ..wide },
                3,
                9,
                5,
                Some(-0.93),
            ));
        }
        for v in [1.0, -1.0, 1.000_001, -1.000_001] {
            check_op(&xent_case(DELG, 2, 6, 6, Some(v)));
        }
    }

    #[test]
    fn curricular_face_matches_reference() {
        for (b, c, t) in [(1, 1, 0.3), (3, 7, 0.0), (5, 300, 0.6), (2, 81313, 0.2)] {
            check_op(&xent_case(CURRICULAR, b, c, 21, None).tensor(gamma(t)));
        }
        // With a learned scale, t comes after γ.
        let both = ArcFaceLoss {
            scale: ArcFaceScale::Input,
            ..CURRICULAR
        };
        check_op(
            &xent_case(both, 3, 9, 22, None)
                .tensor(gamma(20.0))
                .tensor(gamma(0.4)),
        );
        // Labels with a low cosine make most negatives hard: the re-weighting changes the loss.
        let (x, l) = cosines(3, 9, 23, Some(-0.2));
        let plain = DOLG.reference(&[&x.to_ref(), &l.to_ref()]).unwrap();
        let curr = CURRICULAR
            .reference(&[&x.to_ref(), &l.to_ref(), &gamma(0.5).to_ref()])
            .unwrap();
        assert!((plain[0].data[0] - curr[0].data[0]).abs() > 1e-3);
        check_op(
            &OpCase::new(CURRICULAR)
                .tensor(x)
                .tensor(l)
                .tensor(gamma(0.5)),
        );
    }

    #[test]
    fn curricular_update_matches_reference() {
        for (b, c) in [(1, 1), (7, 13), (300, 5)] {
            let (x, l) = cosines(b, c, 24, None);
            check_op(
                &OpCase::new(CurricularUpdate { rate: 0.01 })
                    .tensor(x)
                    .tensor(l)
                    .tensor(gamma(0.25)),
            );
        }
        // Rows over several windows.
        let (x, l) = cosines(9, 13, 25, None);
        check_op(
            &OpCase::new(CurricularUpdate { rate: 0.3 })
                .tensor(x)
                .tensor(l)
                .tensor(gamma(-0.5))
                .windows(40),
        );
    }

    #[test]
    fn out_of_range_labels_are_clamped() {
        let (x, _) = cosines(4, 9, 7, None);
        let l = Tensor {
            shape: Shape::new(&[4]),
            data: vec![-3.0, 9.0, 1e9, 2.4],
        };
        let op = Arc::new(DELG);
        let want = op.reference(&[&x.to_ref(), &l.to_ref()]).unwrap();
        let clamped = Tensor {
            shape: Shape::new(&[4]),
            data: vec![0.0, 8.0, 8.0, 2.0],
        };
        assert_eq!(
            want,
            op.reference(&[&x.to_ref(), &clamped.to_ref()]).unwrap()
        );
        check_op(&OpCase::new(DELG).tensor(x).tensor(l));
    }

    #[test]
    fn zero_margin_is_scaled_softmax() {
        // DELG validates without the margin: ArcFace with m = 0 is softmax
        // cross-entropy of γ·cos, with dL/dcos = γ·dL/dlogits.
        let (x, l) = cosines(3, 10, 15, None);
        let arc = ArcFaceLoss::delg(45.25, 0.0)
            .reference(&[&x.to_ref(), &l.to_ref()])
            .unwrap();
        let logits = Tensor {
            shape: x.shape.clone(),
            data: x.data.iter().map(|v| 45.25 * *v as f64).collect(),
        };
        let plain = SoftmaxCrossEntropy
            .reference(&[&logits, &l.to_ref()])
            .unwrap();
        assert!((arc[0].data[0] - plain[0].data[0]).abs() < 1e-9 * plain[0].data[0]);
        for (a, p) in arc[1].data.iter().zip(&plain[1].data) {
            assert!((a - 45.25 * p).abs() < 1e-9, "{a} vs {}", 45.25 * p);
        }
        check_op(
            &OpCase::new(ArcFaceLoss::delg(45.25, 0.0))
                .tensor(x)
                .tensor(l),
        );
    }

    #[test]
    fn mse_and_scale_match_reference() {
        for shape in [vec![1usize], vec![3, 5, 7], vec![2, 9, 9, 33], vec![4099]] {
            check_op(&OpCase::new(MseLoss).input(shape.clone(), -2.0, 2.0).input(
                shape.clone(),
                -2.0,
                2.0,
            ));
            check_op(
                &OpCase::new(ScaleByScalar)
                    .input(shape, -2.0, 2.0)
                    .input([1], -3.0, 3.0),
            );
        }
    }

    #[test]
    fn windows_split_large_tensors() {
        // 7 rows of 97 classes in windows of 150 elements: one row per window;
        // in windows of 250: two rows per window. 5001 elements in windows of
        // 700: 8 windows, none of them aligned to a workgroup's elements.
        check_op(
            &xent_case(LEARNED, 7, 97, 8, None)
                .tensor(gamma(20.0))
                .windows(150),
        );
        check_op(&xent_case(SoftmaxCrossEntropy, 7, 97, 9, None).windows(250));
        // Windows of 700 start on 16 bytes (vec4 kernels + scalar tails);
        // windows of 699 do not (scalar kernels only).
        for window in [700, 699] {
            let mse = OpCase::new(MseLoss).input([5001], -1.0, 1.0);
            check_op(&mse.input([5001], -1.0, 1.0).windows(window));
            let scale = OpCase::new(ScaleByScalar).input([5001], -1.0, 1.0);
            check_op(&scale.input([1], -1.0, 1.0).windows(window));
        }
    }

    #[test]
    fn gradients() {
        grad_check(
            &OpCase::new(SoftmaxCrossEntropy)
                .input([3, 11], -4.0, 4.0)
                .tensor(labels(&mut Rng::new(3), 3, 11))
                .seed_outputs(&[0]),
        );
        grad_check(&xent_case(DELG, 3, 11, 10, None).seed_outputs(&[0]));
        grad_check(&xent_case(DOLG, 1, 1, 11, None).seed_outputs(&[0]));
        grad_check(
            &xent_case(CURRICULAR, 3, 8, 14, Some(0.1))
                .tensor(gamma(0.4))
                .only_grads(&[0])
                .seed_outputs(&[0]),
        );
        grad_check(
            &xent_case(LEARNED, 4, 6, 12, None)
                .tensor(gamma(7.0))
                .seed_outputs(&[0]),
        );
        // θ > π − m on every label column, both fallbacks.
        for fallback in [MarginFallback::Keep, MarginFallback::Penalty] {
            let op = ArcFaceLoss {
                scale: ArcFaceScale::Fixed(16.0),
                margin: 0.5,
                fallback,
                curricular: false,
            };
            grad_check(&xent_case(op, 3, 5, 13, Some(-0.93)).seed_outputs(&[0]));
        }
        grad_check(
            &OpCase::new(MseLoss)
                .input([2, 3, 5, 7], -2.0, 2.0)
                .input([2, 3, 5, 7], -2.0, 2.0)
                .seed_outputs(&[0]),
        );
    }

    #[test]
    fn bad_shapes_and_parameters_are_typed_errors() {
        let s = |d: &[usize]| Shape::new(d);
        let err = DELG.infer(&[&s(&[4, 10]), &s(&[5])]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = LEARNED.infer(&[&s(&[4, 10]), &s(&[4])]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = LEARNED
            .infer(&[&s(&[4, 10]), &s(&[4]), &s(&[2])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = SoftmaxCrossEntropy
            .infer(&[&s(&[2, 3, 4]), &s(&[2])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = MseLoss.infer(&[&s(&[2, 3]), &s(&[3, 2])]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = ScaleByScalar.infer(&[&s(&[2, 3]), &s(&[2])]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = ArcFaceLoss {
            margin: 4.0,
            ..DELG
        }
        .infer(&[&s(&[4, 10]), &s(&[4])])
        .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let err = ArcFaceLoss::delg(-1.0, 0.1)
            .infer(&[&s(&[4, 10]), &s(&[4])])
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        // A row of classes wider than one storage binding.
        if let Some(gpu) = crate::testing::windowed_gpus(50).first() {
            let (x, l) = cosines(2, 97, 14, None);
            let err = run_op(gpu, Arc::new(SoftmaxCrossEntropy), &[&x, &l]).unwrap_err();
            assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
        }
    }

    #[test]
    fn saved_gradients_are_not_differentiable() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3]);
        let l = g.input("l", [2]);
        let outs = g.apply(SoftmaxCrossEntropy, &[x, l]).unwrap();
        let seed = g.input("seed", [2, 3]);
        let err = g.backward(&[(outs[1], seed)], &[x]).unwrap_err();
        assert!(err.to_string().contains("by-products"), "{err}");
    }

    /// Times the family's ops at training sizes on the first test device:
    /// `cargo test --lib ops::loss::tests::throughput -- --ignored --nocapture` (the
    /// kernels run in the driver, so a debug build of the crate times the same).
    #[test]
    #[ignore]
    fn throughput() {
        use crate::ops::optim::{GlobalNormClip, SgdStep};
        let Some(gpu) = test_gpu() else { return };
        let (b, c, n) = (32, 81313, 8 << 20);
        let sgd = SgdStep {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        };
        /// A labelled op and the shapes of its inputs.
        type Case = (&'static str, Box<dyn Op>, Vec<Vec<usize>>);
        let cases: [Case; 4] = [
            (
                "arcface 32x81313",
                Box::new(DELG),
                vec![vec![b, c], vec![b]],
            ),
            (
                "mse 32x20x20x1024",
                Box::new(MseLoss),
                vec![vec![32, 20, 20, 1024]; 2],
            ),
            (
                "sgd 8M",
                Box::new(sgd),
                vec![vec![n], vec![n], vec![n], vec![1], vec![1]],
            ),
            (
                "global norm 8M",
                Box::new(GlobalNormClip { max_norm: 10.0 }),
                vec![vec![n]],
            ),
        ];
        let mut rng = Rng::new(1);
        for (name, op, shapes) in cases {
            let ins: Vec<DeviceTensor> = shapes
                .iter()
                .map(|s| DeviceTensor::upload(&gpu, &rng.tensor(s.clone(), -0.9, 0.9)).unwrap())
                .collect();
            let in_shapes: Vec<&Shape> = ins.iter().map(|t| &t.shape).collect();
            let outs: Vec<DeviceTensor> = op
                .infer(&in_shapes)
                .unwrap()
                .into_iter()
                .map(|s| DeviceTensor::zeros(&gpu, s).unwrap())
                .collect();
            let mut rec = Recorder::new(&gpu);
            let (ins, outs): (Vec<_>, Vec<_>) = (ins.iter().collect(), outs.iter().collect());
            op.record(&mut rec, &ins, &outs).unwrap();
            let recording = rec.finish().unwrap();
            let mut ms: Vec<f64> = (0..6)
                .map(|_| {
                    let t = std::time::Instant::now();
                    recording.submit(&gpu).unwrap();
                    gpu.wait().unwrap();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            // The first run compiles the kernels.
            ms.remove(0);
            ms.sort_by(f64::total_cmp);
            eprintln!(
                "{name}: median {:.1} ms [{:.1}..{:.1}]",
                ms[2], ms[0], ms[4]
            );
        }
    }
}
