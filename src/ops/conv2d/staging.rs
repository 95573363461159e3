//! Staging for the texture forms of the kernel: windows copied into the
//! device's scratch textures, and the unfolded or padded operands that let
//! convolutions with few channels take the vec4 texture path.

use super::*;

/// Texels per row of the staging textures: a power of two, so the kernel
/// splits a texel index with a mask and a shift.
pub(super) fn texture_width(gpu: &Gpu) -> u64 {
    let max_dim = gpu.limits.max_texture_dimension_2d.max(1) as u64;
    4096.min(1 << max_dim.ilog2())
}

/// The staging textures: vec4 A, vec4 B, and scalar A, and the vec4 A and
/// B of f16 products (rgba16float: each texel still holds 4 elements).
#[derive(Clone, Copy)]
pub(super) enum Slot {
    A,
    B,
    AScalar,
    AHalf,
    BHalf,
}

impl Slot {
    /// The vec4 A slot for operands stored at `precision`.
    pub(super) fn a(precision: Precision) -> Slot {
        match precision {
            Precision::F32 => Slot::A,
            Precision::F16 => Slot::AHalf,
        }
    }
    pub(super) fn b(precision: Precision) -> Slot {
        match precision {
            Precision::F32 => Slot::B,
            Precision::F16 => Slot::BHalf,
        }
    }
    pub(super) fn purpose(self) -> &'static str {
        match self {
            Slot::A => "conv2d staging A",
            Slot::B => "conv2d staging B",
            Slot::AScalar => "conv2d staging scalar A",
            Slot::AHalf => "conv2d staging f16 A",
            Slot::BHalf => "conv2d staging f16 B",
        }
    }
    /// The texture format and the bytes of one texel.
    pub(super) fn format(self) -> (wgpu::TextureFormat, u64) {
        match self {
            Slot::AScalar => (wgpu::TextureFormat::R32Float, 4),
            Slot::A | Slot::B => (wgpu::TextureFormat::Rgba32Float, 16),
            Slot::AHalf | Slot::BHalf => (wgpu::TextureFormat::Rgba16Float, 8),
        }
    }
    /// Bytes of one element of the staged tensor.
    fn element_bytes(self) -> u64 {
        match self {
            Slot::AScalar => 4,
            _ => self.format().1 / 4,
        }
    }
}

/// Records the copy of a window into staging texture `slot` and returns its view.
pub(super) fn stage_texture(
    rec: &mut Recorder,
    slot: Slot,
    w: &Window,
) -> Result<wgpu::TextureView> {
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
    // Storage buffers are whole multiples of 16 bytes (`storage_size`), so a
    // window's last texel always lies inside its buffer.
    if w.slice.offset + texels * texel > w.slice.buffer.size() {
        return Err(Error::Internal(format!(
            "a staged window ends inside a texel past its buffer ({} bytes)",
            w.slice.buffer.size()
        )));
    }
    let extent = |width: u64, height: u64| wgpu::Extent3d {
        width: width as u32,
        height: height as u32,
        depth_or_array_layers: 1,
    };
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
    Ok(texture.create_view(&Default::default()))
}

/// Purposes of the forward's unfolded input and padded weights.
pub(super) const UNFOLDED: &str = "conv2d unfolded input";
pub(super) const PADDED_WEIGHTS: &str = "conv2d padded weights";

/// The row width of the unfolded forward A, where the product is unfolded
/// before it is multiplied: on the broadcast kernels an input whose channels
/// do not fill whole subgroup steps of k (the RGB stem) would otherwise be
/// gathered one scalar at a time, while its unfolded rows, padded to a
/// multiple of the lane count, take the vec4 texture form (f16: rgba16float).
/// Not where one grid row of it exceeds `limit`, nor where a source window of
/// `limit` floats would not fit the r32float texture the f32 unfold reads it
/// from (f16 reads it in place, but keeps the same bound: one rule for both).
pub(super) fn unfolded_width(gpu: &Gpu, g: &Geom, limit: u64) -> Option<usize> {
    let lanes = gpu.tuning.matmul.broadcast_lanes()? as usize;
    let width = (g.kh * g.kw * g.cin).next_multiple_of(lanes);
    let texture_rows = limit.div_ceil(texture_width(gpu));
    (!g.cin.is_multiple_of(lanes)
        && g.cout.is_multiple_of(4)
        && (g.ow * width) as u64 <= limit
        && texture_rows <= gpu.limits.max_texture_dimension_2d as u64)
        .then_some(width)
}

/// Records the unfold of `rows` rows of the forward A, from grid pixel `row0`
/// of the input window `src` (which starts at global element `src_base`),
/// into the device's scratch buffer, `width` elements per row with zeros
/// past `k`, stored at `precision` as the source is, and returns that matrix.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_unfold(
    rec: &mut Recorder,
    precision: Precision,
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
    let buffer = gpu.scratch_buffer(UNFOLDED, elems * precision.bytes())?;
    let dst = gpu.window_of(&buffer, 0, elems, precision)?;
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
    let source = match precision {
        Precision::F32 => Binding::Texture(stage_texture(rec, Slot::AScalar, src)?),
        Precision::F16 => src.into(),
    };
    rec.dispatch_groups(
        &unfold_spec(precision),
        bytemuck::bytes_of(&params),
        vec![source, (&dst).into()],
        rows.div_ceil(64) as u64,
    )?;
    Ok(dst)
}

/// Records a copy of the row-major matrix `b` [k, n] stored at `precision`
/// with zero rows appended up to `rows`, in the device's scratch buffer,
/// and returns it.
pub(super) fn record_padded_rows(
    rec: &mut Recorder,
    precision: Precision,
    b: &Window,
    k: usize,
    n: usize,
    rows: usize,
) -> Result<Window> {
    let gpu = rec.gpu();
    let elem = precision.bytes();
    let (bytes, padded) = ((k * n) as u64 * elem, (rows * n) as u64 * elem);
    let offset = b.slice.offset + b.shift as u64 * elem;
    // Buffer copies and clears move whole 4-byte words: n is a multiple of
    // 4 here (`unfolded_width`), and parameters start on 16-byte boundaries.
    if !(offset.is_multiple_of(4) && bytes.is_multiple_of(4)) {
        return Err(Error::Internal(format!(
            "conv2d padded weights: {bytes} bytes at byte {offset} are not whole words"
        )));
    }
    let buffer = gpu.scratch_buffer(PADDED_WEIGHTS, padded)?;
    rec.copy(
        BufSlice {
            buffer: b.slice.buffer.clone(),
            offset,
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
    gpu.window_of(&buffer, 0, (rows * n) as u64, precision)
}

/// A staging texture for windows of a tensor of `elems` floats: a window
/// spans at most one binding, its alignment shift included.
pub(super) fn slot_need(gpu: &Gpu, slot: Slot, elems: u64) -> ScratchNeed {
    let width = texture_width(gpu);
    let (format, texel) = slot.format();
    let bytes =
        (elems * slot.element_bytes() + gpu.binding_alignment()).min(gpu.max_binding_bytes());
    let rows = bytes.div_ceil(texel).div_ceil(width);
    ScratchNeed::Texture {
        purpose: slot.purpose(),
        need: TextureNeed {
            format,
            width: width as u32,
            rows: rows.min(u32::MAX as u64) as u32,
        },
    }
}

/// One product of a convolution as `broadcast_form` sees it: A's channels
/// (its source's last axis), the output columns, and the sizes of the
/// tensors A and B are windows of.
pub(super) struct StagedProduct {
    pub(super) mode: Mode,
    pub(super) precision: Precision,
    pub(super) a_channels: usize,
    pub(super) n: usize,
    pub(super) a_elems: u64,
    pub(super) b_elems: u64,
}

/// The staging textures the subgroup-broadcast kernel may use for `p`:
/// none when the output columns are not whole vec4s (the kernel then reads
/// its operands in place), B, A as vec4 texels where A's steps are whole
/// texels, and the scalar A where they are not or a vec4 window would not
/// fit a texture (`broadcast_form` makes the same choice per window; graph
/// tensors start at offset 0, so whole texels also mean aligned windows).
/// The tiled kernels stage nothing.
pub(super) fn staging_needs(gpu: &Gpu, p: &StagedProduct) -> Vec<ScratchNeed> {
    let Some(lanes) = gpu.tuning.matmul.broadcast_lanes() else {
        return Vec::new();
    };
    if !p.n.is_multiple_of(4) {
        return Vec::new();
    }
    let whole_texels = whole_texels(p.mode, p.a_channels, lanes);
    let vec4 = slot_need(gpu, Slot::a(p.precision), p.a_elems);
    let vec4_fits = match vec4 {
        ScratchNeed::Texture { need, .. } => need.rows <= gpu.limits.max_texture_dimension_2d,
        ScratchNeed::Buffer { .. } => false,
    };
    let mut needs = vec![slot_need(gpu, Slot::b(p.precision), p.b_elems)];
    if whole_texels {
        needs.push(vec4);
    }
    if p.precision == Precision::F32 && (!whole_texels || !vec4_fits) {
        needs.push(slot_need(gpu, Slot::AScalar, p.a_elems));
    }
    needs
}
