//! Matrix-vector products: every output is the dot product of one
//! contiguous row with one vector. DOLG's FC layers at batch 1 (C = a·Bᵀ,
//! M = 1) and the 1×1 convolutions to one channel of the attention heads
//! (N = 1) have this form. The tiled and subgroup kernels compute whole
//! tiles (≥ 32 columns, up to 128 rows) and would throw all but one row or
//! column of each away (0.04–0.1 GFLOP/s on lavapipe, BENCHMARKS.md); here
//! each output gets one invocation.

use super::*;
use crate::gpu::{chunks, rows_per_window};

/// Longest row one invocation sums: llvmpipe silently ends a loop after
/// ~65535 iterations (see `TILED_MAX_K`); longer rows take the tiled kernels.
pub(crate) const ROW_DOT_MAX_K: u64 = 16384;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct RowDotParams {
        rows: u32,
        k: u32,
        shift_matrix: u32,
        shift_vector: u32,
        shift_out: u32,
        shift_bias: u32,
        bias_step: u32,
        _pad: u32,
    }
}

pub(super) fn row_dot_spec(bias: bool) -> ShaderSpec {
    ShaderSpec::new("gemm", "row_dot")
        .def("ROW_DOT", 1)
        .def("ROW_BIAS", bias as u32)
}

/// The bias of a matrix-vector product: one value per output row
/// (`per_row`), or one value for every row.
#[derive(Clone, Copy)]
pub(crate) struct RowBias<'a> {
    pub(crate) values: &'a DeviceTensor,
    pub(crate) per_row: bool,
}

/// out[r] = Σ_k matrix[r][k]·vector[k] (+ bias) for the `rows` rows of
/// `matrix`, each `k` long and stored one after the other; in chunks of
/// whole rows that fit a `window` of elements.
pub(crate) fn record_row_dot(
    rec: &mut Recorder,
    matrix: &DeviceTensor,
    vector: &DeviceTensor,
    bias: Option<RowBias>,
    out: &DeviceTensor,
    [rows, k]: [u64; 2],
    window: u64,
) -> Result<()> {
    if k > ROW_DOT_MAX_K || matrix.shape.numel() as u64 != rows * k {
        return Err(Error::Internal(format!(
            "row_dot of {rows}×{k} over a {:?} matrix (K at most {ROW_DOT_MAX_K})",
            matrix.shape
        )));
    }
    let gpu = rec.gpu();
    let spec = row_dot_spec(bias.is_some());
    let wv = vector.window(gpu, 0, k)?;
    for range in chunks(rows, rows_per_window(k, window)?) {
        let (r0, n) = (range.start, range.end - range.start);
        let wm = matrix.window(gpu, r0 * k, n * k)?;
        let wo = out.window(gpu, r0, n)?;
        let mut p = RowDotParams {
            rows: n as u32,
            k: k as u32,
            shift_matrix: wm.shift,
            shift_vector: wv.shift,
            shift_out: wo.shift,
            shift_bias: 0,
            bias_step: 0,
            _pad: 0,
        };
        let mut bindings: Vec<Binding> = vec![(&wm).into(), (&wv).into(), (&wo).into()];
        if let Some(b) = bias {
            let wb = if b.per_row {
                b.values.window(gpu, r0, n)?
            } else {
                b.values.window(gpu, 0, 1)?
            };
            p.shift_bias = wb.shift;
            p.bias_step = b.per_row as u32;
            bindings.push((&wb).into());
        }
        rec.dispatch_groups(
            &spec,
            bytemuck::bytes_of(&p),
            bindings,
            n.div_ceil(ROW_DOT_WG),
        )?;
    }
    Ok(())
}

/// Invocations per workgroup of `row_dot` (the shader's workgroup size).
const ROW_DOT_WG: u64 = 64;

impl GemmShape {
    /// The product as rows of a matrix dotted with a vector, if it is one:
    /// `(a_is_vector, rows)`. With M = 1 and B stored [N, K] the rows are
    /// B's and the vector is A (K contiguous values however A is stored);
    /// with N = 1 and A stored [M, K] the rows are A's and the vector is B.
    pub(super) fn row_dot(&self) -> Option<(bool, u64)> {
        let Dims { m, n, k } = self.d;
        if k > ROW_DOT_MAX_K {
            return None;
        }
        if m == 1 && self.tb {
            Some((true, n))
        } else if n == 1 && !self.ta {
            Some((false, m))
        } else {
            None
        }
    }
}
