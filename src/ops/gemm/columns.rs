//! Column sums of a matrix (bias gradients) and their inverse, broadcasting
//! a row to every row.

use super::*;

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct SumParams {
        rows: u32,
        cols: u32,
        block: u32,
        shift_x: u32,
        shift_out: u32,
        out_row0: u32,
        _pad: [u32; 2],
    }
}

crate::uniform! {
    #[derive(Clone, Copy, Pod, Zeroable)]
    pub(super) struct BroadcastParams {
        count: u32,
        cols: u32,
        shift_x: u32,
        shift_out: u32,
    }
}

pub(super) fn column_sum_spec() -> ShaderSpec {
    ShaderSpec::new("gemm", "column_sum").def("COLUMN_SUM", 1)
}
pub(super) fn broadcast_spec() -> ShaderSpec {
    ShaderSpec::new("gemm", "broadcast_rows").def("BROADCAST", 1)
}

/// [..., N] → [N]: the sum over all rows (the bias gradient of `Matmul`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ColumnSum;

/// The two buffers the levels of a column-sum tree alternate between.
const PARTIALS: [&str; 2] = ["column sum partials", "column sum partials (next level)"];

/// How a column sum over `rows` × `cols` runs: rows per chunk (whole blocks,
/// each chunk within one window) and the row count of every level of
/// partial sums, largest first (none when one block holds every row).
struct SumPlan {
    per_chunk: u64,
    levels: Vec<u64>,
}

impl SumPlan {
    fn new(rows: u64, cols: u64, lim: Limits) -> Result<SumPlan> {
        let block = lim.sum_block;
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
        let total_blocks: u64 = (0..rows)
            .step_by(per_chunk as usize)
            .map(|r0| per_chunk.min(rows - r0).div_ceil(block))
            .sum();
        let mut levels = Vec::new();
        if total_blocks > 1 {
            levels.push(total_blocks);
            while let Some(&last) = levels.last().filter(|&&l| l > block) {
                levels.push(last.div_ceil(block));
            }
        }
        Ok(SumPlan { per_chunk, levels })
    }

    fn needs(&self, cols: u64) -> Vec<ScratchNeed> {
        self.levels
            .iter()
            .enumerate()
            .map(|(i, rows)| ScratchNeed::Buffer {
                purpose: PARTIALS[i % 2],
                bytes: rows * cols * 4,
            })
            .collect()
    }
}

impl ColumnSum {
    pub(super) fn scratch_with(&self, x: &Shape, lim: Limits) -> Result<Vec<ScratchNeed>> {
        let (rows, cols) = x.matrix(self.name())?;
        Ok(SumPlan::new(rows as u64, cols as u64, lim)?.needs(cols as u64))
    }

    pub(super) fn record_with(
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
        let SumPlan { per_chunk, levels } = SumPlan::new(rows, cols, lim)?;
        let out_w = out.whole(gpu)?;
        if levels.is_empty() {
            return sum_blocks(rec, &x.whole(gpu)?, rows, cols, block, &out_w, 0);
        }
        let level_window = |i: usize| {
            let elems = levels[i] * cols;
            gpu.window(&gpu.scratch_buffer(PARTIALS[i % 2], elems * 4)?, 0, elems)
        };
        let mut level_w = level_window(0)?;
        let mut row0 = 0;
        for r0 in (0..rows).step_by(per_chunk as usize) {
            let rc = per_chunk.min(rows - r0);
            let w = x.window(gpu, r0 * cols, rc * cols)?;
            sum_blocks(rec, &w, rc, cols, block, &level_w, row0)?;
            row0 += rc.div_ceil(block);
        }
        for i in 1..levels.len() {
            let next_w = level_window(i)?;
            sum_blocks(rec, &level_w, levels[i - 1], cols, block, &next_w, 0)?;
            level_w = next_w;
        }
        let last = levels[levels.len() - 1];
        sum_blocks(rec, &level_w, last, cols, block, &out_w, 0)
    }
}

/// One level of the column-sum tree: rows of `x` in blocks of `block` rows to
/// rows `row0..` of `out`.
pub(super) fn sum_blocks(
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
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        self.scratch_with(inputs[0], Limits::of(gpu))
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
    pub(super) fn record_with(
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
