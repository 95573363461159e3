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
use crate::gpu::{
    chunks, rows_per_window, DeviceTensor, Gpu, Recorder, ScratchNeed, ShaderSpec, Window,
};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::{expect_inputs, zeros_like};
use crate::tensor::{RefTensor, Shape, Tensor};

mod affine;
mod train;

pub use affine::{fold_batchnorm, ChannelAffine, ChannelAffineGrad, ChannelSum};
pub use train::{BatchNormGrad, BatchNormRunningUpdate, BatchNormTrain};

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

crate::uniform! {
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
}

/// Records one dispatch whose bindings are `windows` in order, their shifts in the params.
fn launch(
    rec: &mut Recorder,
    spec: &ShaderSpec,
    p: Params,
    windows: &[Window],
    groups: u64,
) -> Result<()> {
    launch_lanes(rec, spec, p, windows, 1, groups)
}

/// How the row kernels (`col_partial`, `apply`) lay a workgroup's lanes over
/// a window of rows × c, as the shader does: each lane takes `lanes`
/// channels (four as a vec4 where the channel count and every window's
/// shift allow, else one), the lanes of a tile cover up to WG_CHANNELS of
/// those `groups`, and when there are fewer, `lane_sets` sets of lanes
/// share a workgroup (over consecutive blocks or interleaved rows).
struct LaneLayout {
    lanes: u64,
    groups: u64,
    ntiles: u64,
    lane_sets: u64,
}

impl LaneLayout {
    fn new(c: u64, windows: &[Window]) -> LaneLayout {
        let vec4 = c.is_multiple_of(4) && windows.iter().all(|w| w.shift.is_multiple_of(4));
        let lanes = if vec4 { 4 } else { 1 };
        let groups = c / lanes;
        LaneLayout {
            lanes,
            groups,
            ntiles: groups.div_ceil(WG_CHANNELS),
            lane_sets: WG_CHANNELS / groups.min(WG_CHANNELS),
        }
    }

    fn vec4(&self) -> bool {
        self.lanes == 4
    }
}

/// `launch` with the shifts counted in units of `lanes` elements.
fn launch_lanes(
    rec: &mut Recorder,
    spec: &ShaderSpec,
    mut p: Params,
    windows: &[Window],
    lanes: u64,
    groups: u64,
) -> Result<()> {
    if windows.len() > p.shifts.len() {
        return Err(Error::Internal(format!(
            "{}: {} bindings exceed the shift slots",
            spec.label(),
            windows.len()
        )));
    }
    for (s, w) in p.shifts.iter_mut().zip(windows) {
        *s = w.shift / lanes as u32;
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
    /// `mask`: a is read as a·[mask > 0] (a ReLU's gradient folded in).
    Dot {
        b: &'a DeviceTensor,
        center: Option<&'a DeviceTensor>,
        mask: Option<&'a DeviceTensor>,
    },
}

fn partial_spec(moments: bool, dot: bool, center: bool, mask: bool, vec4: bool) -> ShaderSpec {
    let mut s = ShaderSpec::new("batchnorm", "col_partial")
        .def("COL_PARTIAL", 1)
        .def("VEC4", vec4 as u32);
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
    if mask {
        s = s
            .def("MASK", 1)
            .def("B_MASK", 3 + center as u32 + dot as u32);
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

/// Which terms of out = act((u − m)·su + v·sv + t + r) an `apply`
/// specialisation has: `mask` reads v as v·[mask > 0], `relu` makes act max(0, ·).
#[derive(Clone, Copy)]
struct Terms {
    center: bool,
    scale: bool,
    v: bool,
    shift: bool,
    mask: bool,
    residual: bool,
    relu: bool,
}

const NO_TERMS: Terms = Terms {
    center: false,
    scale: false,
    v: false,
    shift: false,
    mask: false,
    residual: false,
    relu: false,
};
const AFFINE: Terms = Terms {
    center: false,
    scale: true,
    v: false,
    shift: true,
    ..NO_TERMS
};
const BIAS: Terms = Terms {
    center: false,
    scale: false,
    v: false,
    shift: true,
    ..NO_TERMS
};
const SCALE_ONLY: Terms = Terms {
    center: false,
    scale: true,
    v: false,
    shift: false,
    ..NO_TERMS
};
const BN_FORWARD: Terms = Terms {
    center: true,
    scale: true,
    v: false,
    shift: true,
    ..NO_TERMS
};
const BN_BACKWARD: Terms = Terms {
    center: true,
    scale: true,
    v: true,
    shift: true,
    ..NO_TERMS
};

/// Bindings: u, out, then m, su, (v, sv), t, mask, r as present, numbered in that order.
fn apply_spec(t: Terms, vec4: bool) -> ShaderSpec {
    let mut spec = ShaderSpec::new("batchnorm", "apply")
        .def("APPLY", 1)
        .def("VEC4", vec4 as u32)
        .def("B_OUT", 2);
    let mut next = 3;
    let groups: [(bool, &str, &[&str]); 7] = [
        (t.center, "CENTER", &["B_M"]),
        (t.scale, "SCALE", &["B_SU"]),
        (t.v, "V", &["B_V", "B_SV"]),
        (t.shift, "SHIFT", &["B_T"]),
        (t.mask, "MASK", &["B_MASK"]),
        (t.residual, "RESIDUAL", &["B_R"]),
        (t.relu, "RELU", &[]),
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

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(_entry: &str) -> Option<crate::gpu::UniformShape> {
    Some(<Params as crate::gpu::Uniform>::shape())
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = vec![
        sums_spec(false),
        sums_spec(true),
        moments_spec(),
        bn_backward_spec(false),
        bn_backward_spec(true),
        running_spec(),
    ];
    for vec4 in [false, true] {
        specs.extend([
            partial_spec(false, false, false, false, vec4),
            partial_spec(true, false, false, false, vec4),
            partial_spec(false, true, false, false, vec4),
            partial_spec(false, true, true, false, vec4),
            partial_spec(false, true, true, true, vec4),
        ]);
        let mut terms = vec![AFFINE, BIAS, SCALE_ONLY, BN_FORWARD, BN_BACKWARD];
        // The fused epilogues of BatchNormTrain and the ReLU-masked backward.
        for (residual, relu) in [(false, true), (true, false), (true, true)] {
            terms.push(Terms {
                residual,
                relu,
                ..BN_FORWARD
            });
        }
        terms.push(Terms {
            mask: true,
            ..BN_BACKWARD
        });
        specs.extend(terms.into_iter().map(|t| apply_spec(t, vec4)));
    }
    specs
}

/// A scratch buffer of per-block, per-channel partials (`planes` of them).
struct Partials {
    plan: ColPlan,
    window: Window,
}

const PARTIALS: &str = "channel partials";

impl Partials {
    /// Floats of the partials over `shape`, and their plan.
    fn planned(gpu: &Gpu, shape: &Shape, planes: u64) -> Result<(ColPlan, u64)> {
        let (rows, c) = rows_channels(shape);
        let plan = col_plan(rows, c, gpu.max_window_elems())?;
        Ok((plan, plan.nblocks * c * planes))
    }

    fn need(gpu: &Gpu, shape: &Shape, planes: u64) -> Result<ScratchNeed> {
        let (_, count) = Partials::planned(gpu, shape, planes)?;
        Ok(ScratchNeed::Buffer {
            purpose: PARTIALS,
            bytes: count * 4,
        })
    }

    fn new(gpu: &Gpu, shape: &Shape, planes: u64) -> Result<Partials> {
        let (plan, count) = Partials::planned(gpu, shape, planes)?;
        let buffer = gpu.scratch_buffer(PARTIALS, count * 4)?;
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
        let (moments, center, b, mask) = match what {
            Reduce::Sum => (false, None, None, None),
            Reduce::Moments => (true, None, None, None),
            Reduce::Dot { b, center, mask } => (false, center, Some(b), mask),
        };
        let center = center.map(|m| m.whole(gpu)).transpose()?;
        for range in chunks(rows, window_rows) {
            let n = range.end - range.start;
            let mut windows = vec![a.window(gpu, range.start * c, n * c)?, self.window.clone()];
            windows.extend(center.clone());
            if let Some(b) = b {
                windows.push(b.window(gpu, range.start * c, n * c)?);
            }
            if let Some(mask) = mask {
                windows.push(mask.window(gpu, range.start * c, n * c)?);
            }
            let layout = LaneLayout::new(c, &windows);
            let spec = partial_spec(
                moments,
                b.is_some(),
                center.is_some(),
                mask.is_some(),
                layout.vec4(),
            );
            let p = Params {
                n: n as u32,
                c: layout.groups as u32,
                row_block: row_block as u32,
                g0: (range.start / row_block) as u32,
                ntiles: layout.ntiles as u32,
                nblocks: nblocks as u32,
                ..Default::default()
            };
            let workgroups = layout.ntiles * n.div_ceil(row_block).div_ceil(layout.lane_sets);
            launch_lanes(rec, &spec, p, &windows, layout.lanes, workgroups)?;
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

fn channel_need(purpose: &'static str, c: u64, count: u64) -> ScratchNeed {
    ScratchNeed::Buffer {
        purpose,
        bytes: c * count * 4,
    }
}

/// Per-channel scratch vectors (`count` planes of c values) bound as windows.
fn channel_scratch(
    gpu: &Gpu,
    purpose: &'static str,
    c: u64,
    count: u64,
) -> Result<(Window, Vec<Window>)> {
    let buffer = gpu.scratch_buffer(purpose, c * count * 4)?;
    let planes = (0..count)
        .map(|k| gpu.window(&buffer, k * c, c))
        .collect::<Result<_>>()?;
    Ok((gpu.window(&buffer, 0, c * count)?, planes))
}

/// The operands of `apply`: per-channel m, su, t; `v` comes with its scale,
/// `mask` (v's ReLU mask) and `residual` are elementwise like u.
#[derive(Default)]
struct ChannelTerms<'a> {
    m: Option<Window>,
    su: Option<Window>,
    v: Option<(&'a DeviceTensor, Window)>,
    t: Option<Window>,
    mask: Option<&'a DeviceTensor>,
    residual: Option<&'a DeviceTensor>,
    relu: bool,
}

/// out = act((u − m)·su + v·sv + t + r) over windows of whole rows.
fn record_apply(
    rec: &mut Recorder,
    u: &DeviceTensor,
    out: &DeviceTensor,
    terms: ChannelTerms,
) -> Result<()> {
    let gpu = rec.gpu();
    let (rows, c) = rows_channels(&u.shape);
    if terms.mask.is_some() && terms.v.is_none() {
        return Err(Error::Internal("batchnorm apply: a mask without v".into()));
    }
    let terms_present = Terms {
        center: terms.m.is_some(),
        scale: terms.su.is_some(),
        v: terms.v.is_some(),
        shift: terms.t.is_some(),
        mask: terms.mask.is_some(),
        residual: terms.residual.is_some(),
        relu: terms.relu,
    };
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
        for elementwise in [terms.mask, terms.residual].into_iter().flatten() {
            windows.push(elementwise.window(gpu, start, n)?);
        }
        let layout = LaneLayout::new(c, &windows);
        // Each set of lanes walks APPLY_ROWS_PER_LANE of a block's rows.
        let row_block = APPLY_ROWS_PER_LANE * layout.lane_sets;
        let window_rows = range.end - range.start;
        let p = Params {
            n: window_rows as u32,
            c: layout.groups as u32,
            row_block: row_block as u32,
            ntiles: layout.ntiles as u32,
            ..Default::default()
        };
        launch_lanes(
            rec,
            &apply_spec(terms_present, layout.vec4()),
            p,
            &windows,
            layout.lanes,
            layout.ntiles * window_rows.div_ceil(row_block),
        )?;
    }
    Ok(())
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

#[cfg(test)]
pub(crate) mod tests;
