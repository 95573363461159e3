//! Optimiser ops (`shaders/optim.wgsl`): the SGD step (momentum, Nesterov,
//! weight decay), global-norm gradient clipping, and gradient accumulation
//! over micro-batches. Learning rate and clip
//! factor are one-element tensors, so schedules and clipping change them
//! without re-recording. Clipping reduces with the loss family's two-level
//! sum of squares (`loss::SquareSums`).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{
    chunks, vec4_pieces, Binding, DeviceTensor, Gpu, Recorder, ScratchNeed, ShaderSpec, Window,
};
use crate::graph::Op;
use crate::ops::elementwise::expect_inputs;
use crate::ops::loss::{expect_scalar, SquareSums};
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 256;

/// torch.nn.utils.clip_grad_norm_'s epsilon: clip = min(1, max_norm / (norm + EPS)).
pub const CLIP_EPS: f64 = 1e-6;

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(entry: &str) -> Option<crate::gpu::UniformShape> {
    use crate::gpu::Uniform;
    Some(match entry {
        "sgd_step" => SgdParams::shape(),
        "grad_accumulate" => AccumulateParams::shape(),
        _ => return None,
    })
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    [false, true]
        .into_iter()
        .flat_map(|v| [sgd_spec(v), accumulate_spec(v)])
        .collect()
}

fn sgd_spec(vec4: bool) -> ShaderSpec {
    ShaderSpec::new("optim", "sgd_step")
        .def("SGD", 1)
        .def("VEC4", vec4 as u32)
}

fn accumulate_spec(vec4: bool) -> ShaderSpec {
    ShaderSpec::new("optim", "grad_accumulate")
        .def("ACCUMULATE", 1)
        .def("VEC4", vec4 as u32)
}

/// One SGD step with PyTorch's semantics (dampening 0), in place. Inputs:
/// param, grad, velocity (same shape), lr [1], clip [1]. With g' = clip·g +
/// wd·p: v ← μ·v + g', p ← p − lr·(nesterov ? g' + μ·v : v). A zero initial
/// velocity reproduces PyTorch's first step (buffer = g'). No outputs; param
/// and velocity are mutated.
///
/// DELG's TF code uses Keras SGD, whose velocity v ← μ·v − lr·g carries the
/// learning rate: identical for a constant lr, slightly different while the lr
/// decays. DOLG uses this (PyTorch) form with Nesterov and wd = 1e-4.
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct SgdParams {
        n: u32,
        shift_param: u32,
        shift_grad: u32,
        shift_velocity: u32,
        shift_lr: u32,
        shift_clip: u32,
        nesterov: u32,
        momentum: f32,
        weight_decay: f32,
        _pad: [u32; 3],
    }
}

impl SgdStep {
    fn validate(&self) -> Result<()> {
        let (m, wd) = (self.momentum, self.weight_decay);
        if !(m.is_finite() && m >= 0.0 && wd.is_finite() && wd >= 0.0) {
            return Err(Error::unsupported(
                self.name(),
                format!("momentum {m} and weight decay {wd} must be finite and non-negative"),
            ));
        }
        if self.nesterov && m == 0.0 {
            return Err(Error::unsupported(
                self.name(),
                "Nesterov needs a non-zero momentum (as in PyTorch)",
            ));
        }
        Ok(())
    }
}

impl Op for SgdStep {
    fn name(&self) -> &'static str {
        "sgd_step"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        self.validate()?;
        expect_inputs(self.name(), inputs, 5)?;
        if inputs[1] != inputs[0] || inputs[2] != inputs[0] {
            return Err(Error::shape(
                self.name(),
                format!(
                    "param {:?}, grad {:?} and velocity {:?} must have one shape",
                    inputs[0], inputs[1], inputs[2]
                ),
            ));
        }
        expect_scalar(self.name(), "the learning rate", inputs[3])?;
        expect_scalar(self.name(), "the clip factor", inputs[4])?;
        Ok(vec![])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        self.validate()?;
        let (mu, wd) = (self.momentum as f64, self.weight_decay as f64);
        let (lr, clip) = (inputs[3].data[0], inputs[4].data[0]);
        let mut param = inputs[0].clone();
        let mut velocity = inputs[2].clone();
        for ((w, v), &g) in param
            .data
            .iter_mut()
            .zip(&mut velocity.data)
            .zip(&inputs[1].data)
        {
            let g = clip * g + wd * *w;
            *v = mu * *v + g;
            *w -= lr * if self.nesterov { g + mu * *v } else { *v };
        }
        Ok(vec![param, velocity])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        self.validate()?;
        record_in_place(rec, sgd_spec, inputs, 3, window, |n, shifts| SgdParams {
            n,
            shift_param: shifts[0],
            shift_grad: shifts[1],
            shift_velocity: shifts[2],
            shift_lr: shifts[3],
            shift_clip: shifts[4],
            nesterov: self.nesterov as u32,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            _pad: [0; 3],
        })
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        8 * inputs[0].numel() as u64
    }
    fn mutates(&self) -> &'static [usize] {
        &[0, 2]
    }
}

/// Records `spec(vec4)` over consecutive windows of an optimiser op's inputs:
/// the first `per_element` have one length and are split into windows (vec4
/// where all start 16-byte aligned), the rest are one-element tensors bound
/// whole. `params(n, shifts)` builds the uniform from a piece's length and the
/// element shift of every input, in input order.
fn record_in_place<P: Pod>(
    rec: &mut Recorder,
    spec: fn(bool) -> ShaderSpec,
    inputs: &[&DeviceTensor],
    per_element: usize,
    window: u64,
    params: impl Fn(u32, &[u32]) -> P,
) -> Result<()> {
    let gpu = rec.gpu();
    let scalars: Vec<Window> = inputs[per_element..]
        .iter()
        .map(|t| t.window(gpu, 0, 1))
        .collect::<Result<_>>()?;
    for range in chunks(inputs[0].numel(), window) {
        let count = range.end - range.start;
        let windows: Vec<Window> = inputs[..per_element]
            .iter()
            .map(|t| t.window(gpu, range.start, count))
            .collect::<Result<_>>()?;
        let bindings: Vec<Binding> = windows.iter().chain(&scalars).map(Into::into).collect();
        let shifts: Vec<u32> = windows.iter().map(|w| w.shift).collect();
        for piece in vec4_pieces(&shifts, count) {
            let all: Vec<u32> = piece
                .shifts
                .iter()
                .copied()
                .chain(scalars.iter().map(|s| s.shift))
                .collect();
            rec.dispatch_groups(
                &spec(piece.vec4),
                bytemuck::bytes_of(&params(piece.n as u32, &all)),
                bindings.clone(),
                piece.n.div_ceil(WG),
            )?;
        }
    }
    Ok(())
}

/// Gradient accumulation over micro-batches, in place. Inputs: sum, grad
/// (same shape), keep [1]. sum ← scale·grad when keep = 0 (the first
/// micro-batch of a step), sum ← sum + scale·grad otherwise. With scale =
/// 1/N over N micro-batches the sum is the mean gradient the optimiser steps
/// on. No outputs; the sum is mutated.
#[derive(Clone, Copy, Debug)]
pub struct GradAccumulate {
    pub scale: f32,
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct AccumulateParams {
        n: u32,
        shift_sum: u32,
        shift_grad: u32,
        shift_keep: u32,
        scale: f32,
        _pad: [u32; 3],
    }
}

impl Op for GradAccumulate {
    fn name(&self) -> &'static str {
        "grad_accumulate"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 3)?;
        if !self.scale.is_finite() {
            return Err(Error::unsupported(
                self.name(),
                format!("scale {} must be finite", self.scale),
            ));
        }
        if inputs[1] != inputs[0] {
            return Err(Error::shape(
                self.name(),
                format!(
                    "sum {:?} and grad {:?} must have one shape",
                    inputs[0], inputs[1]
                ),
            ));
        }
        expect_scalar(self.name(), "the keep flag", inputs[2])?;
        Ok(vec![])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let keep = inputs[2].data[0] != 0.0;
        let mut sum = inputs[0].clone();
        for (s, &g) in sum.data.iter_mut().zip(&inputs[1].data) {
            let g = self.scale as f64 * g;
            *s = if keep { *s + g } else { g };
        }
        Ok(vec![sum])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        record_in_place(rec, accumulate_spec, inputs, 2, window, |n, shifts| {
            AccumulateParams {
                n,
                shift_sum: shifts[0],
                shift_grad: shifts[1],
                shift_keep: shifts[2],
                scale: self.scale,
                _pad: [0; 3],
            }
        })
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        2 * inputs[0].numel() as u64
    }
    fn mutates(&self) -> &'static [usize] {
        &[0]
    }
}

/// Global L2 norm of any number of gradient tensors and the clip factor
/// min(1, max_norm / (norm + 1e-6)) to feed `SgdStep`: the coefficient of
/// torch.nn.utils.clip_grad_norm_ with its epsilon (TF's clip_by_global_norm
/// uses max_norm / max(norm, max_norm), which differs only by that epsilon).
/// The norm is summed in f32 (per-workgroup partials, then one workgroup), so
/// it matches PyTorch's to f32 rounding, not bit for bit. Outputs: norm [1], clip [1].
#[derive(Clone, Copy, Debug)]
pub struct GlobalNormClip {
    pub max_norm: f32,
}

impl Op for GlobalNormClip {
    fn name(&self) -> &'static str {
        "global_norm_clip"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        if !(self.max_norm.is_finite() && self.max_norm > 0.0) {
            return Err(Error::unsupported(
                self.name(),
                format!("max_norm {} must be finite and positive", self.max_norm),
            ));
        }
        if inputs.is_empty() {
            return Err(Error::shape(
                self.name(),
                "needs at least one gradient tensor",
            ));
        }
        Ok(vec![Shape::new(&[1]), Shape::new(&[1])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let norm = inputs
            .iter()
            .flat_map(|t| &t.data)
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        let clip = (self.max_norm as f64 / (norm + CLIP_EPS)).min(1.0);
        let scalar = |v: f64| Tensor {
            shape: Shape::new(&[1]),
            data: vec![v],
        };
        Ok(vec![scalar(norm), scalar(clip)])
    }
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let numels = inputs.iter().map(|s| s.numel() as u64);
        Ok(vec![SquareSums::need(numels, gpu.max_window_elems())])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        let mut sums = SquareSums::new(rec, inputs.iter().map(|t| t.numel()), window)?;
        for t in inputs {
            sums.add(rec, t, None)?;
        }
        sums.finish(rec, 1.0, outputs[0], Some((self.max_norm, outputs[1])))
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs.iter().map(|s| 2 * s.numel() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::graph::exec::{Executable, ParamStore};
    use crate::graph::reference::eval_reference;
    use crate::graph::{Graph, TensorId};
    use crate::tensor::{HostTensor, Rng};
    use crate::testing::{assert_close, check_op, test_gpus, OpCase};

    const PLAIN: SgdStep = SgdStep {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    const DOLG: SgdStep = SgdStep {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };

    fn sgd_case(op: impl Op + 'static, shape: &[usize], lr: f64, clip: f64) -> OpCase {
        let s = shape.to_vec();
        OpCase::new(op)
            .input(s.clone(), -1.0, 1.0)
            .input(s.clone(), -1.0, 1.0)
            .input(s, -0.5, 0.5)
            .input([1], lr, lr)
            .input([1], clip, clip)
    }

    #[test]
    fn sgd_matches_reference() {
        let no_momentum = SgdStep {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.01,
        };
        for op in [PLAIN, DOLG, no_momentum] {
            for shape in [&[1usize][..], &[3, 5, 7], &[4099]] {
                check_op(&sgd_case(op, shape, 0.05, 0.7));
            }
        }
        // Windows of 700 start on 16 bytes (vec4 kernel + scalar tails); windows
        // of 699 do not (scalar kernel only).
        for window in [700, 699] {
            check_op(&sgd_case(DOLG, &[5001], 0.1, 0.3).windows(window));
        }
    }

    #[test]
    fn grad_accumulate_matches_reference() {
        for keep in [0.0, 1.0] {
            for shape in [&[1usize][..], &[3, 5, 7], &[4099]] {
                let s = shape.to_vec();
                let case = OpCase::new(GradAccumulate { scale: 0.25 })
                    .input(s.clone(), -1.0, 1.0)
                    .input(s, -1.0, 1.0)
                    .input([1], keep, keep);
                check_op(&case);
            }
        }
        for window in [700, 699] {
            let case = OpCase::new(GradAccumulate { scale: 0.5 })
                .input([5001], -1.0, 1.0)
                .input([5001], -1.0, 1.0)
                .input([1], 1.0, 1.0)
                .windows(window);
            check_op(&case);
        }
    }

    #[test]
    fn global_norm_clip_matches_reference() {
        for max_norm in [1.0, 1e3] {
            let case = OpCase::new(GlobalNormClip { max_norm })
                .input([1], -1.0, 1.0)
                .input([3, 5], -1.0, 1.0)
                .input([4099], -1.0, 1.0);
            check_op(&case);
        }
        for window in [700, 699] {
            let case = OpCase::new(GlobalNormClip { max_norm: 2.0 }).windows(window);
            check_op(&case.input([5001], -1.0, 1.0).input([33], -1.0, 1.0));
        }
    }

    #[test]
    fn sgd_first_steps_by_hand() {
        // w = 1, g = 0.5, lr = 0.1, μ = 0.9, Nesterov, no clipping or decay:
        // v1 = 0.5, w1 = 1 − 0.1·(0.5 + 0.45) = 0.905;
        // v2 = 0.95, w2 = 0.905 − 0.1·(0.5 + 0.855) = 0.7695 (μ = 0.9 rounds in f32).
        let op = SgdStep {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
        };
        let t = |v: f64| Tensor {
            shape: Shape::new(&[1]),
            data: vec![v],
        };
        let (mut w, mut v) = (t(1.0), t(0.0));
        for want in [0.905, 0.7695] {
            let out = op.reference(&[&w, &t(0.5), &v, &t(0.1), &t(1.0)]).unwrap();
            (w, v) = (out[0].clone(), out[1].clone());
            assert!((w.data[0] - want).abs() < 1e-7, "{} vs {want}", w.data[0]);
        }
    }

    /// PyTorch's SGD loop written as torch.optim.SGD does it (lazily created
    /// momentum buffer), after clip_grad_norm_.
    fn torch_sgd(
        op: &SgdStep,
        max_norm: f64,
        w: &mut [f64],
        buf: &mut Option<Vec<f64>>,
        grad: &[f64],
        lr: f64,
    ) {
        let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        let clip = (max_norm / (norm + 1e-6)).min(1.0);
        let mu = op.momentum as f64;
        let d: Vec<f64> = grad
            .iter()
            .zip(w.iter())
            .map(|(g, p)| clip * g + op.weight_decay as f64 * p)
            .collect();
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b.iter().zip(&d).map(|(b, d)| mu * b + d).collect(),
        };
        for ((p, d), b) in w.iter_mut().zip(&d).zip(&b) {
            *p -= lr * if op.nesterov { d + mu * b } else { *b };
        }
        *buf = Some(b);
    }

    #[test]
    fn clipped_sgd_over_several_steps_matches_pytorch() {
        let n = 777;
        let max_norm = 5.0;
        for op in [PLAIN, DOLG] {
            let mut g = Graph::new();
            let w = g.param("w", [n]);
            let v = g.param("v", [n]);
            let grad = g.input("grad", [n]);
            let lr = g.input("lr", [1]);
            let clip = g.apply(GlobalNormClip { max_norm }, &[grad]).unwrap();
            g.apply(op, &[w, grad, v, lr, clip[1]]).unwrap();

            let mut rng = Rng::new(17);
            let w0 = rng.tensor([n], -1.0, 1.0);
            let mut torch_w: Vec<f64> = w0.to_ref().data;
            let mut torch_buf = None;
            let mut values: HashMap<TensorId, RefTensor> = HashMap::new();
            values.insert(w, w0.to_ref());
            values.insert(v, Tensor::zeros([n]));
            let mut exes = Vec::new();
            for gpu in test_gpus() {
                let mut store = ParamStore::default();
                store.insert(gpu, "w", &w0).unwrap();
                store.insert(gpu, "v", &HostTensor::zeros([n])).unwrap();
                exes.push(Executable::new(gpu, &g, &[], &store).unwrap());
            }
            // Norms above and below max_norm, and a decaying learning rate.
            for step in 0..5 {
                let scale = if step % 2 == 0 { 1.0 } else { 0.05 };
                let grad_val = rng.tensor([n], -scale, scale);
                let lr_val = Tensor {
                    shape: Shape::new(&[1]),
                    data: vec![0.1 * (1.0 - step as f32 / 5.0)],
                };
                torch_sgd(
                    &op,
                    max_norm as f64,
                    &mut torch_w,
                    &mut torch_buf,
                    &grad_val.to_ref().data,
                    lr_val.data[0] as f64,
                );
                values.insert(grad, grad_val.to_ref());
                values.insert(lr, lr_val.to_ref());
                eval_reference(&g, &[], &mut values).unwrap();
                for e in &exes {
                    e.set_input(grad, &grad_val).unwrap();
                    e.set_input(lr, &lr_val).unwrap();
                    e.run().unwrap();
                }
            }
            let want = Tensor {
                shape: Shape::new(&[n]),
                data: torch_w,
            };
            assert_close(
                "reference vs PyTorch loop",
                &values[&w].to_host(),
                &want,
                1e-6,
            );
            for e in &exes {
                assert_close("GPU weights", &e.read(w).unwrap(), &want, 1e-5);
                assert_close("GPU velocity", &e.read(v).unwrap(), &values[&v], 1e-5);
            }
        }
    }

    #[test]
    fn bad_shapes_and_parameters_are_typed_errors() {
        let s = |d: &[usize]| Shape::new(d);
        let (p, one) = (s(&[4, 3]), s(&[1]));
        let err = PLAIN.infer(&[&p, &s(&[3, 4]), &p, &one, &one]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = PLAIN.infer(&[&p, &p, &p, &s(&[2]), &one]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = PLAIN.infer(&[&p, &p, &p, &one]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = SgdStep {
            momentum: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        }
        .infer(&[&p, &p, &p, &one, &one])
        .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let err = SgdStep {
            momentum: f32::NAN,
            ..PLAIN
        }
        .infer(&[&p, &p, &p, &one, &one])
        .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let err = GlobalNormClip { max_norm: 1.0 }.infer(&[]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = GlobalNormClip { max_norm: 0.0 }.infer(&[&p]).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let acc = GradAccumulate { scale: 0.5 };
        let err = acc.infer(&[&p, &s(&[3, 4]), &one]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = acc.infer(&[&p, &p, &p]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = GradAccumulate {
            scale: f32::INFINITY,
        }
        .infer(&[&p, &p, &one])
        .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }
}
