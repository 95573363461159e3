//! Row-wise cross-entropies of the classifier heads: ArcFace (with DELG's
//! learned or fixed scale and the fallback past π − m), its CurricularFace
//! re-weighting and the EMA of t, and plain softmax cross-entropy. One fused
//! kernel computes each row's loss and saves its gradient for the backward.

use super::*;

/// Per-row losses and dL/dγ terms of a cross-entropy, 2 × batch floats.
const ROW_TERMS: &str = "cross-entropy row terms";
/// The clamped target logit of every row, batch floats.
const TARGETS: &str = "curricular targets";

/// `purpose` holding `per_row` floats for each row of the logits `x`.
fn per_row_need(op: &str, x: &Shape, purpose: &'static str, per_row: u64) -> Result<ScratchNeed> {
    let (b, _) = x.matrix(op)?;
    Ok(ScratchNeed::Buffer {
        purpose,
        bytes: b as u64 * per_row * 4,
    })
}

/// Mirrors SIN_FLOOR in loss.wgsl: bounds d cos(θ+m)/d cos θ only where θ = 0 exactly.
pub(super) const SIN_FLOOR: f64 = 1e-4;

pub(super) fn xent_spec(gamma_input: bool, curricular: bool) -> ShaderSpec {
    ShaderSpec::new("loss", "softmax_xent")
        .def("SOFTMAX_XENT", 1)
        .def("GAMMA_INPUT", gamma_input as u32)
        .def("CURRICULAR", curricular as u32)
        .def("T_BINDING", 5 + gamma_input as u32)
}
pub(super) fn gather_targets_spec() -> ShaderSpec {
    ShaderSpec::new("loss", "gather_targets").def("GATHER_TARGETS", 1)
}
pub(super) fn curricular_ema_spec() -> ShaderSpec {
    ShaderSpec::new("loss", "curricular_ema").def("CURRICULAR_EMA", 1)
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

    pub(super) fn xent(&self) -> Result<RowXent> {
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

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct GatherParams {
        rows: u32,
        cols: u32,
        row0: u32,
        shift_x: u32,
        shift_labels: u32,
        _pad: [u32; 3],
    }
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct EmaParams {
        n: u32,
        shift_in: u32,
        shift_t: u32,
        rate: f32,
    }
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
    fn scratch(&self, _gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        Ok(vec![per_row_need(self.name(), inputs[0], TARGETS, 1)?])
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
        let tw = gpu.window(&gpu.scratch_buffer(TARGETS, b * 4)?, 0, b)?;
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

pub(super) const PLAIN_XENT: RowXent = RowXent {
    gamma: Some(1.0),
    margin: None,
    curricular: false,
};

/// The row kernel's configuration, shared by both cross-entropies: plain
/// softmax cross-entropy is ArcFace with γ = 1 and no margin.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowXent {
    /// None: γ is the third input.
    pub(super) gamma: Option<f32>,
    pub(super) margin: Option<(f32, MarginFallback)>,
    /// A last input t re-weights hard negatives (ArcFace only).
    pub(super) curricular: bool,
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct XentParams {
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
}

/// Same rule as `class_of` in loss.wgsl.
pub(super) fn class_of(label: f64, cols: usize) -> usize {
    ((label + 0.5).floor().max(0.0) as usize).min(cols - 1)
}

impl RowXent {
    pub(super) fn inputs(&self) -> usize {
        2 + self.gamma.is_none() as usize + self.curricular as usize
    }

    /// Input index of CurricularFace's t.
    pub(super) fn t_input(&self) -> usize {
        2 + self.gamma.is_none() as usize
    }

    /// A non-target cosine and its derivative (mirrors `negative` in loss.wgsl).
    pub(super) fn negative(&self, c: f64, hard: f64, t: f64) -> (f64, f64) {
        if self.curricular && c > hard {
            (c * (t + c), t + 2.0 * c)
        } else {
            (c, 1.0)
        }
    }

    pub(super) fn infer(&self, op: &str, inputs: &[&Shape]) -> Result<Vec<Shape>> {
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
    pub(super) fn margin_consts(&self) -> [f64; 4] {
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
    pub(super) fn target(&self, c: f64) -> (f64, f64) {
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

    pub(super) fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
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

    pub(super) fn record(
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
        let rows = DeviceTensor {
            shape: Shape::new(&[2 * b as usize]),
            buffer: gpu.scratch_buffer(ROW_TERMS, 2 * b * 4)?,
            offset: 0,
            precision: crate::tensor::Precision::F32,
        };
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

    pub(super) fn backward(
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

    pub(super) fn flops(&self, inputs: &[&Shape]) -> u64 {
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
    fn scratch(&self, _gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        Ok(vec![per_row_need(self.name(), inputs[0], ROW_TERMS, 2)?])
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
    fn scratch(&self, _gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        Ok(vec![per_row_need(self.name(), inputs[0], ROW_TERMS, 2)?])
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
