//! Pooling ops (`shaders/pool.wgsl`) on NHWC activations: windowed max-pool
//! (TF "valid" and PyTorch padded variants), the strided subsample DELG puts
//! after conv4, and the global poolings (mean, GeM, attention-weighted mean)
//! with their backward passes.
//!
//! Every kernel works on chunks of rows: the rows of one chunk are chosen so
//! that the part of every operand they touch fits in one storage binding, so
//! tensors of any size run (see `RowLaunch`, shared with `resize`).
//! Backward passes gather instead of scattering: deterministic, no atomics.

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{DeviceTensor, Gpu, Recorder, ShaderSpec};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::expect_inputs;
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    threads: u32,
    row0: u32,
    row_end: u32,
    h: u32,
    w: u32,
    c: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    pt: u32,
    pl: u32,
    eps: f32,
    inv_hw: f32,
    off: [u32; 5],
    _pad: [u32; 3],
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = vec![
        max_pool_spec(false, false),
        max_pool_spec(false, true),
        max_pool_spec(true, false),
        pool_grad_spec(true),
        pool_grad_spec(false),
        attn_grad_spec(),
        sum_all_spec(),
    ];
    for mode in ["MEAN", "ATTN", "GEM"] {
        specs.push(reduce_spec(mode));
        specs.push(spread_spec(mode));
    }
    specs.push(reduce_spec("GEM_DP"));
    specs
}

fn max_pool_spec(index: bool, vec4: bool) -> ShaderSpec {
    ShaderSpec::new("pool", "max_pool")
        .def("MAX_POOL", 1)
        .def("INDEX", index as u32)
        .def("VEC4", vec4 as u32)
}
fn pool_grad_spec(indexed: bool) -> ShaderSpec {
    ShaderSpec::new("pool", "pool_grad")
        .def("POOL_GRAD", 1)
        .def("INDEXED", indexed as u32)
}
fn reduce_spec(mode: &str) -> ShaderSpec {
    ShaderSpec::new("pool", "reduce")
        .def("REDUCE", 1)
        .def(mode, 1)
}
fn spread_spec(mode: &str) -> ShaderSpec {
    ShaderSpec::new("pool", "spread")
        .def("SPREAD", 1)
        .def(mode, 1)
}
fn attn_grad_spec() -> ShaderSpec {
    ShaderSpec::new("pool", "attn_grad").def("ATTN_GRAD", 1)
}
fn sum_all_spec() -> ShaderSpec {
    ShaderSpec::new("pool", "sum_all").def("SUM_ALL", 1)
}

// ---------------------------------------------------------------------------
// Chunking by rows (shared with `resize`).

/// Elements one window may hold: the device limit, lowered by tests so that
/// small tensors take the chunked path.
fn window_limit(gpu: &Gpu) -> u64 {
    #[cfg(test)]
    if let Some(limit) = tests::WINDOW_LIMIT.with(std::cell::Cell::get) {
        return limit.min(gpu.max_window_elems());
    }
    gpu.max_window_elems()
}

/// Splits rows [0, rows) into the fewest consecutive chunks of at most
/// `max_rows` rows whose operand spans (element ranges, from `spans`, growing
/// with the chunk) each fit in `limit` elements.
fn row_chunks(
    op: &str,
    rows: u64,
    max_rows: u64,
    limit: u64,
    spans: &impl Fn(u64, u64) -> Vec<Range<u64>>,
) -> Result<Vec<Range<u64>>> {
    let widest = |a: u64, b: u64| {
        spans(a, b)
            .iter()
            .map(|s| s.end.saturating_sub(s.start))
            .max()
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let one = widest(r0, r0 + 1);
        if one > limit {
            return Err(Error::LimitExceeded {
                what: format!("{op} on a single row"),
                needed: one * 4,
                limit: limit * 4,
                name: "max_storage_buffer_binding_size",
                fix: "use a narrower image or fewer channels".into(),
            });
        }
        let (mut lo, mut hi) = (r0 + 1, rows.min(r0.saturating_add(max_rows.max(1))));
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if widest(r0, mid) <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        out.push(r0..lo);
        r0 = lo;
    }
    Ok(out)
}

/// Global rows of another row space (`other` rows per image) that global
/// rows [r0, r1) of this one (`per` rows per image) need, where `need(a, b)`
/// gives the rows [lo, hi) one image needs for its rows a..=b.
pub(crate) fn image_rows(
    r0: u64,
    r1: u64,
    per: u64,
    other: u64,
    need: impl Fn(u64, u64) -> (u64, u64),
) -> Range<u64> {
    let (n0, n1) = (r0 / per, (r1 - 1) / per);
    if n0 == n1 {
        let (lo, hi) = need(r0 % per, (r1 - 1) % per);
        n0 * other + lo..n0 * other + hi.max(lo)
    } else {
        n0 * other + need(r0 % per, per - 1).0..n1 * other + need(0, (r1 - 1) % per).1
    }
}

pub(crate) fn scaled(r: Range<u64>, k: u64) -> Range<u64> {
    r.start * k..r.end * k
}

/// A kernel launched over rows [0, rows) of its thread space, chunked so that
/// each operand's span fits in one window.
pub(crate) struct RowLaunch<'a> {
    pub op: &'a str,
    pub spec: &'a ShaderSpec,
    /// In the order of the bindings after the uniform block.
    pub operands: &'a [&'a DeviceTensor],
    pub rows: u64,
    /// Rows per dispatch at most (bounds the loops of reducing kernels).
    pub max_rows: u64,
}

impl RowLaunch<'_> {
    /// `spans` gives each operand's element range for a chunk of rows;
    /// `params` builds the uniform block of a chunk from its rows, its
    /// invocation count and the operands' index offsets (window shift minus
    /// span start, wrapping: kernels add it to tensor-relative indices).
    pub(crate) fn record(
        &self,
        rec: &mut Recorder,
        spans: impl Fn(u64, u64) -> Vec<Range<u64>>,
        threads: impl Fn(u64, u64) -> u64,
        params: impl Fn(Range<u64>, u32, &[u32]) -> Vec<u8>,
    ) -> Result<()> {
        let (op, spec, operands) = (self.op, self.spec, self.operands);
        let gpu = rec.gpu();
        for chunk in row_chunks(op, self.rows, self.max_rows, window_limit(gpu), &spans)? {
            let mut windows = Vec::with_capacity(operands.len());
            let mut offsets = Vec::with_capacity(operands.len());
            for (t, span) in operands.iter().zip(spans(chunk.start, chunk.end)) {
                // An empty span still needs a valid binding; the kernel reads none of it.
                let start = span.start.min(t.numel().saturating_sub(1));
                let w = t.window(gpu, start, span.end.saturating_sub(start).max(1))?;
                offsets.push(w.shift.wrapping_sub(start as u32));
                windows.push(w);
            }
            let n = threads(chunk.start, chunk.end);
            let bytes = params(chunk, n as u32, &offsets);
            rec.dispatch_groups(
                spec,
                &bytes,
                windows.iter().map(Into::into).collect(),
                n.div_ceil(WG),
            )?;
        }
        Ok(())
    }
}

fn offsets5(off: &[u32]) -> [u32; 5] {
    let mut o = [0; 5];
    o[..off.len()].copy_from_slice(off);
    o
}

// ---------------------------------------------------------------------------
// Max-pool and subsample.

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
            spec: &max_pool_spec(index, vec4),
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

/// Mesa 22's llvmpipe silently ends a loop nest after 65535 iterations in
/// total per invocation, so reducing kernels take at most this many rows'
/// worth of pixels per dispatch (GeM's two loop nests stay under the limit
/// together); later dispatches continue the sums.
const LOOP_BUDGET: u64 = 32_000;

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
        for chunk in crate::gpu::chunks(v.numel(), window_limit(gpu).min(64 * LOOP_BUDGET)) {
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
    use std::cell::Cell;

    use super::*;
    use crate::testing::{check_op, dispatch_labels, grad_check, test_gpu, OpCase};

    thread_local! {
        pub(crate) static WINDOW_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Runs `f` with windows of at most `limit` elements, so that tiny
    /// tensors exercise the chunked path of every kernel.
    pub(crate) fn with_window_limit(limit: u64, f: impl FnOnce()) {
        WINDOW_LIMIT.with(|l| l.set(Some(limit)));
        f();
        WINDOW_LIMIT.with(|l| l.set(None));
    }

    /// p as a [1] input.
    fn power(v: f32) -> crate::tensor::HostTensor {
        Tensor {
            shape: Shape::new(&[1]),
            data: vec![v],
        }
    }

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

    #[test]
    fn chunked_paths_match_reference() {
        // Windows of 128 elements: every kernel runs on several chunks, some
        // of which split an image's rows and some of which span images.
        with_window_limit(128, || {
            for pool in POOLS {
                grad_check(&OpCase::new(pool).input([2, 9, 7, 3], -2.0, 2.0));
                grad_check(&OpCase::new(pool).input([3, 7, 9, 1], -2.0, 2.0));
                check_op(&OpCase::new(pool).input([2, 9, 7, 4], -2.0, 2.0));
            }
            check_op(&OpCase::new(Subsample { stride: 2 }).input([3, 7, 9, 8], -1.0, 1.0));
            grad_check(&OpCase::new(MeanPool).input([3, 7, 5, 3], -2.0, 2.0));
            grad_check(
                &OpCase::new(AttentionPool)
                    .input([3, 7, 5, 3], -2.0, 2.0)
                    .input([3, 7, 5, 1], 0.0, 3.0),
            );
            grad_check(
                &OpCase::new(GeMPool { eps: 1e-6 })
                    .input([3, 7, 5, 3], -0.5, 2.0)
                    .input([1], 2.0, 4.0),
            );
            check_op(
                &OpCase::new(GeMPool { eps: 1e-6 })
                    .input([2, 9, 4, 3], 100.0, 5000.0)
                    .tensor(power(12.0)),
            );
            check_op(&OpCase::new(SumAll).input([700], -1.0, 1.0));
        });
        // Three or more chunks per image: GeM merges partial results in log space.
        with_window_limit(16, || {
            check_op(
                &OpCase::new(GeMPool { eps: 1e-6 })
                    .input([2, 13, 1, 3], 100.0, 5000.0)
                    .tensor(power(12.0)),
            );
            grad_check(
                &OpCase::new(GeMPool { eps: 1e-6 })
                    .input([2, 13, 1, 3], -0.5, 2.0)
                    .input([1], 2.0, 4.0),
            );
        });
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
