//! DOLG's orthogonal fusion (`shaders/fusion.wgsl`, docs/recipe.md §8.4): the pooled
//! local vector loses its component along the global vector, and the two are
//! concatenated. The op works on pooled vectors because the projection is
//! linear: pooling the per-location orthogonal components equals projecting
//! the pooled local vector (docs/recipe.md §8.4, "derived").

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::rows_per_window;
use crate::gpu::{chunks, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 64;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Params {
        rows: u32,
        c: u32,
        shift_g: u32,
        shift_l: u32,
        shift_dy: u32,
        shift_out: u32,
        shift_dl: u32,
        _pad: u32,
    }
}

fn forward_spec() -> ShaderSpec {
    ShaderSpec::new("fusion", "orthogonal_fusion").def("FORWARD", 1)
}

fn backward_spec() -> ShaderSpec {
    ShaderSpec::new("fusion", "orthogonal_fusion_grad").def("BACKWARD", 1)
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![forward_spec(), backward_spec()]
}

/// (B, C) of the global and local inputs, which must both be [B, C].
fn pair(op: &str, g: &Shape, l: &Shape) -> Result<(usize, usize)> {
    match (g.dims(), l.dims()) {
        ([b, c], [b2, c2]) if b == b2 && c == c2 && *b > 0 && *c > 0 => Ok((*b, *c)),
        _ => Err(Error::shape(
            op,
            format!("global and local must both be non-empty [B, C], got {g:?} and {l:?}"),
        )),
    }
}

/// Records `spec` over windows of whole rows. `operands` are (tensor, width
/// in units of C) in binding order: g, l, [dy,] out, [dl].
fn record_rows(
    rec: &mut Recorder,
    spec: &ShaderSpec,
    rows: u64,
    c: u64,
    operands: &[(&DeviceTensor, u64)],
) -> Result<()> {
    let gpu = rec.gpu();
    for range in chunks(rows, rows_per_window(2 * c, gpu.max_window_elems())?) {
        let windows = operands
            .iter()
            .map(|(t, k)| t.window(gpu, range.start * k * c, (range.end - range.start) * k * c))
            .collect::<Result<Vec<_>>>()?;
        let shift = |i: usize| windows.get(i).map_or(0, |w| w.shift);
        let backward = windows.len() == 5;
        let p = Params {
            rows: (range.end - range.start) as u32,
            c: c as u32,
            shift_g: shift(0),
            shift_l: shift(1),
            shift_dy: if backward { shift(2) } else { 0 },
            shift_out: shift(if backward { 3 } else { 2 }),
            shift_dl: if backward { shift(4) } else { 0 },
            _pad: 0,
        };
        rec.dispatch_groups(
            spec,
            bytemuck::bytes_of(&p),
            windows.iter().map(Into::into).collect(),
            (range.end - range.start).div_ceil(WG),
        )?;
    }
    Ok(())
}

/// s/q, with a zero global vector removing nothing (as the kernel).
fn ratio(num: f64, q: f64) -> f64 {
    if q == 0.0 {
        0.0
    } else {
        num / q
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Inputs: the global vector g [B, C] and the pooled local vector l [B, C].
/// Output [B, 2C]: g, then l − (l·g / g·g)·g.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrthogonalFusion;

impl Op for OrthogonalFusion {
    fn name(&self) -> &'static str {
        "orthogonal_fusion"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        let (b, c) = pair(self.name(), inputs[0], inputs[1])?;
        Ok(vec![Shape::new(&[b, 2 * c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (b, c) = pair(self.name(), &inputs[0].shape, &inputs[1].shape)?;
        let mut data = Vec::with_capacity(2 * b * c);
        for (g, l) in inputs[0].data.chunks(c).zip(inputs[1].data.chunks(c)) {
            let k = ratio(dot(l, g), dot(g, g));
            data.extend_from_slice(g);
            data.extend(l.iter().zip(g).map(|(lv, gv)| lv - k * gv));
        }
        Ok(vec![Tensor::new([b, 2 * c], data)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let (b, c) = pair(self.name(), &inputs[0].shape, &inputs[1].shape)?;
        record_rows(
            rec,
            &forward_spec(),
            b as u64,
            c as u64,
            &[(inputs[0], 1), (inputs[1], 1), (outputs[0], 2)],
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
        let d = g.apply(OrthogonalFusionGrad, &[inputs[0], inputs[1], dy])?;
        Ok(vec![Some(d[0]), Some(d[1])])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        6 * inputs[0].numel() as u64
    }
}

/// The gradient of `OrthogonalFusion`: inputs g, l, dy [B, 2C]; outputs dg, dl.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrthogonalFusionGrad;

impl Op for OrthogonalFusionGrad {
    fn name(&self) -> &'static str {
        "orthogonal_fusion_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 3)?;
        let (b, c) = pair(self.name(), inputs[0], inputs[1])?;
        if inputs[2].dims() != [b, 2 * c] {
            return Err(Error::shape(
                self.name(),
                format!("dy must be [{b}, {}], got {:?}", 2 * c, inputs[2]),
            ));
        }
        Ok(vec![inputs[0].clone(), inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (b, c) = pair(self.name(), &inputs[0].shape, &inputs[1].shape)?;
        let (mut dg, mut dl) = (Vec::with_capacity(b * c), Vec::with_capacity(b * c));
        let rows = inputs[0]
            .data
            .chunks(c)
            .zip(inputs[1].data.chunks(c))
            .zip(inputs[2].data.chunks(2 * c));
        for ((g, l), dy) in rows {
            let (a, d) = dy.split_at(c);
            let q = dot(g, g);
            let (ks, ke) = (ratio(dot(l, g), q), ratio(dot(d, g), q));
            for k in 0..c {
                dl.push(d[k] - ke * g[k]);
                dg.push(a[k] - ks * d[k] - ke * l[k] + 2.0 * ks * ke * g[k]);
            }
        }
        Ok(vec![Tensor::new([b, c], dg)?, Tensor::new([b, c], dl)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let (b, c) = pair(self.name(), &inputs[0].shape, &inputs[1].shape)?;
        record_rows(
            rec,
            &backward_spec(),
            b as u64,
            c as u64,
            &[
                (inputs[0], 1),
                (inputs[1], 1),
                (inputs[2], 2),
                (outputs[0], 1),
                (outputs[1], 1),
            ],
        )
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        12 * inputs[0].numel() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;
    use crate::testing::{check_op, grad_check, OpCase};

    #[test]
    fn orthogonal_fusion_matches_reference() {
        // With C = 1 the orthogonal half is 0 up to rounding, so the
        // gradient's relative error has nothing to measure against: forward only.
        check_op(
            &OpCase::new(OrthogonalFusion)
                .input([1, 1], -1.0, 1.0)
                .input([1, 1], -1.0, 1.0),
        );
        for (b, c) in [(1, 2), (3, 7), (2, 1024), (5, 129)] {
            check_op(
                &OpCase::new(OrthogonalFusion)
                    .input([b, c], -1.0, 1.0)
                    .input([b, c], -1.0, 1.0),
            );
            check_op(
                &OpCase::new(OrthogonalFusionGrad)
                    .input([b, c], -1.0, 1.0)
                    .input([b, c], -1.0, 1.0)
                    .input([b, 2 * c], -1.0, 1.0),
            );
        }
    }

    #[test]
    fn orthogonal_part_is_orthogonal_and_zero_global_removes_nothing() {
        let mut rng = Rng::new(3);
        let (g, l) = (rng.tensor([2, 9], -1.0, 1.0), rng.tensor([2, 9], -1.0, 1.0));
        let mut g = g.to_ref();
        g.data[9..].fill(0.0);
        let out = OrthogonalFusion.reference(&[&g, &l.to_ref()]).unwrap();
        let row0 = &out[0].data[..18];
        assert!(dot(&row0[..9], &row0[9..]).abs() < 1e-12);
        assert_eq!(&out[0].data[27..], &l.to_ref().data[9..]);
    }

    #[test]
    fn orthogonal_fusion_gradients() {
        for (b, c) in [(1, 2), (3, 5), (2, 67)] {
            grad_check(
                &OpCase::new(OrthogonalFusion)
                    .input([b, c], 0.2, 1.0)
                    .input([b, c], -1.0, 1.0),
            );
        }
    }

    #[test]
    fn orthogonal_fusion_over_many_windows() {
        // 100-element windows hold 7 rows of 2·7 channels.
        check_op(
            &OpCase::new(OrthogonalFusion)
                .input([23, 7], -1.0, 1.0)
                .input([23, 7], -1.0, 1.0)
                .windows(100),
        );
        grad_check(
            &OpCase::new(OrthogonalFusion)
                .input([17, 7], 0.2, 1.0)
                .input([17, 7], -1.0, 1.0)
                .windows(100),
        );
    }

    #[test]
    fn orthogonal_fusion_bad_shapes_are_errors() {
        for shapes in [
            [vec![2, 3], vec![2, 4]],
            [vec![2, 3], vec![3, 3]],
            [vec![0, 3], vec![0, 3]],
        ] {
            let (a, b) = (Shape::new(&shapes[0]), Shape::new(&shapes[1]));
            let err = OrthogonalFusion.infer(&[&a, &b]).unwrap_err();
            assert!(matches!(err, Error::Shape { .. }), "{err}");
        }
        let s = Shape::new(&[2, 3]);
        let err = OrthogonalFusionGrad.infer(&[&s, &s, &s]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
}
