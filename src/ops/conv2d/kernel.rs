//! The implicit-GEMM kernel of `shaders/conv2d.wgsl`: its specialisations
//! (mode, kernel form, epilogue), its uniform parameters, and the recording
//! of one product.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Forward,
    InputGrad,
    WeightGrad,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Forward, Mode::InputGrad, Mode::WeightGrad];
    pub(super) fn define(self) -> &'static str {
        match self {
            Mode::Forward => "FWD",
            Mode::InputGrad => "DX",
            Mode::WeightGrad => "DW",
        }
    }
}

/// The compiled forms of the GEMM body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kernel {
    /// Shared-memory tiles in the shape of `config`, staged with vec4 loads
    /// when `vec4` (see `tiled_vec4`).
    Tiled {
        config: TiledConfig,
        vec4: bool,
    },
    Broadcast,
    /// Broadcast with A and B staged into read-only storage textures.
    BroadcastTex,
    /// BroadcastTex for channel counts that do not fill texels: A is gathered
    /// one float at a time from an r32float texture.
    BroadcastTexGather,
}

impl Kernel {
    fn all() -> Vec<Kernel> {
        let tiled = TILED_CONFIGS
            .into_iter()
            .flat_map(|config| [false, true].map(|vec4| Kernel::Tiled { config, vec4 }));
        tiled
            .chain([
                Kernel::Broadcast,
                Kernel::BroadcastTex,
                Kernel::BroadcastTexGather,
            ])
            .collect()
    }
    /// Rows × columns of C one workgroup computes.
    pub(super) fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Tiled { config, .. } => (config.tile_m as usize, config.tile_n as usize),
            Kernel::Broadcast => (256, 4),
            Kernel::BroadcastTex | Kernel::BroadcastTexGather => (256, 16),
        }
    }
}

/// `lanes`: the subgroup size the broadcast kernels are specialised for
/// (unused by the tiled one).
pub(super) fn gemm_spec(
    kernel: Kernel,
    mode: Mode,
    ep: Epilogue,
    lanes: u32,
    precision: Precision,
) -> ShaderSpec {
    let entry = match kernel {
        Kernel::Tiled { .. } => "conv_tiled",
        _ => "conv_sgb",
    };
    let mut spec = ShaderSpec::new("conv2d", entry)
        .def("GEMM", 1)
        .def(mode.define(), 1);
    spec = match kernel {
        Kernel::Tiled { config, vec4 } => config.specialise(spec).def("VEC4", vec4 as u32),
        Kernel::Broadcast => spec.def("SGB", 1),
        Kernel::BroadcastTex => spec.def("SGB", 1).def("TEX", 1),
        Kernel::BroadcastTexGather => spec.def("SGB", 1).def("TEX", 1).def("ASCALAR", 1),
    };
    if !matches!(kernel, Kernel::Tiled { .. }) {
        spec = spec.def("LANES", lanes).def("TEXELS", lanes / 4);
    }
    if precision == Precision::F16 {
        spec = spec.def("F16", 1);
    }
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

/// f32 reads its source staged in the r32float texture, f16 in place.
pub(super) fn unfold_spec(precision: Precision) -> ShaderSpec {
    let spec = ShaderSpec::new("conv2d", "unfold").def("UNFOLD", 1);
    match precision {
        Precision::F32 => spec.def("ASCALAR", 1),
        Precision::F16 => spec.def("F16", 1),
    }
}

pub(super) fn reduce_spec() -> ShaderSpec {
    ShaderSpec::new("conv2d", "column_sum").def("REDUCE", 1)
}
pub(super) fn swap_spec() -> ShaderSpec {
    ShaderSpec::new("conv2d", "swap_last").def("SWAP", 1)
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = vec![
        unfold_spec(Precision::F32),
        unfold_spec(Precision::F16),
        reduce_spec(),
        swap_spec(),
    ];
    for kernel in Kernel::all() {
        let lanes: &[u32] = match kernel {
            Kernel::Tiled { .. } => &[0],
            _ => &crate::gpu::BROADCAST_LANES,
        };
        for &lanes in lanes {
            for mode in Mode::ALL {
                let f32_spec = |ep| gemm_spec(kernel, mode, ep, lanes, Precision::F32);
                if mode == Mode::Forward {
                    specs.extend(Epilogue::all().map(f32_spec));
                } else {
                    specs.push(f32_spec(Epilogue::default()));
                }
            }
            // f16: the forward, without the scalar-gather texture form.
            if kernel != Kernel::BroadcastTexGather {
                specs.extend(
                    Epilogue::all()
                        .map(|ep| gemm_spec(kernel, Mode::Forward, ep, lanes, Precision::F16)),
                );
            }
        }
    }
    specs
}

crate::uniform! {
    #[derive(Clone, Copy, Default, Pod, Zeroable)]
    pub(super) struct Params {
        pub(super) m: u32,
        pub(super) n: u32,
        pub(super) k: u32,
        pub(super) row0: u32,
        pub(super) k0: u32,
        pub(super) taps_x: u32,
        pub(super) src_h: u32,
        pub(super) src_w: u32,
        pub(super) src_c: u32,
        pub(super) grid_h: u32,
        pub(super) grid_w: u32,
        pub(super) div_y: u32,
        pub(super) div_x: u32,
        pub(super) a_base: u32,
        pub(super) a_shift: u32,
        pub(super) b_shift: u32,
        pub(super) c_shift: u32,
        pub(super) r_shift: u32,
        pub(super) accum: u32,
        pub(super) col_tiles: u32,
        pub(super) tex_log2: u32,
        pub(super) mul_y: i32,
        pub(super) off_y: i32,
        pub(super) dk_y: i32,
        pub(super) mul_x: i32,
        pub(super) off_x: i32,
        pub(super) dk_x: i32,
        pub(super) v_shift: [u32; 3],
        pub(super) _pad: [u32; 2],
    }
}

/// One GEMM dispatch: C[m, n] (+)= A[m, k]·B[k, n] with the epilogue.
pub(super) struct GemmCall<'a> {
    pub(super) mode: Mode,
    /// How A, B, C and the residual are stored.
    pub(super) precision: Precision,
    pub(super) epilogue: Epilogue,
    pub(super) gather: Gather,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) row0: usize,
    pub(super) k0: usize,
    /// A window and the global element index it starts at.
    pub(super) a: Window,
    pub(super) a_base: u64,
    pub(super) b: Window,
    pub(super) c: Window,
    /// bias, scale, shift (whole) and the residual window, as the epilogue needs.
    pub(super) extra: &'a [Window],
    pub(super) residual: Option<Window>,
    pub(super) accum: bool,
}

pub(super) fn u32_of(v: impl TryInto<u32>, what: &str) -> Result<u32> {
    v.try_into()
        .map_err(|_| Error::unsupported("conv2d", format!("{what} exceeds 32 bits")))
}

pub(super) fn i32_of(v: i64) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::unsupported("conv2d", "geometry exceeds 32 bits"))
}

/// Whether A comes in whole vec4 texels for the broadcast kernel with
/// `lanes` lanes: a subgroup step of k (FWD/DX) stays in one tap, or 4 rows
/// (DW) are 4 channels of one tap.
pub(super) fn whole_texels(mode: Mode, a_channels: usize, lanes: u32) -> bool {
    match mode {
        Mode::WeightGrad => a_channels.is_multiple_of(4),
        _ => a_channels.is_multiple_of(lanes as usize),
    }
}

/// The subgroup-broadcast form for this call: textures wherever B, C and the
/// epilogue vectors come in whole vec4s and the windows fit a texture; A as
/// vec4 texels where `whole_texels`, else gathered floats (f32 only: f16
/// then reads its operands in place).
pub(super) fn broadcast_form(gpu: &Gpu, call: &GemmCall, lanes: u32) -> Kernel {
    let c = call.gather.src[2];
    let texel = Slot::b(call.precision).format().1;
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
    if !call.n.is_multiple_of(4) || !vec4s || !fits(&call.b, texel) {
        return Kernel::Broadcast;
    }
    let a_vec4 = call.a.shift.is_multiple_of(4) && fits(&call.a, texel);
    if whole_texels(call.mode, c, lanes) && a_vec4 {
        Kernel::BroadcastTex
    } else if call.precision == Precision::F32 && fits(&call.a, 4) {
        Kernel::BroadcastTexGather
    } else {
        Kernel::Broadcast
    }
}

/// Whether the tiled kernel can stage this call's tiles with vec4 loads:
/// A's quads (4 channels of one tap, along K for FWD and DX, along the rows
/// for DW) and B's (4 columns) never straddle an edge and start on 16 bytes
/// of their windows. Elsewhere (e.g. the 3-channel stem) it reads scalars.
pub(super) fn tiled_vec4(call: &GemmCall) -> bool {
    let along_a = match call.mode {
        Mode::WeightGrad => call.m,
        _ => call.k,
    };
    let a_start = (call.a.shift as i64 - call.a_base as i64).rem_euclid(4);
    [call.gather.src[2], along_a, call.n, call.b.shift as usize]
        .iter()
        .all(|v| v.is_multiple_of(4))
        && a_start == 0
}

/// The parameters that describe how A walks its source.
pub(super) fn gather_params(g: &Gather) -> Result<Params> {
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

pub(super) fn record_gemm(rec: &mut Recorder, call: GemmCall) -> Result<()> {
    let gpu = rec.gpu();
    let (kernel, lanes) = match gpu.tuning.matmul {
        MatmulVariant::Tiled(config) => (
            Kernel::Tiled {
                config,
                vec4: tiled_vec4(&call),
            },
            0,
        ),
        MatmulVariant::SubgroupBroadcast { lanes } => (broadcast_form(gpu, &call, lanes), lanes),
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
        Kernel::BroadcastTex => Some(Slot::a(call.precision)),
        Kernel::BroadcastTexGather => Some(Slot::AScalar),
        _ => None,
    } {
        params.tex_log2 = texture_width(gpu).trailing_zeros();
        bindings.push(Binding::Texture(stage_texture(rec, a_slot, &call.a)?));
        bindings.push(Binding::Texture(stage_texture(
            rec,
            Slot::b(call.precision),
            &call.b,
        )?));
    } else {
        bindings.push((&call.a).into());
        bindings.push((&call.b).into());
    }
    bindings.push((&call.c).into());
    bindings.extend(call.extra.iter().map(Binding::from));
    bindings.extend(call.residual.iter().map(Binding::from));
    let spec = gemm_spec(kernel, call.mode, call.epilogue, lanes, call.precision);
    let groups = (call.m.div_ceil(tm) * col_tiles) as u64;
    rec.dispatch_groups(&spec, bytemuck::bytes_of(&params), bindings, groups)
}
