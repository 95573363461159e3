//! Concatenation along the last (channel) dimension and its inverse slice
//! (`shaders/concat.wgsl`): DOLG's multi-atrous block joins five branches
//! before a 1×1 convolution (docs/recipe.md §8.3). Both ops are one column-block copy
//! per operand, over windows of whole rows.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::rows_per_window;
use crate::gpu::{chunks, DeviceTensor, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::batchnorm::rows_channels;
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 256;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct Params {
        rows: u32,
        cols: u32,
        src_stride: u32,
        src_col: u32,
        dst_stride: u32,
        dst_col: u32,
        shift_src: u32,
        shift_dst: u32,
    }
}

fn spec() -> ShaderSpec {
    ShaderSpec::new("concat", "copy_columns")
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![spec()]
}

/// Copies `cols` columns starting at `src_col` of `src` into `dst` at `dst_col`.
fn record_copy(
    rec: &mut Recorder,
    src: &DeviceTensor,
    src_col: u64,
    dst: &DeviceTensor,
    dst_col: u64,
    cols: u64,
) -> Result<()> {
    let gpu = rec.gpu();
    let (rows, src_stride) = rows_channels(&src.shape);
    let dst_stride = rows_channels(&dst.shape).1;
    let per_window = rows_per_window(src_stride.max(dst_stride), gpu.max_window_elems())?;
    for range in chunks(rows, per_window) {
        let n = range.end - range.start;
        let sw = src.window(gpu, range.start * src_stride, n * src_stride)?;
        let dw = dst.window(gpu, range.start * dst_stride, n * dst_stride)?;
        let p = Params {
            rows: n as u32,
            cols: cols as u32,
            src_stride: src_stride as u32,
            src_col: src_col as u32,
            dst_stride: dst_stride as u32,
            dst_col: dst_col as u32,
            shift_src: sw.shift,
            shift_dst: dw.shift,
        };
        rec.dispatch_groups(
            &spec(),
            bytemuck::bytes_of(&p),
            vec![(&sw).into(), (&dw).into()],
            (n * cols).div_ceil(WG),
        )?;
    }
    Ok(())
}

/// Leading dimensions and channel count of a [..., C] operand.
fn split_last<'a>(op: &str, s: &'a Shape) -> Result<(&'a [usize], usize)> {
    match s.dims().split_last() {
        Some((&c, lead)) if c > 0 && !lead.is_empty() => Ok((lead, c)),
        _ => Err(Error::shape(
            op,
            format!("expected a [..., C] tensor of rank ≥ 2 with C ≥ 1, got {s:?}"),
        )),
    }
}

/// Joins [..., C_i] tensors with equal leading dimensions into [..., Σ C_i].
#[derive(Clone, Copy, Debug, Default)]
pub struct ChannelConcat;

impl Op for ChannelConcat {
    fn name(&self) -> &'static str {
        "channel_concat"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let Some(first) = inputs.first() else {
            return Err(Error::shape(self.name(), "needs at least one input"));
        };
        let lead = split_last(self.name(), first)?.0;
        let mut total = 0;
        for s in inputs {
            let (l, c) = split_last(self.name(), s)?;
            if l != lead {
                return Err(Error::shape(
                    self.name(),
                    format!("{s:?} does not share the leading dimensions of {first:?}"),
                ));
            }
            total += c;
        }
        let mut dims = lead.to_vec();
        dims.push(total);
        Ok(vec![Shape::new(&dims)])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
        let out = self.infer(&shapes)?.remove(0);
        let rows = rows_channels(&out).0 as usize;
        let mut data = Vec::with_capacity(out.numel());
        for r in 0..rows {
            for t in inputs {
                let c = rows_channels(&t.shape).1 as usize;
                data.extend_from_slice(&t.data[r * c..(r + 1) * c]);
            }
        }
        Ok(vec![Tensor::new(out, data)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let mut col = 0;
        for t in inputs {
            let c = rows_channels(&t.shape).1;
            record_copy(rec, t, 0, outputs[0], col, c)?;
            col += c;
        }
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
            return Ok(vec![None; inputs.len()]);
        };
        let mut start = 0;
        let mut out = Vec::with_capacity(inputs.len());
        for &t in inputs {
            let len = *g.shape(t).dims().last().unwrap_or(&0);
            out.push(Some(g.apply1(ChannelSlice { start, len }, &[dy])?));
            start += len;
        }
        Ok(out)
    }
    fn flops(&self, _inputs: &[&Shape]) -> u64 {
        0
    }
}

/// Channels [start, start + len) of a [..., C] tensor.
#[derive(Clone, Copy, Debug)]
pub struct ChannelSlice {
    pub start: usize,
    pub len: usize,
}

impl Op for ChannelSlice {
    fn name(&self) -> &'static str {
        "channel_slice"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        crate::ops::elementwise::expect_inputs(self.name(), inputs, 1)?;
        let (lead, c) = split_last(self.name(), inputs[0])?;
        if self.len == 0 || self.start + self.len > c {
            return Err(Error::shape(
                self.name(),
                format!(
                    "channels {}..{} are not a non-empty range inside {:?}",
                    self.start,
                    self.start + self.len,
                    inputs[0]
                ),
            ));
        }
        let mut dims = lead.to_vec();
        dims.push(self.len);
        Ok(vec![Shape::new(&dims)])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let out = self.infer(&[&inputs[0].shape])?.remove(0);
        let c = rows_channels(&inputs[0].shape).1 as usize;
        let data = inputs[0]
            .data
            .chunks(c)
            .flat_map(|row| &row[self.start..self.start + self.len])
            .copied()
            .collect();
        Ok(vec![Tensor::new(out, data)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        record_copy(
            rec,
            inputs[0],
            self.start as u64,
            outputs[0],
            0,
            self.len as u64,
        )
    }
    fn flops(&self, _inputs: &[&Shape]) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_op, grad_check, OpCase};

    fn three_way(lead: &[usize], cs: [usize; 3]) -> OpCase {
        cs.iter().fold(OpCase::new(ChannelConcat), |case, &c| {
            let mut dims = lead.to_vec();
            dims.push(c);
            case.input(dims, -1.0, 1.0)
        })
    }

    #[test]
    fn channel_concat_and_slice_match_reference() {
        check_op(&three_way(&[1, 1, 1], [1, 1, 1]));
        check_op(&three_way(&[2, 5, 3], [7, 1, 13]));
        check_op(&OpCase::new(ChannelConcat).input([4, 9], -1.0, 1.0));
        check_op(&OpCase::new(ChannelSlice { start: 3, len: 5 }).input([2, 3, 5, 11], -1.0, 1.0));
        check_op(&OpCase::new(ChannelSlice { start: 0, len: 1 }).input([3, 1], -1.0, 1.0));
    }

    #[test]
    fn channel_concat_gradients() {
        grad_check(&three_way(&[2, 3, 1], [3, 1, 4]));
    }

    #[test]
    fn channel_concat_over_many_windows() {
        // 50-element windows hold 2 rows of the 19-channel output.
        check_op(&three_way(&[3, 7], [5, 11, 3]).windows(50));
        grad_check(&three_way(&[2, 5], [2, 3, 4]).windows(50));
    }

    #[test]
    fn channel_concat_bad_shapes_are_errors() {
        let (a, b) = (Shape::new(&[2, 3, 4]), Shape::new(&[2, 4, 4]));
        let err = ChannelConcat.infer(&[&a, &b]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        assert!(ChannelConcat.infer(&[]).is_err());
        let err = ChannelSlice { start: 3, len: 2 }.infer(&[&a]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
}
