//! Global poolings (`shaders/global_pool.wgsl`) of NHWC maps to [N, C]:
//! mean, GeM with a learnable power, attention-weighted mean, their backward
//! passes, and the deterministic sum of a vector. Chunked by rows like the
//! windowed pools, with whose kernels they share the uniform block.

use crate::error::{Error, Result};
use crate::gpu::{DeviceTensor, Recorder, RowLaunch, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::ops::pool::{offsets5, Params, LOOP_BUDGET};
use crate::tensor::{RefTensor, Shape, Tensor};

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = vec![attn_grad_spec(), sum_all_spec()];
    for mode in ["MEAN", "ATTN", "GEM"] {
        specs.push(reduce_spec(mode));
        specs.push(spread_spec(mode));
    }
    specs.push(reduce_spec("GEM_DP"));
    specs
}

fn reduce_spec(mode: &str) -> ShaderSpec {
    ShaderSpec::new("global_pool", "reduce")
        .def("REDUCE", 1)
        .def(mode, 1)
}
fn spread_spec(mode: &str) -> ShaderSpec {
    ShaderSpec::new("global_pool", "spread")
        .def("SPREAD", 1)
        .def(mode, 1)
}
fn attn_grad_spec() -> ShaderSpec {
    ShaderSpec::new("global_pool", "attn_grad").def("ATTN_GRAD", 1)
}
fn sum_all_spec() -> ShaderSpec {
    ShaderSpec::new("global_pool", "sum_all").def("SUM_ALL", 1)
}

// ---------------------------------------------------------------------------
// Chunking by rows (shared with `resize`).

/// The kernels over the rows of a pooled map; modes are the shader defines
/// MEAN, ATTN, GEM and (reduce only) GEM_DP.
#[derive(Clone, Copy)]
enum Kernel {
    /// One invocation per (image, channel): the poolings and GeM's dp terms.
    Reduce(&'static str),
    /// One invocation per element of the map: gradients with respect to it.
    Spread(&'static str),
    /// One invocation per pixel: the attention gradient.
    AttnGrad,
}

/// How an operand of a global kernel is windowed for a chunk of the rows
/// n·H + h of the pooled map.
#[derive(Clone, Copy)]
enum Span {
    /// This many elements per row (x: W·C, attention: W).
    Rows(u64),
    /// This many elements per image ([N,C] tensors: C).
    Images(u64),
    /// The whole (one-element) tensor: GeM's p, a sum.
    Scalar,
}

/// Records a global kernel over the rows of the pooled map `x` ([N,H,W,C]).
fn record_global(
    rec: &mut Recorder,
    op: &str,
    kernel: Kernel,
    operands: &[(&DeviceTensor, Span)],
    x: &Shape,
    eps: f32,
) -> Result<()> {
    let [n, h, w, c] = x.nhwc(op)?;
    let (h64, w64, c64) = (h as u64, w as u64, c as u64);
    let (spec, max_rows) = match kernel {
        Kernel::Reduce(mode) => (reduce_spec(mode), loop_rows(op, w64)?),
        Kernel::Spread(mode) => (spread_spec(mode), u64::MAX),
        Kernel::AttnGrad => {
            // Each invocation loops once over the channels.
            loop_rows(op, c64)?;
            (attn_grad_spec(), u64::MAX)
        }
    };
    let threads = move |r0: u64, r1: u64| match kernel {
        Kernel::Reduce(_) => ((r1 - 1) / h64 - r0 / h64 + 1) * c64,
        Kernel::Spread(_) => (r1 - r0) * w64 * c64,
        Kernel::AttnGrad => (r1 - r0) * w64,
    };
    let base = Params {
        h: h as u32,
        w: w as u32,
        c: c as u32,
        eps,
        inv_hw: 1.0 / (h * w) as f32,
        ..Params::default()
    };
    let tensors: Vec<&DeviceTensor> = operands.iter().map(|(t, _)| *t).collect();
    RowLaunch {
        op,
        spec: &spec,
        operands: &tensors,
        rows: n as u64 * h64,
        max_rows,
    }
    .record(
        rec,
        |r0, r1| {
            operands
                .iter()
                .map(|(_, s)| match *s {
                    Span::Rows(k) => r0 * k..r1 * k,
                    Span::Images(k) => r0 / h64 * k..((r1 - 1) / h64 + 1) * k,
                    Span::Scalar => 0..1,
                })
                .collect()
        },
        threads,
        |r, threads, off| {
            bytemuck::bytes_of(&Params {
                threads,
                row0: r.start as u32,
                row_end: r.end as u32,
                off: offsets5(off),
                ..base
            })
            .to_vec()
        },
    )
}

/// Rows of width `w` one reducing dispatch may cover.
fn loop_rows(op: &str, w: u64) -> Result<u64> {
    let per_row = w + 2;
    if per_row > LOOP_BUDGET {
        return Err(Error::unsupported(
            op,
            format!("rows of {w} pixels exceed the per-invocation loop budget of {LOOP_BUDGET}"),
        ));
    }
    Ok(LOOP_BUDGET / per_row)
}

fn expect_map(op: &str, inputs: &[&Shape], count: usize) -> Result<[usize; 4]> {
    expect_inputs(op, inputs, count)?;
    let d = inputs[0].nhwc(op)?;
    if d[1] * d[2] == 0 {
        return Err(Error::shape(
            op,
            format!("cannot pool an empty map {:?}", inputs[0]),
        ));
    }
    Ok(d)
}

/// Σ over H,W of f(n, pixel, c), divided by H·W, as [N,C].
fn pool_ref(x: &RefTensor, f: impl Fn(usize, usize, usize) -> f64) -> Result<RefTensor> {
    let [n, h, w, c] = x.shape.nhwc("pool")?;
    let mut y = vec![0.0; n * c];
    for b in 0..n {
        for pix in 0..h * w {
            for ch in 0..c {
                y[b * c + ch] += f(b, b * h * w + pix, ch);
            }
        }
    }
    Tensor::new([n, c], y.into_iter().map(|v| v / (h * w) as f64).collect())
}

/// Global average over H and W: [N,H,W,C] → [N,C].
#[derive(Clone, Copy, Debug, Default)]
pub struct MeanPool;

impl Op for MeanPool {
    fn name(&self) -> &'static str {
        "mean_pool"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let [n, _, _, c] = expect_map(self.name(), inputs, 1)?;
        Ok(vec![Shape::new(&[n, c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, c) = (inputs[0], inputs[0].shape.dims()[3]);
        Ok(vec![pool_ref(x, |_, pix, ch| x.data[pix * c + ch])?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let [_, _, w, c] = inputs[0].shape.nhwc(self.name())?;
        let ops = [
            (inputs[0], Span::Rows((w * c) as u64)),
            (outputs[0], Span::Images(c as u64)),
        ];
        record_global(
            rec,
            self.name(),
            Kernel::Reduce("MEAN"),
            &ops,
            &inputs[0].shape,
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
            return Ok(vec![None]);
        };
        let [_, h, w, _] = g.shape(inputs[0]).nhwc(self.name())?;
        Ok(vec![Some(g.apply1(GlobalPoolGrad::Mean { h, w }, &[dy])?)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// Generalised-mean pooling: g = (mean_hw max(x, eps)^p)^(1/p), with p an
/// input of shape [1] so that a learnable p (DOLG) gets a gradient; DELG feeds
/// a constant 3. Computed relative to the per-channel maximum so that large p
/// or large activations neither overflow nor underflow.
#[derive(Clone, Copy, Debug)]
pub struct GeMPool {
    pub eps: f32,
}

impl GeMPool {
    fn check(&self, inputs: &[&Shape]) -> Result<[usize; 4]> {
        let d = expect_map(self.name(), inputs, 2)?;
        if inputs[1] != &Shape::new(&[1]) {
            return Err(Error::shape(
                self.name(),
                format!("p must have shape [1], got {:?}", inputs[1]),
            ));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::unsupported(
                self.name(),
                format!("eps must be positive and finite, got {}", self.eps),
            ));
        }
        Ok(d)
    }
}

/// max(x, eps) and the GeM power of the reference computations.
fn gem_ref_parts(x: &RefTensor, p: &RefTensor, eps: f32) -> (Vec<f64>, f64) {
    (
        x.data.iter().map(|&v| v.max(eps as f64)).collect(),
        p.data[0],
    )
}

impl Op for GeMPool {
    fn name(&self) -> &'static str {
        "gem_pool"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let [n, _, _, c] = self.check(inputs)?;
        Ok(vec![Shape::new(&[n, c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let [_, _, _, c] = self.check(&[&inputs[0].shape, &inputs[1].shape])?;
        let (z, pw) = gem_ref_parts(inputs[0], inputs[1], self.eps);
        let mut y = pool_ref(inputs[0], |_, pix, ch| z[pix * c + ch].powf(pw))?;
        y.data.iter_mut().for_each(|v| *v = v.powf(1.0 / pw));
        Ok(vec![y])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let [_, _, w, c] = self.check(&[&inputs[0].shape, &inputs[1].shape])?;
        let ops = [
            (inputs[0], Span::Rows((w * c) as u64)),
            (inputs[1], Span::Scalar),
            (outputs[0], Span::Images(c as u64)),
        ];
        record_global(
            rec,
            self.name(),
            Kernel::Reduce("GEM"),
            &ops,
            &inputs[0].shape,
            self.eps,
        )
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dy) = grads[0] else {
            return Ok(vec![None, None]);
        };
        let ins = [inputs[0], inputs[1], outputs[0], dy];
        let dx = g.apply1(GlobalPoolGrad::GemX { eps: self.eps }, &ins)?;
        let terms = g.apply1(GlobalPoolGrad::GemP { eps: self.eps }, &ins)?;
        let dp = g.apply1(SumAll, &[terms])?;
        Ok(vec![Some(dx), Some(dp)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        3 * inputs[0].numel() as u64
    }
}

/// Attention-weighted mean: features x [N,H,W,C] and attention a [N,H,W,1]
/// give mean_hw a·x as [N,C] (DELG's attention pooling, docs/recipe.md §1.3).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionPool;

fn expect_attention(op: &str, x: &Shape, a: &Shape) -> Result<()> {
    let [n, h, w, _] = x.nhwc(op)?;
    if a != &Shape::new(&[n, h, w, 1]) {
        return Err(Error::shape(
            op,
            format!("attention is {a:?}, expected [{n}×{h}×{w}×1] for features {x:?}"),
        ));
    }
    Ok(())
}

impl Op for AttentionPool {
    fn name(&self) -> &'static str {
        "attention_pool"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let [n, _, _, c] = expect_map(self.name(), inputs, 2)?;
        expect_attention(self.name(), inputs[0], inputs[1])?;
        Ok(vec![Shape::new(&[n, c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, a) = (inputs[0], inputs[1]);
        expect_attention(self.name(), &x.shape, &a.shape)?;
        let c = x.shape.dims()[3];
        Ok(vec![pool_ref(x, |_, pix, ch| {
            a.data[pix] * x.data[pix * c + ch]
        })?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        expect_attention(self.name(), &inputs[0].shape, &inputs[1].shape)?;
        let [_, _, w, c] = inputs[0].shape.nhwc(self.name())?;
        let ops = [
            (inputs[0], Span::Rows((w * c) as u64)),
            (inputs[1], Span::Rows(w as u64)),
            (outputs[0], Span::Images(c as u64)),
        ];
        record_global(
            rec,
            self.name(),
            Kernel::Reduce("ATTN"),
            &ops,
            &inputs[0].shape,
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
        let dx = g.apply1(GlobalPoolGrad::AttentionX, &[inputs[1], dy])?;
        let da = g.apply1(GlobalPoolGrad::AttentionA, &[inputs[0], dy])?;
        Ok(vec![Some(dx), Some(da)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        2 * inputs[0].numel() as u64
    }
}

/// Backward passes of the global poolings. dy is always the last input.
#[derive(Clone, Copy, Debug)]
pub enum GlobalPoolGrad {
    /// dy [N,C] → dx [N,H,W,C] of `MeanPool`.
    Mean { h: usize, w: usize },
    /// (a, dy) → dx of `AttentionPool`.
    AttentionX,
    /// (x, dy) → da of `AttentionPool`.
    AttentionA,
    /// (x, p, g, dy) → dx of `GeMPool` (g is its output).
    GemX { eps: f32 },
    /// (x, p, g, dy) → the per-(n, c) terms of dp [N,C], summed by `SumAll`.
    GemP { eps: f32 },
}

impl GlobalPoolGrad {
    /// The pooled map's dims [N,H,W,C] after checking every input.
    fn map_dims(&self, inputs: &[&Shape]) -> Result<[usize; 4]> {
        let name = self.name();
        let count = match self {
            GlobalPoolGrad::Mean { .. } => 1,
            GlobalPoolGrad::AttentionX | GlobalPoolGrad::AttentionA => 2,
            GlobalPoolGrad::GemX { .. } | GlobalPoolGrad::GemP { .. } => 4,
        };
        expect_inputs(name, inputs, count)?;
        let dy = inputs[count - 1];
        let (n, c) = match dy.dims() {
            &[n, c] => (n, c),
            _ => return Err(Error::shape(name, format!("dy must be [N,C], got {dy:?}"))),
        };
        let d = match self {
            GlobalPoolGrad::Mean { h, w } => [n, *h, *w, c],
            GlobalPoolGrad::AttentionX => {
                let [n, h, w, _] = inputs[0].nhwc(name)?;
                expect_attention(name, &Shape::new(&[n, h, w, c]), inputs[0])?;
                [n, h, w, c]
            }
            GlobalPoolGrad::AttentionA => inputs[0].nhwc(name)?,
            GlobalPoolGrad::GemX { eps } | GlobalPoolGrad::GemP { eps } => {
                let d = GeMPool { eps: *eps }.check(&inputs[..2])?;
                if inputs[2] != dy {
                    return Err(Error::shape(
                        name,
                        format!("g is {:?} but dy is {dy:?}", inputs[2]),
                    ));
                }
                d
            }
        };
        if [d[0], d[3]] != [n, c] || d[1] * d[2] == 0 {
            return Err(Error::shape(
                name,
                format!(
                    "dy {dy:?} does not match the pooled map [{}×{}×{}×{}]",
                    d[0], d[1], d[2], d[3]
                ),
            ));
        }
        Ok(d)
    }
}

impl Op for GlobalPoolGrad {
    fn name(&self) -> &'static str {
        match self {
            GlobalPoolGrad::Mean { .. } => "mean_pool_grad",
            GlobalPoolGrad::AttentionX => "attention_pool_grad_x",
            GlobalPoolGrad::AttentionA => "attention_pool_grad_a",
            GlobalPoolGrad::GemX { .. } => "gem_pool_grad_x",
            GlobalPoolGrad::GemP { .. } => "gem_pool_grad_p_terms",
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let [n, h, w, c] = self.map_dims(inputs)?;
        Ok(vec![match self {
            GlobalPoolGrad::AttentionA => Shape::new(&[n, h, w, 1]),
            GlobalPoolGrad::GemP { .. } => Shape::new(&[n, c]),
            _ => Shape::new(&[n, h, w, c]),
        }])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let [n, h, w, c] = self.map_dims(&inputs.iter().map(|t| &t.shape).collect::<Vec<_>>())?;
        let dy = &inputs[inputs.len() - 1].data;
        let hw = (h * w) as f64;
        // Value at element (pixel, channel) of the [N,H,W,C] map for image b.
        let over_map = |f: &dyn Fn(usize, usize, usize) -> f64| -> Vec<f64> {
            (0..n * h * w)
                .flat_map(|pix| (0..c).map(move |ch| (pix, ch)))
                .map(|(pix, ch)| f(pix / (h * w), pix, ch))
                .collect()
        };
        let out = match self {
            GlobalPoolGrad::Mean { .. } => {
                Tensor::new([n, h, w, c], over_map(&|b, _, ch| dy[b * c + ch] / hw))?
            }
            GlobalPoolGrad::AttentionX => Tensor::new(
                [n, h, w, c],
                over_map(&|b, pix, ch| inputs[0].data[pix] * dy[b * c + ch] / hw),
            )?,
            GlobalPoolGrad::AttentionA => {
                let x = &inputs[0].data;
                let da = (0..n * h * w)
                    .map(|pix| {
                        (0..c)
                            .map(|ch| x[pix * c + ch] * dy[pix / (h * w) * c + ch])
                            .sum::<f64>()
                            / hw
                    })
                    .collect();
                Tensor::new([n, h, w, 1], da)?
            }
            GlobalPoolGrad::GemX { eps } => {
                let (z, pw) = gem_ref_parts(inputs[0], inputs[1], *eps);
                let g = &inputs[2].data;
                let x = &inputs[0].data;
                Tensor::new(
                    [n, h, w, c],
                    over_map(&|b, pix, ch| {
                        let i = pix * c + ch;
                        if x[i] >= *eps as f64 {
                            dy[b * c + ch] / hw * (z[i] / g[b * c + ch]).powf(pw - 1.0)
                        } else {
                            0.0
                        }
                    }),
                )?
            }
            GlobalPoolGrad::GemP { eps } => {
                let (z, pw) = gem_ref_parts(inputs[0], inputs[1], *eps);
                let g = &inputs[2].data;
                let mut t = pool_ref(inputs[0], |b, pix, ch| {
                    let q = z[pix * c + ch] / g[b * c + ch];
                    q.powf(pw) * q.ln()
                })?;
                t.data
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v *= dy[i] * g[i] / pw);
                t
            }
        };
        Ok(vec![out])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let [n, h, w, c] = self.map_dims(&inputs.iter().map(|t| &t.shape).collect::<Vec<_>>())?;
        let map = Shape::new(&[n, h, w, c]);
        let (w, c) = (w as u64, c as u64);
        let (row, img) = (Span::Rows(w * c), Span::Images(c));
        let name = self.name();
        match self {
            GlobalPoolGrad::Mean { .. } => {
                let ops = [(inputs[0], img), (outputs[0], row)];
                record_global(rec, name, Kernel::Spread("MEAN"), &ops, &map, 0.0)
            }
            GlobalPoolGrad::AttentionX => {
                let ops = [
                    (inputs[0], Span::Rows(w)),
                    (inputs[1], img),
                    (outputs[0], row),
                ];
                record_global(rec, name, Kernel::Spread("ATTN"), &ops, &map, 0.0)
            }
            GlobalPoolGrad::AttentionA => {
                let ops = [
                    (inputs[0], row),
                    (inputs[1], img),
                    (outputs[0], Span::Rows(w)),
                ];
                record_global(rec, name, Kernel::AttnGrad, &ops, &map, 0.0)
            }
            GlobalPoolGrad::GemX { eps } => {
                let ops = [
                    (inputs[0], row),
                    (inputs[1], Span::Scalar),
                    (inputs[2], img),
                    (inputs[3], img),
                    (outputs[0], row),
                ];
                record_global(rec, name, Kernel::Spread("GEM"), &ops, &map, *eps)
            }
            GlobalPoolGrad::GemP { eps } => {
                let ops = [
                    (inputs[0], row),
                    (inputs[1], Span::Scalar),
                    (inputs[2], img),
                    (inputs[3], img),
                    (outputs[0], img),
                ];
                record_global(rec, name, Kernel::Reduce("GEM_DP"), &ops, &map, *eps)
            }
        }
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        let per = match self {
            GlobalPoolGrad::Mean { .. } | GlobalPoolGrad::AttentionX => 1,
            _ => 3,
        };
        per * self
            .map_dims(inputs)
            .map_or(0, |d| d.iter().product::<usize>() as u64)
    }
}

/// Sum of every element, as shape [1] (reduces GeM's per-channel dp terms).
#[derive(Clone, Copy, Debug, Default)]
pub struct SumAll;

impl Op for SumAll {
    fn name(&self) -> &'static str {
        "sum_all"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![Shape::new(&[1])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Tensor::new([1], vec![inputs[0].data.iter().sum()]).map(|t| vec![t])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (v, out) = (inputs[0], outputs[0]);
        let total = out.whole(gpu)?;
        // One workgroup of 64 per chunk, in order: later chunks add to the first's sum.
        for chunk in crate::gpu::chunks(v.numel(), gpu.max_window_elems().min(64 * LOOP_BUDGET)) {
            let win = v.window(gpu, chunk.start, chunk.end - chunk.start)?;
            let params = Params {
                row0: chunk.start as u32,
                row_end: chunk.end as u32,
                off: offsets5(&[win.shift.wrapping_sub(chunk.start as u32), total.shift]),
                ..Params::default()
            };
            rec.dispatch(
                &sum_all_spec(),
                bytemuck::bytes_of(&params),
                vec![(&win).into(), (&total).into()],
                [1, 1, 1],
            )?;
        }
        if v.numel() == 0 {
            rec.clear(total.slice.clone());
        }
        Ok(())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{check_op, grad_check, OpCase};

    /// p as a [1] input.
    pub(crate) fn power(v: f32) -> crate::tensor::HostTensor {
        Tensor {
            shape: Shape::new(&[1]),
            data: vec![v],
        }
    }

    #[test]
    fn global_pools_match_reference_and_differentiate() {
        for shape in [[2, 5, 3, 7], [1, 1, 1, 1], [2, 3, 5, 1]] {
            let [n, h, w, _] = shape;
            check_op(&OpCase::new(MeanPool).input(shape, -2.0, 2.0));
            check_op(
                &OpCase::new(GeMPool { eps: 1e-6 })
                    .input(shape, -0.5, 2.0)
                    .tensor(power(3.0)),
            );
            check_op(&OpCase::new(AttentionPool).input(shape, -2.0, 2.0).input(
                [n, h, w, 1],
                0.0,
                3.0,
            ));
            grad_check(&OpCase::new(MeanPool).input(shape, -2.0, 2.0));
            grad_check(
                &OpCase::new(GeMPool { eps: 1e-6 })
                    .input(shape, -0.5, 2.0)
                    .input([1], 2.0, 4.0),
            );
            grad_check(&OpCase::new(AttentionPool).input(shape, -2.0, 2.0).input(
                [n, h, w, 1],
                0.0,
                3.0,
            ));
        }
    }

    #[test]
    fn gem_is_stable_for_large_powers_and_values() {
        // 5000^12 overflows f32; pooling relative to the maximum does not.
        check_op(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([2, 4, 3, 5], 100.0, 5000.0)
                .tensor(power(12.0)),
        );
        check_op(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([1, 3, 3, 2], 1e-4, 1e-3)
                .tensor(power(9.0)),
        );
        grad_check(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([1, 3, 5, 3], 50.0, 500.0)
                .tensor(power(10.0)),
        );
    }

    /// Reductions longer than llvmpipe's 65535-iteration loop limit (which
    /// would end them early, silently) come out complete.
    #[test]
    fn long_reductions_are_complete() {
        let ones = |shape: &[usize]| Tensor {
            shape: Shape::new(shape),
            data: vec![1.0f32; shape.iter().product()],
        };
        check_op(&OpCase::new(MeanPool).tensor(ones(&[1, 300, 300, 2])));
        check_op(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .tensor(ones(&[1, 300, 300, 1]))
                .tensor(power(3.0)),
        );
        check_op(&OpCase::new(SumAll).tensor(ones(&[2_100_000])));
    }
}
