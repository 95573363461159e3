//! GEMM family (`shaders/gemm.wgsl`): `Matmul` (C = op(A)·op(B) + bias, the
//! linear layers and 1×1 convolutions on NHWC tensors viewed as [N·H·W, C]),
//! `ColumnSum` (the bias gradient) and `BroadcastRows` (its backward).
//!
//! Any size works: the product is split into chunks of rows, columns and the
//! reduction dimension so that each operand's part fits one storage binding
//! (and, for the subgroup-broadcast kernel, one texture of bounded size);
//! K-chunks after the first accumulate into C.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{
    Binding, BufSlice, DeviceTensor, Gpu, MatmulVariant, Recorder, ShaderSpec, Window,
};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::{expect_inputs, Reshape};
use crate::tensor::{RefTensor, Shape, Tensor};

const WG: u64 = 256;
/// Tiled kernel block (rows = columns).
const TILED_BLOCK: u64 = 64;
/// Floats per operand texture of the subgroup kernel. Each op records its
/// own pair of textures, so this bounds its scratch memory (16 MiB per
/// operand) while keeping chunks big enough that each dispatch still runs
/// tens of workgroups (a 2048³ product is one chunk).
const TEXTURE_BUDGET: u64 = 4 << 20;
/// Reduction chunk of the subgroup kernel (B texture rows), before the budget.
/// Chunks of K accumulate into C; 512 keeps a workgroup's A and B panels
/// (128×512 and 512×256 floats) in a core's cache and measured ≈1.15× faster
/// per CPU-second than one 2048-deep pass at 2048³ on lavapipe (256: 1.05×,
/// 1024: 1.03×; BENCHMARKS.md).
const SGB_MAX_K: u64 = 512;
/// Reduction chunk of the tiled kernel. llvmpipe silently ends a loop nest
/// after ~65535 iterations per invocation (a wrong sum, no error), so no
/// dispatch may loop over all of a long K (weight gradients reduce over
/// millions of pixels); later chunks accumulate into C.
const TILED_MAX_K: u64 = 16384;
/// Rows summed per invocation and level by the column-sum tree.
const SUM_BLOCK: u64 = 256;

/// Floating-point operations of an M×K by K×N product (multiply and add).
pub fn matmul_flops(m: usize, n: usize, k: usize) -> u64 {
    2 * m as u64 * n as u64 * k as u64
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = Vec::new();
    for bias in [false, true] {
        specs.push(tiled_spec(bias));
        for sg_n in SGB_LAYOUTS {
            specs.push(sgb_spec(sg_n, bias));
        }
    }
    specs.extend([pack_spec(), column_sum_spec(), broadcast_spec()]);
    specs
}

fn tiled_spec(bias: bool) -> ShaderSpec {
    ShaderSpec::new("gemm", "gemm_tiled")
        .def("GEMM", 1)
        .def("TILED", 1)
        .def("BIAS", bias as u32)
}

/// Subgroups across N in a 32-subgroup workgroup; narrow outputs use fewer so
/// no workgroup computes mostly padding.
const SGB_LAYOUTS: [u64; 4] = [1, 2, 4, 8];
/// Rows and columns of C one subgroup computes (8 lanes × 4 rows, 32 columns;
/// the shader's tile).
const SGB_ROWS: u64 = 32;
const SGB_COLS: u64 = 32;

fn sgb_spec(sg_n: u64, bias: bool) -> ShaderSpec {
    ShaderSpec::new("gemm", "gemm_sgb")
        .def("GEMM", 1)
        .def("SGB", 1)
        .def("SG_M", 32 / sg_n)
        .def("SG_N", sg_n)
        .def("BIAS", bias as u32)
}

fn pack_spec() -> ShaderSpec {
    ShaderSpec::new("gemm", "pack").def("PACK", 1)
}
fn column_sum_spec() -> ShaderSpec {
    ShaderSpec::new("gemm", "column_sum").def("COLUMN_SUM", 1)
}
fn broadcast_spec() -> ShaderSpec {
    ShaderSpec::new("gemm", "broadcast_rows").def("BROADCAST", 1)
}

/// The sizes chunks are cut to; the device's own in `record`, small ones in
/// tests so that every split path runs on tiny data.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// f32 elements one window may span.
    window: u64,
    /// Texels per texture dimension.
    texture_dim: u64,
    /// f32 elements per operand texture.
    texture_budget: u64,
    /// Rows per column-sum block.
    sum_block: u64,
}

impl Limits {
    fn of(gpu: &Gpu) -> Limits {
        Limits {
            window: gpu.max_window_elems(),
            texture_dim: gpu.limits.max_texture_dimension_2d as u64,
            texture_budget: TEXTURE_BUDGET,
            sum_block: SUM_BLOCK,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    shift_a: u32,
    shift_b: u32,
    shift_c: u32,
    shift_bias: u32,
    trans_a: u32,
    trans_b: u32,
    accumulate: u32,
    groups_m: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    ld: u32,
    shift: u32,
    trans: u32,
    width: u32,
    height: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SumParams {
    rows: u32,
    cols: u32,
    block: u32,
    shift_x: u32,
    shift_out: u32,
    out_row0: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BroadcastParams {
    count: u32,
    cols: u32,
    shift_x: u32,
    shift_out: u32,
}

fn round_up(x: u64, q: u64) -> u64 {
    x.div_ceil(q) * q
}

/// Halves a chunk size, keeping it a multiple of `q` while it can.
fn halve(x: u64, q: u64) -> u64 {
    let h = x / 2;
    if h >= q {
        h / q * q
    } else {
        h
    }
}

/// C[M,N] = op(A)·op(B) (+ bias[N] on every row), where op transposes when its
/// flag is set. Inputs: A, B, and optionally the bias.
///
/// A is a matrix over its last dimension: without `trans_a` its leading
/// dimensions are flattened into M rows and the output keeps them
/// ([..., K] → [..., N]); with `trans_a` A holds [K, M] (leading dimensions
/// flattened into K) and the output is [M, N]. B is likewise [K, N], or [N, K]
/// with `trans_b`. The flags let backward passes read transposes in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matmul {
    pub trans_a: bool,
    pub trans_b: bool,
}

/// M, N, K of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    m: u64,
    n: u64,
    k: u64,
}

impl Matmul {
    pub fn new(trans_a: bool, trans_b: bool) -> Self {
        Matmul { trans_a, trans_b }
    }

    fn dims(&self, inputs: &[&Shape]) -> Result<Dims> {
        let name = self.name();
        if inputs.len() != 2 && inputs.len() != 3 {
            return Err(Error::shape(
                name,
                format!(
                    "takes A, B and an optional bias, got {} inputs",
                    inputs.len()
                ),
            ));
        }
        let (ra, ca) = inputs[0].matrix(name)?;
        let (m, k) = if self.trans_a { (ca, ra) } else { (ra, ca) };
        let (rb, cb) = inputs[1].matrix(name)?;
        let (kb, n) = if self.trans_b { (cb, rb) } else { (rb, cb) };
        if k != kb {
            return Err(Error::shape(
                name,
                format!(
                    "inner dimensions differ: op(A) is {m}×{k} ({:?}), op(B) is {kb}×{n} ({:?})",
                    inputs[0], inputs[1]
                ),
            ));
        }
        if m == 0 || n == 0 || k == 0 {
            return Err(Error::shape(
                name,
                format!("empty product {m}×{k} by {k}×{n}"),
            ));
        }
        if let Some(bias) = inputs.get(2) {
            if bias.dims() != [n] {
                return Err(Error::shape(
                    name,
                    format!("bias must be [{n}], got {bias:?}"),
                ));
            }
        }
        Ok(Dims {
            m: m as u64,
            n: n as u64,
            k: k as u64,
        })
    }

    fn record_with(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        c: &DeviceTensor,
        lim: Limits,
    ) -> Result<()> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
        let d = self.dims(&shapes)?;
        let g = Gemm {
            a: inputs[0],
            b: inputs[1],
            bias: inputs.get(2).copied(),
            c,
            d,
            ta: self.trans_a,
            tb: self.trans_b,
        };
        match rec.gpu().tuning.matmul {
            MatmulVariant::Tiled => g.record_tiled(rec, lim),
            MatmulVariant::SubgroupBroadcast => g.record_sgb(rec, lim),
        }
    }
}

impl Op for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        let d = self.dims(inputs)?;
        let out = if self.trans_a {
            vec![d.m as usize, d.n as usize]
        } else {
            let a = inputs[0].dims();
            let mut dims = a[..a.len() - 1].to_vec();
            dims.push(d.n as usize);
            dims
        };
        Ok(vec![Shape(out)])
    }

    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
        let out_shape = self.infer(&shapes)?.remove(0);
        let Dims { m, n, k } = self.dims(&shapes)?;
        let (m, n, k) = (m as usize, n as usize, k as usize);
        let (a, b) = (&inputs[0].data, &inputs[1].data);
        let a_at = |i: usize, kk: usize| {
            if self.trans_a {
                a[kk * m + i]
            } else {
                a[i * k + kk]
            }
        };
        let b_at = |kk: usize, j: usize| {
            if self.trans_b {
                b[j * k + kk]
            } else {
                b[kk * n + j]
            }
        };
        let mut data = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = inputs.get(2).map_or(0.0, |bias| bias.data[j]);
                for kk in 0..k {
                    s += a_at(i, kk) * b_at(kk, j);
                }
                data[i * n + j] = s;
            }
        }
        Ok(vec![Tensor {
            shape: out_shape,
            data,
        }])
    }

    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let lim = Limits::of(rec.gpu());
        self.record_with(rec, inputs, outputs[0], lim)
    }

    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dc) = grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let (a, b) = (inputs[0], inputs[1]);
        let mm = Matmul::new;
        // With C = op(A)·op(B): d op(A) = dC·op(B)ᵀ and d op(B) = op(A)ᵀ·dC,
        // each written as one product whose flags read the stored layouts.
        let (da, db) = match (self.trans_a, self.trans_b) {
            (false, false) => (
                g.apply1(mm(false, true), &[dc, b])?,
                g.apply1(mm(true, false), &[a, dc])?,
            ),
            (false, true) => (
                g.apply1(mm(false, false), &[dc, b])?,
                g.apply1(mm(true, false), &[dc, a])?,
            ),
            (true, false) => (
                g.apply1(mm(false, true), &[b, dc])?,
                g.apply1(mm(false, false), &[a, dc])?,
            ),
            (true, true) => (
                g.apply1(mm(true, true), &[b, dc])?,
                g.apply1(mm(true, true), &[dc, a])?,
            ),
        };
        let mut out = vec![Some(reshape_like(g, da, a)?), Some(reshape_like(g, db, b)?)];
        if inputs.len() == 3 {
            out.push(Some(g.apply1(ColumnSum, &[dc])?));
        }
        Ok(out)
    }

    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.dims(inputs).map_or(0, |d| {
            matmul_flops(d.m as usize, d.n as usize, d.k as usize)
        })
    }
}

/// `t` viewed with the shape of `like` (gradients of operands whose leading
/// dimensions the product flattened).
fn reshape_like(g: &mut Graph, t: TensorId, like: TensorId) -> Result<TensorId> {
    let shape = g.shape(like).clone();
    if g.shape(t) == &shape {
        return Ok(t);
    }
    g.apply1(Reshape { shape }, &[t])
}

/// One product being recorded.
struct Gemm<'a> {
    a: &'a DeviceTensor,
    b: &'a DeviceTensor,
    bias: Option<&'a DeviceTensor>,
    c: &'a DeviceTensor,
    d: Dims,
    ta: bool,
    tb: bool,
}

/// Where a block of an operand starts in its tensor, its leading dimension,
/// and how many elements a window over it spans.
struct Block {
    start: u64,
    ld: u64,
    span: u64,
}

impl Gemm<'_> {
    /// Block of op(A) rows m0.., reduction k0.. of size mc × kc.
    fn block_a(&self, m0: u64, k0: u64, mc: u64, kc: u64) -> Block {
        let Dims { m, k, .. } = self.d;
        if self.ta {
            Block {
                start: k0 * m + m0,
                ld: m,
                span: (kc - 1) * m + mc,
            }
        } else {
            Block {
                start: m0 * k + k0,
                ld: k,
                span: (mc - 1) * k + kc,
            }
        }
    }

    /// Block of op(B) reduction k0.., columns n0.. of size kc × nc.
    fn block_b(&self, k0: u64, n0: u64, kc: u64, nc: u64) -> Block {
        let Dims { n, k, .. } = self.d;
        if self.tb {
            Block {
                start: n0 * k + k0,
                ld: k,
                span: (nc - 1) * k + kc,
            }
        } else {
            Block {
                start: k0 * n + n0,
                ld: n,
                span: (kc - 1) * n + nc,
            }
        }
    }

    fn block_c(&self, m0: u64, n0: u64, mc: u64, nc: u64) -> Block {
        let n = self.d.n;
        Block {
            start: m0 * n + n0,
            ld: n,
            span: (mc - 1) * n + nc,
        }
    }

    /// Shrinks chunk sizes (mc, nc, kc) until every operand block fits one
    /// window; `q` are the multiples each is kept at while it can.
    fn fit_windows(&self, mut c: [u64; 3], q: [u64; 3], window: u64) -> Result<[u64; 3]> {
        loop {
            let [mc, nc, kc] = c;
            // Which chunk dimension to shrink: the one that strides the
            // too-large block (a transposed operand spans its K rows), or the
            // other one once that is down to a single row.
            let pick =
                |primary: usize, secondary: usize| if c[primary] > 1 { primary } else { secondary };
            let shrink = if self.block_a(0, 0, mc, kc).span > window {
                if self.ta {
                    pick(2, 0)
                } else {
                    pick(0, 2)
                }
            } else if self.block_b(0, 0, kc, nc).span > window {
                if self.tb {
                    pick(1, 2)
                } else {
                    pick(2, 1)
                }
            } else if self.block_c(0, 0, mc, nc).span > window {
                pick(0, 1)
            } else {
                return Ok(c);
            };
            if c[shrink] <= 1 {
                return Err(Error::LimitExceeded {
                    what: format!("a {}×{}×{} matrix product", self.d.m, self.d.n, self.d.k),
                    needed: self.d.m.max(self.d.n).max(self.d.k) * 4,
                    limit: window * 4,
                    name: "max_storage_buffer_binding_size",
                    fix: "one row of an operand must fit one binding; use smaller matrices".into(),
                });
            }
            c[shrink] = halve(c[shrink], q[shrink]);
        }
    }

    fn gemm_params(&self, m0: u64, n0: u64, k0: u64, size: [u64; 3], groups_m: u64) -> GemmParams {
        let [mc, nc, kc] = size;
        GemmParams {
            m: mc as u32,
            n: nc as u32,
            k: kc as u32,
            lda: self.block_a(m0, k0, mc, kc).ld as u32,
            ldb: self.block_b(k0, n0, kc, nc).ld as u32,
            ldc: self.d.n as u32,
            shift_a: 0,
            shift_b: 0,
            shift_c: 0,
            shift_bias: 0,
            trans_a: self.ta as u32,
            trans_b: self.tb as u32,
            accumulate: (k0 > 0) as u32,
            groups_m: groups_m as u32,
            _pad: [0; 2],
        }
    }

    /// Binds C's chunk at rows m0.., columns n0.. (and the bias for it) and
    /// records the product kernel.
    fn dispatch_gemm(
        &self,
        rec: &mut Recorder,
        spec: &ShaderSpec,
        mut p: GemmParams,
        mut bindings: Vec<Binding>,
        [m0, n0]: [u64; 2],
        groups: u64,
    ) -> Result<()> {
        let gpu = rec.gpu();
        let cb = self.block_c(m0, n0, p.m as u64, p.n as u64);
        let wc = self.c.window(gpu, cb.start, cb.span)?;
        p.shift_c = wc.shift;
        bindings.push((&wc).into());
        if let Some(bias) = self.bias {
            let wb = bias.window(gpu, n0, p.n as u64)?;
            p.shift_bias = wb.shift;
            bindings.push((&wb).into());
        }
        rec.dispatch_groups(spec, bytemuck::bytes_of(&p), bindings, groups)
    }

    fn record_tiled(&self, rec: &mut Recorder, lim: Limits) -> Result<()> {
        let Dims { m, n, k } = self.d;
        let q = [TILED_BLOCK, TILED_BLOCK, 16];
        let [mc, nc, kc] = self.fit_windows([m, n, k], q, lim.window)?;
        let kc = kc.min(TILED_MAX_K);
        let spec = tiled_spec(self.bias.is_some());
        let gpu = rec.gpu();
        for n0 in (0..n).step_by(nc as usize) {
            let ncl = nc.min(n - n0);
            for k0 in (0..k).step_by(kc as usize) {
                let kcl = kc.min(k - k0);
                let bb = self.block_b(k0, n0, kcl, ncl);
                let wb = self.b.window(gpu, bb.start, bb.span)?;
                for m0 in (0..m).step_by(mc as usize) {
                    let mcl = mc.min(m - m0);
                    let ab = self.block_a(m0, k0, mcl, kcl);
                    let wa = self.a.window(gpu, ab.start, ab.span)?;
                    let groups_m = mcl.div_ceil(TILED_BLOCK);
                    let mut p = self.gemm_params(m0, n0, k0, [mcl, ncl, kcl], groups_m);
                    p.shift_a = wa.shift;
                    p.shift_b = wb.shift;
                    let groups = groups_m * ncl.div_ceil(TILED_BLOCK);
                    self.dispatch_gemm(
                        rec,
                        &spec,
                        p,
                        vec![(&wa).into(), (&wb).into()],
                        [m0, n0],
                        groups,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn record_sgb(&self, rec: &mut Recorder, lim: Limits) -> Result<()> {
        let Dims { m, n, k } = self.d;
        let sg_n = SGB_LAYOUTS
            .into_iter()
            .find(|&s| SGB_COLS * s >= n)
            .unwrap_or(8);
        let (bm, bn) = (SGB_ROWS * (32 / sg_n), SGB_COLS * sg_n);
        let dim = lim.texture_dim;
        // Texture limits first: A is [rows][K/4 texels], B is [K rows][cols/4
        // texels], both padded to whole tiles and within the scratch budget
        // (which gives way to at least one tile).
        let kc = k
            .min(SGB_MAX_K)
            .min(dim / 8 * 8)
            .min((lim.texture_budget / bn / 8 * 8).max(8))
            .max(1);
        let kp = round_up(kc, 8);
        let nc = n
            .min(dim * 4 / bn * bn)
            .min((lim.texture_budget / kp / bn * bn).max(bn))
            .max(1);
        let mc = m
            .min(dim / bm * bm)
            .min((lim.texture_budget / kp / bm * bm).max(bm))
            .max(1);
        let [mc, nc, kc] = self.fit_windows([mc, nc, kc], [bm, bn, 8], lim.window)?;
        let kp = round_up(kc, 8);
        let gpu = rec.gpu();
        let tex_a = OperandTexture::new(gpu, "gemm A", kp / 4, round_up(mc, bm))?;
        let tex_b = OperandTexture::new(gpu, "gemm B", round_up(nc, bn) / 4, kp)?;
        let spec = sgb_spec(sg_n, self.bias.is_some());
        for n0 in (0..n).step_by(nc as usize) {
            let ncl = nc.min(n - n0);
            for k0 in (0..k).step_by(kc as usize) {
                let kcl = kc.min(k - k0);
                let bb = self.block_b(k0, n0, kcl, ncl);
                let pb = Pack {
                    rows: kcl,
                    cols: ncl,
                    trans: self.tb,
                    width: round_up(ncl, bn) / 4,
                    height: round_up(kcl, 8),
                    // Padding columns only reach outputs that are not stored.
                    copyable: kcl % 8 == 0 && ncl % 4 == 0,
                };
                pb.record(rec, self.b, &bb, &tex_b)?;
                for m0 in (0..m).step_by(mc as usize) {
                    let mcl = mc.min(m - m0);
                    let ab = self.block_a(m0, k0, mcl, kcl);
                    let pa = Pack {
                        rows: mcl,
                        cols: kcl,
                        trans: self.ta,
                        width: round_up(kcl, 8) / 4,
                        height: round_up(mcl, bm),
                        // Padding rows only reach outputs that are not stored.
                        copyable: kcl % 8 == 0,
                    };
                    pa.record(rec, self.a, &ab, &tex_a)?;
                    let groups_m = mcl.div_ceil(bm);
                    let p = self.gemm_params(m0, n0, k0, [mcl, ncl, kcl], groups_m);
                    let bindings = vec![
                        Binding::Texture(tex_a.view.clone()),
                        Binding::Texture(tex_b.view.clone()),
                    ];
                    self.dispatch_gemm(
                        rec,
                        &spec,
                        p,
                        bindings,
                        [m0, n0],
                        groups_m * ncl.div_ceil(bn),
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A scratch texture the subgroup kernel reads an operand from; the recording
/// keeps it alive, and successive chunks of the op reuse it.
struct OperandTexture {
    texture: wgpu::Texture,
    view: wgpu::TextureView,
}

impl OperandTexture {
    fn new(gpu: &Gpu, label: &str, width: u64, height: u64) -> Result<Self> {
        let texture = gpu.scoped(
            &format!("allocating a {width}×{height} texture for {label}"),
            || {
                gpu.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width: width as u32,
                        height: height as u32,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Float,
                    usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                })
            },
        )?;
        let view = texture.create_view(&Default::default());
        Ok(OperandTexture { texture, view })
    }
}

/// Packing of one operand block into a texture (rows × cols, transposed
/// from storage when `trans`), zero-padded to width × height texels.
struct Pack {
    rows: u64,
    cols: u64,
    trans: bool,
    width: u64,
    height: u64,
    /// Whether the kernel never lets the padding reach a stored output, so
    /// stale padding from an earlier chunk is harmless.
    copyable: bool,
}

/// Texel size, and the row pitch alignment of buffer-to-texture copies.
const TEXEL_BYTES: u64 = 16;
const COPY_PITCH: u64 = 256;

impl Pack {
    fn record(
        &self,
        rec: &mut Recorder,
        src: &DeviceTensor,
        block: &Block,
        dst: &OperandTexture,
    ) -> Result<()> {
        let byte = src.offset + block.start * 4;
        // A plain copy (a memcpy per row) when the block already has the
        // texture's layout; the kernel otherwise.
        if self.copyable
            && !self.trans
            && (block.ld * 4).is_multiple_of(COPY_PITCH)
            && byte.is_multiple_of(TEXEL_BYTES)
        {
            let slice = BufSlice {
                buffer: src.buffer.clone(),
                offset: byte,
                size: block.span * 4,
            };
            let extent = wgpu::Extent3d {
                width: (self.cols / 4) as u32,
                height: self.rows as u32,
                depth_or_array_layers: 1,
            };
            rec.copy_to_texture(slice, (block.ld * 4) as u32, dst.texture.clone(), 0, extent);
            return Ok(());
        }
        let w = src.window(rec.gpu(), block.start, block.span)?;
        let p = PackParams {
            rows: self.rows as u32,
            cols: self.cols as u32,
            ld: block.ld as u32,
            shift: w.shift,
            trans: self.trans as u32,
            width: self.width as u32,
            height: self.height as u32,
            _pad: 0,
        };
        let groups = (self.width * self.height).div_ceil(WG);
        rec.dispatch_groups(
            &pack_spec(),
            bytemuck::bytes_of(&p),
            vec![(&w).into(), Binding::Texture(dst.view.clone())],
            groups,
        )
    }
}

/// [..., N] → [N]: the sum over all rows (the bias gradient of `Matmul`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ColumnSum;

impl ColumnSum {
    fn record_with(
        &self,
        rec: &mut Recorder,
        x: &DeviceTensor,
        out: &DeviceTensor,
        lim: Limits,
    ) -> Result<()> {
        let (rows, cols) = x.shape.matrix(self.name())?;
        let (rows, cols) = (rows as u64, cols as u64);
        let gpu = rec.gpu();
        let block = lim.sum_block;
        // Chunks of whole blocks of rows, each within one window.
        let per_chunk = lim.window / cols;
        let per_chunk = if per_chunk >= block {
            per_chunk / block * block
        } else {
            per_chunk
        };
        if per_chunk == 0 {
            return Err(Error::LimitExceeded {
                what: format!("a column sum over {cols} columns"),
                needed: cols * 4,
                limit: lim.window * 4,
                name: "max_storage_buffer_binding_size",
                fix: "use fewer columns".into(),
            });
        }
        let blocks_of = |r: u64| r.div_ceil(block);
        let total_blocks: u64 = (0..rows)
            .step_by(per_chunk as usize)
            .map(|r0| blocks_of(per_chunk.min(rows - r0)))
            .sum();
        let out_w = out.whole(gpu)?;
        if total_blocks == 1 {
            return sum_blocks(rec, &x.whole(gpu)?, rows, cols, block, &out_w, 0);
        }
        let partials = |rows: u64| {
            gpu.window(
                &gpu.storage_buffer("column sum partials", rows * cols * 4)?,
                0,
                rows * cols,
            )
        };
        let mut level_w = partials(total_blocks)?;
        let mut row0 = 0;
        for r0 in (0..rows).step_by(per_chunk as usize) {
            let rc = per_chunk.min(rows - r0);
            let w = x.window(gpu, r0 * cols, rc * cols)?;
            sum_blocks(rec, &w, rc, cols, block, &level_w, row0)?;
            row0 += blocks_of(rc);
        }
        let mut level_rows = total_blocks;
        while level_rows > block {
            let next_rows = blocks_of(level_rows);
            let next_w = partials(next_rows)?;
            sum_blocks(rec, &level_w, level_rows, cols, block, &next_w, 0)?;
            (level_w, level_rows) = (next_w, next_rows);
        }
        sum_blocks(rec, &level_w, level_rows, cols, block, &out_w, 0)
    }
}

/// One level of the column-sum tree: rows of `x` in blocks of `block` rows to
/// rows `row0..` of `out`.
fn sum_blocks(
    rec: &mut Recorder,
    x: &Window,
    rows: u64,
    cols: u64,
    block: u64,
    out: &Window,
    row0: u64,
) -> Result<()> {
    let p = SumParams {
        rows: rows as u32,
        cols: cols as u32,
        block: block as u32,
        shift_x: x.shift,
        shift_out: out.shift,
        out_row0: row0 as u32,
        _pad: [0; 2],
    };
    let groups = (rows.div_ceil(block) * cols).div_ceil(WG);
    rec.dispatch_groups(
        &column_sum_spec(),
        bytemuck::bytes_of(&p),
        vec![x.into(), out.into()],
        groups,
    )
}

impl Op for ColumnSum {
    fn name(&self) -> &'static str {
        "column_sum"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let (_, cols) = inputs[0].matrix(self.name())?;
        if inputs[0].numel() == 0 {
            return Err(Error::shape(
                self.name(),
                format!("empty input {:?}", inputs[0]),
            ));
        }
        Ok(vec![Shape(vec![cols])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (_, cols) = inputs[0].shape.matrix(self.name())?;
        let mut data = vec![0f64; cols];
        for row in inputs[0].data.chunks(cols) {
            for (s, v) in data.iter_mut().zip(row) {
                *s += v;
            }
        }
        Ok(vec![Tensor {
            shape: Shape(vec![cols]),
            data,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let lim = Limits::of(rec.gpu());
        self.record_with(rec, inputs[0], outputs[0], lim)
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
            BroadcastRows {
                shape: g.shape(inputs[0]).clone(),
            },
            &[dy],
        )?)])
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// [N] → `shape` (= [..., N]): every row is a copy of the input (the backward
/// of `ColumnSum`).
#[derive(Clone, Debug)]
pub struct BroadcastRows {
    pub shape: Shape,
}

impl BroadcastRows {
    fn record_with(
        &self,
        rec: &mut Recorder,
        x: &DeviceTensor,
        out: &DeviceTensor,
        window: u64,
    ) -> Result<()> {
        let (rows, cols) = self.shape.matrix(self.name())?;
        let (rows, cols) = (rows as u64, cols as u64);
        let gpu = rec.gpu();
        let wx = x.whole(gpu)?;
        let per_chunk = (window / cols).max(1);
        for r0 in (0..rows).step_by(per_chunk as usize) {
            let count = per_chunk.min(rows - r0) * cols;
            let w = out.window(gpu, r0 * cols, count)?;
            let p = BroadcastParams {
                count: count as u32,
                cols: cols as u32,
                shift_x: wx.shift,
                shift_out: w.shift,
            };
            rec.dispatch_groups(
                &broadcast_spec(),
                bytemuck::bytes_of(&p),
                vec![(&wx).into(), (&w).into()],
                count.div_ceil(WG),
            )?;
        }
        Ok(())
    }
}

impl Op for BroadcastRows {
    fn name(&self) -> &'static str {
        "broadcast_rows"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let (_, cols) = self.shape.matrix(self.name())?;
        if inputs[0].dims() != [cols] {
            return Err(Error::shape(
                self.name(),
                format!(
                    "input must be [{cols}] to fill {:?}, got {:?}",
                    self.shape, inputs[0]
                ),
            ));
        }
        Ok(vec![self.shape.clone()])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let x = &inputs[0].data;
        let data = (0..self.shape.numel()).map(|i| x[i % x.len()]).collect();
        Ok(vec![Tensor {
            shape: self.shape.clone(),
            data,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let window = rec.gpu().max_window_elems();
        self.record_with(rec, inputs[0], outputs[0], window)
    }
    fn backward(
        &self,
        g: &mut Graph,
        _inputs: &[TensorId],
        _outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        let Some(dy) = grads[0] else {
            return Ok(vec![None]);
        };
        Ok(vec![Some(g.apply1(ColumnSum, &[dy])?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::RecordStats;
    use crate::tensor::{HostTensor, Rng};
    use crate::testing::{assert_close, check_op, grad_check, test_gpus, OpCase};

    const FLAGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

    /// Stored shapes of A and B for op(A) = m×k and op(B) = k×n.
    fn stored(op: Matmul, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
        let a = if op.trans_a { [k, m] } else { [m, k] };
        let b = if op.trans_b { [n, k] } else { [k, n] };
        (a, b)
    }

    fn case(op: Matmul, m: usize, n: usize, k: usize, bias: bool) -> OpCase {
        let (a, b) = stored(op, m, n, k);
        let c = OpCase::new(op).input(a, -1.0, 1.0).input(b, -1.0, 1.0);
        if bias {
            c.input([n], -1.0, 1.0)
        } else {
            c
        }
    }

    #[test]
    fn matmul_matches_reference_on_edge_sizes() {
        // Sizes that are not multiples of any tile, K = 1, M = 1, N = 1, and
        // several workgroups in both directions.
        for (ta, tb) in FLAGS {
            let op = Matmul::new(ta, tb);
            for (i, (m, n, k)) in [
                (1, 1, 1),
                (1, 5, 3),
                (7, 1, 9),
                (37, 19, 13),
                (130, 70, 1),
                (33, 133, 17),
            ]
            .into_iter()
            .enumerate()
            {
                check_op(&case(op, m, n, k, i % 2 == 1));
            }
        }
    }

    #[test]
    fn matmul_flattens_leading_dimensions() {
        // A batch of NHWC pixels times a weight matrix: a 1×1 convolution.
        let op = Matmul::default();
        let c = OpCase::new(op)
            .input([2, 3, 5, 7], -1.0, 1.0)
            .input([7, 6], -1.0, 1.0)
            .input([6], -1.0, 1.0);
        assert_eq!(
            op.infer(&[&c.inputs[0].shape, &c.inputs[1].shape, &c.inputs[2].shape])
                .unwrap(),
            vec![Shape::new(&[2, 3, 5, 6])]
        );
        check_op(&c);
        // Aᵀ·B over flattened rows: the weight gradient of that convolution.
        let op = Matmul::new(true, false);
        check_op(
            &OpCase::new(op)
                .input([2, 3, 4], -1.0, 1.0)
                .input([2, 3, 5], -1.0, 1.0),
        );
    }

    /// Runs `record` on every test device and compares with `want`, returning
    /// each device's variant and recording statistics.
    fn run_with(
        inputs: &[&HostTensor],
        out_shape: Shape,
        want: &RefTensor,
        record: impl Fn(&mut Recorder, &[&DeviceTensor], &DeviceTensor) -> Result<()>,
    ) -> Vec<(MatmulVariant, RecordStats)> {
        let mut counts = Vec::new();
        for gpu in test_gpus() {
            let ins: Vec<DeviceTensor> = inputs
                .iter()
                .map(|t| DeviceTensor::upload(gpu, t).unwrap())
                .collect();
            let out = DeviceTensor::zeros(gpu, out_shape.clone()).unwrap();
            let mut rec = Recorder::new(gpu);
            record(&mut rec, &ins.iter().collect::<Vec<_>>(), &out).unwrap();
            counts.push((gpu.tuning.matmul, rec.run().unwrap()));
            assert_close(
                &format!("chunked ({})", gpu.tuning.describe()),
                &out.download(gpu).unwrap(),
                want,
                1e-4,
            );
        }
        counts
    }

    #[test]
    fn chunked_products_match_reference() {
        // Tiny windows and textures force splits of M, N and K (with
        // accumulation), windows with shifts, and texture reuse. The second
        // case has the layout the subgroup variant copies instead of packing
        // (rows of 64 floats, K in steps of 8), with a last M-chunk shorter
        // than the texture so that stale rows of the previous chunk remain.
        let small = Limits {
            window: 4000,
            texture_dim: 256,
            texture_budget: 2048,
            sum_block: 4,
        };
        let copyable = Limits {
            window: 1 << 20,
            texture_dim: 16384,
            texture_budget: 8192,
            sum_block: 4,
        };
        for (lim, (m, n, k)) in [(small, (150, 200, 45)), (copyable, (300, 128, 192))] {
            for (ta, tb) in FLAGS {
                let op = Matmul::new(ta, tb);
                let (sa, sb) = stored(op, m, n, k);
                let mut rng = Rng::new(7);
                let ins = [
                    rng.tensor(sa, -1.0, 1.0),
                    rng.tensor(sb, -1.0, 1.0),
                    rng.tensor([n], -1.0, 1.0),
                ];
                let refs: Vec<RefTensor> = ins.iter().map(|t| t.to_ref()).collect();
                let want = op
                    .reference(&refs.iter().collect::<Vec<_>>())
                    .unwrap()
                    .remove(0);
                let stats = run_with(
                    &ins.iter().collect::<Vec<_>>(),
                    want.shape.clone(),
                    &want,
                    |rec, ins, out| op.record_with(rec, ins, out, lim),
                );
                for (variant, st) in stats {
                    let sgb = variant == MatmulVariant::SubgroupBroadcast;
                    if lim.window == small.window {
                        assert!(
                            st.dispatches >= 10,
                            "{variant:?}: expected many chunks, got {st:?}"
                        );
                    } else if sgb && !ta && !tb {
                        // 3 K-chunks × 2 M-chunks (256 + 44 rows), all 3 + 6
                        // operand blocks copied.
                        assert_eq!((st.dispatches, st.copies), (6, 9), "{variant:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_gradients() {
        for (ta, tb) in FLAGS {
            grad_check(&case(Matmul::new(ta, tb), 5, 3, 4, true));
        }
        let op = Matmul::default();
        grad_check(
            &OpCase::new(op)
                .input([2, 3, 4], -1.0, 1.0)
                .input([4, 5], -1.0, 1.0)
                .input([5], -1.0, 1.0),
        );
        grad_check(
            &OpCase::new(Matmul::new(true, false))
                .input([2, 3, 4], -1.0, 1.0)
                .input([2, 3, 5], -1.0, 1.0),
        );
    }

    #[test]
    fn column_sum_and_broadcast() {
        for shape in [vec![1usize, 1], vec![7, 3], vec![2, 300, 5], vec![1000, 1]] {
            check_op(&OpCase::new(ColumnSum).input(shape.clone(), -1.0, 1.0));
            let n = shape[shape.len() - 1];
            check_op(
                &OpCase::new(BroadcastRows {
                    shape: Shape(shape),
                })
                .input([n], -1.0, 1.0),
            );
        }
        grad_check(&OpCase::new(ColumnSum).input([6, 5], -1.0, 1.0));
        grad_check(
            &OpCase::new(BroadcastRows {
                shape: Shape::new(&[3, 2, 5]),
            })
            .input([5], -1.0, 1.0),
        );
    }

    #[test]
    fn chunked_column_sum_and_broadcast() {
        // 10 row chunks of 25 blocks each, then three more tree levels.
        let lim = Limits {
            window: 300,
            texture_dim: 256,
            texture_budget: 2048,
            sum_block: 4,
        };
        let x = Rng::new(3).tensor([1000, 3], -1.0, 1.0);
        let want = ColumnSum.reference(&[&x.to_ref()]).unwrap().remove(0);
        let counts = run_with(&[&x], Shape::new(&[3]), &want, |rec, ins, out| {
            ColumnSum.record_with(rec, ins[0], out, lim)
        });
        assert!(
            counts.iter().all(|(_, st)| st.dispatches == 14),
            "{counts:?}"
        );

        let op = BroadcastRows {
            shape: Shape::new(&[37, 3]),
        };
        let v = Rng::new(4).tensor([3], -1.0, 1.0);
        let want = op.reference(&[&v.to_ref()]).unwrap().remove(0);
        let counts = run_with(&[&v], op.shape.clone(), &want, |rec, ins, out| {
            op.record_with(rec, ins[0], out, 10)
        });
        assert!(
            counts.iter().all(|(_, st)| st.dispatches == 13),
            "{counts:?}"
        );
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let s = |d: &[usize]| Shape::new(d);
        let mm = Matmul::default();
        let err = mm.infer(&[&s(&[2, 3]), &s(&[4, 5])]).unwrap_err();
        assert!(
            matches!(err, Error::Shape { .. })
                && err.to_string().contains("inner dimensions differ"),
            "{err}"
        );
        let err = mm.infer(&[&s(&[2, 3]), &s(&[3, 5]), &s(&[4])]).unwrap_err();
        assert!(err.to_string().contains("bias must be [5]"), "{err}");
        assert!(mm.infer(&[&s(&[3]), &s(&[3, 5])]).is_err());
        assert!(mm.infer(&[&s(&[0, 3]), &s(&[3, 5])]).is_err());
        assert!(Matmul::new(true, true)
            .infer(&[&s(&[3, 2]), &s(&[5, 3])])
            .is_ok());
        assert!(ColumnSum.infer(&[&s(&[4])]).is_err());
        assert!(BroadcastRows { shape: s(&[4, 3]) }
            .infer(&[&s(&[4])])
            .is_err());
    }

    /// Named after the llvmpipe loop cap it pins: a K of 70 000 once summed
    /// to 45 587 in the tiled kernel.
    #[test]
    fn long_reductions_are_complete() {
        let k = 70_000usize;
        let a = Tensor::new([k, 3], (0..k * 3).map(|i| (i % 7) as f32 - 3.0).collect()).unwrap();
        let b = Tensor::new([k, 2], (0..k * 2).map(|i| (i % 5) as f32 - 2.0).collect()).unwrap();
        check_op(&OpCase::new(Matmul::new(true, false)).tensor(a).tensor(b));
    }

    #[test]
    fn flops_are_two_mnk() {
        let mm = Matmul::default();
        assert_eq!(
            mm.flops(&[&Shape::new(&[2, 3, 5, 7]), &Shape::new(&[7, 6])]),
            matmul_flops(30, 6, 7)
        );
        assert_eq!(matmul_flops(30, 6, 7), 2 * 30 * 6 * 7);
        assert_eq!(
            Matmul::new(true, false).flops(&[&Shape::new(&[7, 30]), &Shape::new(&[7, 6])]),
            2 * 30 * 6 * 7
        );
    }
}
