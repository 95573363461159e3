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
    Binding, BufSlice, DeviceTensor, Gpu, MatmulVariant, Recorder, ScratchNeed, ShaderSpec,
    TextureNeed, TiledConfig, Window, TILED_CONFIGS,
};
use crate::graph::{Graph, Op, TensorId};
use crate::ops::elementwise::{expect_inputs, Reshape};
use crate::tensor::{RefTensor, Shape, Tensor};

mod columns;
mod kernel;
mod row_dot;

use columns::*;
pub use columns::{BroadcastRows, ColumnSum};
use kernel::*;
use row_dot::*;
pub(crate) use row_dot::{record_row_dot, RowBias, ROW_DOT_MAX_K};

const WG: u64 = 256;
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

/// The Rust side of the uniform block of `entry` (tests compare it with the WGSL).
pub(crate) fn uniform_shape(entry: &str) -> Option<crate::gpu::UniformShape> {
    use crate::gpu::Uniform;
    Some(match entry {
        "gemm_tiled" | "gemm_sgb" => GemmParams::shape(),
        "pack" => PackParams::shape(),
        "column_sum" => SumParams::shape(),
        "broadcast_rows" => BroadcastParams::shape(),
        "row_dot" => RowDotParams::shape(),
        _ => return None,
    })
}

pub fn shader_specs() -> Vec<ShaderSpec> {
    let mut specs = Vec::new();
    for bias in [false, true] {
        for config in TILED_CONFIGS {
            for vec4 in [false, true] {
                specs.push(tiled_spec(config, bias, vec4));
            }
        }
        for lanes in crate::gpu::BROADCAST_LANES {
            for sg_n in SGB_LAYOUTS {
                specs.push(sgb_spec(lanes as u64, sg_n, bias));
            }
        }
    }
    specs.extend([pack_spec(), column_sum_spec(), broadcast_spec()]);
    specs.extend([row_dot_spec(false), row_dot_spec(true)]);
    specs
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

    fn shape(&self, inputs: &[&Shape]) -> Result<GemmShape> {
        Ok(GemmShape {
            d: self.dims(inputs)?,
            ta: self.trans_a,
            tb: self.trans_b,
        })
    }

    /// The operand textures of the subgroup-broadcast kernel (the tiled
    /// kernel reads its operands in place).
    fn scratch_with(&self, gpu: &Gpu, inputs: &[&Shape], lim: Limits) -> Result<Vec<ScratchNeed>> {
        let shape = self.shape(inputs)?;
        if shape.row_dot().is_some() {
            return Ok(Vec::new());
        }
        Ok(match gpu.tuning.matmul {
            MatmulVariant::Tiled(_) => Vec::new(),
            MatmulVariant::SubgroupBroadcast { lanes } => {
                shape.sgb_blocking(lim, lanes as u64)?.textures().to_vec()
            }
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
        let g = Gemm {
            a: inputs[0],
            b: inputs[1],
            bias: inputs.get(2).copied(),
            c,
            shape: self.shape(&shapes)?,
        };
        if let Some((a_is_vector, rows)) = g.shape.row_dot() {
            let (matrix, vector) = if a_is_vector { (g.b, g.a) } else { (g.a, g.b) };
            let bias = g.bias.map(|values| RowBias {
                values,
                per_row: a_is_vector,
            });
            return record_row_dot(
                rec,
                matrix,
                vector,
                bias,
                c,
                [rows, g.shape.d.k],
                lim.window,
            );
        }
        match rec.gpu().tuning.matmul {
            MatmulVariant::Tiled(config) => g.record_tiled(rec, lim, config),
            MatmulVariant::SubgroupBroadcast { lanes } => g.record_sgb(rec, lim, lanes as u64),
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

    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        self.scratch_with(gpu, inputs, Limits::of(gpu))
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

#[cfg(test)]
mod tests;
