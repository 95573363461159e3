//! Batch normalisation and per-channel affines (`shaders/batchnorm.wgsl`).
//!
//! Tensors are [..., C] with channels innermost (NHWC), viewed as rows × C.
//! Per-channel statistics are column reductions in two stages (partials per
//! block of rows, then a per-channel finalize), windowed so that tensors of
//! any size work and accurate for millions of rows. Every elementwise map is
//! the one `apply` kernel: out = (u − m)·su + v·sv + t with per-channel m, su,
//! sv, t. Batch-norm training:
//!   1. per block of rows, Welford's mean and M2; 2. per channel, Chan's merge
//!      of the blocks → mean, biased variance, scale = γ/√(var+ε);
//!   3. y = (x−μ)·scale + β. One read of x for the statistics, one to normalise.
//!
//! Momentum convention: PyTorch's, running ← (1−m)·running + m·batch with
//! m = 0.1 by default. Keras writes moving ← k·moving + (1−k)·batch, so its
//! momentum 0.99 is m = 0.01 here (`BatchNormRunningUpdate::keras`).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{chunks, rows_per_window, DeviceTensor, Gpu, Recorder, ShaderSpec, Window};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::{expect_inputs, Fill};
use crate::tensor::{RefTensor, Shape, Tensor};

/// Workgroup size of the per-channel kernels: lanes over channels.
const WG_CHANNELS: u64 = 64;
/// Rows each lane of `apply` walks through.
const APPLY_ROWS_PER_LANE: u64 = 64;
/// A column reduction makes at most this many blocks of rows...
const MAX_BLOCKS: u64 = 1024;
/// ...of at least this many rows (fewer only when the tensor has fewer)...
const MIN_BLOCK_ROWS: u64 = 64;
/// ...and at most this many partials per plane (for wide tensors).
const PARTIAL_BUDGET: u64 = 1 << 23;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    n: u32,
    c: u32,
    row_block: u32,
    g0: u32,
    ntiles: u32,
    nblocks: u32,
    alpha: f32,
    beta: f32,
    /// Element shift of binding k + 1.
    shifts: [u32; 12],
}

/// Records one dispatch whose bindings are `windows` in order, their shifts in the params.
fn launch(
    rec: &mut Recorder,
    spec: &ShaderSpec,
    mut p: Params,
    windows: &[Window],
    groups: u64,
) -> Result<()> {
    if windows.len() > p.shifts.len() {
        return Err(Error::Graph(format!(
            "{}: {} bindings exceed the shift slots",
            spec.label(),
            windows.len()
        )));
    }
    for (s, w) in p.shifts.iter_mut().zip(windows) {
        *s = w.shift;
    }
    rec.dispatch_groups(
        spec,
        bytemuck::bytes_of(&p),
        windows.iter().map(Into::into).collect(),
        groups,
    )
}

/// (rows, channels) of a [..., C] tensor; a vector is one row.
pub(crate) fn rows_channels(shape: &Shape) -> (u64, u64) {
    let c = shape.dims().last().copied().unwrap_or(1) as u64;
    (shape.numel() as u64 / c.max(1), c)
}

/// The channel count of a [..., C] operand, which must have C ≥ 1.
pub(crate) fn channels(op: &str, x: &Shape) -> Result<usize> {
    match x.dims().last() {
        Some(&c) if c > 0 => Ok(c),
        _ => Err(Error::shape(
            op,
            format!("expected a [..., C] tensor with C ≥ 1, got {x:?}"),
        )),
    }
}

fn expect_channel_vector(op: &str, what: &str, s: &Shape, c: usize) -> Result<()> {
    if s.dims() != [c] {
        return Err(Error::shape(
            op,
            format!("{what} must have shape [{c}], got {s:?}"),
        ));
    }
    Ok(())
}

fn expect_same(op: &str, what: &str, s: &Shape, x: &Shape) -> Result<()> {
    if s != x {
        return Err(Error::shape(
            op,
            format!("{what} must have the input's shape {x:?}, got {s:?}"),
        ));
    }
    Ok(())
}

/// Batch statistics need two values per channel (as PyTorch insists in training).
fn expect_batch(op: &str, x: &Shape) -> Result<usize> {
    let c = channels(op, x)?;
    let rows = x.numel() / c;
    if x.rank() < 2 || rows < 2 {
        return Err(Error::shape(
            op,
            format!("batch statistics need at least 2 rows per channel, got {x:?}"),
        ));
    }
    Ok(c)
}

fn expect_eps(op: &str, eps: f32) -> Result<()> {
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(Error::unsupported(
            op,
            format!("eps must be finite and ≥ 0, got {eps}"),
        ));
    }
    Ok(())
}

/// How a column reduction splits rows × c: blocks of `row_block` rows give one
/// partial per channel each; a window holds `window_rows` rows (whole blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ColPlan {
    c: u64,
    rows: u64,
    row_block: u64,
    nblocks: u64,
    window_rows: u64,
}

fn col_plan(rows: u64, c: u64, max_elems: u64) -> Result<ColPlan> {
    let fit = rows_per_window(c, max_elems)?;
    let max_blocks = (PARTIAL_BUDGET / c).clamp(1, MAX_BLOCKS);
    let row_block = rows.div_ceil(max_blocks).max(MIN_BLOCK_ROWS).min(fit);
    Ok(ColPlan {
        c,
        rows,
        row_block,
        nblocks: rows.div_ceil(row_block),
        window_rows: fit / row_block * row_block,
    })
}

/// What `col_partial` computes per channel and block (see the shader).
enum Reduce<'a> {
    Sum,
    Moments,
    Dot {
        b: &'a DeviceTensor,
        center: Option<&'a DeviceTensor>,
    },
}

fn partial_spec(moments: bool, dot: bool, center: bool) -> ShaderSpec {
    let mut s = ShaderSpec::new("batchnorm", "col_partial").def("COL_PARTIAL", 1);
    if moments {
        s = s.def("MOMENTS", 1).def("SECOND", 1);
    }
    if center {
        s = s.def("CENTER", 1).def("B_M", 3);
    }
    if dot {
        s = s
            .def("DOT", 1)
            .def("SECOND", 1)
            .def("B_B", if center { 4 } else { 3 });
    }
    s
}

fn sums_spec(second: bool) -> ShaderSpec {
    ShaderSpec::new("batchnorm", "finalize_sums")
        .def("FINALIZE", 1)
        .def("FIN_SUMS", 1)
        .def("SECOND", second as u32)
}

fn moments_spec() -> ShaderSpec {
    ShaderSpec::new("batchnorm", "finalize_moments")
        .def("FINALIZE", 1)
        .def("FIN_MOMENTS", 1)
}

fn bn_backward_spec(stat_grads: bool) -> ShaderSpec {
    ShaderSpec::new("batchnorm", "finalize_bn_backward")
        .def("FINALIZE", 1)
        .def("FIN_BN_BACKWARD", 1)
        .def("STAT_GRADS", stat_grads as u32)
}

fn running_spec() -> ShaderSpec {
    ShaderSpec::new("batchnorm", "running_update").def("RUNNING", 1)
}

/// Which terms of out = (u − m)·su + v·sv + t an `apply` specialisation has.
#[derive(Clone, Copy)]
struct Terms {
    center: bool,
    scale: bool,
    v: bool,
    shift: bool,
}

const AFFINE: Terms = Terms {
    center: false,
    scale: true,
    v: false,
    shift: true,
};
const BIAS: Terms = Terms {
    center: false,
    scale: false,
    v: false,
    shift: true,
};
const SCALE_ONLY: Terms = Terms {
    center: false,
    scale: true,
    v: false,
    shift: false,
};
const BN_FORWARD: Terms = Terms {
    center: true,
    scale: true,
    v: false,
    shift: true,
};
const BN_BACKWARD: Terms = Terms {
    center: true,
    scale: true,
    v: true,
    shift: true,
};

/// Bindings: u, out, then m, su, (v, sv), t as present, numbered in that order.
fn apply_spec(t: Terms) -> ShaderSpec {
    let mut spec = ShaderSpec::new("batchnorm", "apply")
        .def("APPLY", 1)
        .def("B_OUT", 2);
    let mut next = 3;
    let groups: [(bool, &str, &[&str]); 4] = [
        (t.center, "CENTER", &["B_M"]),
        (t.scale, "SCALE", &["B_SU"]),
        (t.v, "V", &["B_V", "B_SV"]),
        (t.shift, "SHIFT", &["B_T"]),
    ];
    for (on, flag, names) in groups {
        if on {
            spec = spec.def(flag, 1);
            for name in names {
                spec = spec.def(name, next);
                next += 1;
            }
        }
    }
    spec
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = vec![
        partial_spec(false, false, false),
        partial_spec(true, false, false),
        partial_spec(false, true, false),
        partial_spec(false, true, true),
        sums_spec(false),
        sums_spec(true),
        moments_spec(),
        bn_backward_spec(false),
        bn_backward_spec(true),
        running_spec(),
    ];
    specs.extend([AFFINE, BIAS, SCALE_ONLY, BN_FORWARD, BN_BACKWARD].map(apply_spec));
    specs
}

/// A scratch buffer of per-block, per-channel partials (`planes` of them).
struct Partials {
    plan: ColPlan,
    window: Window,
}

impl Partials {
    fn new(gpu: &Gpu, shape: &Shape, planes: u64) -> Result<Partials> {
        let (rows, c) = rows_channels(shape);
        let plan = col_plan(rows, c, gpu.max_window_elems())?;
        let count = plan.nblocks * c * planes;
        let buffer = gpu.storage_buffer("channel partials", count * 4)?;
        Ok(Partials {
            plan,
            window: gpu.window(&buffer, 0, count)?,
        })
    }

    /// Records the partials of `a` (rows × c, as planned) per `what`.
    fn record(&self, rec: &mut Recorder, a: &DeviceTensor, what: Reduce) -> Result<()> {
        let gpu = rec.gpu();
        let ColPlan {
            c,
            rows,
            row_block,
            nblocks,
            window_rows,
        } = self.plan;
        let (spec, center, b) = match what {
            Reduce::Sum => (partial_spec(false, false, false), None, None),
            Reduce::Moments => (partial_spec(true, false, false), None, None),
            Reduce::Dot { b, center } => {
                (partial_spec(false, true, center.is_some()), center, Some(b))
            }
        };
        let center = center.map(|m| m.whole(gpu)).transpose()?;
        let ntiles = c.div_ceil(WG_CHANNELS);
        for range in chunks(rows, window_rows) {
            let n = range.end - range.start;
            let mut windows = vec![a.window(gpu, range.start * c, n * c)?, self.window.clone()];
            windows.extend(center.clone());
            if let Some(b) = b {
                windows.push(b.window(gpu, range.start * c, n * c)?);
            }
            let p = Params {
                n: n as u32,
                c: c as u32,
                row_block: row_block as u32,
                g0: (range.start / row_block) as u32,
                ntiles: ntiles as u32,
                nblocks: nblocks as u32,
                ..Default::default()
            };
            launch(rec, &spec, p, &windows, ntiles * n.div_ceil(row_block))?;
        }
        Ok(())
    }

    /// Params of a per-channel finalize kernel over these partials.
    fn finalize_params(&self, alpha: f32, beta: f32) -> Params {
        Params {
            n: self.plan.rows as u32,
            row_block: self.plan.row_block as u32,
            c: self.plan.c as u32,
            nblocks: self.plan.nblocks as u32,
            alpha,
            beta,
            ..Default::default()
        }
    }

    fn channel_groups(&self) -> u64 {
        self.plan.c.div_ceil(WG_CHANNELS)
    }

    /// out1 = Σ plane 0 (and out2 = Σ plane 1) per channel.
    fn record_sums(
        &self,
        rec: &mut Recorder,
        out1: &DeviceTensor,
        out2: Option<&DeviceTensor>,
    ) -> Result<()> {
        let gpu = rec.gpu();
        let mut windows = vec![self.window.clone(), out1.whole(gpu)?];
        if let Some(o) = out2 {
            windows.push(o.whole(gpu)?);
        }
        launch(
            rec,
            &sums_spec(out2.is_some()),
            self.finalize_params(0.0, 0.0),
            &windows,
            self.channel_groups(),
        )
    }
}

/// Per-channel scratch vectors (`count` planes of c values) bound as windows.
fn channel_scratch(gpu: &Gpu, label: &str, c: u64, count: u64) -> Result<(Window, Vec<Window>)> {
    let buffer = gpu.storage_buffer(label, c * count * 4)?;
    let planes = (0..count)
        .map(|k| gpu.window(&buffer, k * c, c))
        .collect::<Result<_>>()?;
    Ok((gpu.window(&buffer, 0, c * count)?, planes))
}

/// The per-channel operands of `apply`; `v` comes with its scale.
#[derive(Default)]
struct ChannelTerms<'a> {
    m: Option<Window>,
    su: Option<Window>,
    v: Option<(&'a DeviceTensor, Window)>,
    t: Option<Window>,
}

/// out = (u − m)·su + v·sv + t over windows of whole rows.
fn record_apply(
    rec: &mut Recorder,
    u: &DeviceTensor,
    out: &DeviceTensor,
    terms: ChannelTerms,
) -> Result<()> {
    let gpu = rec.gpu();
    let (rows, c) = rows_channels(&u.shape);
    let spec = apply_spec(Terms {
        center: terms.m.is_some(),
        scale: terms.su.is_some(),
        v: terms.v.is_some(),
        shift: terms.t.is_some(),
    });
    // As in the shader: lanes per row, and rows per lane group in a block.
    let lane_rows = WG_CHANNELS / c.min(WG_CHANNELS);
    let row_block = APPLY_ROWS_PER_LANE * lane_rows;
    let ntiles = c.div_ceil(WG_CHANNELS);
    for range in chunks(rows, rows_per_window(c, gpu.max_window_elems())?) {
        let (start, n) = (range.start * c, (range.end - range.start) * c);
        let mut windows = vec![u.window(gpu, start, n)?, out.window(gpu, start, n)?];
        windows.extend(terms.m.clone());
        windows.extend(terms.su.clone());
        if let Some((v, sv)) = &terms.v {
            windows.push(v.window(gpu, start, n)?);
            windows.push(sv.clone());
        }
        windows.extend(terms.t.clone());
        let window_rows = range.end - range.start;
        let p = Params {
            n: window_rows as u32,
            c: c as u32,
            row_block: row_block as u32,
            ntiles: ntiles as u32,
            ..Default::default()
        };
        launch(
            rec,
            &spec,
            p,
            &windows,
            ntiles * window_rows.div_ceil(row_block),
        )?;
    }
    Ok(())
}

fn zeros(g: &mut Graph, shape: &Shape) -> Result<TensorId> {
    g.apply1(
        Fill {
            shape: shape.clone(),
            value: 0.0,
        },
        &[],
    )
}

/// Per-channel mean and biased variance of rows × c data (two-pass, f64).
fn ref_moments(x: &RefTensor) -> (Vec<f64>, Vec<f64>) {
    let (rows, c) = rows_channels(&x.shape);
    let (rows, c) = (rows as usize, c as usize);
    let mut mean = vec![0.0; c];
    for row in x.data.chunks(c) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let mut var = vec![0.0; c];
    for row in x.data.chunks(c) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    var.iter_mut().for_each(|s| *s /= rows as f64);
    (mean, var)
}

fn vector(data: Vec<f64>) -> RefTensor {
    Tensor {
        shape: Shape::new(&[data.len()]),
        data,
    }
}

/// Maps every element of rows × c data with its channel index.
fn map_channels(x: &RefTensor, f: impl Fn(usize, usize, f64) -> f64) -> RefTensor {
    let c = rows_channels(&x.shape).1 as usize;
    Tensor {
        shape: x.shape.clone(),
        data: x
            .data
            .iter()
            .enumerate()
            .map(|(i, &v)| f(i, i % c, v))
            .collect(),
    }
}

/// Batch normalisation in training mode: y = (x − μ)/√(σ² + ε)·γ + β with the
/// batch mean μ and biased variance σ² per channel (over all leading
/// dimensions). Inputs x [..., C] (at least 2 rows), γ [C], β [C]; outputs
/// y, μ [C], σ² [C].
#[derive(Clone, Copy, Debug)]
pub struct BatchNormTrain {
    pub eps: f32,
}

impl Op for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batchnorm_train"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 3)?;
        expect_eps(self.name(), self.eps)?;
        let c = expect_batch(self.name(), inputs[0])?;
        expect_channel_vector(self.name(), "gamma", inputs[1], c)?;
        expect_channel_vector(self.name(), "beta", inputs[2], c)?;
        Ok(vec![inputs[0].clone(), Shape::new(&[c]), Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, gamma, beta) = (inputs[0], &inputs[1].data, &inputs[2].data);
        let (mean, var) = ref_moments(x);
        let eps = self.eps as f64;
        let y = map_channels(x, |_, c, v| {
            (v - mean[c]) / (var[c] + eps).sqrt() * gamma[c] + beta[c]
        });
        Ok(vec![y, vector(mean), vector(var)])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, gamma, beta) = (inputs[0], inputs[1], inputs[2]);
        let (y, mean, var) = (outputs[0], outputs[1], outputs[2]);
        let c = rows_channels(&x.shape).1;
        let parts = Partials::new(gpu, &x.shape, 2)?;
        parts.record(rec, x, Reduce::Moments)?;
        let (scale, _) = channel_scratch(gpu, "batchnorm scale", c, 1)?;
        let windows = [
            parts.window.clone(),
            gamma.whole(gpu)?,
            mean.whole(gpu)?,
            var.whole(gpu)?,
            scale.clone(),
        ];
        let p = parts.finalize_params(1.0, self.eps);
        launch(rec, &moments_spec(), p, &windows, parts.channel_groups())?;
        let terms = ChannelTerms {
            m: Some(mean.whole(gpu)?),
            su: Some(scale),
            t: Some(beta.whole(gpu)?),
            v: None,
        };
        record_apply(rec, x, y, terms)
    }
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let (x, gamma) = (inputs[0], inputs[1]);
        let dy = match grads[0] {
            Some(d) => d,
            None => zeros(g, &g.shape(x).clone())?,
        };
        let mut ins = vec![x, gamma, outputs[1], outputs[2], dy];
        let stat_grads = grads[1].is_some() || grads[2].is_some();
        if stat_grads {
            for d in &grads[1..3] {
                ins.push(match *d {
                    Some(d) => d,
                    None => zeros(g, &g.shape(gamma).clone())?,
                });
            }
        }
        let out = g.apply(
            BatchNormGrad {
                eps: self.eps,
                stat_grads,
            },
            &ins,
        )?;
        Ok(out.into_iter().map(Some).collect())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        8 * inputs[0].numel() as u64
    }
}

/// The batch-norm backward through the batch statistics. Inputs x, γ, μ, σ²,
/// dy, and with `stat_grads` also dμ, dσ² (gradients reaching the mean and
/// variance outputs); outputs dx, dγ, dβ.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormGrad {
    pub eps: f32,
    pub stat_grads: bool,
}

impl Op for BatchNormGrad {
    fn name(&self) -> &'static str {
        "batchnorm_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, if self.stat_grads { 7 } else { 5 })?;
        expect_eps(self.name(), self.eps)?;
        let x = inputs[0];
        let c = expect_batch(self.name(), x)?;
        for (what, s) in ["gamma", "mean", "var"].iter().zip(&inputs[1..4]) {
            expect_channel_vector(self.name(), what, s, c)?;
        }
        expect_same(self.name(), "dy", inputs[4], x)?;
        for (what, s) in ["dmean", "dvar"].iter().zip(&inputs[5..]) {
            expect_channel_vector(self.name(), what, s, c)?;
        }
        Ok(vec![x.clone(), Shape::new(&[c]), Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, gamma, mean, var, dy) = (
            inputs[0],
            &inputs[1].data,
            &inputs[2].data,
            &inputs[3].data,
            inputs[4],
        );
        let (rows, c) = rows_channels(&x.shape);
        let (n, c) = (rows as f64, c as usize);
        let inv: Vec<f64> = var
            .iter()
            .map(|v| 1.0 / (v + self.eps as f64).sqrt())
            .collect();
        let (mut s1, mut s2) = (vec![0.0; c], vec![0.0; c]);
        for (i, (&xv, &d)) in x.data.iter().zip(&dy.data).enumerate() {
            s1[i % c] += d;
            s2[i % c] += d * (xv - mean[i % c]);
        }
        let zero = vec![0.0; c];
        let (dmean, dvar) = if self.stat_grads {
            (&inputs[5].data, &inputs[6].data)
        } else {
            (&zero, &zero)
        };
        let dx = map_channels(x, |i, ch, xv| {
            let gi = gamma[ch] * inv[ch];
            let xhat = (xv - mean[ch]) * inv[ch];
            gi * (dy.data[i] - s1[ch] / n - xhat * inv[ch] * s2[ch] / n)
                + dmean[ch] / n
                + 2.0 * dvar[ch] * (xv - mean[ch]) / n
        });
        let dgamma = s2.iter().zip(&inv).map(|(s, i)| s * i).collect();
        Ok(vec![dx, vector(dgamma), vector(s1)])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, gamma, mean, var, dy) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
        let (dx, dgamma, dbeta) = (outputs[0], outputs[1], outputs[2]);
        let (rows, c) = rows_channels(&x.shape);
        let parts = Partials::new(gpu, &x.shape, 2)?;
        parts.record(
            rec,
            dy,
            Reduce::Dot {
                b: x,
                center: Some(mean),
            },
        )?;
        let (coef, planes) = channel_scratch(gpu, "batchnorm backward coefficients", c, 3)?;
        let mut windows = vec![
            parts.window.clone(),
            gamma.whole(gpu)?,
            var.whole(gpu)?,
            dgamma.whole(gpu)?,
            dbeta.whole(gpu)?,
            coef,
        ];
        for t in &inputs[5..] {
            windows.push(t.whole(gpu)?);
        }
        let p = parts.finalize_params(1.0 / rows as f32, self.eps);
        launch(
            rec,
            &bn_backward_spec(self.stat_grads),
            p,
            &windows,
            parts.channel_groups(),
        )?;
        let [a, k, d]: [Window; 3] = planes
            .try_into()
            .map_err(|_| Error::Graph("batchnorm_grad: coefficient planes".into()))?;
        let terms = ChannelTerms {
            m: Some(mean.whole(gpu)?),
            su: Some(k),
            v: Some((dy, a)),
            t: Some(d),
        };
        record_apply(rec, x, dx, terms)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        8 * inputs[0].numel() as u64
    }
}

/// Updates the running statistics in place from one batch's mean and biased
/// variance: new = (1 − momentum)·running + momentum·batch (PyTorch's
/// convention), the batch variance first made unbiased (× n/(n−1)) when
/// `unbiased` (PyTorch) or kept biased (Keras). Inputs running_mean,
/// running_var (both overwritten), batch_mean, batch_var, all [C]; no outputs.
/// `count` is the number of rows the batch statistics were taken over (N·H·W).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormRunningUpdate {
    pub momentum: f32,
    pub unbiased: bool,
    pub count: usize,
}

impl BatchNormRunningUpdate {
    /// PyTorch's default: momentum 0.1, unbiased running variance.
    pub fn pytorch(count: usize) -> Self {
        BatchNormRunningUpdate {
            momentum: 0.1,
            unbiased: true,
            count,
        }
    }
    /// Keras's convention: `keras_momentum` weighs the old value (0.99 in DELG's
    /// training), so the momentum here is 1 − keras_momentum; the variance stays biased.
    pub fn keras(keras_momentum: f32, count: usize) -> Self {
        BatchNormRunningUpdate {
            momentum: 1.0 - keras_momentum,
            unbiased: false,
            count,
        }
    }
    fn var_factor(&self) -> f64 {
        if self.unbiased {
            self.count as f64 / (self.count as f64 - 1.0)
        } else {
            1.0
        }
    }
}

impl Op for BatchNormRunningUpdate {
    fn name(&self) -> &'static str {
        "batchnorm_running_update"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 4)?;
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::unsupported(
                self.name(),
                format!("momentum must be in [0, 1], got {}", self.momentum),
            ));
        }
        if self.count < 2 {
            return Err(Error::unsupported(
                self.name(),
                format!("batch statistics need a count ≥ 2, got {}", self.count),
            ));
        }
        let c = channels(self.name(), inputs[0])?;
        for (what, s) in ["running_mean", "running_var", "batch_mean", "batch_var"]
            .iter()
            .zip(inputs)
        {
            expect_channel_vector(self.name(), what, s, c)?;
        }
        Ok(vec![])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let m = self.momentum as f64;
        let f = self.var_factor();
        let mix = |run: &RefTensor, batch: &RefTensor, scale: f64| {
            vector(
                run.data
                    .iter()
                    .zip(&batch.data)
                    .map(|(r, b)| (1.0 - m) * r + m * scale * b)
                    .collect(),
            )
        };
        Ok(vec![
            mix(inputs[0], inputs[2], 1.0),
            mix(inputs[1], inputs[3], f),
        ])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        _outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let c = inputs[0].numel();
        let windows = inputs
            .iter()
            .map(|t| t.whole(gpu))
            .collect::<Result<Vec<_>>>()?;
        let p = Params {
            n: c as u32,
            c: c as u32,
            alpha: self.momentum,
            beta: self.var_factor() as f32,
            ..Default::default()
        };
        launch(rec, &running_spec(), p, &windows, c.div_ceil(WG_CHANNELS))
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        6 * inputs[0].numel() as u64
    }
    fn mutates(&self) -> &'static [usize] {
        &[0, 1]
    }
}

/// y = x·scale[c] + shift[c] over [..., C]: inference batch norm when it is not
/// folded into a convolution (see `fold_batchnorm`), or with `scale: false`
/// a plain bias add y = x + shift[c]. Inputs x, [scale,] shift.
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffine {
    pub scale: bool,
}

impl ChannelAffine {
    pub fn affine() -> Self {
        ChannelAffine { scale: true }
    }
    pub fn bias() -> Self {
        ChannelAffine { scale: false }
    }
}

impl Op for ChannelAffine {
    fn name(&self) -> &'static str {
        if self.scale {
            "channel_affine"
        } else {
            "channel_bias"
        }
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2 + self.scale as usize)?;
        let c = channels(self.name(), inputs[0])?;
        for s in &inputs[1..] {
            expect_channel_vector(self.name(), "a per-channel operand", s, c)?;
        }
        Ok(vec![inputs[0].clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shift = &inputs[inputs.len() - 1].data;
        let scale = |c: usize| if self.scale { inputs[1].data[c] } else { 1.0 };
        Ok(vec![map_channels(inputs[0], |_, c, v| {
            v * scale(c) + shift[c]
        })])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let su = if self.scale {
            Some(inputs[1].whole(gpu)?)
        } else {
            None
        };
        let t = Some(inputs[inputs.len() - 1].whole(gpu)?);
        record_apply(
            rec,
            inputs[0],
            outputs[0],
            ChannelTerms {
                su,
                t,
                ..Default::default()
            },
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
            return Ok(vec![None; inputs.len()]);
        };
        if !self.scale {
            return Ok(vec![Some(dy), Some(g.apply1(ChannelSum, &[dy])?)]);
        }
        let out = g.apply(ChannelAffineGrad, &[inputs[0], inputs[1], dy])?;
        Ok(out.into_iter().map(Some).collect())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        (1 + self.scale as u64) * inputs[0].numel() as u64
    }
}

/// Gradients of `ChannelAffine` with a scale: inputs x, scale, dy; outputs
/// dx = dy·scale, dscale = Σ dy·x, dshift = Σ dy (sums over all rows).
#[derive(Clone, Copy, Debug)]
pub struct ChannelAffineGrad;

impl Op for ChannelAffineGrad {
    fn name(&self) -> &'static str {
        "channel_affine_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 3)?;
        let c = channels(self.name(), inputs[0])?;
        expect_channel_vector(self.name(), "scale", inputs[1], c)?;
        expect_same(self.name(), "dy", inputs[2], inputs[0])?;
        Ok(vec![inputs[0].clone(), Shape::new(&[c]), Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (x, scale, dy) = (inputs[0], &inputs[1].data, inputs[2]);
        let c = scale.len();
        let (mut ds, mut dt) = (vec![0.0; c], vec![0.0; c]);
        for (i, (xv, d)) in x.data.iter().zip(&dy.data).enumerate() {
            ds[i % c] += d * xv;
            dt[i % c] += d;
        }
        Ok(vec![
            map_channels(dy, |_, ch, d| d * scale[ch]),
            vector(ds),
            vector(dt),
        ])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (x, scale, dy) = (inputs[0], inputs[1], inputs[2]);
        let parts = Partials::new(gpu, &x.shape, 2)?;
        parts.record(rec, dy, Reduce::Dot { b: x, center: None })?;
        parts.record_sums(rec, outputs[2], Some(outputs[1]))?;
        record_apply(
            rec,
            dy,
            outputs[0],
            ChannelTerms {
                su: Some(scale.whole(gpu)?),
                ..Default::default()
            },
        )
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        4 * inputs[0].numel() as u64
    }
}

/// Per-channel sum over all leading dimensions: [..., C] → [C] (bias gradients).
#[derive(Clone, Copy, Debug)]
pub struct ChannelSum;

impl Op for ChannelSum {
    fn name(&self) -> &'static str {
        "channel_sum"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        Ok(vec![Shape::new(&[channels(self.name(), inputs[0])?])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let c = rows_channels(&inputs[0].shape).1 as usize;
        let mut s = vec![0.0; c];
        for (i, v) in inputs[0].data.iter().enumerate() {
            s[i % c] += v;
        }
        Ok(vec![vector(s)])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let parts = Partials::new(rec.gpu(), &inputs[0].shape, 1)?;
        parts.record(rec, inputs[0], Reduce::Sum)?;
        parts.record_sums(rec, outputs[0], None)
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// Folds inference batch norm into a per-channel affine:
/// scale = γ/√(var + ε), shift = β − mean·scale, so that
/// BN(x) = x·scale + shift (for `ChannelAffine` or a convolution epilogue).
pub fn fold_batchnorm(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = gamma.len();
    if [beta.len(), mean.len(), var.len()] != [c; 3] {
        return Err(Error::shape(
            "fold_batchnorm",
            format!(
                "gamma, beta, mean, var have lengths {c}, {}, {}, {}",
                beta.len(),
                mean.len(),
                var.len()
            ),
        ));
    }
    expect_eps("fold_batchnorm", eps)?;
    let scale: Vec<f64> = gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((&b, &m), s)| (b as f64 - m as f64 * s) as f32)
        .collect();
    Ok((scale.into_iter().map(|s| s as f32).collect(), shift))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::Rng;
    use crate::testing::{check_op, grad_check, OpCase};

    fn bn_case(shape: &[usize], lo: f64, hi: f64) -> OpCase {
        let c = *shape.last().unwrap();
        OpCase::new(BatchNormTrain { eps: 1e-5 })
            .input(shape.to_vec(), lo, hi)
            .input([c], 0.5, 1.5)
            .input([c], -1.0, 1.0)
    }

    #[test]
    fn column_plans_cover_every_row_in_whole_blocks() {
        let p = col_plan(10_000_000, 64, 1 << 20).unwrap();
        assert_eq!(p.row_block, 9766);
        assert_eq!(p.nblocks, 1024);
        assert_eq!(p.window_rows % p.row_block, 0);
        assert!(p.window_rows * 64 <= 1 << 20);
        let small = col_plan(7, 3, 1 << 20).unwrap();
        assert_eq!((small.row_block, small.nblocks), (64, 1));
        // Wide rows: the block shrinks to fit a window and partials stay bounded.
        let wide = col_plan(5000, 4096, 1 << 16).unwrap();
        assert_eq!(wide.row_block, 16);
        assert!(wide.nblocks * 4096 <= 2 * PARTIAL_BUDGET);
        assert!(matches!(
            col_plan(3, 100, 64),
            Err(Error::LimitExceeded { .. })
        ));
    }

    #[test]
    fn batchnorm_train_matches_reference() {
        check_op(&bn_case(&[2, 1], -1.0, 1.0));
        check_op(&bn_case(&[2, 3, 5, 7], -2.0, 2.0));
        // Offset data: the two-pass variance must not cancel.
        check_op(&bn_case(&[3, 67, 5], 100.0, 101.0));
        check_op(&bn_case(&[1, 9, 9, 130], -3.0, 1.0));
    }

    #[test]
    fn batchnorm_train_over_many_windows_and_blocks() {
        // Windows of 1000 elements: 5 channels → windows of 192 rows (3 blocks of 64).
        check_op(&bn_case(&[2, 19, 23, 5], 10.0, 12.0).windows(1000));
        grad_check(&bn_case(&[2, 13, 11, 5], -1.0, 1.0).windows(1000));
        check_op(
            &OpCase::new(ChannelAffine::affine())
                .input([700, 3], -1.0, 1.0)
                .input([3], -2.0, 2.0)
                .input([3], -1.0, 1.0),
        );
        grad_check(
            &OpCase::new(ChannelAffine::affine())
                .input([333, 5], -1.0, 1.0)
                .input([5], -2.0, 2.0)
                .input([5], -1.0, 1.0),
        );
    }

    #[test]
    fn batchnorm_train_is_accurate_over_millions_of_rows() {
        // |μ| ≫ σ over 2M rows: f32 block sums alone would misplace the mean by ~1e-3.
        check_op(&bn_case(&[1000, 2000, 3], 1000.0, 1001.0));
        // An outlier first row: the origin of the shifted Welford pass.
        let mut case = bn_case(&[600_000, 3], 1000.0, 1001.0);
        case.inputs[0].data[..3].fill(0.0);
        check_op(&case);
    }

    /// Tensors larger than one 128 MiB binding, with the device's real windows
    /// (slow on lavapipe: `cargo test --lib -- --ignored beyond_one_binding`).
    #[test]
    #[ignore]
    fn batchnorm_beyond_one_binding() {
        check_op(&bn_case(&[2, 520, 520, 64], -1.0, 3.0));
        let mut rng = Rng::new(11);
        let x = rng.tensor([2, 520, 520, 64], -1.0, 3.0);
        let (mean, var) = ref_moments(&x.to_ref());
        let case = OpCase::new(BatchNormGrad {
            eps: 1e-5,
            stat_grads: false,
        })
        .tensor(x)
        .input([64], 0.5, 1.5)
        .tensor(vector(mean).to_host())
        .tensor(vector(var).to_host())
        .input([2, 520, 520, 64], -1.0, 1.0);
        check_op(&case);
    }

    #[test]
    fn batchnorm_gradients() {
        grad_check(&bn_case(&[2, 7], -1.0, 1.0));
        grad_check(&bn_case(&[3, 5, 3], -2.0, 2.0));
        grad_check(&bn_case(&[2, 3, 5, 65], 1.0, 3.0));
    }

    #[test]
    fn batchnorm_grad_without_stat_gradients() {
        let mut g = Graph::new();
        let x = g.input("x", [3, 11, 5]);
        let gamma = g.input("gamma", [5]);
        let beta = g.input("beta", [5]);
        let out = g
            .apply(BatchNormTrain { eps: 1e-3 }, &[x, gamma, beta])
            .unwrap();
        let seed = g.input("seed", [3, 11, 5]);
        let grads = g.backward(&[(out[0], seed)], &[x, gamma, beta]).unwrap();
        assert!(grads.iter().all(Option::is_some));
        let node = g.nodes.last().unwrap();
        assert_eq!(node.op.name(), "batchnorm_grad");
        assert_eq!(node.inputs.len(), 5);
        let mut rng = Rng::new(3);
        let op = BatchNormGrad {
            eps: 1e-3,
            stat_grads: false,
        };
        let x = rng.tensor([3, 11, 5], -1.0, 1.0);
        let (mean, var) = ref_moments(&x.to_ref());
        let case = OpCase::new(op)
            .tensor(x)
            .input([5], 0.5, 1.5)
            .tensor(vector(mean).to_host())
            .tensor(vector(var).to_host())
            .input([3, 11, 5], -1.0, 1.0);
        check_op(&case);
    }

    #[test]
    fn batchnorm_bad_shapes_are_errors() {
        let op = BatchNormTrain { eps: 1e-5 };
        let s = |d: &[usize]| Shape::new(d);
        let err = op.infer(&[&s(&[4, 3]), &s(&[4]), &s(&[3])]).unwrap_err();
        assert!(
            matches!(err, Error::Shape { .. }) && err.to_string().contains("gamma"),
            "{err}"
        );
        let err = op
            .infer(&[&s(&[1, 1, 1, 3]), &s(&[3]), &s(&[3])])
            .unwrap_err();
        assert!(err.to_string().contains("at least 2 rows"), "{err}");
        let err = BatchNormTrain { eps: -1.0 }
            .infer(&[&s(&[4, 3]), &s(&[3]), &s(&[3])])
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let grad = BatchNormGrad {
            eps: 1e-5,
            stat_grads: false,
        };
        let err = grad
            .infer(&[&s(&[4, 3]), &s(&[3]), &s(&[3]), &s(&[3]), &s(&[4, 2])])
            .unwrap_err();
        assert!(err.to_string().contains("dy"), "{err}");
    }

    #[test]
    fn running_update_matches_reference() {
        for op in [
            BatchNormRunningUpdate::pytorch(30),
            BatchNormRunningUpdate::keras(0.99, 2),
        ] {
            let case = OpCase::new(op)
                .input([67], -1.0, 1.0)
                .input([67], 0.5, 2.0)
                .input([67], -1.0, 1.0)
                .input([67], 0.1, 3.0);
            check_op(&case);
        }
        let keras = BatchNormRunningUpdate::keras(0.99, 8);
        assert!((keras.momentum - 0.01).abs() < 1e-6 && !keras.unbiased);
        let out = BatchNormRunningUpdate::pytorch(5)
            .reference(&[
                &vector(vec![1.0]),
                &vector(vec![1.0]),
                &vector(vec![2.0]),
                &vector(vec![4.0]),
            ])
            .unwrap();
        assert!((out[0].data[0] - 1.1).abs() < 1e-7);
        assert!((out[1].data[0] - (0.9 + 0.1 * 4.0 * 5.0 / 4.0)).abs() < 1e-7);
    }

    #[test]
    fn running_update_mutates_state_in_a_graph() {
        let mut g = Graph::new();
        let x = g.input("x", [4, 3]);
        let gamma = g.input("gamma", [3]);
        let beta = g.input("beta", [3]);
        let rm = g.input("running_mean", [3]);
        let rv = g.input("running_var", [3]);
        let out = g
            .apply(BatchNormTrain { eps: 1e-5 }, &[x, gamma, beta])
            .unwrap();
        let upd = g
            .apply(
                BatchNormRunningUpdate::pytorch(4),
                &[rm, rv, out[1], out[2]],
            )
            .unwrap();
        assert!(upd.is_empty());
        let mut rng = Rng::new(1);
        let mut values = std::collections::HashMap::new();
        for (t, shape) in [
            (x, vec![4, 3]),
            (gamma, vec![3]),
            (beta, vec![3]),
            (rm, vec![3]),
            (rv, vec![3]),
        ] {
            values.insert(t, rng.tensor(shape, 0.5, 1.5).to_ref());
        }
        let before = values[&rv].clone();
        crate::graph::exec::eval_reference(&g, &[out[0]], &mut values).unwrap();
        let (_, var) = ref_moments(&values[&x]);
        let want = 0.9 * before.data[1] + 0.1 * var[1] * 4.0 / 3.0;
        // The momentum is an f32: 0.1 is off by ~1e-9.
        assert!((values[&rv].data[1] - want).abs() < 1e-7);
    }

    #[test]
    fn running_update_bad_shapes_are_errors() {
        let op = BatchNormRunningUpdate::pytorch(10);
        let s = Shape::new(&[4]);
        let err = op.infer(&[&s, &s, &Shape::new(&[5]), &s]).unwrap_err();
        assert!(err.to_string().contains("batch_mean"), "{err}");
        let err = BatchNormRunningUpdate::pytorch(1)
            .infer(&[&s, &s, &s, &s])
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[test]
    fn channel_affine_matches_reference() {
        for shape in [vec![1usize], vec![2, 3, 5, 7], vec![3, 17, 130]] {
            let c = *shape.last().unwrap();
            check_op(
                &OpCase::new(ChannelAffine::affine())
                    .input(shape.clone(), -2.0, 2.0)
                    .input([c], -2.0, 2.0)
                    .input([c], -1.0, 1.0),
            );
            check_op(
                &OpCase::new(ChannelAffine::bias())
                    .input(shape, -2.0, 2.0)
                    .input([c], -1.0, 1.0),
            );
        }
        check_op(&OpCase::new(ChannelSum).input([5, 67, 3], -1.0, 1.0));
        check_op(
            &OpCase::new(ChannelAffineGrad)
                .input([9, 65], -1.0, 1.0)
                .input([65], -1.0, 1.0)
                .input([9, 65], -1.0, 1.0),
        );
    }

    #[test]
    fn channel_affine_gradients() {
        grad_check(
            &OpCase::new(ChannelAffine::affine())
                .input([2, 3, 5, 7], -2.0, 2.0)
                .input([7], -2.0, 2.0)
                .input([7], -1.0, 1.0),
        );
        grad_check(
            &OpCase::new(ChannelAffine::bias())
                .input([3, 67, 3], -2.0, 2.0)
                .input([3], -1.0, 1.0),
        );
        grad_check(
            &OpCase::new(ChannelAffine::affine())
                .input([1], -2.0, 2.0)
                .input([1], -2.0, 2.0)
                .input([1], -1.0, 1.0),
        );
    }

    #[test]
    fn channel_affine_bad_shapes_are_errors() {
        let err = ChannelAffine::affine()
            .infer(&[&Shape::new(&[4, 3]), &Shape::new(&[3]), &Shape::new(&[4])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = ChannelAffine::bias()
            .infer(&[&Shape::new(&[4, 3]), &Shape::new(&[3]), &Shape::new(&[3])])
            .unwrap_err();
        assert!(err.to_string().contains("takes 2 inputs"), "{err}");
        let err = ChannelSum.infer(&[&Shape::new(&[4, 0])]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }

    #[test]
    fn folded_batchnorm_equals_inference_batchnorm() {
        let mut rng = Rng::new(7);
        let c = 5;
        let v = |rng: &mut Rng, lo, hi| rng.tensor([c], lo, hi).data;
        let (gamma, beta, mean, var) = (
            v(&mut rng, 0.5, 1.5),
            v(&mut rng, -1.0, 1.0),
            v(&mut rng, -3.0, 3.0),
            v(&mut rng, 0.1, 2.0),
        );
        let eps = 1e-3;
        let (scale, shift) = fold_batchnorm(&gamma, &beta, &mean, &var, eps).unwrap();
        let x = rng.tensor([4, c], -5.0, 5.0).to_ref();
        let ins = [
            &x,
            &vector(scale.iter().map(|&s| s as f64).collect()),
            &vector(shift.iter().map(|&s| s as f64).collect()),
        ];
        let got = ChannelAffine::affine().reference(&ins).unwrap();
        for (i, (&xv, &y)) in x.data.iter().zip(&got[0].data).enumerate() {
            let ch = i % c;
            let want = (xv - mean[ch] as f64) / (var[ch] as f64 + eps as f64).sqrt()
                * gamma[ch] as f64
                + beta[ch] as f64;
            assert!((y - want).abs() < 1e-5, "{i}: {y} vs {want}");
        }
        assert!(fold_batchnorm(&gamma, &beta, &mean[..4], &var, eps).is_err());
    }
}
