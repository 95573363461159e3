//! 2-D convolution (`shaders/conv2d.wgsl`): NHWC activations, HWIO weights,
//! any kernel size, stride, dilation and asymmetric padding, an optional bias
//! and a fused epilogue (folded batch norm, residual add, ReLU). Forward and
//! both gradients are implicit GEMMs of one kernel body; `gpu.tuning.matmul`
//! picks shared-memory tiles or the lavapipe subgroup-broadcast design.
//!
//! Tensors larger than one storage binding are processed in chunks of whole
//! pixel rows whose destination window and matching source-row window each fit
//! one binding (`plan_chunks`).

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{
    Binding, BufSlice, DeviceTensor, Gpu, MatmulVariant, Recorder, ShaderSpec, TextureNeed, Window,
};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::{expect_inputs, Binary, BinaryKind};
use crate::tensor::{RefTensor, Shape, Tensor};

/// Explicit zero padding of the two spatial axes, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// PyTorch's `padding=(h, w)`: the same amount on both sides.
    pub fn symmetric(h: usize, w: usize) -> Self {
        Padding {
            top: h,
            bottom: h,
            left: w,
            right: w,
        }
    }

    /// TensorFlow's "same" padding for an input of `in_hw`: the output has
    /// ceil(in/stride) pixels and any odd padding pixel goes to the bottom/right.
    pub fn same(
        in_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Self {
        let total = |i: usize| {
            let s = stride[i].max(1);
            let needed =
                (in_hw[i].div_ceil(s).max(1) - 1) * s + (kernel[i].max(1) - 1) * dilation[i] + 1;
            needed.saturating_sub(in_hw[i])
        };
        let (th, tw) = (total(0), total(1));
        Padding {
            top: th / 2,
            bottom: th - th / 2,
            left: tw / 2,
            right: tw - tw / 2,
        }
    }
}

/// What the kernel applies to each output after the sum, in this order:
/// + bias[c], ·scale[c] + shift[c] (inference batch norm folded), + residual, ReLU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    pub bias: bool,
    pub scale_shift: bool,
    pub residual: bool,
    pub relu: bool,
}

impl Epilogue {
    fn all() -> impl Iterator<Item = Epilogue> {
        (0..16u32).map(|b| Epilogue {
            bias: b & 1 != 0,
            scale_shift: b & 2 != 0,
            residual: b & 4 != 0,
            relu: b & 8 != 0,
        })
    }
}

/// y = conv(x, w) with the epilogue. Inputs, in order: x [N, H, W, C_in],
/// w [kh, kw, C_in, C_out], then bias [C_out], scale and shift [C_out] and the
/// residual [N, OH, OW, C_out] when the epilogue has them.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub padding: Padding,
    pub epilogue: Epilogue,
}

impl Conv2d {
    pub fn new(stride: [usize; 2], padding: Padding) -> Self {
        Conv2d {
            stride,
            dilation: [1, 1],
            padding,
            epilogue: Epilogue::default(),
        }
    }
    pub fn dilation(mut self, d: [usize; 2]) -> Self {
        self.dilation = d;
        self
    }
    pub fn bias(mut self) -> Self {
        self.epilogue.bias = true;
        self
    }
    pub fn scale_shift(mut self) -> Self {
        self.epilogue.scale_shift = true;
        self
    }
    pub fn residual(mut self) -> Self {
        self.epilogue.residual = true;
        self
    }
    pub fn relu(mut self) -> Self {
        self.epilogue.relu = true;
        self
    }
    fn input_count(&self) -> usize {
        let e = self.epilogue;
        2 + e.bias as usize + 2 * e.scale_shift as usize + e.residual as usize
    }

    /// Output spatial size for an input of `in_hw` and a kernel of `k`.
    pub fn output_hw(&self, in_hw: [usize; 2], k: [usize; 2]) -> Result<[usize; 2]> {
        let pads = [
            self.padding.top + self.padding.bottom,
            self.padding.left + self.padding.right,
        ];
        let mut out = [0; 2];
        for i in 0..2 {
            if self.stride[i] == 0 || self.dilation[i] == 0 || k[i] == 0 {
                return Err(Error::unsupported(
                    "conv2d",
                    "stride, dilation and kernel size must be at least 1",
                ));
            }
            let span = (k[i] - 1) * self.dilation[i] + 1;
            let padded = in_hw[i] + pads[i];
            if padded < span {
                return Err(Error::shape(
                    "conv2d",
                    format!("a dilated kernel of {span} pixels does not fit a padded input of {padded} (axis {i})"),
                ));
            }
            out[i] = (padded - span) / self.stride[i] + 1;
        }
        Ok(out)
    }

    fn geom(&self, x: &Shape, w: &Shape) -> Result<Geom> {
        let [n, h, wd, cin] = x.nhwc("conv2d")?;
        let [kh, kw, wcin, cout] = match w.dims() {
            &[a, b, c, d] => [a, b, c, d],
            _ => {
                return Err(Error::shape(
                    "conv2d",
                    format!("weights must be HWIO [kh, kw, c_in, c_out], got {w:?}"),
                ))
            }
        };
        if wcin != cin {
            return Err(Error::shape(
                "conv2d",
                format!("input has {cin} channels but the weights expect {wcin}"),
            ));
        }
        if n == 0 || h == 0 || wd == 0 || cin == 0 || cout == 0 {
            return Err(Error::shape(
                "conv2d",
                format!("empty tensor: x {x:?}, w {w:?}"),
            ));
        }
        let [oh, ow] = self.output_hw([h, wd], [kh, kw])?;
        Ok(Geom {
            n,
            h,
            w: wd,
            cin,
            kh,
            kw,
            cout,
            oh,
            ow,
        })
    }

    /// The gather of the forward product (and of the weight gradient).
    fn forward_gather(&self, g: &Geom) -> Gather {
        Gather {
            src: [g.h, g.w, g.cin],
            grid: [g.oh, g.ow],
            taps: [g.kh, g.kw],
            mul: [self.stride[0] as i64, self.stride[1] as i64],
            off: [-(self.padding.top as i64), -(self.padding.left as i64)],
            dk: [self.dilation[0] as i64, self.dilation[1] as i64],
            div: [1, 1],
        }
    }

    /// The transposed gather of the input gradient: input pixel (y, x) receives
    /// dy at (y + top − ky·d)/s wherever the stride divides that offset.
    fn input_grad_gather(&self, g: &Geom) -> Gather {
        Gather {
            src: [g.oh, g.ow, g.cout],
            grid: [g.h, g.w],
            taps: [g.kh, g.kw],
            mul: [1, 1],
            off: [self.padding.top as i64, self.padding.left as i64],
            dk: [-(self.dilation[0] as i64), -(self.dilation[1] as i64)],
            div: [self.stride[0] as i64, self.stride[1] as i64],
        }
    }

    /// Calls `f(n, oy, ox, iy, ix, ky, kx)` for every tap that reads a real
    /// (non-padding) input pixel: the loop nest all three references share.
    fn for_each_tap(&self, g: &Geom, mut f: impl FnMut([usize; 7])) {
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..g.kh {
                        let iy = (oy * self.stride[0] + ky * self.dilation[0]) as i64
                            - self.padding.top as i64;
                        if iy < 0 || iy >= g.h as i64 {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let ix = (ox * self.stride[1] + kx * self.dilation[1]) as i64
                                - self.padding.left as i64;
                            if ix < 0 || ix >= g.w as i64 {
                                continue;
                            }
                            f([n, oy, ox, iy as usize, ix as usize, ky, kx]);
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    cout: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn flops(&self) -> u64 {
        2 * (self.n * self.oh * self.ow * self.cout * self.kh * self.kw * self.cin) as u64
    }
    fn in_index(&self, n: usize, y: usize, x: usize) -> usize {
        ((n * self.h + y) * self.w + x) * self.cin
    }
    fn out_index(&self, n: usize, y: usize, x: usize) -> usize {
        ((n * self.oh + y) * self.ow + x) * self.cout
    }
    fn w_index(&self, ky: usize, kx: usize) -> usize {
        (ky * self.kw + kx) * self.cin * self.cout
    }
}

/// How the kernel's A operand walks a source tensor [N, src_h, src_w, src_c]:
/// for grid pixel (y, x) and tap (ky, kx) the source row is
/// (y·mul + off + ky·dk) / div where div divides it (likewise for columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gather {
    src: [usize; 3],
    grid: [usize; 2],
    taps: [usize; 2],
    mul: [i64; 2],
    off: [i64; 2],
    dk: [i64; 2],
    div: [i64; 2],
}

impl Gather {
    /// The rows of a row-major matrix [m, width] as a 1×1 gather over one image
    /// one pixel high.
    fn rows(m: usize, width: usize) -> Self {
        Gather {
            src: [1, m, width],
            grid: [1, m],
            taps: [1, 1],
            mul: [1, 1],
            off: [0, 0],
            dk: [1, 1],
            div: [1, 1],
        }
    }

    /// First and last source row (inclusive) any tap of grid row `y` reads.
    fn source_rows(&self, y: usize) -> Option<(usize, usize)> {
        let mut span: Option<(usize, usize)> = None;
        for ky in 0..self.taps[0] {
            let num = y as i64 * self.mul[0] + self.off[0] + ky as i64 * self.dk[0];
            if num < 0 || num % self.div[0] != 0 || num / self.div[0] >= self.src[0] as i64 {
                continue;
            }
            let r = (num / self.div[0]) as usize;
            span = Some(span.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))));
        }
        span
    }
}

/// Consecutive rows of the pixel grid (global: image·grid_h + y) processed by
/// one dispatch, and the global source rows (image·src_h + y) they read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chunk {
    rows: Range<usize>,
    src: Range<usize>,
}

/// Greedy split of the grid rows of `images` images into chunks whose
/// destination (`dest_row_elems` per grid row) and source (`src_row_elems`
/// per source row) windows each hold at most `limit` elements.
fn plan_chunks(
    gather: &Gather,
    images: usize,
    dest_row_elems: u64,
    src_row_elems: u64,
    limit: u64,
) -> Result<Vec<Chunk>> {
    let (gh, sh) = (gather.grid[0], gather.src[0]);
    let row_src = |g: usize| {
        gather
            .source_rows(g % gh)
            .map(|(lo, hi)| (g / gh * sh + lo, g / gh * sh + hi + 1))
    };
    let fits = |rows: usize, src: Option<(usize, usize)>| {
        rows as u64 * dest_row_elems <= limit
            && src.map_or(0, |(lo, hi)| (hi - lo) as u64) * src_row_elems <= limit
    };
    let merge = |a: Option<(usize, usize)>, b: Option<(usize, usize)>| match (a, b) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, b) => a.or(b),
    };
    let close = |start: usize, end: usize, src: Option<(usize, usize)>| Chunk {
        rows: start..end,
        src: src.map_or(0..0, |(lo, hi)| lo..hi),
    };
    let mut chunks = Vec::new();
    let (mut start, mut src) = (0, None);
    for g in 0..images * gh {
        let r = row_src(g);
        let merged = merge(src, r);
        if fits(g + 1 - start, merged) {
            src = merged;
            continue;
        }
        if !fits(1, r) {
            return Err(Error::LimitExceeded {
                what: "one pixel row of a convolution".into(),
                needed: (dest_row_elems.max(src_row_elems) * 4),
                limit: limit * 4,
                name: "max_storage_buffer_binding_size",
                fix: "use a smaller image width".into(),
            });
        }
        chunks.push(close(start, g, src));
        start = g;
        src = r;
    }
    chunks.push(close(start, images * gh, src));
    Ok(chunks)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    InputGrad,
    WeightGrad,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Forward, Mode::InputGrad, Mode::WeightGrad];
    fn define(self) -> &'static str {
        match self {
            Mode::Forward => "FWD",
            Mode::InputGrad => "DX",
            Mode::WeightGrad => "DW",
        }
    }
}

/// The three compiled forms of the GEMM body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Tiled,
    Broadcast,
    /// Broadcast with A and B staged into read-only storage textures.
    BroadcastTex,
    /// BroadcastTex for channel counts that do not fill texels: A is gathered
    /// one float at a time from an r32float texture.
    BroadcastTexGather,
}

impl Kernel {
    const ALL: [Kernel; 4] = [
        Kernel::Tiled,
        Kernel::Broadcast,
        Kernel::BroadcastTex,
        Kernel::BroadcastTexGather,
    ];
    /// Rows × columns of C one workgroup computes.
    fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Tiled => (64, 64),
            Kernel::Broadcast => (256, 4),
            Kernel::BroadcastTex | Kernel::BroadcastTexGather => (256, 16),
        }
    }
}

fn gemm_spec(kernel: Kernel, mode: Mode, ep: Epilogue) -> ShaderSpec {
    let entry = if kernel == Kernel::Tiled {
        "conv_tiled"
    } else {
        "conv_sgb"
    };
    let mut spec = ShaderSpec::new("conv2d", entry)
        .def("GEMM", 1)
        .def(mode.define(), 1);
    spec = match kernel {
        Kernel::Tiled => spec.def("TILED", 1),
        Kernel::Broadcast => spec.def("SGB", 1),
        Kernel::BroadcastTex => spec.def("SGB", 1).def("TEX", 1),
        Kernel::BroadcastTexGather => spec.def("SGB", 1).def("TEX", 1).def("ASCALAR", 1),
    };
    let mut next = 4;
    let mut binding = |spec: ShaderSpec, on: bool, names: &[&str]| {
        if !on {
            return spec;
        }
        names.iter().fold(spec, |s, n| {
            next += 1;
            s.def(&format!("{n}_BINDING"), next - 1)
        })
    };
    spec = binding(spec, ep.bias, &["BIAS"]);
    spec = binding(spec, ep.scale_shift, &["SCALE", "SHIFT"]);
    spec = binding(spec, ep.residual, &["RESIDUAL"]);
    for (on, name) in [
        (ep.bias, "BIAS"),
        (ep.scale_shift, "AFFINE"),
        (ep.residual, "RESIDUAL"),
        (ep.relu, "RELU"),
    ] {
        if on {
            spec = spec.def(name, 1);
        }
    }
    spec
}

fn unfold_spec() -> ShaderSpec {
    ShaderSpec::new("conv2d", "unfold")
        .def("UNFOLD", 1)
        .def("ASCALAR", 1)
}

fn reduce_spec() -> ShaderSpec {
    ShaderSpec::new("conv2d", "column_sum").def("REDUCE", 1)
}
fn swap_spec() -> ShaderSpec {
    ShaderSpec::new("conv2d", "swap_last").def("SWAP", 1)
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = vec![unfold_spec(), reduce_spec(), swap_spec()];
    for kernel in Kernel::ALL {
        for mode in Mode::ALL {
            if mode == Mode::Forward {
                specs.extend(Epilogue::all().map(|ep| gemm_spec(kernel, mode, ep)));
            } else {
                specs.push(gemm_spec(kernel, mode, Epilogue::default()));
            }
        }
    }
    specs
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    row0: u32,
    k0: u32,
    taps_x: u32,
    src_h: u32,
    src_w: u32,
    src_c: u32,
    grid_h: u32,
    grid_w: u32,
    div_y: u32,
    div_x: u32,
    a_base: u32,
    a_shift: u32,
    b_shift: u32,
    c_shift: u32,
    r_shift: u32,
    accum: u32,
    col_tiles: u32,
    tex_log2: u32,
    mul_y: i32,
    off_y: i32,
    dk_y: i32,
    mul_x: i32,
    off_x: i32,
    dk_x: i32,
    v_shift: [u32; 3],
    _pad: [u32; 2],
}

/// One GEMM dispatch: C[m, n] (+)= A[m, k]·B[k, n] with the epilogue.
struct GemmCall<'a> {
    mode: Mode,
    epilogue: Epilogue,
    gather: Gather,
    m: usize,
    n: usize,
    k: usize,
    row0: usize,
    k0: usize,
    /// A window and the global element index it starts at.
    a: Window,
    a_base: u64,
    b: Window,
    c: Window,
    /// bias, scale, shift (whole) and the residual window, as the epilogue needs.
    extra: &'a [Window],
    residual: Option<Window>,
    accum: bool,
}

fn u32_of(v: impl TryInto<u32>, what: &str) -> Result<u32> {
    v.try_into()
        .map_err(|_| Error::unsupported("conv2d", format!("{what} exceeds 32 bits")))
}

fn i32_of(v: i64) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::unsupported("conv2d", "geometry exceeds 32 bits"))
}

/// Texels per row of the staging textures: a power of two, so the kernel
/// splits a texel index with a mask and a shift.
fn texture_width(gpu: &Gpu) -> u64 {
    let max_dim = gpu.limits.max_texture_dimension_2d.max(1) as u64;
    4096.min(1 << max_dim.ilog2())
}

/// The subgroup-broadcast form for this call: textures wherever B, C and the
/// epilogue vectors come in whole vec4s and the windows fit a texture; A as
/// vec4 texels when an 8-step of k (FWD/DX) or 4 rows (DW) are whole texels,
/// else gathered floats.
fn broadcast_form(gpu: &Gpu, call: &GemmCall) -> Kernel {
    let c = call.gather.src[2];
    let max_rows = gpu.limits.max_texture_dimension_2d as u64;
    let fits = |w: &Window, texel: u64| {
        w.slice.offset.is_multiple_of(texel)
            && w.slice.size.div_ceil(texel).div_ceil(texture_width(gpu)) <= max_rows
    };
    let vec4s = [&call.b, &call.c]
        .into_iter()
        .chain(call.extra)
        .chain(&call.residual)
        .all(|w| w.shift.is_multiple_of(4));
    if !call.n.is_multiple_of(4) || !vec4s || !fits(&call.b, 16) {
        return Kernel::Broadcast;
    }
    let a_vec4 = call.a.shift.is_multiple_of(4) && fits(&call.a, 16);
    let whole_texels = match call.mode {
        Mode::WeightGrad => c.is_multiple_of(4),
        _ => c.is_multiple_of(8),
    };
    if whole_texels && a_vec4 {
        Kernel::BroadcastTex
    } else if fits(&call.a, 4) {
        Kernel::BroadcastTexGather
    } else {
        Kernel::Broadcast
    }
}

/// The staging textures: vec4 A, vec4 B, and scalar A.
#[derive(Clone, Copy)]
enum Slot {
    A,
    B,
    AScalar,
}

impl Slot {
    fn purpose(self) -> &'static str {
        match self {
            Slot::A => "conv2d staging A",
            Slot::B => "conv2d staging B",
            Slot::AScalar => "conv2d staging scalar A",
        }
    }
    fn format(self) -> (wgpu::TextureFormat, u64) {
        match self {
            Slot::AScalar => (wgpu::TextureFormat::R32Float, 4),
            _ => (wgpu::TextureFormat::Rgba32Float, 16),
        }
    }
}

/// Records the copy of a window into staging texture `slot` and returns its view.
fn stage_texture(rec: &mut Recorder, slot: Slot, w: &Window) -> Result<wgpu::TextureView> {
    let gpu = rec.gpu();
    let (format, texel) = slot.format();
    let texels = w.slice.size.div_ceil(texel);
    let width = texture_width(gpu);
    let rows = texels.div_ceil(width);
    let row_bytes = width * texel;
    let texture = gpu.scratch_texture(
        slot.purpose(),
        TextureNeed {
            format,
            width: u32_of(width, "texture width")?,
            rows: u32_of(rows, "texture rows")?,
        },
    )?;
    {
        let extent = |width: u64, height: u64| wgpu::Extent3d {
            width: width as u32,
            height: height as u32,
            depth_or_array_layers: 1,
        };
        let whole_texels = w.slice.offset + texels * texel <= w.slice.buffer.size();
        if whole_texels {
            // Straight from the tensor: its whole rows, then the last partial row.
            let (full, tail) = (texels / width, texels % width);
            let at = |offset: u64, size: u64| BufSlice {
                buffer: w.slice.buffer.clone(),
                offset: w.slice.offset + offset,
                size,
            };
            if full > 0 {
                let src = at(0, full * row_bytes);
                rec.copy_to_texture(
                    src,
                    row_bytes as u32,
                    texture.clone(),
                    0,
                    extent(width, full),
                );
            }
            if tail > 0 {
                let src = at(full * row_bytes, tail * texel);
                let row = u32_of(full, "texture rows")?;
                rec.copy_to_texture(src, row_bytes as u32, texture.clone(), row, extent(tail, 1));
            }
        } else {
            // The window ends inside a texel at the end of its buffer: copy it to
            // a buffer with whole rows first.
            let bytes = rows * row_bytes;
            let buffer = gpu.scratch_buffer(slot.purpose(), bytes)?;
            rec.copy(
                w.slice.clone(),
                BufSlice {
                    buffer: buffer.clone(),
                    offset: 0,
                    size: w.slice.size,
                },
            );
            let src = BufSlice {
                buffer,
                offset: 0,
                size: bytes,
            };
            rec.copy_to_texture(
                src,
                row_bytes as u32,
                texture.clone(),
                0,
                extent(width, rows),
            );
        }
    }
    Ok(texture.create_view(&Default::default()))
}

/// The parameters that describe how A walks its source.
fn gather_params(g: &Gather) -> Result<Params> {
    Ok(Params {
        taps_x: u32_of(g.taps[1], "kernel width")?,
        src_h: u32_of(g.src[0], "height")?,
        src_w: u32_of(g.src[1], "width")?,
        src_c: u32_of(g.src[2], "channels")?,
        grid_h: u32_of(g.grid[0], "height")?,
        grid_w: u32_of(g.grid[1], "width")?,
        div_y: u32_of(g.div[0] as u64, "stride")?,
        div_x: u32_of(g.div[1] as u64, "stride")?,
        mul_y: i32_of(g.mul[0])?,
        off_y: i32_of(g.off[0])?,
        dk_y: i32_of(g.dk[0])?,
        mul_x: i32_of(g.mul[1])?,
        off_x: i32_of(g.off[1])?,
        dk_x: i32_of(g.dk[1])?,
        ..Default::default()
    })
}

/// The row width of the unfolded forward A, where the product is unfolded
/// before it is multiplied: on the broadcast kernels an input whose channels
/// do not fill whole 8-steps of k (the RGB stem) would otherwise be gathered
/// one scalar at a time, while its unfolded rows, padded to a multiple of 8,
/// take the vec4 texture form. Not where one grid row of it exceeds `limit`,
/// nor where a source window of `limit` floats would not fit the r32float
/// texture the unfold reads it from.
fn unfolded_width(gpu: &Gpu, g: &Geom, limit: u64) -> Option<usize> {
    let width = (g.kh * g.kw * g.cin).next_multiple_of(8);
    let texture_rows = limit.div_ceil(texture_width(gpu));
    (gpu.tuning.matmul == MatmulVariant::SubgroupBroadcast
        && !g.cin.is_multiple_of(8)
        && g.cout.is_multiple_of(4)
        && (g.ow * width) as u64 <= limit
        && texture_rows <= gpu.limits.max_texture_dimension_2d as u64)
        .then_some(width)
}

/// Records the unfold of `rows` rows of the forward A, from grid pixel `row0`
/// of the input window `src` (which starts at global element `src_base`),
/// into the device's scratch buffer, `width` floats per row with zeros past
/// `k`, and returns that matrix.
#[allow(clippy::too_many_arguments)]
fn record_unfold(
    rec: &mut Recorder,
    gather: &Gather,
    src: &Window,
    src_base: u64,
    row0: usize,
    rows: usize,
    k: usize,
    width: usize,
) -> Result<Window> {
    let gpu = rec.gpu();
    let elems = (rows * width) as u64;
    let buffer = gpu.scratch_buffer("conv2d unfolded input", elems * 4)?;
    let dst = gpu.window(&buffer, 0, elems)?;
    let params = Params {
        m: u32_of(rows, "rows")?,
        n: u32_of(width, "columns")?,
        k: u32_of(k, "reduction")?,
        row0: u32_of(row0, "row offset")?,
        a_base: u32_of(src_base, "input offset")?,
        a_shift: src.shift,
        tex_log2: texture_width(gpu).trailing_zeros(),
        ..gather_params(gather)?
    };
    let staged = stage_texture(rec, Slot::AScalar, src)?;
    rec.dispatch_groups(
        &unfold_spec(),
        bytemuck::bytes_of(&params),
        vec![Binding::Texture(staged), (&dst).into()],
        rows.div_ceil(64) as u64,
    )?;
    Ok(dst)
}

/// Records a copy of the row-major matrix `b` [k, n] with zero rows appended
/// up to `rows`, in the device's scratch buffer, and returns it.
fn record_padded_rows(
    rec: &mut Recorder,
    b: &Window,
    k: usize,
    n: usize,
    rows: usize,
) -> Result<Window> {
    let gpu = rec.gpu();
    let (bytes, padded) = ((k * n * 4) as u64, (rows * n * 4) as u64);
    let buffer = gpu.scratch_buffer("conv2d padded weights", padded)?;
    rec.copy(
        BufSlice {
            buffer: b.slice.buffer.clone(),
            offset: b.slice.offset + b.shift as u64 * 4,
            size: bytes,
        },
        BufSlice {
            buffer: buffer.clone(),
            offset: 0,
            size: bytes,
        },
    );
    rec.clear(BufSlice {
        buffer: buffer.clone(),
        offset: bytes,
        size: padded - bytes,
    });
    gpu.window(&buffer, 0, (rows * n) as u64)
}

fn record_gemm(rec: &mut Recorder, call: GemmCall) -> Result<()> {
    let gpu = rec.gpu();
    let kernel = match gpu.tuning.matmul {
        MatmulVariant::Tiled => Kernel::Tiled,
        MatmulVariant::SubgroupBroadcast => broadcast_form(gpu, &call),
    };
    let (tm, tn) = kernel.tile();
    let col_tiles = call.n.div_ceil(tn);
    let mut params = Params {
        m: u32_of(call.m, "rows")?,
        n: u32_of(call.n, "columns")?,
        k: u32_of(call.k, "reduction")?,
        row0: u32_of(call.row0, "row offset")?,
        k0: u32_of(call.k0, "k offset")?,
        a_base: u32_of(call.a_base, "input offset")?,
        a_shift: call.a.shift,
        b_shift: call.b.shift,
        c_shift: call.c.shift,
        r_shift: call.residual.as_ref().map_or(0, |r| r.shift),
        accum: call.accum as u32,
        col_tiles: u32_of(col_tiles, "column tiles")?,
        v_shift: [0, 1, 2].map(|i| call.extra.get(i).map_or(0, |w| w.shift)),
        ..gather_params(&call.gather)?
    };
    let mut bindings: Vec<Binding> = Vec::new();
    if let Some(a_slot) = match kernel {
        Kernel::BroadcastTex => Some(Slot::A),
        Kernel::BroadcastTexGather => Some(Slot::AScalar),
        _ => None,
    } {
        params.tex_log2 = texture_width(gpu).trailing_zeros();
        bindings.push(Binding::Texture(stage_texture(rec, a_slot, &call.a)?));
        bindings.push(Binding::Texture(stage_texture(rec, Slot::B, &call.b)?));
    } else {
        bindings.push((&call.a).into());
        bindings.push((&call.b).into());
    }
    bindings.push((&call.c).into());
    bindings.extend(call.extra.iter().map(Binding::from));
    bindings.extend(call.residual.iter().map(Binding::from));
    let spec = gemm_spec(kernel, call.mode, call.epilogue);
    let groups = (call.m.div_ceil(tm) * col_tiles) as u64;
    rec.dispatch_groups(&spec, bytemuck::bytes_of(&params), bindings, groups)
}

fn vector_shape(op: &str, what: &str, s: &Shape, len: usize) -> Result<()> {
    if s.dims() != [len] {
        return Err(Error::shape(
            op,
            format!("{what} must be [{len}], got {s:?}"),
        ));
    }
    Ok(())
}

impl Op for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, self.input_count())?;
        let g = self.geom(inputs[0], inputs[1])?;
        let out = Shape::new(&[g.n, g.oh, g.ow, g.cout]);
        let mut i = 2;
        if self.epilogue.bias {
            vector_shape("conv2d", "bias", inputs[i], g.cout)?;
            i += 1;
        }
        if self.epilogue.scale_shift {
            vector_shape("conv2d", "scale", inputs[i], g.cout)?;
            vector_shape("conv2d", "shift", inputs[i + 1], g.cout)?;
            i += 2;
        }
        if self.epilogue.residual && *inputs[i] != out {
            return Err(Error::shape(
                "conv2d",
                format!("residual must be {out:?}, got {:?}", inputs[i]),
            ));
        }
        Ok(vec![out])
    }

    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| &t.shape).collect();
        let out_shape = self.infer(&shapes)?.remove(0);
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let (x, w) = (&inputs[0].data, &inputs[1].data);
        let mut y = vec![0f64; out_shape.numel()];
        self.for_each_tap(&g, |[n, oy, ox, iy, ix, ky, kx]| {
            let (xi, yi, wi) = (
                g.in_index(n, iy, ix),
                g.out_index(n, oy, ox),
                g.w_index(ky, kx),
            );
            for ci in 0..g.cin {
                let xv = x[xi + ci];
                let wrow = &w[wi + ci * g.cout..wi + (ci + 1) * g.cout];
                for (acc, wv) in y[yi..yi + g.cout].iter_mut().zip(wrow) {
                    *acc += xv * wv;
                }
            }
        });
        let e = self.epilogue;
        let mut next = 2;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                &inputs[next - 1].data
            })
        };
        let (bias, scale, shift) = (take(e.bias), take(e.scale_shift), take(e.scale_shift));
        let residual = take(e.residual);
        for (i, v) in y.iter_mut().enumerate() {
            let c = i % g.cout;
            if let Some(b) = bias {
                *v += b[c];
            }
            if let (Some(s), Some(t)) = (scale, shift) {
                *v = *v * s[c] + t[c];
            }
            if let Some(r) = residual {
                *v += r[i];
            }
            if e.relu {
                *v = v.max(0.0);
            }
        }
        Ok(vec![Tensor {
            shape: out_shape,
            data: y,
        }])
    }

    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let gather = self.forward_gather(&g);
        let (x, out) = (inputs[0], outputs[0]);
        let weights = inputs[1].whole(gpu)?;
        let vectors = 2 + self.epilogue.bias as usize + 2 * self.epilogue.scale_shift as usize;
        let extra = inputs[2..vectors]
            .iter()
            .map(|t| t.whole(gpu))
            .collect::<Result<Vec<_>>>()?;
        let residual = self.epilogue.residual.then(|| inputs[vectors]);
        let (out_row, in_row) = ((g.ow * g.cout) as u64, (g.w * g.cin) as u64);
        let k = g.kh * g.kw * g.cin;
        let limit = gpu.max_window_elems();
        let unfold = unfolded_width(gpu, &g, limit);
        let (k_rows, dest_row, b) = match unfold {
            Some(k_rows) => {
                let b = record_padded_rows(rec, &weights, k, g.cout, k_rows)?;
                (k_rows, out_row.max((g.ow * k_rows) as u64), b)
            }
            None => (k, out_row, weights),
        };
        for chunk in plan_chunks(&gather, g.n, dest_row, in_row, limit)? {
            let rows = chunk.rows.len() as u64;
            let pixels = chunk.rows.len() * g.ow;
            let src_base = chunk.src.start as u64 * in_row;
            let src = x.window(gpu, src_base, chunk.src.len() as u64 * in_row)?;
            let row0 = chunk.rows.start * g.ow;
            let (gather, a, a_base, row0) = if unfold.is_some() {
                let a = record_unfold(rec, &gather, &src, src_base, row0, pixels, k, k_rows)?;
                (Gather::rows(pixels, k_rows), a, 0, 0)
            } else {
                (gather, src, src_base, row0)
            };
            let c_start = chunk.rows.start as u64 * out_row;
            record_gemm(
                rec,
                GemmCall {
                    mode: Mode::Forward,
                    epilogue: self.epilogue,
                    gather,
                    m: pixels,
                    n: g.cout,
                    k: k_rows,
                    row0,
                    k0: 0,
                    a,
                    a_base,
                    b: b.clone(),
                    c: out.window(gpu, c_start, rows * out_row)?,
                    extra: &extra,
                    residual: residual
                        .map(|r| r.window(gpu, c_start, rows * out_row))
                        .transpose()?,
                    accum: false,
                },
            )?;
        }
        Ok(())
    }

    /// Gradients for bias-only epilogues (ReLU included: its mask comes from
    /// the output). Folded batch norm and residual epilogues are inference
    /// fusions; training uses the separate batch-norm and add ops.
    fn backward(
        &self,
        g: &mut Graph,
        inputs: &[TensorId],
        outputs: &[TensorId],
        grads: &[Option<TensorId>],
    ) -> Result<Vec<Option<TensorId>>> {
        if self.epilogue.scale_shift || self.epilogue.residual {
            return Err(Error::unsupported(
                "conv2d",
                "no backward through a fused scale/shift or residual epilogue: train with separate batch-norm and add ops",
            ));
        }
        let Some(dy) = grads[0] else {
            return Ok(vec![None; inputs.len()]);
        };
        let dy = if self.epilogue.relu {
            g.apply1(Binary::new(BinaryKind::ReluGrad), &[outputs[0], dy])?
        } else {
            dy
        };
        let x_shape = g.shape(inputs[0]).clone();
        let [_, h, w, _] = x_shape.nhwc("conv2d")?;
        let [kh, kw] = match g.shape(inputs[1]).dims() {
            &[a, b, _, _] => [a, b],
            other => {
                return Err(Error::shape(
                    "conv2d",
                    format!("weights must be HWIO, got {other:?}"),
                ))
            }
        };
        let geometry = Conv2d {
            epilogue: Epilogue::default(),
            ..self.clone()
        };
        let w_t = g.apply1(SwapLastAxes, &[inputs[1]])?;
        let dx = g.apply1(
            Conv2dInputGrad {
                conv: geometry.clone(),
                input_hw: [h, w],
            },
            &[dy, w_t],
        )?;
        let dw = g.apply1(
            Conv2dWeightGrad {
                conv: geometry,
                kernel: [kh, kw],
            },
            &[inputs[0], dy],
        )?;
        let mut out = vec![Some(dx), Some(dw)];
        if self.epilogue.bias {
            out.push(Some(g.apply1(BiasGrad, &[dy])?));
        }
        Ok(out)
    }

    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.geom(inputs[0], inputs[1]).map_or(0, |g| g.flops())
    }
}

/// dx of a convolution: inputs dy [N, OH, OW, C_out] and the weights with
/// their last two axes swapped [kh, kw, C_out, C_in]; output [N, H, W, C_in].
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dInputGrad {
    pub conv: Conv2d,
    pub input_hw: [usize; 2],
}

impl Conv2dInputGrad {
    fn geom(&self, dy: &Shape, w_t: &Shape) -> Result<Geom> {
        let [n, oh, ow, cout] = dy.nhwc("conv2d_input_grad")?;
        let [kh, kw, wcout, cin] = match w_t.dims() {
            &[a, b, c, d] => [a, b, c, d],
            _ => {
                return Err(Error::shape(
                    "conv2d_input_grad",
                    format!("weights must be [kh, kw, c_out, c_in], got {w_t:?}"),
                ))
            }
        };
        let g = self.conv.geom(
            &Shape::new(&[n, self.input_hw[0], self.input_hw[1], cin]),
            &Shape::new(&[kh, kw, cin, cout]),
        )?;
        if wcout != cout || [g.oh, g.ow] != [oh, ow] {
            return Err(Error::shape(
                "conv2d_input_grad",
                format!(
                    "dy {dy:?} does not match the convolution of a {:?} input by {w_t:?}",
                    self.input_hw
                ),
            ));
        }
        Ok(g)
    }
}

impl Op for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "conv2d_input_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        let g = self.geom(inputs[0], inputs[1])?;
        Ok(vec![Shape::new(&[g.n, g.h, g.w, g.cin])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let (dy, w_t) = (&inputs[0].data, &inputs[1].data);
        let mut dx = vec![0f64; g.n * g.h * g.w * g.cin];
        self.conv.for_each_tap(&g, |[n, oy, ox, iy, ix, ky, kx]| {
            let (xi, yi, wi) = (
                g.in_index(n, iy, ix),
                g.out_index(n, oy, ox),
                g.w_index(ky, kx),
            );
            for co in 0..g.cout {
                let d = dy[yi + co];
                let wrow = &w_t[wi + co * g.cin..wi + (co + 1) * g.cin];
                for (acc, wv) in dx[xi..xi + g.cin].iter_mut().zip(wrow) {
                    *acc += d * wv;
                }
            }
        });
        Ok(vec![Tensor {
            shape: Shape::new(&[g.n, g.h, g.w, g.cin]),
            data: dx,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let gather = self.conv.input_grad_gather(&g);
        let (dy, dx) = (inputs[0], outputs[0]);
        let weights = inputs[1].whole(gpu)?;
        let (dx_row, dy_row) = ((g.w * g.cin) as u64, (g.ow * g.cout) as u64);
        for chunk in plan_chunks(&gather, g.n, dx_row, dy_row, gpu.max_window_elems())? {
            let a_base = chunk.src.start as u64 * dy_row;
            record_gemm(
                rec,
                GemmCall {
                    mode: Mode::InputGrad,
                    epilogue: Epilogue::default(),
                    gather,
                    m: chunk.rows.len() * g.w,
                    n: g.cin,
                    k: g.kh * g.kw * g.cout,
                    row0: chunk.rows.start * g.w,
                    k0: 0,
                    a: dy.window(gpu, a_base, chunk.src.len() as u64 * dy_row)?,
                    a_base,
                    b: weights.clone(),
                    c: dx.window(
                        gpu,
                        chunk.rows.start as u64 * dx_row,
                        chunk.rows.len() as u64 * dx_row,
                    )?,
                    extra: &[],
                    residual: None,
                    accum: false,
                },
            )?;
        }
        Ok(())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.geom(inputs[0], inputs[1]).map_or(0, |g| g.flops())
    }
}

/// dw of a convolution: inputs x [N, H, W, C_in] and dy [N, OH, OW, C_out];
/// output [kh, kw, C_in, C_out], a reduction over every output pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dWeightGrad {
    pub conv: Conv2d,
    pub kernel: [usize; 2],
}

impl Conv2dWeightGrad {
    fn geom(&self, x: &Shape, dy: &Shape) -> Result<Geom> {
        let [n, _, _, cin] = x.nhwc("conv2d_weight_grad")?;
        let [dn, oh, ow, cout] = dy.nhwc("conv2d_weight_grad")?;
        let g = self
            .conv
            .geom(x, &Shape::new(&[self.kernel[0], self.kernel[1], cin, cout]))?;
        if dn != n || [g.oh, g.ow] != [oh, ow] {
            return Err(Error::shape(
                "conv2d_weight_grad",
                format!("dy {dy:?} does not match the convolution of {x:?}"),
            ));
        }
        Ok(g)
    }
}

impl Op for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "conv2d_weight_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 2)?;
        let g = self.geom(inputs[0], inputs[1])?;
        Ok(vec![Shape::new(&[g.kh, g.kw, g.cin, g.cout])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let (x, dy) = (&inputs[0].data, &inputs[1].data);
        let mut dw = vec![0f64; g.kh * g.kw * g.cin * g.cout];
        self.conv.for_each_tap(&g, |[n, oy, ox, iy, ix, ky, kx]| {
            let (xi, yi, wi) = (
                g.in_index(n, iy, ix),
                g.out_index(n, oy, ox),
                g.w_index(ky, kx),
            );
            for ci in 0..g.cin {
                let xv = x[xi + ci];
                for (acc, d) in dw[wi + ci * g.cout..wi + (ci + 1) * g.cout]
                    .iter_mut()
                    .zip(&dy[yi..yi + g.cout])
                {
                    *acc += xv * d;
                }
            }
        });
        Ok(vec![Tensor {
            shape: Shape::new(&[g.kh, g.kw, g.cin, g.cout]),
            data: dw,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let g = self.geom(&inputs[0].shape, &inputs[1].shape)?;
        let gather = self.conv.forward_gather(&g);
        let (x, dy) = (inputs[0], inputs[1]);
        let dw = outputs[0].whole(gpu)?;
        let (dy_row, x_row) = ((g.ow * g.cout) as u64, (g.w * g.cin) as u64);
        let chunks = plan_chunks(&gather, g.n, dy_row, x_row, gpu.max_window_elems())?;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let a_base = chunk.src.start as u64 * x_row;
            record_gemm(
                rec,
                GemmCall {
                    mode: Mode::WeightGrad,
                    epilogue: Epilogue::default(),
                    gather,
                    m: g.kh * g.kw * g.cin,
                    n: g.cout,
                    k: chunk.rows.len() * g.ow,
                    row0: 0,
                    k0: chunk.rows.start * g.ow,
                    a: x.window(gpu, a_base, chunk.src.len() as u64 * x_row)?,
                    a_base,
                    b: dy.window(
                        gpu,
                        chunk.rows.start as u64 * dy_row,
                        chunk.rows.len() as u64 * dy_row,
                    )?,
                    c: dw.clone(),
                    extra: &[],
                    residual: None,
                    accum: i > 0,
                },
            )?;
        }
        Ok(())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        self.geom(inputs[0], inputs[1]).map_or(0, |g| g.flops())
    }
}

/// Rows one invocation of the bias-gradient sum adds up.
const REDUCE_ROWS: u64 = 1024;

/// db of a convolution: the sum of dy [.., C_out] over every pixel.
#[derive(Clone, Debug, PartialEq)]
pub struct BiasGrad;

impl Op for BiasGrad {
    fn name(&self) -> &'static str {
        "conv2d_bias_grad"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        let (_, c) = inputs[0].matrix(self.name())?;
        Ok(vec![Shape::new(&[c])])
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let (_, c) = inputs[0].shape.matrix(self.name())?;
        let mut db = vec![0f64; c];
        for (i, v) in inputs[0].data.iter().enumerate() {
            db[i % c] += v;
        }
        Ok(vec![Tensor {
            shape: Shape::new(&[c]),
            data: db,
        }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let (rows, cols) = inputs[0].shape.matrix(self.name())?;
        let limit = gpu.max_window_elems();
        let per_chunk = (limit / cols as u64).max(1);
        let db = outputs[0].whole(gpu)?;
        let splits = (rows as u64).min(per_chunk).div_ceil(REDUCE_ROWS);
        let partial = gpu.storage_buffer("conv2d bias partial sums", splits * cols as u64 * 4)?;
        let partial = gpu.window(&partial, 0, splits * cols as u64)?;
        let col_tiles = (cols as u64).div_ceil(64);
        let sum =
            |rec: &mut Recorder, src: &Window, dst: &Window, rows: u64, per: u64, accum: bool| {
                let params = Params {
                    m: u32_of(rows, "rows")?,
                    n: u32_of(cols, "columns")?,
                    k0: u32_of(per, "rows per split")?,
                    col_tiles: u32_of(col_tiles, "column groups")?,
                    a_shift: src.shift,
                    c_shift: dst.shift,
                    accum: accum as u32,
                    ..Default::default()
                };
                let groups = rows.div_ceil(per) * col_tiles;
                rec.dispatch_groups(
                    &reduce_spec(),
                    bytemuck::bytes_of(&params),
                    vec![src.into(), dst.into()],
                    groups,
                )
            };
        for (i, range) in crate::gpu::chunks(rows as u64, per_chunk).enumerate() {
            let n = range.end - range.start;
            let src = inputs[0].window(gpu, range.start * cols as u64, n * cols as u64)?;
            sum(rec, &src, &partial, n, REDUCE_ROWS, false)?;
            sum(rec, &partial, &db, n.div_ceil(REDUCE_ROWS), splits, i > 0)?;
        }
        Ok(())
    }
    fn flops(&self, inputs: &[&Shape]) -> u64 {
        inputs[0].numel() as u64
    }
}

/// [.., a, b] → [.., b, a] for a 4-D tensor: HWIO weights to the HWOI layout
/// the input gradient multiplies by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwapLastAxes;

impl Op for SwapLastAxes {
    fn name(&self) -> &'static str {
        "swap_last_axes"
    }
    fn infer(&self, inputs: &[&Shape]) -> Result<Vec<Shape>> {
        expect_inputs(self.name(), inputs, 1)?;
        match inputs[0].dims() {
            &[t0, t1, a, b] => Ok(vec![Shape::new(&[t0, t1, b, a])]),
            _ => Err(Error::shape(
                self.name(),
                format!("expected a 4-D tensor, got {:?}", inputs[0]),
            )),
        }
    }
    fn reference(&self, inputs: &[&RefTensor]) -> Result<Vec<RefTensor>> {
        let shape = self.infer(&[&inputs[0].shape])?.remove(0);
        let [_, _, b, a] = [shape.0[0], shape.0[1], shape.0[2], shape.0[3]];
        let mut data = vec![0f64; shape.numel()];
        for (i, v) in inputs[0].data.iter().enumerate() {
            let (t, r) = (i / (a * b), i % (a * b));
            data[t * a * b + (r % b) * a + r / b] = *v;
        }
        Ok(vec![Tensor { shape, data }])
    }
    fn record(
        &self,
        rec: &mut Recorder,
        inputs: &[&DeviceTensor],
        outputs: &[&DeviceTensor],
    ) -> Result<()> {
        let gpu = rec.gpu();
        let d = inputs[0].shape.dims();
        let (src, dst) = (inputs[0].whole(gpu)?, outputs[0].whole(gpu)?);
        let params = Params {
            k: u32_of(d[0] * d[1], "taps")?,
            m: u32_of(d[2], "rows")?,
            n: u32_of(d[3], "columns")?,
            a_shift: src.shift,
            c_shift: dst.shift,
            ..Default::default()
        };
        let bindings = vec![Binding::from(&src), Binding::from(&dst)];
        rec.dispatch_groups(
            &swap_spec(),
            bytemuck::bytes_of(&params),
            bindings,
            inputs[0].numel().div_ceil(64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_op, grad_check, OpCase};

    fn case(op: Conv2d, x: [usize; 4], k: [usize; 2], cout: usize) -> OpCase {
        let g = op
            .geom(&Shape::new(&x), &Shape::new(&[k[0], k[1], x[3], cout]))
            .expect("valid test geometry");
        let out = [g.n, g.oh, g.ow, g.cout];
        let e = op.epilogue;
        let mut c = OpCase::new(op)
            .input(x, -1.0, 1.0)
            .input([k[0], k[1], x[3], cout], -1.0, 1.0);
        if e.bias {
            c = c.input([cout], -0.5, 0.5);
        }
        if e.scale_shift {
            c = c.input([cout], 0.5, 1.5).input([cout], -0.5, 0.5);
        }
        if e.residual {
            c = c.input(out, -1.0, 1.0);
        }
        c
    }

    #[test]
    fn padding_helpers() {
        // ResNet stem in TF: 224 → 112 with 2 on top and 3 below.
        assert_eq!(
            Padding::same([224, 223], [7, 7], [2, 2], [1, 1]),
            Padding {
                top: 2,
                bottom: 3,
                left: 3,
                right: 3
            }
        );
        assert_eq!(
            Padding::same([9, 9], [3, 3], [1, 1], [6, 6]),
            Padding::symmetric(6, 6)
        );
        assert_eq!(
            Padding::same([4, 4], [1, 1], [2, 2], [1, 1]),
            Padding::default()
        );
        let conv = Conv2d::new([2, 2], Padding::same([225, 7], [7, 3], [2, 2], [1, 1]));
        assert_eq!(conv.output_hw([225, 7], [7, 3]).unwrap(), [113, 4]);
    }

    #[test]
    fn chunk_plan_covers_rows_within_limit() {
        let conv = Conv2d::new(
            [2, 1],
            Padding {
                top: 1,
                bottom: 2,
                left: 0,
                right: 0,
            },
        )
        .dilation([2, 1]);
        let g = conv
            .geom(&Shape::new(&[3, 11, 5, 4]), &Shape::new(&[3, 2, 4, 6]))
            .unwrap();
        for gather in [conv.forward_gather(&g), conv.input_grad_gather(&g)] {
            let (dest, src) = (gather.grid[1] as u64 * 6, gather.src[1] as u64 * 6);
            let whole = plan_chunks(&gather, 3, dest, src, u64::MAX).unwrap();
            assert_eq!(whole.len(), 1);
            let chunks = plan_chunks(&gather, 3, dest, src, 6 * src).unwrap();
            assert!(chunks.len() > 3, "{chunks:?}");
            let mut next = 0;
            for c in &chunks {
                assert_eq!(c.rows.start, next);
                next = c.rows.end;
                assert!(
                    c.rows.len() as u64 * dest <= 6 * src && c.src.len() as u64 * src <= 6 * src
                );
                for row in c.rows.clone() {
                    if let Some((lo, hi)) = gather.source_rows(row % gather.grid[0]) {
                        let base = row / gather.grid[0] * gather.src[0];
                        assert!(
                            c.src.start <= base + lo && base + hi < c.src.end,
                            "{c:?} row {row}"
                        );
                    }
                }
            }
            assert_eq!(next, 3 * gather.grid[0]);
            assert!(plan_chunks(&gather, 3, dest, src, 2).is_err());
        }
    }

    #[test]
    fn forward_matches_reference() {
        let asym = Padding {
            top: 1,
            bottom: 2,
            left: 0,
            right: 1,
        };
        // Each distinct epilogue is a pipeline to JIT: the cases share two
        // (bias + ReLU, and all four).
        let full = |c: Conv2d| c.bias().scale_shift().residual().relu();
        // Scalar and gathered-A paths: 3, 1 and 5 input channels, odd outputs, a 1×1 output.
        check_op(&case(
            Conv2d::new([2, 2], asym).bias().relu(),
            [2, 7, 9, 3],
            [3, 3],
            5,
        ));
        check_op(&case(
            Conv2d::new([1, 1], Padding::default()).bias().relu(),
            [1, 3, 3, 1],
            [3, 3],
            1,
        ));
        check_op(&case(
            full(Conv2d::new([1, 2], asym).dilation([2, 1])),
            [3, 6, 5, 5],
            [2, 3],
            8,
        ));
        // Texture path (c_in % 8, c_out % 4), dilation 2 and 6.
        let same = Padding::same([9, 10], [3, 3], [1, 1], [2, 2]);
        check_op(&case(
            full(Conv2d::new([1, 1], same).dilation([2, 2])),
            [2, 9, 10, 16],
            [3, 3],
            12,
        ));
        let atrous = Conv2d::new([1, 1], Padding::symmetric(6, 6))
            .dilation([6, 6])
            .bias()
            .relu();
        check_op(&case(atrous, [1, 13, 11, 8], [3, 3], 20));
        check_op(&case(
            full(Conv2d::new([2, 2], asym)),
            [2, 8, 7, 24],
            [1, 1],
            36,
        ));
    }

    #[test]
    fn forward_in_chunks() {
        let op = Conv2d::new([1, 1], Padding::symmetric(1, 1)).bias().relu();
        check_op(&case(op, [2, 9, 7, 16], [3, 3], 16).windows(3 * 7 * 16));
        let pad = Padding {
            top: 0,
            bottom: 1,
            left: 2,
            right: 1,
        };
        let op = Conv2d::new([2, 2], pad).bias().relu();
        check_op(&case(op, [2, 9, 4, 3], [3, 2], 4).windows(40));
        // Unfolded RGB-like input, three grid rows of 7 × 32 per chunk.
        let op = Conv2d::new([1, 1], Padding::symmetric(1, 1)).bias().relu();
        check_op(&case(op, [2, 9, 7, 3], [3, 3], 8).windows(3 * 7 * 32));
    }

    #[test]
    fn gradients() {
        let asym = Padding {
            top: 2,
            bottom: 0,
            left: 1,
            right: 2,
        };
        // Gathered-A and scalar paths, stride 2, odd channels, batch 2.
        grad_check(&case(
            Conv2d::new([2, 2], asym).bias().relu(),
            [2, 7, 6, 3],
            [3, 3],
            4,
        ));
        grad_check(&case(
            Conv2d::new([2, 1], asym).dilation([2, 2]).bias().relu(),
            [1, 9, 8, 1],
            [3, 2],
            1,
        ));
        // Texture paths: DW with c_in % 4, DX with c_out % 8.
        grad_check(&case(
            Conv2d::new([2, 2], asym).dilation([1, 2]).bias().relu(),
            [2, 7, 9, 4],
            [3, 3],
            8,
        ));
        grad_check(&case(
            Conv2d::new([1, 1], Padding::symmetric(2, 2))
                .dilation([2, 2])
                .bias()
                .relu(),
            [1, 6, 6, 8],
            [3, 3],
            12,
        ));
    }

    #[test]
    fn gradients_in_chunks() {
        let op = Conv2d::new(
            [2, 1],
            Padding {
                top: 1,
                bottom: 0,
                left: 1,
                right: 1,
            },
        )
        .bias()
        .relu();
        grad_check(&case(op.clone(), [2, 8, 4, 4], [3, 3], 8).windows(64));
        grad_check(&case(op, [2, 8, 4, 3], [3, 3], 8).windows(64));
    }

    #[test]
    fn bias_grad_in_splits_and_chunks() {
        let case = OpCase::new(BiasGrad).input([3, 40, 11, 5], -1.0, 1.0);
        check_op(&case);
        check_op(&case.windows(5 * 1100));
    }

    #[test]
    fn errors_are_typed() {
        let conv = Conv2d::new([1, 1], Padding::default());
        let err = conv
            .infer(&[&Shape::new(&[1, 5, 5, 3]), &Shape::new(&[3, 3, 4, 8])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = conv
            .infer(&[&Shape::new(&[1, 2, 5, 3]), &Shape::new(&[3, 3, 3, 8])])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = Conv2d::new([0, 1], Padding::default())
            .infer(&[&Shape::new(&[1, 5, 5, 3]), &Shape::new(&[1, 1, 3, 8])])
            .unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        let fused = Conv2d::new([1, 1], Padding::default()).scale_shift();
        let mut g = Graph::new();
        let ins = [
            g.input("x", [1, 3, 3, 2]),
            g.param("w", [1, 1, 2, 4]),
            g.param("s", [4]),
            g.param("t", [4]),
        ];
        let y = g.apply1(fused, &ins).unwrap();
        let err = g.backward(&[(y, y)], &ins[..1]).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    /// The aligned and the odd-channel cases of the tests above run the texture forms.
    #[test]
    fn aligned_shapes_use_textures() {
        let Some(gpu) = crate::testing::test_gpus()
            .iter()
            .find(|g| g.tuning.matmul == MatmulVariant::SubgroupBroadcast)
        else {
            return;
        };
        let labels =
            |op: &dyn Op, shapes: &[&[usize]]| crate::testing::dispatch_labels(gpu, op, shapes);
        let conv = Conv2d::new(
            [2, 2],
            Padding {
                top: 2,
                bottom: 0,
                left: 1,
                right: 2,
            },
        )
        .dilation([1, 2]);
        let fwd = labels(&conv, &[&[2, 7, 9, 8], &[3, 3, 8, 8]]);
        let dx = labels(
            &Conv2dInputGrad {
                conv: conv.clone(),
                input_hw: [7, 9],
            },
            &[&[2, 4, 4, 8], &[3, 3, 8, 4]],
        );
        let dw = labels(
            &Conv2dWeightGrad {
                conv,
                kernel: [3, 3],
            },
            &[&[2, 7, 9, 4], &[2, 4, 4, 8]],
        );
        for (what, l) in [("forward", fwd), ("dx", dx), ("dw", dw)] {
            assert!(
                l.iter()
                    .all(|l| l.contains("TEX=1") && !l.contains("ASCALAR")),
                "{what}: {l:?}"
            );
        }
        // The RGB stem: the forward product unfolded, then vec4 texels; its
        // weight gradient gathers scalars.
        let conv = Conv2d::new([2, 2], Padding::symmetric(3, 3));
        let stem = labels(&conv, &[&[1, 9, 9, 3], &[7, 7, 3, 8]]);
        assert!(stem[0].contains("unfold"), "{stem:?}");
        assert!(
            stem[1..]
                .iter()
                .all(|l| l.contains("TEX=1") && !l.contains("ASCALAR")),
            "{stem:?}"
        );
        let dw = Conv2dWeightGrad {
            conv,
            kernel: [7, 7],
        };
        let dw = labels(&dw, &[&[1, 9, 9, 3], &[1, 5, 5, 8]]);
        assert!(dw.iter().all(|l| l.contains("ASCALAR=1")), "{dw:?}");
    }

    #[test]
    fn flops_count_multiply_adds_twice() {
        let conv = Conv2d::new([1, 1], Padding::symmetric(1, 1));
        assert_eq!(
            conv.flops(&[
                &Shape::new(&[1, 64, 64, 256]),
                &Shape::new(&[3, 3, 256, 256])
            ]),
            2 * 64 * 64 * 256 * 9 * 256
        );
    }

    /// The TF stem at 2048×2048: a 256 MiB output, twice one binding, so it
    /// runs in chunks at the real device limit. Checks sampled outputs.
    #[test]
    #[ignore]
    fn stem_2048_chunked() {
        let Some(gpu) = crate::testing::test_gpu() else {
            return;
        };
        let mut rng = crate::tensor::Rng::new(11);
        let pad = Padding::same([2048, 2048], [7, 7], [2, 2], [1, 1]);
        let op = Conv2d::new([2, 2], pad).bias().relu();
        let x = rng.tensor([1, 2048, 2048, 3], -1.0, 1.0);
        let w = rng.tensor([7, 7, 3, 64], -0.2, 0.2);
        let b = rng.tensor([64], -0.1, 0.1);
        let t = std::time::Instant::now();
        let y = crate::graph::exec::run_op(&gpu, std::sync::Arc::new(op.clone()), &[&x, &w, &b])
            .unwrap()
            .remove(0);
        eprintln!("{:?} in {:.1} s", y.shape, t.elapsed().as_secs_f64());
        let g = op.geom(&x.shape, &w.shape).unwrap();
        let mut worst = 0f64;
        for _ in 0..2000 {
            let (oy, ox, co) = (rng.below(g.oh), rng.below(g.ow), rng.below(64));
            let mut want = b.data[co] as f64;
            for ky in 0..7 {
                for kx in 0..7 {
                    let (iy, ix) = (
                        (oy * 2 + ky) as i64 - pad.top as i64,
                        (ox * 2 + kx) as i64 - pad.left as i64,
                    );
                    if iy < 0 || ix < 0 || iy >= 2048 || ix >= 2048 {
                        continue;
                    }
                    for ci in 0..3 {
                        want += x.data[g.in_index(0, iy as usize, ix as usize) + ci] as f64
                            * w.data[g.w_index(ky, kx) + ci * 64 + co] as f64;
                    }
                }
            }
            let got = y.data[g.out_index(0, oy, ox) + co] as f64;
            worst = worst.max((got - want.max(0.0)).abs());
        }
        assert!(worst < 1e-4, "worst sampled error {worst}");
    }
}
