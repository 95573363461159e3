//! Elementwise ops (`shaders/elementwise.wgsl`): ReLU, softplus, scaling,
//! add/sub/mul, the ReLU and softplus gradients, fills, and the free views
//! (reshape, stop-gradient). Tensors of any size: work is split into windows
//! of at most one storage binding.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{chunks, vec4_pieces, Binding, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 256;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Params {
        n: u32,
        kind: u32,
        shift_x: u32,
        shift_y: u32,
        shift_out: u32,
        alpha: f32,
        _pad: [u32; 2],
    }
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    [false, true]
        .into_iter()
        .flat_map(|v| [unary_spec(v), binary_spec(v), fill_spec(v)])
        .collect()
}

fn unary_spec(vec4: bool) -> ShaderSpec {
    ShaderSpec::new("elementwise", "unary")
        .def("UNARY", 1)
        .def("VEC4", vec4 as u32)
}
fn binary_spec(vec4: bool) -> ShaderSpec {
    ShaderSpec::new("elementwise", "binary")
        .def("BINARY", 1)
        .def("VEC4", vec4 as u32)
}
fn fill_spec(vec4: bool) -> ShaderSpec {
    ShaderSpec::new("elementwise", "fill")
        .def("FILL", 1)
        .def("VEC4", vec4 as u32)
}

/// Records `spec(vec4)` over consecutive windows of the `operands` (all of
/// the same length; the output last), as vec4 over whole vec4s where every
/// window starts 16-byte aligned and element by element over the rest.
fn record_windows(
    rec: &mut Recorder,
    spec: fn(bool) -> ShaderSpec,
    operands: &[&DeviceTensor],
    kind: u32,
    alpha: f32,
) -> Result<()> {
    let gpu = rec.gpu();
    let n = operands.last().map(|t| t.numel()).unwrap_or(0);
    for range in chunks(n, gpu.max_window_elems()) {
        let count = range.end - range.start;
        let windows = operands
            .iter()
            .map(|t| t.window(gpu, range.start, count))
            .collect::<Result<Vec<_>>>()?;
        let shifts: Vec<u32> = windows.iter().map(|w| w.shift).collect();
        let bindings: Vec<Binding> = windows.iter().map(Into::into).collect();
        for piece in vec4_pieces(&shifts, count) {
            let last = piece.shifts.len() - 1;
            let params = Params {
                n: piece.n as u32,
                kind,
                shift_x: piece.shifts[0],
                shift_y: if windows.len() == 3 {
                    piece.shifts[1]
                } else {
                    0
                },
                shift_out: piece.shifts[last],
                alpha,
                _pad: [0; 2],
            };
            rec.dispatch_groups(
                &spec(piece.vec4),
                bytemuck::bytes_of(&params),
                bindings.clone(),
                piece.n.div_ceil(WG),
            )?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryKind {
    Relu,
    Softplus,
    Scale(f32),
}

#[derive(Clone, Copy, Debug)]
pub struct Unary(pub UnaryKind);

impl Op for Unary {
    fn name(&self) -> &'static str {
        match self.0 {
            UnaryKind::Relu => "relu",
            UnaryKind::Softplus => "softplus",
            UnaryKind::Scale(_) => "scale",
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let f = |a: f64| match self.0 {
            UnaryKind::Relu => a.max(0.0),
            UnaryKind::Softplus => softplus_ref(a),
            UnaryKind::Scale(s) => s as f64 * a,
        };
        Ok(vec![map(inputs[0], f)])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let (kind, alpha) = match self.0 {
            UnaryKind::Relu => (0, 0.0),
            UnaryKind::Softplus => (1, 0.0),
            UnaryKind::Scale(s) => (2, s),
        };
        record_windows(rec, unary_spec, &[inputs[0], outputs[0]], kind, alpha)
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
        let dx = match self.0 {
            UnaryKind::Relu => g.apply1(Binary::new(BinaryKind::ReluGrad), &[inputs[0], dy])?,
            UnaryKind::Softplus => {
                g.apply1(Binary::new(BinaryKind::SoftplusGrad), &[inputs[0], dy])?
            }
            UnaryKind::Scale(s) => g.apply1(Unary(UnaryKind::Scale(s)), &[dy])?,
        };
        Ok(vec![Some(dx)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    /// (x, dy) ↦ dy·[x > 0]
    ReluGrad,
    /// (x, dy) ↦ dy·σ(x)
    SoftplusGrad,
}

#[derive(Clone, Copy, Debug)]
pub struct Binary(pub BinaryKind);

impl Binary {
    pub fn new(kind: BinaryKind) -> Self {
        Binary(kind)
    }
}

impl Op for Binary {
    fn name(&self) -> &'static str {
        match self.0 {
            BinaryKind::Add => "add",
            BinaryKind::Sub => "sub",
            BinaryKind::Mul => "mul",
            BinaryKind::ReluGrad => "relu_grad",
            BinaryKind::SoftplusGrad => "softplus_grad",
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        if inputs[0] != inputs[1] {
            return Err(Error::shape(
                self.name(),
                format!("operands differ: {:?} and {:?}", inputs[0], inputs[1]),
            ));
        }
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let f = |a: f64, b: f64| match self.0 {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::ReluGrad => {
                if a > 0.0 {
                    b
                } else {
                    0.0
                }
            }
            BinaryKind::SoftplusGrad => b / (1.0 + (-a).exp()),
        };
        let data = inputs[0]
            .data
            .iter()
            .zip(&inputs[1].data)
            .map(|(&a, &b)| f(a, b))
            .collect();
        Ok(vec![Tensor {
            shape: inputs[0].shape.clone(),
            data,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let kind = match self.0 {
            BinaryKind::Add => 0,
            BinaryKind::Sub => 1,
            BinaryKind::Mul => 2,
            BinaryKind::ReluGrad => 3,
            BinaryKind::SoftplusGrad => 4,
        };
        record_windows(
            rec,
            binary_spec,
            &[inputs[0], inputs[1], outputs[0]],
            kind,
            0.0,
        )
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dy) = grads[0] else {
            return Ok(vec![None, None]);
        };
        match self.0 {
            BinaryKind::Add => Ok(vec![Some(dy), Some(dy)]),
            BinaryKind::Sub => Ok(vec![
                Some(dy),
                Some(g.apply1(Unary(UnaryKind::Scale(-1.0)), &[dy])?),
            ]),
            BinaryKind::Mul => Ok(vec![
                Some(g.apply1(Binary::new(BinaryKind::Mul), &[dy, inputs[1]])?),
                Some(g.apply1(Binary::new(BinaryKind::Mul), &[dy, inputs[0]])?),
            ]),
            // Gradients of gradient ops are not needed for first-order training.
            _ => Err(Error::Internal(format!(
                "{} has no backward pass",
                self.name()
            ))),
        }
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// A constant tensor (the seed of a backward pass, zero initialisers).
#[derive(Clone, Debug)]
pub struct Fill {
    pub shape: Shape,
    pub value: f32,
}

/// Zeros shaped like `like`: a gradient known to be zero.
pub(crate) fn zeros_like(g: &mut Graph, like: TensorId) -> Result<TensorId> {
    let shape = g.shape(like).clone();
    g.apply1(Fill { shape, value: 0.0 }, &[])
}

impl Op for Fill {
    fn name(&self) -> &'static str {
        "fill"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 0)?;
        Ok(vec![self.shape.clone()])
    }
    fn reference(&self, _inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![Tensor {
            shape: self.shape.clone(),
            data: vec![self.value as f64; self.shape.numel()],
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        _inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        record_windows(rec, fill_spec, &[outputs[0]], 0, self.value)
    }
    fn backward(
        &self,
        _g: &mut Graph,
        _i: &[TensorId],
        _o: &[TensorId],
        _grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        Ok(vec![])
    }
}

/// Same memory, new shape (row-major order is kept).
#[derive(Clone, Debug)]
pub struct Reshape {
    pub shape: Shape,
}

impl Op for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        if inputs[0].numel() != self.shape.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {:?}", inputs[0], self.shape),
            ));
        }
        Ok(vec![self.shape.clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![Tensor {
            shape: self.shape.clone(),
            data: inputs[0].data.clone(),
        }])
    }
    fn record(
        &self,
        _rec: &mut Recorder,
        _inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        Ok(())
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
            Reshape {
                shape: g.shape(inputs[0]).clone(),
            },
            &[dy],
        )?)])
    }
    fn view_of(&self) -> Option<usize> {
        Some(0)
    }
}

/// Identity forward, no gradient backward: DELG's local head reads the
/// backbone through this so its losses never reach the backbone.
#[derive(Clone, Copy, Debug)]
pub struct StopGradient;

impl Op for StopGradient {
    fn name(&self) -> &'static str {
        "stop_gradient"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![inputs[0].clone()])
    }
    fn record(
        &self,
        _rec: &mut Recorder,
        _inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        Ok(())
    }
    fn backward(
        &self,
        _g: &mut Graph,
        _i: &[TensorId],
        _o: &[TensorId],
        _grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        Ok(vec![None])
    }
    fn view_of(&self) -> Option<usize> {
        Some(0)
    }
}

pub fn softplus_ref(a: f64) -> f64 {
    if a > 20.0 {
        a
    } else {
        a.exp().ln_1p()
    }
}

fn map(t: &RefTensor, f: impl Fn(f64) -> f64) -> RefTensor {
    Tensor {
        shape: t.shape.clone(),
        data: t.data.iter().map(|&v| f(v)).collect(),
    }
}

pub(crate) fn expect_inputs(op: &str, inputs: &[&Shape], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(Error::shape(
            op,
            format!("takes {n} inputs, got {}", inputs.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_op, grad_check, OpCase};

    #[test]
    fn unary_ops_match_reference() {
        for kind in [UnaryKind::Relu, UnaryKind::Softplus, UnaryKind::Scale(-2.5)] {
            for shape in [vec![1usize], vec![3, 5, 7], vec![1, 33, 17, 3], vec![4, 8]] {
                check_op(&OpCase::new(Unary(kind)).input(shape, -30.0, 30.0));
            }
        }
    }

    #[test]
    fn binary_ops_match_reference() {
        for kind in [
            BinaryKind::Add,
            BinaryKind::Sub,
            BinaryKind::Mul,
            BinaryKind::ReluGrad,
            BinaryKind::SoftplusGrad,
        ] {
            check_op(
                &OpCase::new(Binary::new(kind))
                    .input([257, 3], -3.0, 3.0)
                    .input([257, 3], -3.0, 3.0),
            );
        }
    }

    #[test]
    fn gradients() {
        for kind in [UnaryKind::Relu, UnaryKind::Softplus, UnaryKind::Scale(0.5)] {
            grad_check(&OpCase::new(Unary(kind)).input([2, 3, 5, 7], -3.0, 3.0));
        }
        for kind in [BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul] {
            grad_check(
                &OpCase::new(Binary::new(kind))
                    .input([5, 9], -2.0, 2.0)
                    .input([5, 9], -2.0, 2.0),
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let op = Binary::new(BinaryKind::Add);
        let err = op
            .infer(&[&Shape::new(&[2, 3]), &Shape::new(&[3, 2])])
            .unwrap_err();
        assert!(err.to_string().contains("operands differ"), "{err}");
    }
}
