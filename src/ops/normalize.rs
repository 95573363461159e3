//! L2 normalisation over the last dimension (`shaders/normalize.wgsl`):
//! channels of an NHWC map (local descriptors) or rows of a matrix (global
//! descriptors, cosine-classifier weights). Convention of PyTorch's
//! `F.normalize(x, dim=-1, eps)`: y = x / max(‖x‖, ε), default ε = 1e-12.
//! Any number of rows: the work is split into windows of whole rows.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::rows_per_window;
use crate::gpu::{chunks, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::batchnorm::{channels, rows_channels};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 64;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Params {
        rows: u32,
        c: u32,
        eps: f32,
        shift_x: u32,
        shift_dy: u32,
        shift_out: u32,
        _pad: [u32; 2],
    }
}

fn forward_spec() -> ShaderSpec {
    ShaderSpec::new("normalize", "l2_forward").def("FORWARD", 1)
}

fn backward_spec() -> ShaderSpec {
    ShaderSpec::new("normalize", "l2_backward").def("BACKWARD", 1)
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![forward_spec(), backward_spec()]
}

fn check_eps(op: &str, eps: f32) -> Result<()> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::unsupported(
            op,
            format!("eps must be finite and > 0, got {eps}"),
        ));
    }
    Ok(())
}

/// Records `spec` over windows of whole rows; `operands` are the row tensors
/// (x, [dy,] out), all of x's shape.
fn record_rows(
    rec: &mut Recorder,
    spec: &ShaderSpec,
    eps: f32,
    operands: &[&DeviceTensor],
) -> Result<()> {
    let gpu = rec.gpu();
    let (rows, c) = rows_channels(&operands[0].shape);
    for range in chunks(rows, rows_per_window(c, gpu.max_window_elems())?) {
        let (start, n) = (range.start * c, (range.end - range.start) * c);
        let windows = operands
            .iter()
            .map(|t| t.window(gpu, start, n))
            .collect::<Result<Vec<_>>>()?;
        let shift = |i: usize| windows.get(i).map_or(0, |w| w.shift);
        let out = windows.len() - 1;
        let p = Params {
            rows: (range.end - range.start) as u32,
            c: c as u32,
            eps,
            shift_x: shift(0),
            shift_dy: if out == 2 { shift(1) } else { 0 },
            shift_out: shift(out),
            _pad: [0; 2],
        };
        let groups = (range.end - range.start).div_ceil(WG);
        rec.dispatch_groups(
            spec,
            bytemuck::bytes_of(&p),
            windows.iter().map(Into::into).collect(),
            groups,
        )?;
    }
    Ok(())
}

/// Row norms clamped below by ε, in f64.
fn ref_norms(x: &RefTensor, eps: f32) -> Vec<f64> {
    let c = rows_channels(&x.shape).1 as usize;
    x.data
        .chunks(c)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps as f64))
        .collect()
}

/// y = x / max(‖x‖, ε) over the last dimension of x [..., C].
#[derive(Clone, Copy, Debug)]
pub struct L2Normalize {
    pub eps: f32,
}

impl Default for L2Normalize {
    fn default() -> Self {
        L2Normalize { eps: 1e-12 }
    }
}

impl Op for L2Normalize {
    fn name(&self) -> &'static str {
        "l2_normalize"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        check_eps(self.name(), self.eps)?;
        channels(self.name(), inputs[0])?;
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let x = inputs[0];
        let c = rows_channels(&x.shape).1 as usize;
        let norms = ref_norms(x, self.eps);
        let data = x
            .data
            .iter()
            .enumerate()
            .map(|(i, v)| v / norms[i / c])
            .collect();
        Ok(vec![Tensor {
            shape: x.shape.clone(),
            data,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        record_rows(rec, &forward_spec(), self.eps, &[inputs[0], outputs[0]])
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dy) = grads[0] else {
            return Ok(vec![None]);
        };
        Ok(vec![Some(g.apply1(
            L2NormalizeGrad { eps: self.eps },
            &[inputs[0], dy],
        )?)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        3 * inputs[0].numel() as u64
    }
}

/// The gradient of `L2Normalize`: inputs x, dy; output dx.
#[derive(Clone, Copy, Debug)]
pub struct L2NormalizeGrad {
    pub eps: f32,
}

impl Op for L2NormalizeGrad {
    fn name(&self) -> &'static str {
        "l2_normalize_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        check_eps(self.name(), self.eps)?;
        channels(self.name(), inputs[0])?;
        if inputs[0] != inputs[1] {
            return Err(Error::shape(
                self.name(),
                format!(
                    "dy {:?} must have the shape of x {:?}",
                    inputs[1], inputs[0]
                ),
            ));
        }
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, dy) = (inputs[0], inputs[1]);
        let c = rows_channels(&x.shape).1 as usize;
        let mut data = Vec::with_capacity(x.data.len());
        for (xr, dr) in x.data.chunks(c).zip(dy.data.chunks(c)) {
            let ss: f64 = xr.iter().map(|v| v * v).sum();
            let n = ss.sqrt();
            let (inv, proj) = if n >= self.eps as f64 {
                (
                    1.0 / n,
                    xr.iter().zip(dr).map(|(a, b)| a * b).sum::<f64>() / ss,
                )
            } else {
                (1.0 / self.eps as f64, 0.0)
            };
            data.extend(xr.iter().zip(dr).map(|(a, d)| (d - a * proj) * inv));
        }
        Ok(vec![Tensor {
            shape: x.shape.clone(),
            data,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        record_rows(
            rec,
            &backward_spec(),
            self.eps,
            &[inputs[0], inputs[1], outputs[0]],
        )
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        6 * inputs[0].numel() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;
    use crate::testing::{check_op, grad_check, OpCase};

    #[test]
    fn l2_normalize_matches_reference() {
        for shape in [
            vec![1usize],
            vec![7, 1],
            vec![2, 3, 5, 7],
            vec![3, 4096],
            vec![515, 128],
        ] {
            check_op(&OpCase::new(L2Normalize::default()).input(shape, -2.0, 2.0));
        }
        // A zero row stays zero; a tiny one is divided by ε, not by its norm.
        let mut x = Rng::new(5).tensor([3, 5], -1.0, 1.0);
        x.data[..5].fill(0.0);
        x.data[5..10].iter_mut().for_each(|v| *v *= 1e-4);
        check_op(&OpCase::new(L2Normalize { eps: 1e-2 }).tensor(x.clone()));
        check_op(
            &OpCase::new(L2NormalizeGrad { eps: 1e-2 })
                .tensor(x)
                .input([3, 5], -1.0, 1.0),
        );
    }

    #[test]
    fn l2_normalize_gradients() {
        grad_check(&OpCase::new(L2Normalize::default()).input([2, 3, 5, 7], -2.0, 2.0));
        grad_check(&OpCase::new(L2Normalize::default()).input([3, 2], 0.5, 2.0));
        grad_check(&OpCase::new(L2Normalize::default()).input([2, 2049], -1.0, 1.0));
        // Rows under ε: the linear branch.
        grad_check(&OpCase::new(L2Normalize { eps: 10.0 }).input([4, 3], -1.0, 1.0));
    }

    #[test]
    fn l2_normalize_over_many_windows() {
        // Windows of 1000 elements: 7 channels → 142 rows per window.
        check_op(
            &OpCase::new(L2Normalize::default())
                .input([3, 19, 11, 7], -1.0, 1.0)
                .windows(1000),
        );
        grad_check(
            &OpCase::new(L2Normalize::default())
                .input([613, 7], -1.0, 1.0)
                .windows(1000),
        );
    }

    /// Larger than one 128 MiB binding (slow on lavapipe: run with --ignored).
    #[test]
    #[ignore]
    fn l2_normalize_beyond_one_binding() {
        check_op(&OpCase::new(L2Normalize::default()).input([270_000, 128], -1.0, 1.0));
        let case = OpCase::new(L2NormalizeGrad { eps: 1e-12 })
            .input([270_000, 128], -1.0, 1.0)
            .input([270_000, 128], -1.0, 1.0);
        check_op(&case);
    }

    #[test]
    fn l2_normalize_bad_shapes_are_errors() {
        let err = L2NormalizeGrad { eps: 1e-12 }
            .infer(&[&Shape::new(&[4, 3]), &Shape::new(&[3, 4])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = L2Normalize::default()
            .infer(&[&Shape::new(&[4, 0])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = L2Normalize { eps: 0.0 }
            .infer(&[&Shape::new(&[4, 3])])
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }
}
