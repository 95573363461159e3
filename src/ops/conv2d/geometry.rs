//! Convolution geometry: output sizes, how the implicit GEMM's A walks its
//! source (`Gather`), and the split of large tensors into row chunks whose
//! windows fit one binding.

use super::*;

#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cin: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) cout: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Geom {
    pub(super) fn flops(&self) -> u64 {
        2 * (self.n * self.oh * self.ow * self.cout * self.kh * self.kw * self.cin) as u64
    }
    pub(super) fn in_index(&self, n: usize, y: usize, x: usize) -> usize {
        ((n * self.h + y) * self.w + x) * self.cin
    }
    pub(super) fn out_index(&self, n: usize, y: usize, x: usize) -> usize {
        ((n * self.oh + y) * self.ow + x) * self.cout
    }
    pub(super) fn w_index(&self, ky: usize, kx: usize) -> usize {
        (ky * self.kw + kx) * self.cin * self.cout
    }
}

/// How the kernel's A operand walks a source tensor [N, src_h, src_w, src_c]:
/// for grid pixel (y, x) and tap (ky, kx) the source row is
/// (y·mul + off + ky·dk) / div where div divides it (likewise for columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Gather {
    pub(super) src: [usize; 3],
    pub(super) grid: [usize; 2],
    pub(super) taps: [usize; 2],
    pub(super) mul: [i64; 2],
    pub(super) off: [i64; 2],
    pub(super) dk: [i64; 2],
    pub(super) div: [i64; 2],
}

impl Gather {
    /// The rows of a row-major matrix [m, width] as a 1×1 gather over one image
    /// one pixel high.
    pub(super) fn rows(m: usize, width: usize) -> Self {
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
    pub(super) fn source_rows(&self, y: usize) -> Option<(usize, usize)> {
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
pub(super) struct Chunk {
    pub(super) rows: Range<usize>,
    pub(super) src: Range<usize>,
}

/// Greedy split of the grid rows of `images` images into chunks whose
/// destination (`dest_row_elems` per grid row) and source (`src_row_elems`
/// per source row) windows each hold at most `limit` elements.
pub(super) fn plan_chunks(
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
