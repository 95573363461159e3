//! The backward convolutions (input and weight gradients as implicit GEMMs
//! of the same kernel), the bias gradient, and the axis swap they use.

use super::*;

/// dx of a convolution: inputs dy [N, OH, OW, C_out] and the weights with
/// their last two axes swapped [kh, kw, C_out, C_in]; output [N, H, W, C_in].
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2dInputGrad {
    pub conv: Conv2d,
    pub input_hw: [usize; 2],
}

impl Conv2dInputGrad {
    pub(super) fn geom(&self, dy: &Shape, w_t: &Shape) -> Result<Geom> {
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
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let g = self.geom(inputs[0], inputs[1])?;
        Ok(staging_needs(
            gpu,
            &StagedProduct {
                precision: Precision::F32,
                mode: Mode::InputGrad,
                a_channels: g.cout,
                n: g.cin,
                a_elems: inputs[0].numel() as u64,
                b_elems: inputs[1].numel() as u64,
            },
        ))
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
                    precision: Precision::F32,
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
    fn profile_label(&self, inputs: &[&Shape]) -> String {
        self.conv
            .label(self.name(), self.geom(inputs[0], inputs[1]))
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
    pub(super) fn geom(&self, x: &Shape, dy: &Shape) -> Result<Geom> {
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
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let g = self.geom(inputs[0], inputs[1])?;
        Ok(staging_needs(
            gpu,
            &StagedProduct {
                precision: Precision::F32,
                mode: Mode::WeightGrad,
                a_channels: g.cin,
                n: g.cout,
                a_elems: inputs[0].numel() as u64,
                b_elems: inputs[1].numel() as u64,
            },
        ))
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
                    precision: Precision::F32,
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
    fn profile_label(&self, inputs: &[&Shape]) -> String {
        self.conv
            .label(self.name(), self.geom(inputs[0], inputs[1]))
    }
}

/// Rows one invocation of the bias-gradient sum adds up.
pub(super) const REDUCE_ROWS: u64 = 1024;
const BIAS_PARTIALS: &str = "conv2d bias partial sums";

/// Rows per chunk of the bias gradient's input, and the partial sums one
/// chunk leaves (one per `REDUCE_ROWS` rows).
fn bias_grad_splits(gpu: &Gpu, rows: usize, cols: usize) -> (u64, u64) {
    let per_chunk = (gpu.max_window_elems() / cols.max(1) as u64).max(1);
    (
        per_chunk,
        (rows as u64).min(per_chunk).div_ceil(REDUCE_ROWS),
    )
}

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
    fn scratch(&self, gpu: &Gpu, inputs: &[&Shape]) -> Result<Vec<ScratchNeed>> {
        let (rows, cols) = inputs[0].matrix(self.name())?;
        let (_, splits) = bias_grad_splits(gpu, rows, cols);
        Ok(vec![ScratchNeed::Buffer {
            purpose: BIAS_PARTIALS,
            bytes: splits * cols as u64 * 4,
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
        let (per_chunk, splits) = bias_grad_splits(gpu, rows, cols);
        let db = outputs[0].whole(gpu)?;
        let partial = gpu.scratch_buffer(BIAS_PARTIALS, splits * cols as u64 * 4)?;
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
