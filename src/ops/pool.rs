//! Windowed pooling ops (`shaders/pool.wgsl`) on NHWC activations: max-pool
//! (TF "valid" and PyTorch padded variants), the strided subsample DELG puts
//! after conv4, the argmax and the backward pass. The global poolings are in
//! `global_pool`; both share this file's uniform block (`Params`; its WGSL
//! side is `shaders/pool_params.wgsl`).
//!
//! Every kernel works on chunks of rows chosen so that the part of every
//! operand they touch fits in one storage binding (`gpu::RowLaunch`).
//! Backward passes gather instead of scattering: deterministic, no atomics.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{image_rows, scaled, DeviceTensor, Recorder, RowLaunch, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{Precision, RefTensor, Shape, Tensor};

/// Mesa 22's llvmpipe silently ends a loop nest after 65535 iterations in
/// total per invocation, so reducing kernels (and max-pool windows) take at most this many rows'
/// worth of pixels per dispatch (GeM's two loop nests stay under the limit
/// together); later dispatches continue the sums.
pub(crate) const LOOP_BUDGET: u64 = 32_000;

crate::uniform! {
    #[derive(Clone, Copy, Default, Pod, Zeroable)]
    pub(crate) struct Params {
        pub(crate) threads: u32,
        pub(crate) row0: u32,
        pub(crate) row_end: u32,
        pub(crate) h: u32,
        pub(crate) w: u32,
        pub(crate) c: u32,
        pub(crate) oh: u32,
        pub(crate) ow: u32,
        pub(crate) kh: u32,
        pub(crate) kw: u32,
        pub(crate) sh: u32,
        pub(crate) sw: u32,
        pub(crate) pt: u32,
        pub(crate) pl: u32,
        pub(crate) eps: f32,
        pub(crate) inv_hw: f32,
        pub(crate) off: [u32; 5],
        pub(crate) _pad: [u32; 3],
    }
}

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    vec![
        max_pool_spec(false, false, Precision::F32),
        max_pool_spec(false, true, Precision::F32),
        max_pool_spec(true, false, Precision::F32),
        max_pool_spec(false, false, Precision::F16),
        max_pool_spec(false, true, Precision::F16),
        pool_grad_spec(true),
        pool_grad_spec(false),
    ]
}

/// f16: values only (the argmax is an f32 index for training).
fn max_pool_spec(index: bool, vec4: bool, precision: Precision) -> ShaderSpec {
    let spec = ShaderSpec::new("pool", "max_pool")
        .def("MAX_POOL", 1)
        .def("INDEX", index as u32)
        .def("VEC4", vec4 as u32);
    match precision {
        Precision::F32 => spec,
        Precision::F16 => spec.def("F16", 1),
    }
}
fn pool_grad_spec(indexed: bool) -> ShaderSpec {
    ShaderSpec::new("pool", "pool_grad")
        .def("POOL_GRAD", 1)
        .def("INDEXED", indexed as u32)
}
pub(crate) fn offsets5(off: &[u32]) -> [u32; 5] {
    let mut o = [0; 5];
    o[..off.len()].copy_from_slice(off);
    o
}

/// Max-pooling over kh×kw windows. Padding never wins the maximum (as in
/// PyTorch and TF); ties go to the first element in scan order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool {
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_bottom: usize,
    pub pad_left: usize,
    pub pad_right: usize,
}

/// NHWC input dims and pooled output height and width.
#[derive(Clone, Copy, Debug)]
struct PoolDims {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
}

impl MaxPool {
    /// TF "valid" padding: k×k windows, stride s.
    pub fn valid(k: usize, s: usize) -> Self {
        MaxPool::padded(k, s, 0)
    }

    /// PyTorch-style symmetric padding (ResNet's stem is `padded(3, 2, 1)`).
    pub fn padded(k: usize, s: usize, pad: usize) -> Self {
        MaxPool {
            kh: k,
            kw: k,
            stride_h: s,
            stride_w: s,
            pad_top: pad,
            pad_bottom: pad,
            pad_left: pad,
            pad_right: pad,
        }
    }

    fn has_window(&self) -> bool {
        self.kh * self.kw > 1
    }

    fn dims(&self, op: &str, x: &Shape) -> Result<PoolDims> {
        let [n, h, w, c] = x.nhwc(op)?;
        if self.kh == 0 || self.kw == 0 || self.stride_h == 0 || self.stride_w == 0 {
            return Err(Error::unsupported(
                op,
                format!("window and strides must be positive: {self:?}"),
            ));
        }
        // The window search is one loop nest per invocation (see LOOP_BUDGET).
        if self.kh as u64 * (self.kw as u64 + 2) > LOOP_BUDGET {
            return Err(Error::unsupported(
                op,
                format!(
                    "a {}×{} window exceeds the per-invocation loop budget",
                    self.kh, self.kw
                ),
            ));
        }
        // A pad as large as the window would make all-padding windows.
        if self.pad_top >= self.kh
            || self.pad_bottom >= self.kh
            || self.pad_left >= self.kw
            || self.pad_right >= self.kw
        {
            return Err(Error::unsupported(
                op,
                format!("padding must be smaller than the window: {self:?}"),
            ));
        }
        let (ph, pw) = (
            h + self.pad_top + self.pad_bottom,
            w + self.pad_left + self.pad_right,
        );
        if ph < self.kh || pw < self.kw {
            return Err(Error::shape(
                op,
                format!(
                    "input {x:?} is smaller than the {}×{} window",
                    self.kh, self.kw
                ),
            ));
        }
        Ok(PoolDims {
            n,
            h,
            w,
            c,
            oh: (ph - self.kh) / self.stride_h + 1,
            ow: (pw - self.kw) / self.stride_w + 1,
        })
    }

    /// Input rows [lo, hi) read by output rows a..=b of one image.
    fn input_rows(&self, a: u64, b: u64, h: u64) -> (u64, u64) {
        let (sh, pt, kh) = (self.stride_h as u64, self.pad_top as u64, self.kh as u64);
        ((a * sh).saturating_sub(pt), (b * sh + kh - pt).min(h))
    }

    /// Output rows [lo, hi) whose windows contain input rows a..=b of one image.
    fn output_rows(&self, a: u64, b: u64, oh: u64) -> (u64, u64) {
        let (sh, pt, kh) = (self.stride_h as u64, self.pad_top as u64, self.kh as u64);
        let lo = (a + pt + 1).saturating_sub(kh).div_ceil(sh).min(oh);
        let hi = ((b + pt) / sh + 1).min(oh);
        (lo, hi.max(lo))
    }

    fn params(&self, d: &PoolDims) -> Params {
        Params {
            h: d.h as u32,
            w: d.w as u32,
            c: d.c as u32,
            oh: d.oh as u32,
            ow: d.ow as u32,
            kh: self.kh as u32,
            kw: self.kw as u32,
            sh: self.stride_h as u32,
            sw: self.stride_w as u32,
            pt: self.pad_top as u32,
            pl: self.pad_left as u32,
            ..Params::default()
        }
    }

    /// Flat index into x of the maximum of window (b, oy, ox) for channel
    /// ch, and its position ky·kw + kx in the window.
    fn argmax_ref(
        &self,
        x: &RefTensor,
        d: &PoolDims,
        b: usize,
        oy: usize,
        ox: usize,
        ch: usize,
    ) -> (usize, usize) {
        let mut best: Option<(usize, usize)> = None;
        for ky in 0..self.kh {
            let Some(iy) = (oy * self.stride_h + ky)
                .checked_sub(self.pad_top)
                .filter(|&iy| iy < d.h)
            else {
                continue;
            };
            for kx in 0..self.kw {
                let Some(ix) = (ox * self.stride_w + kx)
                    .checked_sub(self.pad_left)
                    .filter(|&ix| ix < d.w)
                else {
                    continue;
                };
                let i = ((b * d.h + iy) * d.w + ix) * d.c + ch;
                if best.is_none_or(|(j, _)| x.data[i] > x.data[j]) {
                    best = Some((i, ky * self.kw + kx));
                }
            }
        }
        // `dims` guarantees every window holds at least one input element.
        best.unwrap_or_default()
    }

    /// The pooled values, or with `index` the argmax positions.
    fn forward_ref(&self, op: &str, x: &RefTensor, index: bool) -> Result<RefTensor> {
        let d = self.dims(op, &x.shape)?;
        let mut y = Vec::with_capacity(d.n * d.oh * d.ow * d.c);
        for b in 0..d.n {
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    for ch in 0..d.c {
                        let (i, k) = self.argmax_ref(x, &d, b, oy, ox, ch);
                        y.push(if index { k as f64 } else { x.data[i] });
                    }
                }
            }
        }
        Tensor::new([d.n, d.oh, d.ow, d.c], y)
    }

    fn record_forward(
        &self,
        op: &str,
        rec: &mut Recorder,
        x: &DeviceTensor,
        y: &DeviceTensor,
        index: bool,
    ) -> Result<()> {
        let d = self.dims(op, &x.shape)?;
        if y.precision != x.precision || (index && x.precision != Precision::F32) {
            return Err(Error::Internal(format!(
                "{op}: input stored in {}, output in {}",
                x.precision.name(),
                y.precision.name()
            )));
        }
        let base = self.params(&d);
        let (h, w, c, oh, ow) = (d.h as u64, d.w as u64, d.c as u64, d.oh as u64, d.ow as u64);
        // Values (not the argmax) of whole vec4s of channels: every window's
        // offset is then a multiple of 4 elements too.
        let vec4 = !index
            && c.is_multiple_of(4)
            && x.base().is_multiple_of(4)
            && y.base().is_multiple_of(4);
        let lanes = if vec4 { 4 } else { 1 };
        RowLaunch {
            op,
            spec: &max_pool_spec(index, vec4, x.precision),
            operands: &[x, y],
            rows: d.n as u64 * oh,
            max_rows: u64::MAX,
        }
        .record(
            rec,
            |r0, r1| {
                vec![
                    scaled(
                        image_rows(r0, r1, oh, h, |a, b| self.input_rows(a, b, h)),
                        w * c,
                    ),
                    r0 * ow * c..r1 * ow * c,
                ]
            },
            |r0, r1| (r1 - r0) * ow * c / lanes,
            |r, threads, off| {
                // Offsets wrap below zero: divide them as signed numbers.
                let off: Vec<u32> = off
                    .iter()
                    .map(|&o| (o as i32 / lanes as i32) as u32)
                    .collect();
                bytemuck::bytes_of(&Params {
                    threads,
                    row0: r.start as u32,
                    row_end: r.end as u32,
                    c: (c / lanes) as u32,
                    off: offsets5(&off),
                    ..base
                })
                .to_vec()
            },
        )
    }

    fn add_backward(
        &self,
        g: &mut Graph,
        x: TensorId,
        dy: Option<TensorId>,
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dy) = dy else { return Ok(vec![None]) };
        let [_, h, w, _] = g.shape(x).nhwc("max_pool")?;
        let grad = MaxPoolGrad { pool: *self, h, w };
        let ins = if self.has_window() {
            vec![g.apply1(MaxPoolArgmax { pool: *self }, &[x])?, dy]
        } else {
            vec![dy]
        };
        Ok(vec![Some(g.apply1(grad, &ins)?)])
    }
}

impl Op for MaxPool {
    fn name(&self) -> &'static str {
        "max_pool"
    }
    /// Stored as its input: the maximum is one of the inputs, exact in f16.
    fn output_precision(&self, inputs: &[Precision]) -> Result<Precision> {
        match inputs {
            [p] => Ok(*p),
            _ => Err(Error::Internal(format!(
                "max_pool of inputs stored in {inputs:?}"
            ))),
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let d = self.dims(self.name(), inputs[0])?;
        Ok(vec![Shape::new(&[d.n, d.oh, d.ow, d.c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![self.forward_ref(self.name(), inputs[0], false)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        self.record_forward(self.name(), rec, inputs[0], outputs[0], false)
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        self.add_backward(g, inputs[0], grads[0])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.dims(self.name(), inputs[0])
            .map_or(0, |d| (d.n * d.oh * d.ow * d.c * self.kh * self.kw) as u64)
    }
}

/// Keeps every stride-th pixel: y[n,i,j,c] = x[n,s·i,s·j,c] (DELG's 1×1
/// stride-2 "valid" max-pool after conv4). The output is ceil(H/s)×ceil(W/s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subsample {
    pub stride: usize,
}

impl Subsample {
    fn pool(&self) -> MaxPool {
        MaxPool::valid(1, self.stride)
    }
}

impl Op for Subsample {
    fn name(&self) -> &'static str {
        "subsample"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let d = self.pool().dims(self.name(), inputs[0])?;
        Ok(vec![Shape::new(&[d.n, d.oh, d.ow, d.c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![self.pool().forward_ref(
            self.name(),
            inputs[0],
            false,
        )?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        self.pool()
            .record_forward(self.name(), rec, inputs[0], outputs[0], false)
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        self.pool().add_backward(g, inputs[0], grads[0])
    }
}

/// The argmax of each max-pool window as its position ky·kw + kx (stored
/// exactly as f32), computed once for the backward pass: gathering with it
/// is several times faster than searching every covering window again.
#[derive(Clone, Copy, Debug)]
pub struct MaxPoolArgmax {
    pub pool: MaxPool,
}

impl Op for MaxPoolArgmax {
    fn name(&self) -> &'static str {
        "max_pool_argmax"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let d = self.pool.dims(self.name(), inputs[0])?;
        Ok(vec![Shape::new(&[d.n, d.oh, d.ow, d.c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        Ok(vec![self.pool.forward_ref(self.name(), inputs[0], true)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        self.pool
            .record_forward(self.name(), rec, inputs[0], outputs[0], true)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.pool.flops(inputs)
    }
}

/// Gradient of `MaxPool` (and `Subsample`): dy routed to each window's
/// argmax. Inputs (argmax from `MaxPoolArgmax`, dy), or only dy for 1×1
/// windows, whose argmax is their only element; `h`, `w` are the input
/// height and width.
#[derive(Clone, Copy, Debug)]
pub struct MaxPoolGrad {
    pub pool: MaxPool,
    pub h: usize,
    pub w: usize,
}

impl MaxPoolGrad {
    fn dims(&self, inputs: &[&Shape]) -> Result<PoolDims> {
        let name = self.name();
        let windowed = self.pool.has_window();
        expect_inputs(name, inputs, if windowed { 2 } else { 1 })?;
        let dy = inputs[inputs.len() - 1];
        let [n, _, _, c] = dy.nhwc(name)?;
        let x = Shape::new(&[n, self.h, self.w, c]);
        if windowed && inputs[0] != dy {
            return Err(Error::shape(
                name,
                format!("argmax is {:?} but dy is {dy:?}", inputs[0]),
            ));
        }
        let d = self.pool.dims(name, &x)?;
        if dy != &Shape::new(&[n, d.oh, d.ow, c]) {
            return Err(Error::shape(
                name,
                format!(
                    "dy is {dy:?}, but pooling {x:?} gives [{n}×{}×{}×{c}]",
                    d.oh, d.ow
                ),
            ));
        }
        Ok(d)
    }
}

impl Op for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max_pool_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let d = self.dims(inputs)?;
        Ok(vec![Shape::new(&[d.n, d.h, d.w, d.c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let d = self.dims(&inputs.iter().map(|t| &t.shape).collect::<Vec<_>>())?;
        let dy = inputs[inputs.len() - 1];
        let pool = &self.pool;
        let mut dx = vec![0.0; d.n * d.h * d.w * d.c];
        let mut o = 0;
        for b in 0..d.n {
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    for ch in 0..d.c {
                        let k = if pool.has_window() {
                            inputs[0].data[o] as usize
                        } else {
                            0
                        };
                        let iy = (oy * pool.stride_h + k / pool.kw).checked_sub(pool.pad_top);
                        let ix = (ox * pool.stride_w + k % pool.kw).checked_sub(pool.pad_left);
                        match (iy, ix) {
                            (Some(iy), Some(ix)) if iy < d.h && ix < d.w && k < pool.kh * pool.kw => {
                                dx[((b * d.h + iy) * d.w + ix) * d.c + ch] += dy.data[o];
                            }
                            _ => {
                                return Err(Error::InvalidArgument(format!(
                                    "{}: argmax {k} of window ({b}, {oy}, {ox}) is not an input element",
                                    self.name()
                                )))
                            }
                        }
                        o += 1;
                    }
                }
            }
        }
        Ok(vec![Tensor::new([d.n, d.h, d.w, d.c], dx)?])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let d = self.dims(&inputs.iter().map(|t| &t.shape).collect::<Vec<_>>())?;
        let base = self.pool.params(&d);
        let (h, w, c, oh, ow) = (d.h as u64, d.w as u64, d.c as u64, d.oh as u64, d.ow as u64);
        let pool = self.pool;
        let dy_rows = move |r0, r1| image_rows(r0, r1, h, oh, |a, b| pool.output_rows(a, b, oh));
        let windowed = pool.has_window();
        RowLaunch {
            op: self.name(),
            spec: &pool_grad_spec(windowed),
            operands: &[inputs, outputs].concat(),
            rows: d.n as u64 * h,
            max_rows: u64::MAX,
        }
        .record(
            rec,
            |r0, r1| {
                // The argmax has dy's shape, so it needs the same rows.
                let dy_span = scaled(dy_rows(r0, r1), ow * c);
                let mut s = vec![dy_span.clone(), r0 * w * c..r1 * w * c];
                if windowed {
                    s.insert(0, dy_span);
                }
                s
            },
            |r0, r1| (r1 - r0) * w * c,
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
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[inputs.len() - 1].numel() as u64
    }
}

// ---------------------------------------------------------------------------
// Global poolings: [N,H,W,C] → [N,C].

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gpu::window::row_chunks;
    use crate::gpu::{image_rows, scaled};
    use crate::ops::global_pool::tests::power;
    use crate::ops::global_pool::*;
    use crate::testing::{check_op, dispatch_labels, grad_check, test_gpu, OpCase};

    /// Integers in [0, 3): many ties inside each window.
    fn tied(shape: [usize; 4]) -> crate::tensor::HostTensor {
        let mut t = crate::tensor::Rng::new(7).tensor(shape, 0.0, 3.0);
        t.data.iter_mut().for_each(|v| *v = v.floor());
        t
    }

    const POOLS: [MaxPool; 4] = [
        MaxPool {
            kh: 3,
            kw: 3,
            stride_h: 2,
            stride_w: 2,
            pad_top: 0,
            pad_bottom: 0,
            pad_left: 0,
            pad_right: 0,
        },
        MaxPool {
            kh: 3,
            kw: 3,
            stride_h: 2,
            stride_w: 2,
            pad_top: 1,
            pad_bottom: 1,
            pad_left: 1,
            pad_right: 1,
        },
        MaxPool {
            kh: 2,
            kw: 3,
            stride_h: 1,
            stride_w: 2,
            pad_top: 1,
            pad_bottom: 0,
            pad_left: 0,
            pad_right: 2,
        },
        MaxPool {
            kh: 1,
            kw: 1,
            stride_h: 2,
            stride_w: 2,
            pad_top: 0,
            pad_bottom: 0,
            pad_left: 0,
            pad_right: 0,
        },
    ];

    #[test]
    fn max_pool_matches_reference() {
        for pool in POOLS {
            // 3, 1 and 5 channels take the scalar kernel, 8 and 4 the vec4 one.
            for shape in [
                [2, 9, 7, 3],
                [1, 6, 5, 1],
                [2, 3, 3, 5],
                [2, 9, 7, 8],
                [1, 5, 6, 4],
            ] {
                check_op(&OpCase::new(pool).input(shape, -2.0, 2.0));
            }
            check_op(&OpCase::new(pool).tensor(tied([2, 7, 9, 3])));
        }
        // Output 1×1, and the stride-2 subsample of odd sizes.
        check_op(&OpCase::new(MaxPool::valid(3, 2)).input([2, 3, 4, 5], -1.0, 1.0));
        for stride in [2, 3] {
            check_op(&OpCase::new(Subsample { stride }).input([2, 7, 5, 3], -1.0, 1.0));
        }
        assert_eq!(
            Subsample { stride: 2 }
                .infer(&[&Shape::new(&[1, 7, 6, 4])])
                .unwrap()[0],
            Shape::new(&[1, 4, 3, 4])
        );
    }

    #[test]
    fn f16_max_pool_is_exact_on_both_kernels_and_in_chunks() {
        // The reference sees the f16-rounded input and the maximum is one of
        // its elements, so the f16 kernels must match it exactly: tolerance 0.
        let half = |pool: MaxPool, shape: [usize; 4]| {
            OpCase::new(pool)
                .input(shape, -2.0, 2.0)
                .stored(0, Precision::F16)
                .tol(0.0, 0.0)
        };
        for pool in POOLS {
            for shape in [[2, 9, 7, 3], [2, 9, 7, 8], [1, 5, 6, 4]] {
                check_op(&half(pool, shape));
            }
        }
        // The stem's pool in chunks of a few rows: f16 windows shift by
        // 2-byte elements, vec4 ones by 8.
        for c in [3, 8] {
            check_op(&half(MaxPool::valid(3, 2), [2, 11, 7, c]).windows(3 * 7 * 8));
        }
    }

    #[test]
    fn f16_max_pool_takes_the_f16_kernels_and_stores_f16() {
        let Some(gpu) = test_gpu() else { return };
        let pool = MaxPool::valid(3, 2);
        for c in [8, 6] {
            let shape: &[usize] = &[1, 7, 6, c];
            let labels =
                crate::testing::dispatch_labels_as(&gpu, &pool, &[shape], &[Precision::F16]);
            assert!(labels.iter().all(|l| l.contains("F16=1")), "{labels:?}");
        }
        let mut g = Graph::new();
        let x = g.input("x", [1, 7, 6, 8]);
        let x = g
            .apply1(crate::ops::cast::Cast { to: Precision::F16 }, &[x])
            .unwrap();
        let y = g.apply1(pool, &[x]).unwrap();
        assert_eq!(g.precision(y), Precision::F16);
        // Training's argmax reads f32 only.
        let err = g.apply1(MaxPoolArgmax { pool }, &[x]).unwrap_err();
        assert!(err.to_string().contains("cast it first"), "{err}");
    }

    #[test]
    fn whole_vec4s_of_channels_take_the_vec4_kernel() {
        let Some(gpu) = test_gpu() else { return };
        let labels = |op: &dyn Op, c: usize| dispatch_labels(&gpu, op, &[&[1, 7, 6, c]]);
        for pool in POOLS {
            assert!(labels(&pool, 8).iter().all(|l| l.contains("VEC4=1")));
            assert!(labels(&pool, 6).iter().all(|l| l.contains("VEC4=0")));
            let argmax = MaxPoolArgmax { pool };
            assert!(labels(&argmax, 8).iter().all(|l| l.contains("VEC4=0")));
        }
        assert!(labels(&Subsample { stride: 2 }, 4)
            .iter()
            .all(|l| l.contains("VEC4=1")));
    }

    #[test]
    fn max_pool_gradients() {
        for pool in POOLS {
            grad_check(&OpCase::new(pool).input([2, 7, 5, 3], -2.0, 2.0));
        }
        grad_check(&OpCase::new(Subsample { stride: 2 }).input([2, 5, 4, 1], -1.0, 1.0));
        // Ties (not differentiable, so no finite differences): the first in
        // scan order gets dy, on the GPU as in the reference.
        for pool in POOLS[..3].iter().copied() {
            let x = tied([2, 7, 9, 3]);
            let argmax = MaxPoolArgmax { pool };
            let idx = argmax
                .reference(&[&x.to_ref()])
                .unwrap()
                .remove(0)
                .to_host();
            let grad = MaxPoolGrad { pool, h: 7, w: 9 };
            check_op(&OpCase::new(argmax).tensor(x));
            check_op(
                &OpCase::new(grad)
                    .tensor(idx.clone())
                    .input(idx.shape.clone(), -1.0, 1.0),
            );
        }
    }

    #[test]
    fn chunked_paths_match_reference() {
        // Windows of 128 elements: every kernel runs on several chunks, some
        // of which split an image's rows and some of which span images.
        for pool in POOLS {
            grad_check(
                &OpCase::new(pool)
                    .input([2, 9, 7, 3], -2.0, 2.0)
                    .windows(128),
            );
            grad_check(
                &OpCase::new(pool)
                    .input([3, 7, 9, 1], -2.0, 2.0)
                    .windows(128),
            );
            check_op(
                &OpCase::new(pool)
                    .input([2, 9, 7, 4], -2.0, 2.0)
                    .windows(128),
            );
        }
        check_op(
            &OpCase::new(Subsample { stride: 2 })
                .input([3, 7, 9, 8], -1.0, 1.0)
                .windows(128),
        );
        grad_check(
            &OpCase::new(MeanPool)
                .input([3, 7, 5, 3], -2.0, 2.0)
                .windows(128),
        );
        grad_check(
            &OpCase::new(AttentionPool)
                .input([3, 7, 5, 3], -2.0, 2.0)
                .input([3, 7, 5, 1], 0.0, 3.0)
                .windows(128),
        );
        grad_check(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([3, 7, 5, 3], -0.5, 2.0)
                .input([1], 2.0, 4.0)
                .windows(128),
        );
        check_op(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([2, 9, 4, 3], 100.0, 5000.0)
                .tensor(power(12.0))
                .windows(128),
        );
        check_op(&OpCase::new(SumAll).input([700], -1.0, 1.0).windows(128));
        // Three or more chunks per image: GeM merges partial results in log space.
        check_op(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([2, 13, 1, 3], 100.0, 5000.0)
                .tensor(power(12.0))
                .windows(16),
        );
        grad_check(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input([2, 13, 1, 3], -0.5, 2.0)
                .input([1], 2.0, 4.0)
                .windows(16),
        );
    }

    /// The real binding limit (128 MiB on lavapipe) with a 135 MB map: slow
    /// on a CPU driver, so run on demand with `--ignored`.
    #[test]
    #[ignore]
    fn beyond_one_binding() {
        let shape = [1, 1030, 1024, 32];
        let (oh, ow) = (515, 512);
        check_op(&OpCase::new(MaxPool::padded(3, 2, 1)).input(shape, -1.0, 1.0));
        let pool = MaxPool::padded(3, 2, 1);
        let x = crate::tensor::Rng::new(1).tensor(shape, -1.0, 1.0);
        let idx = MaxPoolArgmax { pool }
            .reference(&[&x.to_ref()])
            .unwrap()
            .remove(0)
            .to_host();
        check_op(&OpCase::new(MaxPoolArgmax { pool }).tensor(x));
        let grad = MaxPoolGrad {
            pool,
            h: 1030,
            w: 1024,
        };
        check_op(
            &OpCase::new(grad)
                .tensor(idx)
                .input([1, oh, ow, 32], -1.0, 1.0),
        );
        check_op(&OpCase::new(Subsample { stride: 2 }).input(shape, -1.0, 1.0));
        check_op(&OpCase::new(MeanPool).input(shape, -1.0, 1.0));
        check_op(
            &OpCase::new(GeMPool { eps: 1e-6 })
                .input(shape, -1.0, 1.0)
                .tensor(power(3.0)),
        );
        check_op(&OpCase::new(AttentionPool).input(shape, -1.0, 1.0).input(
            [1, 1030, 1024, 1],
            0.0,
            2.0,
        ));
        check_op(&OpCase::new(GlobalPoolGrad::Mean { h: 1030, w: 1024 }).input([1, 32], -1.0, 1.0));
        let resize = crate::ops::resize::ResizeBilinear {
            out_h: oh,
            out_w: ow,
        };
        check_op(&OpCase::new(resize).input(shape, -1.0, 1.0));
        for axis in [crate::ops::resize::Axis::H, crate::ops::resize::Axis::W] {
            let resize_grad = crate::ops::resize::ResizeBilinearGrad { axis, size: 515 };
            check_op(&OpCase::new(resize_grad).input(shape, -1.0, 1.0));
        }
    }

    #[test]
    fn row_chunks_cover_and_fit() {
        let pool = POOLS[1];
        let (h, oh) = (9u64, 5u64);
        let spans = |r0, r1| {
            vec![scaled(
                image_rows(r0, r1, oh, h, |a, b| pool.input_rows(a, b, h)),
                10,
            )]
        };
        let chunks = row_chunks("test", 3 * oh, u64::MAX, 40, &spans).unwrap();
        assert!(chunks.len() > 3);
        assert_eq!(chunks.first().unwrap().start, 0);
        assert_eq!(chunks.last().unwrap().end, 3 * oh);
        for w in chunks.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(chunks
            .iter()
            .all(|c| spans(c.start, c.end)[0].clone().count() <= 40));
        let err = row_chunks("test", 3 * oh, u64::MAX, 20, &spans).unwrap_err();
        assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let x = Shape::new(&[1, 4, 4, 2]);
        assert!(matches!(
            MaxPool::valid(3, 2).infer(&[&Shape::new(&[4, 4, 2])]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            MaxPool::valid(5, 1).infer(&[&x]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            MaxPool::valid(300, 1).infer(&[&Shape::new(&[1, 300, 300, 1])]),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            MaxPool::padded(3, 2, 3).infer(&[&x]),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            Subsample { stride: 0 }.infer(&[&x]),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            GeMPool { eps: 1e-6 }.infer(&[&x, &Shape::new(&[2])]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            GeMPool { eps: 0.0 }.infer(&[&x, &Shape::new(&[1])]),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            AttentionPool.infer(&[&x, &Shape::new(&[1, 4, 3, 1])]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            MeanPool.infer(&[&Shape::new(&[1, 0, 4, 2])]),
            Err(Error::Shape { .. })
        ));
        let grad = MaxPoolGrad {
            pool: MaxPool::valid(3, 2),
            h: 4,
            w: 4,
        };
        assert!(matches!(
            grad.infer(&[&x, &Shape::new(&[1, 2, 2, 2])]),
            Err(Error::Shape { .. })
        ));
    }
}
