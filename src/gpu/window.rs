//! Windows: how a tensor larger than one storage binding (128 MiB on
//! lavapipe and WebGPU defaults) is processed. A kernel binds an aligned
//! sub-range and adds the remaining element shift itself; every op plans its
//! windows from `Gpu::max_window_elems`, which `GpuOptions::max_binding_override`
//! lowers so that tests take every windowed path on tiny tensors.

use std::ops::Range;

use super::buffer::DeviceTensor;
use super::device::Gpu;
use super::recorder::Recorder;
use super::shader::ShaderSpec;
use crate::error::{Error, Result};
use crate::tensor::Precision;

/// A byte range of a buffer bound as one storage binding.
#[derive(Clone, Debug)]
pub struct BufSlice {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// An aligned window onto `count` f32 elements starting at element `start`;
/// the kernel reads element i of the window at index `shift + i`.
#[derive(Clone, Debug)]
pub struct Window {
    pub slice: BufSlice,
    pub shift: u32,
}

impl Gpu {
    /// A window of `count` f32 elements from element `start` of `buffer`.
    pub fn window(&self, buffer: &wgpu::Buffer, start: u64, count: u64) -> Result<Window> {
        self.window_of(buffer, start, count, Precision::F32)
    }

    /// A window of `count` elements stored at `precision` from element
    /// `start` of `buffer`; its size is a whole number of 4-byte words, as
    /// storage bindings require.
    pub fn window_of(
        &self,
        buffer: &wgpu::Buffer,
        start: u64,
        count: u64,
        precision: Precision,
    ) -> Result<Window> {
        let elem = precision.bytes();
        let align = self.binding_alignment();
        let byte = start * elem;
        let offset = byte / align * align;
        let shift = (byte - offset) / elem;
        let size = ((shift + count.max(1)) * elem)
            .next_multiple_of(4)
            .min(buffer.size() - offset);
        if size > self.device_binding_bytes() {
            return Err(Error::LimitExceeded {
                what: format!("a window of {count} elements"),
                needed: size,
                limit: self.device_binding_bytes(),
                name: "max_storage_buffer_binding_size",
                fix: "the op must split its work into smaller chunks (a bug: please report it)"
                    .into(),
            });
        }
        Ok(Window {
            slice: BufSlice {
                buffer: buffer.clone(),
                offset,
                size,
            },
            shift: shift as u32,
        })
    }

    /// Largest number of f32 elements a window is guaranteed to hold whatever its start.
    pub fn max_window_elems(&self) -> u64 {
        (self.max_binding_bytes() - self.binding_alignment()) / 4
    }
}
/// One dispatch's share of a chunk for kernels with a VEC4 variant: `n` and
/// `shifts` are in units of the kernel's element (vec4 or f32).
pub struct Piece {
    pub vec4: bool,
    pub n: u64,
    pub shifts: Vec<u32>,
}

/// Splits a chunk of `count` elements, whose windows start at element
/// `shifts`, into a vec4 piece over whole vec4s (when every window starts on
/// 16 bytes) and a scalar piece for the rest. A window's vec4 view ends at its
/// last whole vec4, which the vec4 piece never passes.
pub fn vec4_pieces(shifts: &[u32], count: u64) -> Vec<Piece> {
    let whole = if shifts.iter().all(|s| s % 4 == 0) {
        count / 4
    } else {
        0
    };
    let mut pieces = Vec::new();
    if whole > 0 {
        pieces.push(Piece {
            vec4: true,
            n: whole,
            shifts: shifts.iter().map(|s| s / 4).collect(),
        });
    }
    let done = whole * 4;
    if done < count {
        pieces.push(Piece {
            vec4: false,
            n: count - done,
            shifts: shifts.iter().map(|s| s + done as u32).collect(),
        });
    }
    pieces
}

/// Splits `total` items into consecutive chunks of at most `per_chunk` items.
pub fn chunks(total: u64, per_chunk: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    let per = per_chunk.max(1);
    (0..total.div_ceil(per)).map(move |i| i * per..((i + 1) * per).min(total))
}

/// Whole rows of c values that fit in a window of `max_elems`.
pub fn rows_per_window(c: u64, max_elems: u64) -> Result<u64> {
    match max_elems / c.max(1) {
        0 => Err(Error::LimitExceeded {
            what: format!("a row of {c} channels"),
            needed: c * 4,
            limit: max_elems * 4,
            name: "max_storage_buffer_binding_size",
            fix: "use fewer channels".into(),
        }),
        fit => Ok(fit),
    }
}

/// Splits rows [0, rows) into the fewest consecutive chunks of at most
/// `max_rows` rows whose operand spans (element ranges, from `spans`, growing
/// with the chunk) each fit in `limit` elements.
pub fn row_chunks(
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

/// The workgroup size of every row-chunked kernel (pool, global_pool, resize).
pub const ROW_KERNEL_WORKGROUP: u64 = 64;

/// Global rows of another row space (`other` rows per image) that global
/// rows [r0, r1) of this one (`per` rows per image) need, where `need(a, b)`
/// gives the rows [lo, hi) one image needs for its rows a..=b.
pub fn image_rows(
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

/// A row range scaled to elements, `k` per row.
pub fn scaled(r: Range<u64>, k: u64) -> Range<u64> {
    r.start * k..r.end * k
}

/// A kernel launched over rows [0, rows) of its thread space, chunked so that
/// each operand's span fits in one window.
pub struct RowLaunch<'a> {
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
    pub fn record(
        &self,
        rec: &mut Recorder,
        spans: impl Fn(u64, u64) -> Vec<Range<u64>>,
        threads: impl Fn(u64, u64) -> u64,
        params: impl Fn(Range<u64>, u32, &[u32]) -> Vec<u8>,
    ) -> Result<()> {
        let (op, spec, operands) = (self.op, self.spec, self.operands);
        let gpu = rec.gpu();
        for chunk in row_chunks(op, self.rows, self.max_rows, gpu.max_window_elems(), &spans)? {
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
                n.div_ceil(ROW_KERNEL_WORKGROUP),
            )?;
        }
        Ok(())
    }
}
